"""Assembly with transitions against hard cuts and a plain concat copy (`assembly_rows`, for bench/run.py).

The song is cut by the rules segmenter into about 30 segments (a cut every 12 beats, 7 s at most) and
labelled by the descriptors analyser. A clip per segment is made in one ffmpeg run with the shared
encoding at 640x360, 24 fps: a moving test pattern (testsrc2), so that the encoder works as it would on
pictures that move, as the animatic's do. Then, in the same run, best of 3 each, through the assembly stage:
- hard cuts (transitions "none"): the clips copied as they are, the song encoded under them;
- transitions "auto": the policy's edit of this song (fades, dissolves, flashes where the music says);
- a dissolve at every cut: the most an edit can ask of the renderer;
against a plain ffmpeg concat copy of the same clips under the same song (the floor of joining by copy).
The goal: transitions cost under 2x hard cuts.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from services.analysis.stage import AnalysisStage
from services.assembly.edit import CutDecision, Edit, decide_edit
from services.assembly.stage import AssemblyStage
from services.common import encoding
from services.common.artifacts import Segmentation, dumps
from services.common.stage_api import AnalyzeRequest, AssembleRequest, SegmenterParams, SegmentRequest
from services.common.store import LocalArtifactStore
from services.segmentation.stage import SegmentationStage
from bench.songs import Row, run_alone
from bench.timing import best_of

FPS, WIDTH, HEIGHT = 24, 640, 360
PARAMS = SegmenterParams(beats_per_cut=12, max_seconds=7.0)  # about 30 segments in 3 minutes at 120 BPM


def assembly_rows(song_path: Path, minutes: float) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="mvgen-assembly-bench-") as scratch:
        root = Path(scratch)
        store = LocalArtifactStore(root)
        store.put_file("song.wav", song_path)
        SegmentationStage(store).run(SegmentRequest(song_key="song.wav", params=PARAMS, segments_key="segments.json",
                                                    segments_text_key="segments.txt"))
        AnalysisStage(store).run(AnalyzeRequest(song_key="song.wav", segments_key="segments.json",
                                                analyzer="descriptors", labels_key="labels.json"))
        segmentation = Segmentation.from_dict(json.loads(store.get_text("segments.json")))
        counts = list(segmentation.frame_counts(FPS).values())
        clip_keys = make_clips(root, counts)
        store.put_bytes("dissolves.json", dumps(every_cut_dissolved(segmentation)))

        stage = AssemblyStage(store)
        stage.load()

        def assemble(transitions: str, edit_key: str, video_key: str) -> dict:
            return stage.run(AssembleRequest(
                song_key="song.wav", clip_keys=clip_keys, frame_counts=counts, fps=FPS, width=WIDTH, height=HEIGHT,
                video_key=video_key, transitions=transitions, segments_key="segments.json", labels_key="labels.json",
                edit_key=edit_key, edit_text_key="")).info

        plain_s = best_of(3, lambda: plain_concat(root, clip_keys, root / "plain.mp4"))
        none_s = best_of(3, lambda: assemble("none", "", "none.mp4"))
        auto_s = best_of(3, lambda: assemble("auto", "edit.json", "auto.mp4"))
        auto = assemble("auto", "edit.json", "auto.mp4")
        dissolve_s = best_of(3, lambda: assemble("auto", "dissolves.json", "dissolves.mp4"))
        dissolves = assemble("auto", "dissolves.json", "dissolves.mp4")

    seconds = minutes * 60
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(auto["transitions"].items())
                      if kind != "cut")
    total = sum(counts)
    return [
        (f"assembly, hard cuts (transitions none): {len(counts)} clips, {seconds:.0f} s song, {WIDTH}x{HEIGHT}, s",
         none_s, "plain ffmpeg concat copy", plain_s),
        (f"assembly, transitions auto ({kinds}), s", auto_s, "hard cuts", none_s),
        (f"assembly, a dissolve at every cut ({len(counts) - 1} dissolves and the fades), s", dissolve_s,
         "hard cuts", none_s),
        ("transitions auto: frames encoded again", float(auto.get("transition_frames_encoded", 0)), "video frames",
         float(total)),
        ("a dissolve at every cut: frames encoded again", float(dissolves.get("transition_frames_encoded", 0)),
         "video frames", float(total)),
    ]


def make_clips(root: Path, counts: list[int]) -> list[str]:
    """A clip per segment, `counts[i]` frames of a moving test pattern each, in one ffmpeg run."""
    (root / "clips").mkdir()
    keys = [f"clips/{i:04d}.mp4" for i in range(len(counts))]
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    for i, n in enumerate(counts):
        args += ["-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={(n + 1) / FPS},"
                                      f"hue=h={i * 37 % 360}"]
    for i, (key, n) in enumerate(zip(keys, counts)):
        args += ["-map", f"{i}:v", "-frames:v", str(n), "-vf", encoding.RGB_TO_YUV_FILTER,
                 *encoding.h264_encoder_args(FPS), *encoding.mp4_muxer_args(FPS), str(root / key)]
    subprocess.run(args, check=True)
    return keys


def every_cut_dissolved(segmentation: Segmentation) -> Edit:
    """The policy's edit with a half-second dissolve at every cut between segments (kept to half of each)."""
    edit = decide_edit(segmentation, None, FPS)
    counts = list(segmentation.frame_counts(FPS).values())
    cuts = []
    for cut in edit.cuts:
        if 0 <= cut.index < len(counts) - 1:
            frames = min(FPS // 2, 2 * (counts[cut.index] // 2), 2 * (counts[cut.index + 1] // 2))
            cut = CutDecision(cut.index, cut.time, cut.frame, "dissolve", frames, "centre", "every cut dissolved")
        cuts.append(cut)
    return Edit(fps=FPS, decided_by="bench", cuts=cuts, segments_sha256=edit.segments_sha256)


def plain_concat(root: Path, clip_keys: list[str], out: Path) -> None:
    """ffmpeg's concat demuxer, stream copy, the song encoded under it: nothing checked, nothing conformed."""
    listing = root / "plain.txt"
    listing.write_text("".join(f"file '{root / key}'\n" for key in clip_keys))
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-i", str(root / "song.wav"), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                    "-c:a", encoding.AUDIO_CODEC, "-b:a", encoding.AUDIO_BITRATE,
                    *encoding.mp4_muxer_args(FPS), str(out)], check=True)


if __name__ == "__main__":
    run_alone(assembly_rows, __doc__)
