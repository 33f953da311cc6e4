"""The random segmenter: durations drawn uniformly from [min, max], reproducible from a seed.

It is the paper's baseline: cuts that know nothing of the music.
"""

from __future__ import annotations

import numpy as np

from services.common.artifacts import Segment
from services.segmentation.cuts import Cut, segments_from_cuts


def segment_random(duration: float, min_seconds: float, max_seconds: float, seed: int) -> list[Segment]:
    """Segments of uniform random length in [min_seconds, max_seconds] covering [0, duration].

    The same seed always gives the same cuts. The last segment obeys the same bounds through the
    tail rule of `segments_from_cuts` (given max >= 2 min); a song shorter than min is one segment.
    """
    rng = np.random.default_rng(seed)
    cuts: list[Cut] = []
    position = float(rng.uniform(min_seconds, max_seconds))
    while position < duration:
        cuts.append(Cut(position, "random"))
        position += float(rng.uniform(min_seconds, max_seconds))
    return segments_from_cuts(cuts, duration, min_seconds, max_seconds, split_reason="random")
