"""What the per-stage benchmarks share: their rows, the song in a store cut by the rules segmenter, and
running one of them alone on a synthesized song (`python -m bench.clap_bench`, ...)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from services.common.stage_api import SegmenterParams, SegmentRequest
from services.common.store import LocalArtifactStore
from services.segmentation.stage import SegmentationStage

Row = tuple[str, float, str, float]  # (what, value, baseline name, baseline value), as bench/run.py prints them


def segmented_song(song_path: Path, store: LocalArtifactStore) -> str:
    """The song put into `store` and cut by the rules segmenter (segments.json); its key."""
    song_key = f"song{song_path.suffix}"
    store.put_file(song_key, song_path)
    segmentation = SegmentationStage(store)
    segmentation.load()
    segmentation.run(SegmentRequest(song_key=song_key, params=SegmenterParams(segmenter="rules"),
                                    segments_key="segments.json", segments_text_key="segments.txt"))
    return song_key


def run_alone(rows: Callable[[Path, float], list[Row]], description: str) -> None:
    """One benchmark's rows on a synthesized song of --seconds, printed as bench/run.py's table."""
    from bench.run import render_table
    from tools.synth_song import render_song

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the benchmark song")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvgen-bench-song-") as folder:
        truth = render_song(Path(folder) / "song.wav", seconds=args.seconds, seed=1)
        print(render_table(rows(Path(folder) / "song.wav", truth.duration / 60)))
