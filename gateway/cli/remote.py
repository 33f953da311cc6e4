"""`mvgen submit | revise | jobs | status | cancel`: the command line of a deployed gateway (MusicVideoService).

The token comes from MVGEN_TOKEN, the address from --server or MVGEN_SERVER; --tls (or a CA file,
--tls-ca or MVGEN_TLS_CA_FILE) connects over TLS, so the token never crosses the network in clear
text. Calls that are safe
to repeat are retried while the gateway is UNAVAILABLE (a restart, a rolling update): the upload
(content-addressed), CreateJob and ReviseJob (same request id) and WatchJob (every stream starts
with a snapshot).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mimetypes
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from services.common import envs
from services.common.errors import InvalidInputError
from services.common.pb import artifacts_pb2, job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.pb import music_video_service_pb2_grpc as api_grpc
from services.common.stage_api import TRANSITION_MODES
from services.common.timing import clock
from services.common.transport.convert import info_from_struct
from gateway.cli.output import fail
from gateway.cli.progress import ProgressDisplay
from gateway.pipeline.events import JobEvent
from gateway.pipeline.options import read_lyrics_file
from gateway.pipeline.states import ClipState, EventKind, EventState, JobState, Stage, StageState

T = TypeVar("T")
M = TypeVar("M", bound=Message)
COMMANDS = ("submit", "revise", "jobs", "status", "cancel")
CHUNK_BYTES = 1 << 20
RETRY_DELAYS = (0.5, 1, 2, 4, 8)  # seconds between tries of a call the gateway answered UNAVAILABLE
RECONNECT_SECONDS = 120  # how long a lost watch keeps reconnecting
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
BAD_INPUT_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED)


class UsageError(Exception):
    """Something the user can fix before any call (exit 2)."""


def add_client_commands(commands: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--server", default=envs.get("MVGEN_SERVER"),
                            metavar="HOST:PORT",
                            help="the gateway ($MVGEN_SERVER sets the default); the token is read from $MVGEN_TOKEN")
    connection.add_argument("--tls", action="store_true",
                            help="connect over TLS, trusting the system's certificate authorities")
    connection.add_argument("--tls-ca", default=envs.get("MVGEN_TLS_CA_FILE") or None, metavar="PEM",
                            help="connect over TLS, trusting this CA certificate file (e.g. a self-signed "
                                 "gateway's own certificate; $MVGEN_TLS_CA_FILE sets the default)")

    submit = commands.add_parser(
        "submit", parents=[connection], formatter_class=formatter, help="make a music video on a gateway",
        description="Upload SONG to the gateway, make its music video there, follow the progress and download "
                    "the video. Options left out take the gateway's defaults.")
    submit.add_argument("song", metavar="SONG", help="the audio file")
    submit.add_argument("-o", "--output", metavar="OUT.mp4", help="where to save the video (default: <song>-<job>.mp4)")
    submit.add_argument("--detach", action="store_true", help="print the job id and return without waiting")
    submit.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")
    seg = submit.add_argument_group("segmentation")
    seg.add_argument("--segmenter", choices=("rules", "random"),
                     help="rules: cut on spectral change, every N beats or at the maximum; random: 4-8 s segments")
    seg.add_argument("--seed", type=int, help="seed for the random segmenter, the script and the clips")
    seg.add_argument("--min-segment", type=float, metavar="S", help="rules: shortest segment, seconds")
    seg.add_argument("--max-segment", type=float, metavar="S", help="rules: longest segment, seconds")
    seg.add_argument("--beats-per-cut", type=int, metavar="N", help="rules: cut after N beats without another cut")
    seg.add_argument("--novelty-threshold", type=float, metavar="K", help="rules: spectral change threshold")
    seg.add_argument("--random-min", type=float, metavar="S", help="random: shortest segment, seconds")
    seg.add_argument("--random-max", type=float, metavar="S", help="random: longest segment, seconds")
    stages = submit.add_argument_group("stages")
    stages.add_argument("--pipeline", choices=("clap", "lalm"), help="how the script is written")
    stages.add_argument("--analysis", metavar="NAME", help="analyser backend, e.g. descriptors or clap")
    stages.add_argument("--writer", metavar="NAME",
                        help="script writer backend, e.g. openai, llamacpp or template (LALM pipeline: who breaks "
                             "the story into scenes; default: the storyteller)")
    stages.add_argument("--fallback-writer", metavar="NAME",
                        help="writes the script if the writer gives no valid one, e.g. template")
    stages.add_argument("--storyteller", metavar="NAME",
                        help="LALM pipeline: who tells the story, e.g. openai-audio (an audio-language model) or "
                             "cascade (an LLM, from the tags and lyrics the analysis heard)")
    stages.add_argument("--transcriber", metavar="NAME",
                        help="lyrics transcriber, e.g. whisper, or none (default: the server's)")
    stages.add_argument("--lyrics", metavar="FILE",
                        help="the song's lyrics (plain text or LRC), used instead of transcribing them")
    stages.add_argument("--generator", metavar="NAME", help="clip generator backend, e.g. animatic or wan")
    stages.add_argument("--top-k", type=int, metavar="K", help="labels kept per group")
    story = submit.add_argument_group("script inputs (passed to the writer as data)")
    story.add_argument("--story", help="story or structure cues")
    story.add_argument("--characters", help="characters: type and number")
    story.add_argument("--style", help="stylistic wishes: palette, atmosphere")
    video = submit.add_argument_group("video")
    video.add_argument("--fps", type=int, help="frames per second of the final video")
    video.add_argument("--size", metavar="WxH", help="frame size of the final video, e.g. 640x360")
    video.add_argument("--transitions", choices=TRANSITION_MODES,
                       help="auto: a transition at each cut chosen by what the music does there; none: hard cuts")

    revise = commands.add_parser(
        "revise", parents=[connection], formatter_class=formatter, help="revise a finished job on a gateway",
        description="Make a new video from a finished job with new text for some scenes (and perhaps a new style "
                    "bible or new characters): the gateway reuses everything else, generates exactly the clips of "
                    "the changed scenes (every clip for a new style or cast) and assembles the video again. Follow "
                    "the progress and download the video, as submit does. (`mvgen generate` revises its run "
                    "folder instead: edit script.json there and run it again.)")
    revise.add_argument("job_id", metavar="JOB_ID", help="the finished job to revise")
    revise.add_argument("--scene", nargs=2, action="append", metavar=("N", "TEXT"),
                        help="new text for scene N: one sentence (repeat for more scenes)")
    revise.add_argument("--cut", nargs=2, action="append", metavar=("N", "TRANSITION[:FRAMES]"),
                        help="a new transition at cut N of the edit (edit.json: -1 the start, i the cut after segment "
                             "i): cut, dissolve, flash, whip, fade_in, fade_out, with its length in frames after a "
                             "colon (repeat for more cuts); only cuts changed: no clip is made again")
    revise.add_argument("--style-file", metavar="JSON",
                        help="a new style bible: a JSON object as script.json's \"style\" (palette, look, lighting, "
                             "camera, atmosphere), or a script.json, whose style is taken")
    revise.add_argument("--characters-file", metavar="JSON",
                        help="new characters, replacing all: a JSON list as script.json's \"characters\" (name, "
                             "description; [] for none), or a script.json, whose characters are taken")
    revise.add_argument("-o", "--output", metavar="OUT.mp4",
                        help="where to save the video (default: <song>-<job>.mp4)")
    revise.add_argument("--detach", action="store_true", help="print the new job's id and return without waiting")
    revise.add_argument("-q", "--quiet", action="store_true", help="print only the summary line")

    jobs = commands.add_parser("jobs", parents=[connection], formatter_class=formatter,
                               help="list your jobs on a gateway, newest first")
    jobs.add_argument("--state", choices=[s.value for s in JobState if s is not JobState.INTERRUPTED])  # (queued)
    jobs.add_argument("--limit", type=int, default=20, help="most jobs to list")
    status = commands.add_parser("status", parents=[connection], formatter_class=formatter,
                                 help="show a job on a gateway")
    status.add_argument("job_id", metavar="JOB_ID")
    cancel = commands.add_parser("cancel", parents=[connection], formatter_class=formatter,
                                 help="cancel a job on a gateway (finished clips are kept)")
    cancel.add_argument("job_id", metavar="JOB_ID")


def run_client_command(args: argparse.Namespace) -> int:
    try:
        token = envs.get("MVGEN_TOKEN")
        if not token:
            raise UsageError("set MVGEN_TOKEN to your gateway token")
        with open_channel(args.server, tls=args.tls, ca_file=args.tls_ca) as channel:
            gateway = Gateway(api_grpc.MusicVideoServiceStub(channel), token)
            command = {"submit": submit, "revise": revise_job, "jobs": list_jobs, "status": show_status,
                       "cancel": cancel_job}[args.command]
            return command(gateway, args)
    except (UsageError, InvalidInputError) as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            return fail(f"cannot reach the gateway at {args.server}: {exc.details()}", EXIT_FAILED)
        return fail(exc.details() or exc.code().name, EXIT_BAD_INPUT if exc.code() in BAD_INPUT_CODES else EXIT_FAILED)
    except OSError as exc:
        return fail(str(exc), EXIT_FAILED)


def open_channel(server: str, *, tls: bool = False, ca_file: str | None = None) -> grpc.Channel:
    """A channel to the gateway: TLS when asked for or when a CA file is given, plain text otherwise."""
    if not (tls or ca_file):
        return grpc.insecure_channel(server)
    try:
        roots = Path(ca_file).read_bytes() if ca_file else None
    except OSError as exc:
        raise UsageError(f"--tls-ca: cannot read {ca_file}: {exc.strerror}") from None
    return grpc.secure_channel(server, grpc.ssl_channel_credentials(root_certificates=roots))


class Gateway:
    """The stub with the caller's token on every call."""

    def __init__(self, stub: api_grpc.MusicVideoServiceStub, token: str):
        self.stub = stub
        self.metadata = (("authorization", f"Bearer {token}"),)


