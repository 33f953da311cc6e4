"""The analysis stage: labels for every segment and for the whole track (labels.json), and what is
sung in each segment (lyrics.json, lyrics.txt) when the request asks for lyrics.

Reads the song and segments.json from the store, runs the requested analyser, writes labels.json.
Transcribers (lyrics/) are a second set of backends, enabled through the same list as the analysers
(MVGEN_BACKENDS=descriptors,whisper): each name goes to the set whose registry holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from services.analysis.analyzer import Analyzer
from services.analysis.descriptors import DescriptorAnalyzer
from services.analysis.lyrics.listening import TRANSCRIBERS, check_lyrics_request, write_lyrics
from services.common import artifacts
from services.common.artifacts import Segmentation, read_artifact
from services.common.audio import ANALYSIS_SAMPLE_RATE, decode
from services.common.errors import InvalidInputError
from services.common.lifecycle import BackendSet
from services.common.stage_api import AnalyzeRequest, StageResult
from services.common.store import ArtifactStore
from services.common.untrusted import quoted


def _clap_analyzer(environ: Mapping[str, str] | None = None) -> Analyzer:
    from services.analysis.clap import ClapAnalyzer  # torch and msclap are imported only where clap is enabled

    return ClapAnalyzer(environ=environ)


def _musicnn_analyzer(environ: Mapping[str, str] | None = None) -> Analyzer:
    from services.analysis.musicnn.analyzer import MusicnnAnalyzer  # torch is imported only where musicnn is enabled

    return MusicnnAnalyzer(environ=environ)


ANALYZERS: dict[str, Callable[..., Analyzer]] = {"descriptors": DescriptorAnalyzer, "clap": _clap_analyzer,
                                                "musicnn": _musicnn_analyzer}


class AnalysisStage:
    def __init__(self, store: ArtifactStore, enabled: Sequence[str] = ("descriptors",),
                 environ: Mapping[str, str] | None = None):
        """`environ`: the settings the backends read (envs.py); None: this process's environment."""
        self.store = store
        self.analyzers = BackendSet("analysis", ANALYZERS, [name for name in enabled if name not in TRANSCRIBERS],
                                    environ)
        self.transcribers = BackendSet("lyrics", TRANSCRIBERS, [name for name in enabled if name in TRANSCRIBERS],
                                       environ)

    def load(self) -> None:
        self.analyzers.load()
        self.transcribers.load()

    @property
    def ready(self) -> bool:
        return self.analyzers.ready and self.transcribers.ready

    def run(self, req: AnalyzeRequest) -> StageResult:
        analyzer = self.analyzers.get(req.analyzer)
        transcriber = check_lyrics_request(req, self.transcribers)  # refused before any work is done
        segmentation = read_artifact(self.store, req.segments_key, Segmentation)
        # A model hears audio at its own rate (CLAP: 44.1 kHz); decoding there keeps what the default rate would cut.
        sample_rate = getattr(analyzer, "sample_rate", ANALYSIS_SAMPLE_RATE)
        try:
            with self.store.local_path(req.song_key) as path:
                samples = decode(path, sample_rate=sample_rate)
        except KeyError as exc:
            raise InvalidInputError(f"no song at {quoted(req.song_key)}") from exc
        labels = analyzer.analyze(samples, sample_rate, segmentation, req.top_k)
        self.store.put_bytes(req.labels_key, artifacts.dumps(labels))
        lyrics_keys, lyrics_info = (write_lyrics(self.store, req, segmentation, transcriber) if req.lyrics_key
                                    else ({}, {}))
        return StageResult(
            keys={"labels": req.labels_key, **lyrics_keys},
            info={
                "analyzer": labels.analyzer,
                "segments": len(labels.segments),
                **{g: labels.track[g].top() for g in ("genre", "tempo_range", "mood", "visual_style")
                   if g in labels.track and labels.track[g].top()},
                **lyrics_info,
            },
        )
