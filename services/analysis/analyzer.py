"""What every analyser backend offers the analysis stage."""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from services.common.artifacts import Labels, Segmentation
from services.common.lifecycle import Backend


class Analyzer(Backend):
    @abstractmethod
    def analyze(self, samples: np.ndarray, sr: int, segmentation: Segmentation, top_k: int) -> Labels:
        """Labels for every segment of `segmentation` and for the whole track, top_k per group, best first."""