# --- submit --------------------------------------------------------------------------------------------

def submit(gateway: Gateway, args: argparse.Namespace) -> int:
    song = Path(args.song)
    if not song.is_file():
        raise UsageError(f"{song}: no such file")
    options = requested_options(args)
    started = time.monotonic()
    uploaded = _retry_unavailable(lambda: gateway.stub.UploadSong(_upload_messages(song), metadata=gateway.metadata))
    request = api_pb2.CreateJobRequest(request_id=str(uuid.uuid4()), song_id=uploaded.song.song_id, options=options)
    job = _retry_unavailable(lambda: gateway.stub.CreateJob(request, metadata=gateway.metadata)).job
    return follow_to_the_video(gateway, args, job, started, song.stem,
                               f"job {job.job_id} for {song.name} ({clock(uploaded.song.duration_seconds, 1)})")


def follow_to_the_video(gateway: Gateway, args: argparse.Namespace, job: job_pb2.Job, started: float, stem: str,
                        heading: str) -> int:
    """A job just created: its id (--detach), or its progress until it ends, then its video downloaded."""
    if args.detach:
        print(job.job_id)
        return 0
    if not args.quiet:
        print(f"mvgen: {heading} on {args.server}", file=sys.stderr)
    display = ProgressDisplay(enabled=not args.quiet)
    try:
        job = watch(gateway, job.job_id, ProgressTranslator(display).apply)
    except KeyboardInterrupt:
        display.close()
        return fail(f"stopped watching; the job goes on: mvgen status {job.job_id}, mvgen cancel {job.job_id}",
                     EXIT_INTERRUPTED)
    display.close()
    ended = JobState.from_proto(job.state)
    if ended == JobState.FAILED:
        return fail(f"job {job.job_id} failed: {job.error_message}", EXIT_FAILED)
    if ended == JobState.CANCELLED:
        return fail(f"job {job.job_id} was cancelled; finished clips are kept on the gateway", EXIT_FAILED)
    result = gateway.stub.GetJob(api_pb2.GetJobRequest(job_id=job.job_id), metadata=gateway.metadata)
    frames = sum(c.frame_count for c in job.clips)
    summary = (f"{clock(job.song.duration_seconds, 1)}, {len(job.clips)} segments, {frames} frames at "
               f"{job.options.fps} fps, made in {time.monotonic() - started:.1f} s  (job {job.job_id})")
    if not result.video_url:
        print(f"mvgen: the video is at {job.artifact_keys['video']} in the gateway's store, which gives no download "
              f"URL (a local folder)  {summary}")
        return 0
    output = Path(args.output or f"{stem}-{job.job_id[:8]}.mp4")
    download(result.video_url, output)
    print(f"mvgen: {output}  {summary}")
    if result.storyboard_url:
        print(f"mvgen: storyboard (one page: cuts, scenes, frames, figures): {result.storyboard_url}")
    return 0


