"""`mvgen`: the command line. `mvgen generate SONG` runs the whole pipeline in this process.

Errors a person can fix (bad file, bad option) end in one line on stderr and exit code 2;
a bug ends in one line and exit code 1, with the traceback written to the run folder's log.
A crash that no Python code survives (SIGSEGV in a compiled kernel, SIGKILL from the
out-of-memory killer) ends in one line too, and exit code 128 + the signal's number: the command
runs in a child process, and the `mvgen` a person started watches it (`_supervise`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from services.common import envs
from services.common.errors import InvalidInputError, JobCancelledError, MvgenError
from services.common.stage_api import TRANSITION_MODES, SegmenterParams
from gateway.cli.evaluate import add_evaluate_command, evaluate
from gateway.cli.generate import generate
from gateway.cli.output import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, fail
from gateway.cli.remote import COMMANDS as CLIENT_COMMANDS
from gateway.cli.remote import add_client_commands, run_client_command
from gateway.cli.supervisor import CRASH_REPORT_ENV, WORKER_ENV, report_fatal_signals, supervise
from gateway.pipeline.options import PIPELINES, JobOptions

DEFAULTS = SegmenterParams()


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
    video.add_argument("--transitions", choices=TRANSITION_MODES, default="none",
                       help="auto: a transition at each cut chosen by what the music does there (edit.json in the run "
                            "folder: change a cut's transition there and rerun, only assembly runs again); none: "
                            "hard cuts")
    video.add_argument("--max-duration", type=float, default=15 * 60, metavar="S",
                       help="longest song accepted, seconds")
    video.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    add_evaluate_command(commands, _HelpFormatter)
    add_client_commands(commands, _HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    if envs.get(WORKER_ENV) != "1":
        return supervise(sys.argv[1:] if argv is None else list(argv))
    report_fatal_signals(envs.get(CRASH_REPORT_ENV))
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        return run_client_command(args)
    try:
        return evaluate(args) if args.command == "evaluate" else generate(args)
    except InvalidInputError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    except JobCancelledError:
        return fail("cancelled; finished artifacts are kept and a rerun resumes", EXIT_INTERRUPTED)
    except MvgenError as exc:
        return fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
