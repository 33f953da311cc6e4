"""The review's cost (`review_rows`, for bench/run.py): judging a video against making it.

Two figures for the same song, both against the `generate` run that made the video in the same bench run:
the review stage inside that run (the orchestrator's own timing from manifest.json: models loaded once
per process, the final video decoded once, the scenes and a few frames per clip embedded, the page
drawn), and `mvgen evaluate` on the finished run folder as a person runs it (a fresh process: Python,
torch and both models loaded, then the same review).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.songs import Row


def review_rows(run_dir: Path, generate_seconds: float, song_seconds: float) -> list[Row]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    inside = float(manifest["stages"]["review"]["seconds"])
    mvgen = str(Path(sys.executable).parent / "mvgen")
    started = time.perf_counter()
    subprocess.run([mvgen, "evaluate", str(run_dir)], check=True, capture_output=True)
    alone = time.perf_counter() - started
    label = f"{song_seconds:.0f} s song, {len(manifest['clips'])} clips"
    return [
        (f"review inside generate ({label}), s", inside, "generate end to end", generate_seconds),
        (f"mvgen evaluate, a fresh process ({label}), s", alone, "generate end to end", generate_seconds),
    ]