# --- revise --------------------------------------------------------------------------------------------

def revise_job(gateway: Gateway, args: argparse.Namespace) -> int:
    request = api_pb2.ReviseJobRequest(request_id=str(uuid.uuid4()), job_id=args.job_id,
                                       scenes=[job_pb2.SceneRevision(index=_scene_index(n), text=text)
                                               for n, text in args.scene or ()],
                                       cuts=[_cut_revision(n, text) for n, text in args.cut or ()])
    if args.style_file:
        request.style.CopyFrom(_read_json_message(args.style_file, "style", artifacts_pb2.StyleBible()))
    if args.characters_file:
        listed = _read_json(args.characters_file, "characters")
        if not isinstance(listed, list):
            raise UsageError(f"{args.characters_file}: a JSON list of characters (name, description) was expected")
        request.characters.CopyFrom(_parsed(args.characters_file, {"characters": listed}, job_pb2.CharacterList()))
    if not (request.scenes or request.cuts or args.style_file or args.characters_file):
        raise UsageError("nothing to revise: give --scene N TEXT or --cut N TRANSITION (repeatable), --style-file "
                         "or --characters-file")
    started = time.monotonic()
    job = _retry_unavailable(lambda: gateway.stub.ReviseJob(request, metadata=gateway.metadata)).job
    changed = [f"scene {', '.join(str(s.index) for s in job.revision.changes.scenes)}"] if request.scenes else []
    changed += [name for name in ("style", "characters") if job.revision.changes.HasField(name)]
    changed += [f"cut {', '.join(str(c.index) for c in job.revision.changes.cuts)}"] if request.cuts else []
    return follow_to_the_video(gateway, args, job, started, Path(job.song.file_name).stem or "video",
                               f"job {job.job_id} revises job {args.job_id} ({', '.join(changed)})")


