"""The `clap` analyser's speed on this machine's CPU, for `make bench` (bench/run.py calls `clap_rows`).

The checkpoint is built here with random weights (tools/tiny_clap.py): HTSAT, the audio encoder, at
its real size and the real projections, so the time per window is the real model's; the text
encoder is tiny, but it runs only at load (label embeddings), which is not timed. Both analysers
run through the analysis stage (decode, then analyse) on the rules segmenter's segments, so
their seconds per minute of audio compare directly. The GPU counterpart is bench/gpu_clap.py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from services.analysis.stage import AnalysisStage
from services.common import audio
from services.common.stage_api import AnalyzeRequest
from services.common.store import LocalArtifactStore
from bench.songs import Row, run_alone, segmented_song
from bench.timing import best_of
from tools.tiny_clap import build_tiny_clap

CLAP_SAMPLE_RATE = 44100


def clap_rows(song_path: Path, minutes: float) -> list[Row]:
    """Seconds of analysis per minute of audio for `clap` and `descriptors`, and CLAP windows per second."""
    with tempfile.TemporaryDirectory(prefix="mvgen-clap-bench-") as scratch:
        work = Path(scratch)
        tiny = build_tiny_clap(work / "tiny-clap")
        store = LocalArtifactStore(work / "store")
        song_key = segmented_song(song_path, store)

        descriptors = AnalysisStage(store, enabled=("descriptors",))
        descriptors.load()
        descriptors_s = best_of(3, lambda: descriptors.run(
            AnalyzeRequest(song_key=song_key, segments_key="segments.json", analyzer="descriptors",
                           labels_key="descriptors.json")))
        clap = AnalysisStage(store, enabled=("clap",), environ={**os.environ, "MVGEN_CLAP_WEIGHTS": str(tiny.folder)})
        clap.load()
        clap_s = best_of(1, lambda: clap.run(AnalyzeRequest(song_key=song_key, segments_key="segments.json",
                                                            analyzer="clap", labels_key="clap.json")))
        decode_s = best_of(3, lambda: audio.decode(song_path, sample_rate=CLAP_SAMPLE_RATE))
        windows = json.loads(store.get_text("clap.json"))["track_measures"]["clap_windows"]
        from services.analysis.clap import ClapAnalyzer

        analyzer = clap.analyzers.get("clap")
        assert isinstance(analyzer, ClapAnalyzer)
        batch = analyzer.settings.batch_size

    what = "analysis (clap on CPU: HTSAT full size, random weights), s per min of audio"
    return [
        (what, clap_s / minutes, "analysis (descriptors)", descriptors_s / minutes),
        (what, clap_s / minutes, "decode at 44.1 kHz", decode_s / minutes),
        (f"clap on CPU: 7 s windows per second (batch {batch})", windows / clap_s, "-", 0.0),
    ]


if __name__ == "__main__":
    run_alone(clap_rows, __doc__)
