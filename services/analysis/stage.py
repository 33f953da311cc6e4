"""The analysis stage: labels for every segment and for the whole track (labels.json).

Reads the song and segments.json from the store, runs the requested analyser, writes labels.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from services.analysis.analyzer import Analyzer
from services.analysis.descriptors import DescriptorAnalyzer
from services.common import artifacts
from services.common.artifacts import Segmentation
from services.common.audio import ANALYSIS_SAMPLE_RATE, decode
from services.common.errors import InvalidInputError
from services.common.lifecycle import BackendSet
from services.common.stage_api import AnalyzeRequest, StageResult
from services.common.store import ArtifactStore
from services.common.untrusted import quoted


def _clap_analyzer() -> Analyzer:
    from services.analysis.clap import ClapAnalyzer  # torch and msclap are imported only where clap is enabled

    return ClapAnalyzer()


ANALYZERS: dict[str, Callable[[], Analyzer]] = {"descriptors": DescriptorAnalyzer, "clap": _clap_analyzer}


class AnalysisStage:
    def __init__(self, store: ArtifactStore, enabled: Sequence[str] = ("descriptors",)):
        self.store = store
        self.analyzers = BackendSet("analysis", ANALYZERS, enabled)

    def load(self) -> None:
        self.analyzers.load()

    @property
    def ready(self) -> bool:
        return self.analyzers.ready

    def run(self, req: AnalyzeRequest) -> StageResult:
        analyzer = self.analyzers.get(req.analyzer)
        segmentation = _read_segmentation(self.store, req.segments_key)
        # A model hears audio at its own rate (CLAP: 44.1 kHz); decoding there keeps what the default rate would cut.
        sample_rate = getattr(analyzer, "sample_rate", ANALYSIS_SAMPLE_RATE)
        try:
            with self.store.local_path(req.song_key) as path:
                samples = decode(path, sample_rate=sample_rate)
        except KeyError as exc:
            raise InvalidInputError(f"no song at {quoted(req.song_key)}") from exc
        labels = analyzer.analyze(samples, sample_rate, segmentation, req.top_k)
        self.store.put_bytes(req.labels_key, artifacts.dumps(labels))
        return StageResult(
            keys={"labels": req.labels_key},
            info={
                "analyzer": labels.analyzer,
                "segments": len(labels.segments),
                **{g: labels.track[g].top() for g in ("tempo_range", "mood", "visual_style") if g in labels.track},
            },
        )


def _read_segmentation(store: ArtifactStore, key: str) -> Segmentation:
    try:
        return Segmentation.from_dict(json.loads(store.get_text(key)))
    except KeyError as exc:
        raise InvalidInputError(f"no segmentation at {quoted(key)} ({exc})") from exc
    except (TypeError, ValueError) as exc:  # ValueError covers bad JSON and bad UTF-8
        raise InvalidInputError(f"{key} is not a segmentation ({exc})") from exc