def _cut_revision(number: str, transition: str) -> job_pb2.CutRevision:
    name, _, frames = transition.partition(":")
    try:
        return job_pb2.CutRevision(index=int(number), transition=name, frames=int(frames) if frames else 0)
    except ValueError:
        raise UsageError(f"--cut takes a cut number and a transition (dissolve, or dissolve:12 for its frames), "
                         f"not {number!r} {transition!r}") from None


def _scene_index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--scene takes a scene number and its text, not {text!r} as the number") from None


def _read_json(path: str, key: str) -> Any:
    """A JSON file's value, or its `key` when it is a script.json (an object holding `scenes`)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    return value[key] if isinstance(value, dict) and "scenes" in value and key in value else value


def _read_json_message(path: str, key: str, message: M) -> M:
    value = _read_json(path, key)
    if not isinstance(value, dict):
        raise UsageError(f"{path}: a JSON object was expected")
    return _parsed(path, value, message)


def _parsed(path: str, value: dict[str, Any], message: M) -> M:
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as exc:
        raise UsageError(f"{path}: {str(exc).splitlines()[0]}") from None


def requested_options(args: argparse.Namespace) -> job_pb2.JobOptions:
    """The options given on the command line; those left out stay unset and take the gateway's defaults."""
    segmenter = stage_pb2.SegmenterParams()
    for flag, field in (("segmenter", "segmenter"), ("min_segment", "min_seconds"), ("max_segment", "max_seconds"),
                        ("beats_per_cut", "beats_per_cut"), ("novelty_threshold", "novelty_threshold"),
                        ("random_min", "random_min_seconds"), ("random_max", "random_max_seconds")):
        if getattr(args, flag) is not None:
            setattr(segmenter, field, getattr(args, flag))
    options = job_pb2.JobOptions(
        segmenter=segmenter, analyzer=args.analysis or "", writer=args.writer or "", generator=args.generator or "",
        fallback_writer=args.fallback_writer or "", storyteller=args.storyteller or "",
        transcriber=args.transcriber or "", lyrics=read_lyrics_file(args.lyrics) if args.lyrics else "",
        top_k=args.top_k or 0, fps=args.fps or 0, transitions=args.transitions or "",
        script_inputs=stage_pb2.ScriptInputs(story=args.story or "", characters=args.characters or "",
                                             style=args.style or ""))
    if args.pipeline:
        options.pipeline = job_pb2.Pipeline.Value(f"PIPELINE_{args.pipeline.upper()}")
    if args.seed is not None:
        options.seed = segmenter.seed = args.seed
    if args.size:
        match = re.fullmatch(r"(\d+)x(\d+)", args.size.strip())
        if not match:
            raise UsageError(f"--size must look like 640x360, not {args.size!r}")
        options.width, options.height = int(match[1]), int(match[2])
    return options


