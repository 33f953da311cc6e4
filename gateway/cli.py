"""`mvgen`: the command line. `mvgen generate SONG` runs the whole pipeline in this process.

Errors a person can fix (bad file, bad option) end in one line on stderr and exit code 2;
a bug ends in one line and exit code 1, with the traceback written to the run folder's log.
A crash that no Python code survives (SIGSEGV in a compiled kernel, SIGKILL from the
out-of-memory killer) ends in one line too, and exit code 128 + the signal's number: the command
runs in a child process, and the `mvgen` a person started watches it (`_supervise`).
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TextIO

from services.common import audio
from services.common.errors import InvalidInputError, JobCancelledError, MvgenError
from services.common.stage_api import LISTENING_STORYTELLERS, ScriptInputs, SegmenterParams
from services.common.store import LocalArtifactStore
from gateway.client import COMMANDS as CLIENT_COMMANDS, add_client_commands, run_client_command
from gateway.job import PIPELINES, JobLayout, JobOptions, read_lyrics_file
from gateway.orchestrator import JobSpec, Orchestrator
from gateway.progress import ProgressDisplay

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
DEFAULTS = SegmenterParams()
# Set in the child that runs the command; CRASH_REPORT_ENV names the file its fatal-signal stack goes to.
WORKER_ENV = "MVGEN_CLI_WORKER"
CRASH_REPORT_ENV = "MVGEN_CLI_CRASH_REPORT"
RUN_FOLDER_LINE = "run folder: "  # the crash report's first line, once the run folder is known
_crash_report: TextIO | None = None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _default_analyzer() -> str:
    """The best analyser this machine has: musicnn where its package and weights are installed, else descriptors."""
    from services.analysis.musicnn.weights import musicnn_available  # looks for files; imports no torch

    return "musicnn" if musicnn_available() else "descriptors"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvgen", description="Turn a song into a music video: segment, analyse, script, generate, assemble.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser(
        "generate", help="make a music video from a song, in this process",
        description="Make a music video from SONG (mp3, wav, flac, ogg, m4a, ...). Every intermediate "
                    "(segments, labels, prompt, script, clips) is kept in the run folder.",
        formatter_class=_HelpFormatter)
    gen.add_argument("song", metavar="SONG", help="the audio file")
    gen.add_argument("-o", "--output", metavar="OUT.mp4", help="also copy the final video here")
    gen.add_argument("--run-dir", metavar="DIR",
                     help="folder for the artifacts (default: runs/<song-stem>-<short-hash>)")

    seg = gen.add_argument_group("segmentation")
    seg.add_argument("--segmenter", choices=("rules", "random"), default=DEFAULTS.segmenter,
                     help="rules: cut on spectral change, every N beats or at the maximum; random: 4-8 s segments")
    seg.add_argument("--seed", type=int, default=0, help="seed for the random segmenter, the script and the clips")
    seg.add_argument("--min-segment", type=float, default=DEFAULTS.min_seconds, metavar="S",
                     help="rules: shortest segment, seconds")
    seg.add_argument("--max-segment", type=float, default=DEFAULTS.max_seconds, metavar="S",
                     help="rules: a cut is forced when a segment reaches this length, seconds")
    seg.add_argument("--beats-per-cut", type=int, default=DEFAULTS.beats_per_cut, metavar="N",
                     help="rules: cut after N beats without another cut")
    seg.add_argument("--novelty-threshold", type=float, default=DEFAULTS.novelty_threshold, metavar="K",
                     help="rules: a spectral change must stand K median deviations above its surroundings")
    seg.add_argument("--random-min", type=float, default=DEFAULTS.random_min_seconds, metavar="S",
                     help="random: shortest segment, seconds")
    seg.add_argument("--random-max", type=float, default=DEFAULTS.random_max_seconds, metavar="S",
                     help="random: longest segment, seconds")

    stages = gen.add_argument_group("stages")
    stages.add_argument("--analysis", default=_default_analyzer(), metavar="NAME",
                        help="analyser: musicnn (two trained taggers on CPU: genre, mood, instruments and voices, "
                             "beside the descriptors' measures; the default where the musicnn package is installed, "
                             "as `make setup` does), descriptors (librosa measures, CPU; the default otherwise) or "
                             "clap (msclap zero-shot labels)")
    stages.add_argument("--clap-weights", metavar="PATH",
                        help="CLAP checkpoint (.pth, or a folder with it and its config.yml) for --analysis clap "
                             "(default: $MVGEN_CLAP_WEIGHTS)")
    stages.add_argument("--pipeline", choices=PIPELINES, default="clap",
                        help="clap: analysis labels, then an LLM writes the script; lalm: an audio-language model "
                             "hears the song and tells the story, which is broken into scenes")
    stages.add_argument("--writer", metavar="NAME",
                        help="script writer: llamacpp (a local GGUF model on CPU; `make llm-model`), openai (an "
                             "OpenAI-compatible server such as `vllm serve`, see --llm-url), vllm (in-process, GPU) "
                             "or template (deterministic, no model). LALM pipeline: who breaks the story into "
                             "scenes (default: the storyteller itself) (default: $MVGEN_WRITER or llamacpp)")
    stages.add_argument("--fallback-writer", default="", metavar="NAME",
                        help="writes the script if the writer gives no valid one after its repairs, e.g. template "
                             "(the run's summary says so); default: none, the run fails")
    stages.add_argument("--storyteller", default=JobOptions.storyteller, metavar="NAME",
                        help="LALM pipeline: who tells the story: openai-audio (an audio-language model on an "
                             "OpenAI-compatible server that takes audio, see --lalm-url) or cascade (the local LLM "
                             "tells it from what the analysis heard: the tags and the lyrics; runs on any machine)")
    stages.add_argument("--transcriber", metavar="NAME",
                        help="lyrics: whisper (transcribed with word times by Whisper base on CPU; `make "
                             "whisper-model`) or none (default: whisper when its model is installed and the job "
                             "has an analysis stage)")
    stages.add_argument("--lyrics", metavar="FILE",
                        help="the song's lyrics as plain text or LRC ([mm:ss.xx] line times), used instead of "
                             "transcribing them and aligned to the segments")
    stages.add_argument("--llm-url", metavar="URL",
                        help="OpenAI-compatible base URL for --writer openai, e.g. http://localhost:8000/v1 "
                             "(default: $MVGEN_LLM_URL)")
    stages.add_argument("--llm-model", metavar="ID", help="model id the server serves (default: $MVGEN_LLM_MODEL)")
    stages.add_argument("--llm-gguf", metavar="PATH",
                        help="GGUF model for --writer llamacpp (default: $MVGEN_LLAMACPP_MODEL or the one "
                             "`make llm-model` fetches)")
    stages.add_argument("--lalm-url", metavar="URL",
                        help="OpenAI-compatible base URL of the audio-language model (default: $MVGEN_LALM_URL)")
    stages.add_argument("--lalm-model", metavar="ID", help="audio model id (default: $MVGEN_LALM_MODEL)")
    stages.add_argument("--generator", default="animatic", metavar="NAME",
                        help="clip generator: animatic (storyboard preview on CPU), wan or mochi (diffusers; "
                             "model from $MVGEN_WAN_MODEL / $MVGEN_MOCHI_MODEL, a GPU advised)")
    stages.add_argument("--top-k", type=int, default=3, metavar="K", help="labels kept per group")
    stages.add_argument("--clip-workers", type=int, default=None, metavar="N",
                        help="clips generated at once (default: as many as cores, up to 2)")

    story = gen.add_argument_group("script inputs (passed to the writer as data)")
    story.add_argument("--story", default="", help="story or structure cues")
    story.add_argument("--characters", default="", help="characters: type and number")
    story.add_argument("--style", default="", help="stylistic wishes: palette, atmosphere")

    video = gen.add_argument_group("video")
    video.add_argument("--fps", type=int, default=24, help="frames per second of the final video")
    video.add_argument("--size", default="640x360", metavar="WxH", help="frame size of the final video")
    video.add_argument("--max-duration", type=float, default=15 * 60, metavar="S",
                       help="longest song accepted, seconds")
    video.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    add_client_commands(commands, _HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    if os.environ.get(WORKER_ENV) != "1":
        return _supervise(sys.argv[1:] if argv is None else list(argv))
    _report_fatal_signals(os.environ.get(CRASH_REPORT_ENV))
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    try:
        return generate(args)
    except InvalidInputError as exc:
        return _fail(str(exc), EXIT_BAD_INPUT)
    except JobCancelledError:
        return _fail("cancelled; finished artifacts are kept and a rerun resumes", EXIT_INTERRUPTED)
    except MvgenError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _supervise(argv: list[str]) -> int:
    """Run the command in a child process and outlive it: a process cannot report its own death by
    SIGSEGV or SIGKILL, its parent can. The child's Python stack at a fatal signal (faulthandler's)
    goes to the run folder's mvgen.log."""
    fd, name = tempfile.mkstemp(prefix="mvgen-crash-", suffix=".txt")
    os.close(fd)
    report = Path(name)
    child = subprocess.Popen([sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())",
                              *argv], env={**os.environ, WORKER_ENV: "1", CRASH_REPORT_ENV: str(report)})
    # Ctrl-C and Ctrl-\ reach the child from the terminal (one process group): this process only waits.
    # SIGTERM is sent to one process (timeout, a job runner): passed on, the child cancels as for Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    if code >= 0:
        report.unlink(missing_ok=True)
        return code
    return _died(signal.Signals(-code), report)


