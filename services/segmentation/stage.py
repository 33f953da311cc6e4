"""The segmentation stage: a song in the store becomes segments.json and segments.txt."""

from __future__ import annotations

import numpy as np

from services.common import artifacts
from services.common.artifacts import Segmentation
from services.common.audio import ANALYSIS_SAMPLE_RATE, decode
from services.common.errors import InvalidInputError
from services.common.lifecycle import Backend
from services.common.stage_api import SegmenterParams, SegmentRequest, StageResult
from services.common.store import ArtifactStore
from services.common.untrusted import quoted
from services.segmentation.random_segmenter import segment_random
from services.segmentation.rules_segmenter import segment_rules


class SegmentationStage(Backend):
    """Both segmenters run on the CPU and hold no model; `load()` only warms up the beat tracker."""

    name = "segmentation"

    def __init__(self, store: ArtifactStore):
        super().__init__()
        self.store = store

    def _load(self) -> None:
        # librosa loads its numba-compiled beat tracker on first use (seconds): pay that before serving.
        pulse = np.zeros(3 * ANALYSIS_SAMPLE_RATE, dtype=np.float32)
        pulse[:: ANALYSIS_SAMPLE_RATE // 2] = 1.0
        segment_rules(pulse, ANALYSIS_SAMPLE_RATE, SegmenterParams())

    def run(self, req: SegmentRequest) -> StageResult:
        req.params.check()
        try:
            with self.store.local_path(req.song_key) as path:
                samples = decode(path, sample_rate=ANALYSIS_SAMPLE_RATE)
        except KeyError:
            raise InvalidInputError(f"the song {quoted(req.song_key)} is not in the store") from None
        segmentation = segment_samples(samples, ANALYSIS_SAMPLE_RATE, req.params)
        self.store.put_bytes(req.segments_key, artifacts.dumps(segmentation))
        self.store.put_text(req.segments_text_key, segmentation.to_text())
        return StageResult(
            keys={"segments": req.segments_key, "segments_text": req.segments_text_key},
            info={"segments": len(segmentation.segments),
                  "tempo_bpm": None if segmentation.tempo_bpm is None else round(segmentation.tempo_bpm, 2)},
        )


def segment_samples(samples: np.ndarray, sample_rate: int, params: SegmenterParams) -> Segmentation:
    """Segment mono samples with the segmenter `params` names."""
    params.check()
    if samples.size == 0:
        raise InvalidInputError("the song holds no audio")
    duration = samples.size / sample_rate
    if params.segmenter == "random":
        segments = segment_random(duration, params.random_min_seconds, params.random_max_seconds, params.seed)
        return Segmentation("random", params.to_dict(), duration, None, [], segments)
    result = segment_rules(samples, sample_rate, params)
    return Segmentation("rules", params.to_dict(), duration, result.tempo_bpm, result.beats, result.segments)