def _upload_messages(song: Path) -> Iterator[api_pb2.UploadSongRequest]:
    digest = hashlib.sha256()
    with song.open("rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            digest.update(block)
    content_type = mimetypes.guess_type(song.name)[0] or "application/octet-stream"
    yield api_pb2.UploadSongRequest(metadata=api_pb2.UploadSongMetadata(
        file_name=song.name, content_type=content_type, size_bytes=song.stat().st_size, sha256=digest.hexdigest()))
    with song.open("rb") as file:
        for block in iter(lambda: file.read(CHUNK_BYTES), b""):
            yield api_pb2.UploadSongRequest(chunk=block)


def watch(gateway: Gateway, job_id: str, on_message: Callable[[api_pb2.WatchJobResponse], None]) -> job_pb2.Job:
    """Follow a job to its end; a lost stream is reopened, and its first snapshot brings us up to date."""
    job = job_pb2.Job()
    lost_since: float | None = None
    while True:
        try:
            for message in gateway.stub.WatchJob(api_pb2.WatchJobRequest(job_id=job_id), metadata=gateway.metadata):
                lost_since = None
                apply_change(job, message)
                on_message(message)
            if JobState.proto_is_terminal(job.state):
                return job
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_SECONDS:
                raise
            time.sleep(1.0)


def apply_change(job: job_pb2.Job, message: api_pb2.WatchJobResponse) -> None:
    """Bring `job` up to date with one WatchJob message (a snapshot, or one stage or clip)."""
    kind = message.WhichOneof("event")
    if kind == "job":
        job.CopyFrom(message.job)
    elif kind == "stage":
        _replace(job.stages, lambda s: s.stage == message.stage.stage, message.stage)
    elif kind == "clip":
        _replace(job.clips, lambda c: c.index == message.clip.index, message.clip)


def _replace(items: Any, matches: Callable[[Any], bool], new: Any) -> None:
    for item in items:
        if matches(item):
            item.CopyFrom(new)
            return
    items.add().CopyFrom(new)


class ProgressTranslator:
    """Turns WatchJob messages into the JobEvents that `mvgen generate`'s progress display shows, so
    a remote job looks like a local one. A reconnect's snapshot reports only what changed meanwhile."""

    def __init__(self, display: ProgressDisplay):
        self.display = display
        self.job = job_pb2.Job()
        self._stage_states: dict[int, StageState | None] = {}  # by the stage's proto value
        self._clip_states: dict[int, ClipState | None] = {}  # by the clip's index

    def apply(self, message: api_pb2.WatchJobResponse) -> None:
        apply_change(self.job, message)
        kind = message.WhichOneof("event")
        if kind == "job":
            for stage in self.job.stages:
                self._stage(stage)
            for clip in self.job.clips:
                self._clip(clip)
        elif kind == "stage":
            self._stage(message.stage)
        elif kind == "clip":
            self._clip(message.clip)

    def _stage(self, stage: job_pb2.StageStatus) -> None:
        name = Stage.from_proto(stage.stage, "?")
        state = StageState.from_proto(stage.state, None)
        if stage.stage in self._stage_states and self._stage_states[stage.stage] == state:
            if state == StageState.RUNNING and stage.HasField("progress"):
                progress = stage.progress
                self.display.on_event(JobEvent(EventKind.STAGE, name, EventState.PROGRESS, fraction=progress.fraction,
                                               detail={"done": progress.done, "total": progress.total,
                                                       "what": progress.detail}))
            return
        self._stage_states[stage.stage] = state
        if state == StageState.RUNNING:
            self.display.on_event(JobEvent(EventKind.STAGE, name, EventState.RUNNING,
                                           detail={"clips": len(self.job.clips)}))
        elif state == StageState.SUCCEEDED:
            self.display.on_event(JobEvent(EventKind.STAGE, name, EventState.CACHED if stage.cached else
                                           EventState.SUCCEEDED, detail=info_from_struct(stage.info)))
        elif state == StageState.FAILED:
            self.display.on_event(JobEvent(EventKind.STAGE, name, EventState.FAILED,
                                           detail={"error": stage.error_message}))

    def _clip(self, clip: job_pb2.ClipStatus) -> None:
        previous = self._clip_states.get(clip.index)
        state = self._clip_states[clip.index] = ClipState.from_proto(clip.state, None)
        if state == ClipState.RUNNING:
            if previous != ClipState.RUNNING:
                self.display.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.RUNNING, clip.index, 0.0,
                                               {"frames": clip.frame_count}))
            self.display.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.PROGRESS, clip.index,
                                           clip.progress.fraction))
        elif state == ClipState.SUCCEEDED and previous != ClipState.SUCCEEDED:
            self.display.on_event(JobEvent(EventKind.CLIP, Stage.VIDEO, EventState.CACHED if clip.cached else
                                           EventState.SUCCEEDED, clip.index, 1.0))