def _died(sig: signal.Signals, report: Path) -> int:
    """One line for a child that `sig` ended, and exit code 128 + its number, as a shell gives."""
    text = report.read_text(errors="replace") if report.exists() else ""
    run_dir = None
    if text.startswith(RUN_FOLDER_LINE):
        first, _, text = text.partition("\n")
        run_dir = Path(first.removeprefix(RUN_FOLDER_LINE))
    kept = f"; finished artifacts are kept in {run_dir} and a rerun resumes" if run_dir else ""
    stack_file = None
    if sig is signal.SIGINT:
        message = f"interrupted{kept}"
    elif sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        message = f"stopped by {sig.name}{kept}"
    elif sig is signal.SIGKILL:
        message = f"killed by SIGKILL (the out-of-memory killer, or kill -9){kept}"
    else:
        message = f"crashed with {sig.name}{_innermost_frame(text)}"
        if text.strip():
            stack_file = report if run_dir is None else run_dir / "mvgen.log"
            if run_dir is not None:
                with stack_file.open("a") as log:
                    log.write(f"mvgen: the process died of {sig.name}; its Python stack (faulthandler):\n{text}")
            message += f"; the Python stack is in {stack_file}"
    if stack_file != report:
        report.unlink(missing_ok=True)
    return _fail(message, 128 + sig.value)


