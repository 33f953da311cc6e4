"""The listening analysers' speed on this machine's CPU (`musicnn_rows`, for bench/run.py).

musicnn: the two trained taggers (MTT_musicnn, MSD_musicnn, the weights the musicnn wheel carries)
in torch, plus the descriptors it runs for what a tagger does not give. Both analysers run through
the analysis stage (decode, then analyse) on the rules segmenter's segments of the same song, in
the same call, so their seconds per minute of audio compare directly.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from services.analysis.stage import AnalysisStage
from services.common.stage_api import AnalyzeRequest
from services.common.store import LocalArtifactStore
from bench.songs import Row, run_alone, segmented_song
from bench.timing import best_of


def musicnn_rows(song_path: Path, minutes: float) -> list[Row]:
    """Seconds of analysis per minute of audio for `musicnn` against `descriptors`, and patches per second."""
    with tempfile.TemporaryDirectory(prefix="mvgen-listen-bench-") as scratch:
        store = LocalArtifactStore(Path(scratch))
        song_key = segmented_song(song_path, store)

        descriptors = AnalysisStage(store, enabled=("descriptors",))
        descriptors.load()
        descriptors_s = best_of(3, lambda: descriptors.run(
            AnalyzeRequest(song_key=song_key, segments_key="segments.json", analyzer="descriptors",
                           labels_key="descriptors.json")))
        musicnn = AnalysisStage(store, enabled=("musicnn",))
        musicnn.load()  # not timed: reads the checkpoints and runs one warm-up patch
        musicnn_s = best_of(2, lambda: musicnn.run(AnalyzeRequest(song_key=song_key, segments_key="segments.json",
                                                                  analyzer="musicnn", labels_key="musicnn.json")))
        patches = json.loads(store.get_text("musicnn.json"))["track_measures"]["musicnn_patches"]
        from services.analysis.musicnn.analyzer import MusicnnAnalyzer

        analyzer = musicnn.analyzers.get("musicnn")
        assert isinstance(analyzer, MusicnnAnalyzer)
        batch = analyzer.batch_size

    what = "analysis (musicnn on CPU: MTT + MSD taggers, with the descriptors), s per min of audio"
    return [
        (what, musicnn_s / minutes, "analysis (descriptors)", descriptors_s / minutes),
        (f"musicnn on CPU: 3 s patches per second, both taggers (batch {batch})", patches / musicnn_s, "-", 0.0),
    ]


if __name__ == "__main__":
    run_alone(musicnn_rows, __doc__)