def download(url: str, output: Path) -> None:
    """Save `url` to `output`, whole or not at all."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as file:
            while block := response.read(CHUNK_BYTES):
                file.write(block)
        partial.replace(output)
    except urllib.error.URLError as exc:
        raise OSError(f"downloading the video failed: {exc.reason}") from None
    finally:
        partial.unlink(missing_ok=True)


def _retry_unavailable(call: Callable[[], T]) -> T:
    for delay in (*RETRY_DELAYS, None):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


# --- jobs, status, cancel ------------------------------------------------------------------------------

def list_jobs(gateway: Gateway, args: argparse.Namespace) -> int:
    state = JobState(args.state).proto if args.state else None
    token, shown = "", 0
    while shown < args.limit:
        page = gateway.stub.ListJobs(api_pb2.ListJobsRequest(page_size=min(args.limit - shown, 100), page_token=token,
                                                             state=state), metadata=gateway.metadata)
        for job in page.jobs:
            print(f"{job.job_id}  {_state(job.state):<9}  {job.create_time.ToDatetime():%Y-%m-%d %H:%M}  "
                  f"{_clips_done(job):>7}  {job.song.file_name}")
        shown += len(page.jobs)
        token = page.next_page_token
        if not token:
            break
    if not shown:
        print("mvgen: no jobs", file=sys.stderr)
    return 0


def show_status(gateway: Gateway, args: argparse.Namespace) -> int:
    result = gateway.stub.GetJob(api_pb2.GetJobRequest(job_id=args.job_id), metadata=gateway.metadata)
    job = result.job
    print(f"job {job.job_id}  {_state(job.state)}  {job.song.file_name} ({clock(job.song.duration_seconds, 1)})"
          f"{'  ' + job.title if job.title else ''}")
    for stage in job.stages:
        state = StageState.from_proto(stage.state, "unspecified")
        print(f"  {Stage.from_proto(stage.stage, '?'):<13} {state:<10} {stage.backend}"
              f"{'  (cached)' if stage.cached else ''}{'  ' + stage.error_message if stage.error_message else ''}")
    if job.HasField("revision"):
        changes = job.revision.changes
        changed = [f"scene {s.index}" for s in changes.scenes] + [f"cut {c.index}" for c in changes.cuts]
        changed += [n for n in ("style", "characters") if changes.HasField(n)]
        print(f"  revises       {job.revision.revises_job_id}: {', '.join(changed)}")
    if job.clips:
        print(f"  clips         {_clips_done(job)}")
    if job.error_message:
        print(f"  error: {job.error_message}")
    if result.video_url:
        print(f"  video: {result.video_url}")
    elif "video" in job.artifact_keys:
        print(f"  video: {job.artifact_keys['video']} (in the gateway's store)")
    if result.storyboard_url:
        print(f"  storyboard: {result.storyboard_url}")
    return 0


def cancel_job(gateway: Gateway, args: argparse.Namespace) -> int:
    job = gateway.stub.CancelJob(api_pb2.CancelJobRequest(job_id=args.job_id), metadata=gateway.metadata).job
    if job.state == JobState.CANCELLED.proto:
        print(f"mvgen: job {job.job_id} cancelled; {_clips_done(job)} clips are kept")
    else:
        print(f"mvgen: job {job.job_id} had already ended: {_state(job.state)}")
    return 0


def _state(state: int) -> str:
    return JobState.from_proto(state, "unspecified")


def _clips_done(job: job_pb2.Job) -> str:
    done = sum(c.state == ClipState.SUCCEEDED.proto for c in job.clips)
    return f"{done}/{len(job.clips)}" if job.clips else "-"