def _innermost_frame(stack: str) -> str:
    """ ' in librosa/util/utils.py line 1352 (peak_pick)' from faulthandler's text, or ''."""
    frame = re.search(r'Current thread [^\n]*\n\s+File "([^"]+)", line (\d+) in (\S+)', stack)
    if not frame:
        return ""
    path = frame[1].rpartition("site-packages/")[2]
    return f" in {path} line {frame[2]} ({frame[3]})"


def _report_fatal_signals(report: str | None) -> None:
    """In the child: SIGTERM cancels the run as Ctrl-C does; on SIGSEGV, SIGBUS, SIGFPE, SIGILL or
    SIGABRT, faulthandler writes every thread's Python stack to the report the parent reads."""
    global _crash_report
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    if report:
        _crash_report = open(report, "a")  # faulthandler writes to its descriptor: it stays open
        faulthandler.enable(_crash_report)


def _note_run_folder(run_dir: Path) -> None:
    """The run folder, as the crash report's first line: the parent puts a stack in its log."""
    if _crash_report is not None:
        _crash_report.write(f"{RUN_FOLDER_LINE}{run_dir.resolve()}\n")
        _crash_report.flush()


BACKEND_FLAGS = {"clap_weights": "MVGEN_CLAP_WEIGHTS", "llm_url": "MVGEN_LLM_URL", "llm_model": "MVGEN_LLM_MODEL",
                 "llm_gguf": "MVGEN_LLAMACPP_MODEL", "lalm_url": "MVGEN_LALM_URL", "lalm_model": "MVGEN_LALM_MODEL"}


