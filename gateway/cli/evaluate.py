"""`mvgen evaluate RUN_DIR`: judge a finished run folder again (the review stage, in this process), write
evaluation.json, evaluation.txt and storyboard.html there, and print the figures as a table.

`mvgen generate` reviews every video it makes; this command is for a run folder a person changed by hand
(an edited script.json rerun, clips replaced) or made before the review existed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.common.errors import InvalidInputError
from services.common.stage_api import ReviewRequest
from services.common.store import LocalArtifactStore
from gateway.pipeline.layout import JobLayout


def add_evaluate_command(commands: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="judge a finished run folder: figures as a table, evaluation.json, storyboard.html",
        description="Judge the video in RUN_DIR (made by `mvgen generate`): its cuts against the beats, its "
                    "script against the music, its clips and its soundtrack. Writes evaluation.json, "
                    "evaluation.txt and storyboard.html in RUN_DIR and prints the figures.",
        formatter_class=formatter)
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `mvgen generate`")
    evaluate.add_argument("--json", action="store_true", help="print evaluation.json instead of the table")


def evaluate(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    layout = JobLayout()
    manifest_path = run_dir / layout.manifest
    if not manifest_path.is_file():
        raise InvalidInputError(f"{run_dir} is not a run folder of `mvgen generate` (no {layout.manifest})")
    manifest = json.loads(manifest_path.read_text())
    store = LocalArtifactStore(run_dir)
    missing = [name for name in (layout.segments, layout.script, layout.final) if not store.exists(name)]
    if missing:
        raise InvalidInputError(f"{run_dir} holds no finished video to judge (missing: {', '.join(missing)})")
    options = manifest.get("options", {})
    fps = int(options.get("fps", 24))
    from services.common.artifacts import Segmentation, read_artifact
    from services.review.stage import ReviewStage  # model code: loaded only by this command

    segmentation = read_artifact(store, layout.segments, Segmentation)
    frames = segmentation.frame_counts(fps)
    song_key = (manifest.get("song") or {}).get("key") or next(
        (p.name for p in run_dir.glob("song.*")), "")
    request = ReviewRequest(
        song_key=song_key, segments_key=layout.segments, script_key=layout.script,
        clip_keys=[layout.clip(s.index) for s in segmentation.segments],
        frame_counts=[frames[s.index] for s in segmentation.segments], fps=fps, video_key=layout.final,
        generator=str(options.get("generator", "")), evaluation_key=layout.evaluation,
        evaluation_text_key=layout.evaluation_text, storyboard_key=layout.storyboard, labels_key=layout.labels,
        lyrics_key=layout.lyrics, plan_key=layout.plan, edit_key=layout.edit)
    ReviewStage(store).run(request)
    print(store.get_text(layout.evaluation) if args.json else store.get_text(layout.evaluation_text), end="")
    if not args.json:
        print(f"\nstoryboard: {store.path(layout.storyboard)}")
    return 0
