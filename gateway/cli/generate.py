"""`mvgen generate SONG`: the whole pipeline in this process, the stage logic loaded in-process.

A run folder (runs/<song>-<digest>/ by default) holds every artifact and the manifest: a rerun
resumes where a run stopped, and what is finished is never redone.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import shutil
import tempfile
import time
import traceback
from collections import ChainMap
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from services.common import audio, envs
from services.common.errors import InvalidInputError, JobCancelledError, MvgenError
from services.common.stage_api import LISTENING_STORYTELLERS, ScriptInputs, SegmenterParams
from services.common.store import LocalArtifactStore
from services.common.timing import clock
from gateway.cli.progress import ProgressDisplay
from gateway.cli.supervisor import note_run_folder
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.options import JobOptions, read_lyrics_file
from gateway.pipeline.orchestrator import JobSpec, Orchestrator
from gateway.pipeline.states import Stage, StageState

# The flags that stand for a backend setting (services/common/envs.py), as a stage service's environment gives it.
BACKEND_FLAGS = {"clap_weights": "MVGEN_CLAP_WEIGHTS", "llm_url": "MVGEN_LLM_URL", "llm_model": "MVGEN_LLM_MODEL",
                 "llm_gguf": "MVGEN_LLAMACPP_MODEL", "lalm_url": "MVGEN_LALM_URL", "lalm_model": "MVGEN_LALM_MODEL"}


def backend_settings(args: argparse.Namespace, environ: MutableMapping[str, str] = os.environ) -> Mapping[str, str]:
    """The settings the in-process stages read: the flags given, over this process's environment. Passed
    down to the backends and to the configuration digest; the environment itself is never written."""
    flags = {variable: getattr(args, flag) for flag, variable in BACKEND_FLAGS.items() if getattr(args, flag)}
    return ChainMap(flags, environ)


def _writer(args: argparse.Namespace) -> str:
    if args.writer:
        return args.writer
    return "" if args.pipeline == "lalm" else envs.get("MVGEN_WRITER")


def _transcriber(args: argparse.Namespace, settings: Mapping[str, str]) -> str:
    """The lyrics transcriber asked for, or by default whisper where it is installed and analysis runs."""
    if args.transcriber:
        return "" if args.transcriber == "none" else args.transcriber
    has_analysis = args.pipeline == "clap" or args.storyteller in LISTENING_STORYTELLERS
    if not has_analysis or args.lyrics:
        return ""
    from services.analysis.lyrics import whisper_available  # only asks whether its package and files are there

    return "whisper" if whisper_available(settings) else ""


def generate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mvgen-song-") as scratch:
        return _generate(args, Path(scratch))


def _generate(args: argparse.Namespace, scratch: Path) -> int:
    song_path = Path(args.song)
    width, height = _parse_size(args.size)
    settings = backend_settings(args)
    options = JobOptions(
        segmenter=SegmenterParams(
            segmenter=args.segmenter, seed=args.seed, random_min_seconds=args.random_min,
            random_max_seconds=args.random_max, min_seconds=args.min_segment, max_seconds=args.max_segment,
            beats_per_cut=args.beats_per_cut, novelty_threshold=args.novelty_threshold),
        pipeline=args.pipeline, analyzer=args.analysis, writer=_writer(args), storyteller=args.storyteller,
        transcriber=_transcriber(args, settings), lyrics=read_lyrics_file(args.lyrics) if args.lyrics else "",
        fallback_writer=args.fallback_writer, generator=args.generator,
        script_inputs=ScriptInputs(story=args.story, characters=args.characters, style=args.style),
        seed=args.seed, top_k=args.top_k, fps=args.fps, width=width, height=height, transitions=args.transitions)
    _check_options(options, args)

    readable, info = audio.ingest(song_path, scratch, max_seconds=args.max_duration)  # before anything is written
    sha256 = _sha256(song_path)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{_slug(song_path.stem)}-{sha256[:8]}"
    store = LocalArtifactStore(run_dir)
    note_run_folder(run_dir)
    layout = JobLayout()
    song_key = layout.song(readable.suffix or ".audio")
    song = {"sha256": sha256, "source_name": song_path.name, "duration": round(info.duration, 4),
            "sample_rate": info.sample_rate, "channels": info.channels, "codec": info.codec, "key": song_key}

    from gateway.pipeline.inprocess import InProcessStages  # stage logic is loaded only in embedded mode

    scripting = [b for b in (options.writer, options.fallback_writer) if b]
    if options.pipeline == "lalm":
        scripting.append(options.storyteller)
    stages = InProcessStages(store, analyzer=options.analyzer, transcriber=options.transcriber, scripting=scripting,
                             generator=options.generator, clip_workers=args.clip_workers, environ=settings)
    display = ProgressDisplay(enabled=not args.quiet)
    orchestrator = Orchestrator(store, stages, on_event=display.on_event)
    job = JobSpec(job_id=run_dir.name, layout=layout, song_key=song_key, song=song, options=options)

    async def load_and_run():
        await stages.wait_ready()  # an unknown backend is refused here, before the run folder is made
        if not store.exists(song_key):
            store.put_file(song_key, readable)
        return await _run_cancellable(orchestrator, job)

    started = time.monotonic()
    try:
        manifest = asyncio.run(load_and_run())
    except (MvgenError, KeyboardInterrupt):
        display.close()
        raise
    except Exception as exc:
        display.close()
        log = run_dir / "mvgen.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        raise MvgenError(f"internal error: {exc!r} (traceback in {log})") from exc
    display.close()

    final = store.path(layout.final)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(final, args.output)
    segments = manifest.data["stages"]["segmentation"].get("info", {}).get("segments", "?")
    frames = sum(c.get("frames", 0) for c in manifest.data["clips"].values())
    script = manifest.data["stages"]["scripting"].get("info", {})
    written_by = script.get("script_writer") or script.get("writer", "?")
    fallback = f" after {script['writer']} failed" if script.get("fallback") else ""
    print(f"mvgen: {args.output or final}  {clock(info.duration, 1)}, {segments} segments, script by {written_by}"
          f"{fallback}, {frames} frames at {options.fps} fps, made in {time.monotonic() - started:.1f} s  "
          f"(run folder: {run_dir})")
    review = manifest.data["stages"].get(Stage.REVIEW, {})
    if review.get("state") == StageState.SUCCEEDED:
        print(f"mvgen: storyboard {store.path(layout.storyboard)}  (figures: mvgen evaluate {run_dir})")
    elif review.get("state") == StageState.FAILED:
        print(f"mvgen: no storyboard: the review failed: {review.get('error', '?')}")
    return 0


async def _run_cancellable(orchestrator: Orchestrator, job: JobSpec):
    try:
        return await orchestrator.run(job)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task; stop the clips and record the job as cancelled.
        orchestrator.cancel()
        raise JobCancelledError("cancelled") from None


def _check_options(options: JobOptions, args: argparse.Namespace) -> None:
    options.check()
    if args.max_duration <= 0:
        raise InvalidInputError("--max-duration must be positive")
    if args.clip_workers is not None and args.clip_workers < 1:
        raise InvalidInputError("--clip-workers must be at least 1")


def _parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise InvalidInputError(f"--size must look like 640x360, not {text!r}")
    return int(match[1]), int(match[2])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:48] or "song"