def _writer(args: argparse.Namespace) -> str:
    if args.writer:
        return args.writer
    return "" if args.pipeline == "lalm" else os.environ.get("MVGEN_WRITER", "llamacpp")


def _transcriber(args: argparse.Namespace) -> str:
    """The lyrics transcriber asked for, or by default whisper where it is installed and analysis runs."""
    if args.transcriber:
        return "" if args.transcriber == "none" else args.transcriber
    has_analysis = args.pipeline == "clap" or args.storyteller in LISTENING_STORYTELLERS
    if not has_analysis or args.lyrics:
        return ""
    from services.analysis.lyrics import whisper_available  # only asks whether its package and files are there

    return "whisper" if whisper_available() else ""


def generate(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="mvgen-song-") as scratch:
        return _generate(args, Path(scratch))


def _generate(args: argparse.Namespace, scratch: Path) -> int:
    song_path = Path(args.song)
    width, height = _parse_size(args.size)
    options = JobOptions(
        segmenter=SegmenterParams(
            segmenter=args.segmenter, seed=args.seed, random_min_seconds=args.random_min,
            random_max_seconds=args.random_max, min_seconds=args.min_segment, max_seconds=args.max_segment,
            beats_per_cut=args.beats_per_cut, novelty_threshold=args.novelty_threshold),
        pipeline=args.pipeline, analyzer=args.analysis, writer=_writer(args), storyteller=args.storyteller,
        transcriber=_transcriber(args), lyrics=read_lyrics_file(args.lyrics) if args.lyrics else "",
        fallback_writer=args.fallback_writer, generator=args.generator,
        script_inputs=ScriptInputs(story=args.story, characters=args.characters, style=args.style),
        seed=args.seed, top_k=args.top_k, fps=args.fps, width=width, height=height)
    # Read by the backends when they load, as the stage services read their environment.
    for flag, variable in BACKEND_FLAGS.items():
        if getattr(args, flag):
            os.environ[variable] = getattr(args, flag)
    _check_options(options, args)

    readable, info = audio.ingest(song_path, scratch, max_seconds=args.max_duration)  # before anything is written
    sha256 = _sha256(song_path)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{_slug(song_path.stem)}-{sha256[:8]}"
    store = LocalArtifactStore(run_dir)
    _note_run_folder(run_dir)
    layout = JobLayout()
    song_key = layout.song(readable.suffix or ".audio")
    song = {"sha256": sha256, "source_name": song_path.name, "duration": round(info.duration, 4),
            "sample_rate": info.sample_rate, "channels": info.channels, "codec": info.codec, "key": song_key}

    from gateway.inprocess import InProcessStages  # stage logic is loaded only in embedded mode

    scripting = [b for b in (options.writer, options.fallback_writer) if b]
    if options.pipeline == "lalm":
        scripting.append(options.storyteller)
    stages = InProcessStages(store, analyzer=options.analyzer, transcriber=options.transcriber, scripting=scripting,
                             generator=options.generator, clip_workers=args.clip_workers)
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
    print(f"mvgen: {args.output or final}  {_clock(info.duration)}, {segments} segments, script by {written_by}"
          f"{fallback}, {frames} frames at {options.fps} fps, made in {time.monotonic() - started:.1f} s  "
          f"(run folder: {run_dir})")
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


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _fail(message: str, code: int) -> int:
    print(f"mvgen: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
