"""`make bench`: how fast the pipeline is on this machine, against baselines measured in the same run.

Baselines: decoding the song (the floor of any stage that reads audio) for segmentation and
analysis; for `generate`, the song's own duration (real-time factor) and a plain ffmpeg encode of
a blank video of the same length with the song's audio (the floor of making any video at all).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.common import audio
from services.common.stage_api import AnalyzeRequest, SegmenterParams, SegmentRequest
from services.common.store import LocalArtifactStore
from tools.synth_song import render_song

RESULTS = Path(__file__).with_name("RESULTS.md")


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the benchmark song")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    args = parser.parse_args()

    from services.analysis.stage import AnalysisStage
    from services.segmentation.stage import SegmentationStage

    rows: list[tuple[str, float, str, float]] = []  # (what, seconds, baseline name, baseline seconds)
    with tempfile.TemporaryDirectory(prefix="mvgen-bench-") as scratch:
        work = Path(scratch)
        truth = render_song(work / "song.wav", seconds=args.seconds, seed=1)
        minutes = truth.duration / 60
        store = LocalArtifactStore(work / "store")
        store.put_file("song.wav", work / "song.wav")

        decode_s = timed(lambda: audio.decode(work / "song.wav"), repeat=3)
        rows.append(("decode song (22.05 kHz mono), s per min of audio", decode_s / minutes, "-", 0.0))

        segmentation = SegmentationStage(store)
        segmentation.load()
        for name in ("rules", "random"):
            req = SegmentRequest("song.wav", SegmenterParams(segmenter=name), f"{name}.json", f"{name}.txt")
            seconds = timed(lambda: segmentation.run(req), repeat=3)
            rows.append((f"segmentation ({name}), s per min of audio", seconds / minutes,
                         "decode", decode_s / minutes))

        analysis = AnalysisStage(store)
        analysis.load()
        req = AnalyzeRequest("song.wav", "rules.json", "descriptors", "labels.json")
        seconds = timed(lambda: analysis.run(req), repeat=3)
        rows.append(("analysis (descriptors), s per min of audio", seconds / minutes, "decode", decode_s / minutes))

        floor = timed(lambda: blank_video(work / "song.wav", truth.duration, work / "blank.mp4"))
        mvgen = str(Path(sys.executable).parent / "mvgen")
        e2e = timed(lambda: subprocess.run([mvgen, "generate", str(work / "song.wav"), "--run-dir",
                                            str(work / "run"), "-q"], check=True, capture_output=True))
        rows.append((f"generate end to end, {truth.duration:.0f} s song (animatic), s", e2e,
                     "song duration", truth.duration))
        rows.append((f"generate end to end, {truth.duration:.0f} s song (animatic), s", e2e,
                     "blank-video encode", floor))

    table = render_table(rows)
    print(table)
    if not args.no_write:
        write_results(table)


def blank_video(song: Path, seconds: float, out: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=black:s=640x360:r=24:d={seconds}",
                    "-i", str(song), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-shortest", str(out)], check=True)


def render_table(rows: list[tuple[str, float, str, float]]) -> str:
    lines = ["| measurement | value | baseline | baseline value | ratio |", "|---|---:|---|---:|---:|"]
    for what, value, base_name, base in rows:
        ratio = f"{value / base:.2f}×" if base else "-"
        base_text = f"{base:.3f}" if base else "-"
        lines.append(f"| {what} | {value:.3f} | {base_name} | {base_text} | {ratio} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def write_results(table: str) -> None:
    stamp = time.strftime("%Y-%m-%d")
    RESULTS.write_text(f"# Benchmark results\n\nProduced by `make bench` on {stamp}; machine: {machine()}.\n"
                       f"Ratios compare each measurement with a baseline measured in the same run "
                       f"(see bench/run.py).\n\n{table}\n")


if __name__ == "__main__":
    main()
