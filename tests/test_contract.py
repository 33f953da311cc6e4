"""The gRPC contract (proto/mvgen/v1) is lint-clean, builds, generates importable stubs, and
mirrors the Python contract (services/common/stage_api.py, services/common/artifacts.py) so that
the gRPC adapters can convert between dataclasses and messages generically, by field name.

Needs the generated stubs (`make proto`, which `make test` runs first) and the buf binary that
the dev extra installs next to the Python interpreter.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
import types
import typing
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, json_format, struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from services.common import artifacts, stage_api
from services.common.transport.convert import is_repeated

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "mvgen" / "v1"
PB_DIR = ROOT / "services" / "common" / "pb"
# Not resolved: in a venv the interpreter is a symlink, and buf sits beside the link.
BUF = Path(sys.executable).parent / "buf"

STUBS_MISSING = "the generated gRPC stubs are missing or stale: run `make proto`"


def pb(module: str) -> types.ModuleType:
    """A generated module of services/common/pb, or a test failure that says how to make it."""
    try:
        return importlib.import_module(f"services.common.pb.{module}")
    except ImportError as exc:
        pytest.fail(f"{STUBS_MISSING} ({exc})")


def run_buf(*args: str) -> subprocess.CompletedProcess[str]:
    assert BUF.is_file(), f"buf not found at {BUF}: install the dev extra (`make setup`, package buf-bin)"
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


# --- buf -------------------------------------------------------------------------------------------


def test_buf_lint_is_clean():
    proc = run_buf("lint", "proto")
    assert proc.returncode == 0, f"buf lint proto:\n{proc.stdout}{proc.stderr}"


def test_buf_format_is_clean():
    proc = run_buf("format", "--diff", "--exit-code", "proto")
    assert proc.returncode == 0, f"run `.venv/bin/buf format -w proto`:\n{proc.stdout}{proc.stderr}"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    """`buf build` of the module, with source info (comments)."""
    out = tmp_path_factory.mktemp("buf") / "image.binpb"
    proc = run_buf("build", "proto", "-o", str(out))
    assert proc.returncode == 0, f"buf build proto:\n{proc.stdout}{proc.stderr}"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="module")
def field_comments(image: descriptor_pb2.FileDescriptorSet) -> dict[tuple[str, str], str]:
    """(message name, field name) -> the field's leading comment, for top-level messages."""
    comments: dict[tuple[str, str], str] = {}
    for file in image.file:
        if file.package != "mvgen.v1":
            continue
        for loc in file.source_code_info.location:
            path = list(loc.path)
            if len(path) == 4 and path[0] == 4 and path[2] == 2:  # message_type[i].field[j]
                message = file.message_type[path[1]]
                comments[(message.name, message.field[path[3]].name)] = loc.leading_comments
    return comments


def test_buf_image_holds_every_proto_file(image: descriptor_pb2.FileDescriptorSet):
    built = {f.name for f in image.file if f.package == "mvgen.v1"}
    on_disk = {f"mvgen/v1/{p.name}" for p in PROTO_DIR.glob("*.proto")}
    assert built == on_disk


# --- generated stubs -------------------------------------------------------------------------------

PROTO_MODULES = [p.stem for p in sorted(PROTO_DIR.glob("*.proto"))]


def test_stubs_are_generated_and_fresh():
    marker = PB_DIR / "__init__.py"
    assert marker.is_file(), STUBS_MISSING
    newest = max(p.stat().st_mtime for p in PROTO_DIR.glob("*.proto"))
    assert marker.stat().st_mtime >= newest, STUBS_MISSING
    for stem in PROTO_MODULES:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (PB_DIR / f"{stem}{suffix}").is_file(), f"{stem}{suffix}: {STUBS_MISSING}"


@pytest.mark.parametrize("stem", PROTO_MODULES)
def test_stubs_import_package_relative(stem: str):
    module = pb(f"{stem}_pb2")
    pb(f"{stem}_pb2_grpc")
    assert module.DESCRIPTOR.package == "mvgen.v1"
    # Imports between our files are rewritten to the package (the Makefile's sed), so the stubs
    # work wherever services.common is importable.
    text = (PB_DIR / f"{stem}_pb2.py").read_text()
    assert not re.search(r"^from mvgen\.v1 import", text, re.M)


# (client streaming, server streaming) of every RPC, per service.
UNARY, SERVER_STREAM, CLIENT_STREAM = (False, False), (False, True), (True, False)
SERVICES: dict[tuple[str, str], dict[str, tuple[bool, bool]]] = {
    ("segmentation_service", "SegmentationService"): {"Segment": UNARY},
    ("analysis_service", "AnalysisService"): {"Analyze": UNARY},
    ("scripting_service", "ScriptingService"): {"WriteScript": SERVER_STREAM, "TellStory": SERVER_STREAM},
    ("video_service", "VideoService"): {"GenerateClip": SERVER_STREAM},
    ("assembly_service", "AssemblyService"): {"Assemble": UNARY},
    ("stage_info_service", "StageInfoService"): {"GetStageInfo": UNARY},
    ("music_video_service", "MusicVideoService"): {
        "RequestUpload": UNARY,
        "UploadSong": CLIENT_STREAM,
        "CreateJob": UNARY,
        "GetJob": UNARY,
        "WatchJob": SERVER_STREAM,
        "CancelJob": UNARY,
        "ListJobs": UNARY,
        "ReviseJob": UNARY,
    },
}


@pytest.mark.parametrize(("stem", "service"), list(SERVICES), ids=[s for _, s in SERVICES])
def test_service_has_the_expected_rpcs(stem: str, service: str):
    expected = SERVICES[(stem, service)]
    module, grpc_module = pb(f"{stem}_pb2"), pb(f"{stem}_pb2_grpc")
    desc = module.DESCRIPTOR.services_by_name[service]
    assert {m.name for m in desc.methods} == set(expected)
    for method in desc.methods:
        assert (method.client_streaming, method.server_streaming) == expected[method.name], method.name
        assert method.input_type.name == f"{method.name}Request"
        assert method.output_type.name == f"{method.name}Response"
    assert hasattr(grpc_module, f"{service}Stub")
    assert hasattr(grpc_module, f"add_{service}Servicer_to_server")
    servicer = getattr(grpc_module, f"{service}Servicer")
    for name in expected:
        assert callable(getattr(servicer, name))


def test_every_stage_response_carries_a_stage_result():
    stage_result = pb("stage_pb2").StageResult.DESCRIPTOR
    for stem, service in SERVICES:
        if service in ("MusicVideoService", "StageInfoService"):
            continue
        desc = pb(f"{stem}_pb2").DESCRIPTOR.services_by_name[service]
        for method in desc.methods:
            result = method.output_type.fields_by_name["result"]
            assert result.message_type is stage_result, method.full_name
    event = pb("video_service_pb2").GenerateClipResponse.DESCRIPTOR.oneofs_by_name["event"]
    assert {f.name for f in event.fields} == {"progress", "result"}


def all_messages() -> list[Descriptor]:
    found: list[Descriptor] = []

    def walk(desc: Descriptor) -> None:
        found.append(desc)
        for nested in desc.nested_types:
            walk(nested)

    for stem in PROTO_MODULES:
        for desc in pb(f"{stem}_pb2").DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    return found


def test_no_media_bytes_in_messages():
    """Messages carry store keys; the one exception is the gateway's chunked upload."""
    byte_fields = {f.full_name for m in all_messages() for f in m.fields if f.type == FieldDescriptor.TYPE_BYTES}
    assert byte_fields == {"mvgen.v1.UploadSongRequest.chunk"}


# --- the proto mirrors the Python contract ---------------------------------------------------------


# proto message -> (generated module, its Python name in stage_api).
STAGE_MIRRORS: dict[str, tuple[str, str]] = {
    "SegmenterParams": ("stage_pb2", "SegmenterParams"),
    "ScriptInputs": ("stage_pb2", "ScriptInputs"),
    "StageResult": ("stage_pb2", "StageResult"),
    "SegmentRequest": ("segmentation_service_pb2", "SegmentRequest"),
    "AnalyzeRequest": ("analysis_service_pb2", "AnalyzeRequest"),
    "WriteScriptRequest": ("scripting_service_pb2", "WriteScriptRequest"),
    "TellStoryRequest": ("scripting_service_pb2", "TellStoryRequest"),
    "GenerateClipRequest": ("video_service_pb2", "GenerateClipRequest"),
    "AssembleRequest": ("assembly_service_pb2", "AssembleRequest"),
}

ARTIFACT_MIRRORS = ["Segment", "Segmentation", "LabelScore", "LabelGroup", "SegmentLabels", "Labels",
                    "StyleBible", "Character", "Scene", "Script"]
# Where the proto is more precise than the Python type: (message, field) -> proto type name.
ARTIFACT_TYPE_OVERRIDES = {
    ("Segment", "end_reason"): "mvgen.v1.SegmentEndReason",  # str in Python, one of SEGMENT_END_REASONS
    ("Segmentation", "params"): "mvgen.v1.SegmenterParams",  # SegmenterParams.to_dict() in Python
}


def stage_class(proto_name: str) -> type:
    name = STAGE_MIRRORS[proto_name][1]
    assert hasattr(stage_api, name), f"stage_api has no {name}"
    return getattr(stage_api, name)


def is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


SCALARS = {
    str: {FieldDescriptor.TYPE_STRING},
    int: {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64},
    float: {FieldDescriptor.TYPE_DOUBLE},
    bool: {FieldDescriptor.TYPE_BOOL},
}


def type_problem(py_type: Any, field: FieldDescriptor, element: bool = False) -> str | None:
    """Why `field` cannot hold a value of `py_type` (None when it can). `element`: one element of
    a repeated field or the value of a map field is being checked."""
    origin, args = typing.get_origin(py_type), typing.get_args(py_type)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        if not field.has_presence:
            return "is Optional in Python but has no presence in proto (make it `optional`)"
        return type_problem(inner, field)
    if origin is list:
        if not is_repeated(field) or is_map(field):
            return "is a list in Python but not a repeated field"
        return type_problem(args[0], field, element=True)
    if origin is dict:
        if args[1] is Any:
            ok = field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct"
            return None if ok else "is dict[str, Any] in Python but not a google.protobuf.Struct"
        if not is_map(field):
            return "is a dict in Python but not a map"
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return type_problem(args[0], key, element=True) or type_problem(args[1], value, element=True)
    if not element and is_repeated(field):
        return "is repeated in proto but not a list in Python"
    if dataclasses.is_dataclass(py_type):
        ok = field.message_type is not None and field.message_type.name == py_type.__name__
        return None if ok else f"should be the message {py_type.__name__}"
    if py_type in SCALARS:
        ok = field.type in SCALARS[py_type]
        return None if ok else f"is {py_type.__name__} in Python, proto type {field.type}"
    return f"has an unchecked Python type {py_type!r}"


def proto_zero(field: FieldDescriptor) -> Any:
    return {FieldDescriptor.TYPE_STRING: "", FieldDescriptor.TYPE_BOOL: False}.get(field.type, 0)


def mirror_problems(cls: type, desc: Descriptor, overrides: dict[tuple[str, str], str] | None = None) -> list[str]:
    py_fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [f"{desc.name}.{n}: no such dataclass field in {cls.__name__}" for n in desc.fields_by_name
                if n not in py_fields]
    problems += [f"{desc.name}: no proto field for {cls.__name__}.{n}" for n in py_fields
                 if n not in desc.fields_by_name]
    hints = typing.get_type_hints(cls)
    for name in py_fields.keys() & set(desc.fields_by_name.keys()):
        field = desc.fields_by_name[name]
        override = (overrides or {}).get((desc.name, name))
        if override:
            proto_type = field.enum_type or field.message_type
            if proto_type is None or proto_type.full_name != override:
                problems.append(f"{desc.name}.{name} should be {override}")
            continue
        problem = type_problem(hints[name], field)
        if problem:
            problems.append(f"{desc.name}.{name} {problem}")
    return problems


@pytest.mark.parametrize("proto_name", list(STAGE_MIRRORS))
def test_stage_message_mirrors_the_python_dataclass(proto_name: str):
    """Same field names both ways and compatible types: the adapters convert with
    `Message(**fields)` one way and `Dataclass(**fields)` the other."""
    module = pb(STAGE_MIRRORS[proto_name][0])
    problems = mirror_problems(stage_class(proto_name), getattr(module, proto_name).DESCRIPTOR)
    assert not problems, "\n".join(problems)


DEFAULT_RE = re.compile(r"Default when unset: (\S+?)\.?(?:\s|$)")


@pytest.mark.parametrize("proto_name", list(STAGE_MIRRORS))
def test_python_defaults_are_kept_and_documented(proto_name: str, field_comments: dict[tuple[str, str], str]):
    """A Python default that is not the proto3 zero value needs presence (`optional`), so that
    "unset" can mean "the Python default"; every documented default equals the Python one."""
    cls = stage_class(proto_name)
    desc = getattr(pb(STAGE_MIRRORS[proto_name][0]), proto_name).DESCRIPTOR
    problems = []
    for py_field in dataclasses.fields(cls):
        field = desc.fields_by_name.get(py_field.name)
        if field is None:
            continue  # reported by the mirror test
        comment = field_comments.get((proto_name, py_field.name), "")
        documented = DEFAULT_RE.search(comment)
        if py_field.default is dataclasses.MISSING:
            if documented:
                problems.append(f"{proto_name}.{field.name} documents a default the Python field lacks")
            continue
        default = py_field.default
        if default != proto_zero(field):
            if not field.has_presence:
                problems.append(f"{proto_name}.{field.name}: Python default {default!r} needs `optional`")
            if not documented:
                problems.append(f"{proto_name}.{field.name}: comment lacks "
                                f"'Default when unset: {json.dumps(default)}'")
        if documented and json.loads(documented.group(1)) != default:
            problems.append(f"{proto_name}.{field.name}: documented default {documented.group(1)} != {default!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ARTIFACT_MIRRORS)
def test_artifact_message_mirrors_the_python_dataclass(name: str):
    desc = getattr(pb("artifacts_pb2"), name).DESCRIPTOR
    problems = mirror_problems(getattr(artifacts, name), desc, ARTIFACT_TYPE_OVERRIDES)
    assert not problems, "\n".join(problems)


def test_segment_end_reasons_map_one_to_one():
    enum = pb("artifacts_pb2").SegmentEndReason.DESCRIPTOR
    names = {v.name for v in enum.values} - {"SEGMENT_END_REASON_UNSPECIFIED"}
    assert names == {f"SEGMENT_END_REASON_{r.upper()}" for r in artifacts.SEGMENT_END_REASONS}


def as_proto_json(segmentation: dict[str, Any]) -> dict[str, Any]:
    """segments.json -> the JSON form of the Segmentation message: drop derived values, name the
    end reasons as enum values."""
    out = {k: v for k, v in segmentation.items() if k != "segment_count"}
    out["segments"] = [{**{k: v for k, v in s.items() if k != "duration"},
                        "end_reason": f"SEGMENT_END_REASON_{s['end_reason'].upper()}"}
                       for s in segmentation["segments"]]
    return out


@pytest.mark.parametrize("params", [stage_api.SegmenterParams(),
                                    stage_api.SegmenterParams(segmenter="random", seed=7)],
                         ids=["rules", "random"])
def test_segments_json_parses_into_segmentation(params: stage_api.SegmenterParams):
    seg = artifacts.Segmentation(
        segmenter=params.segmenter, params=params.to_dict(), song_duration=9.5, tempo_bpm=None,
        beats=[0.5, 1.0, 1.5],
        segments=[artifacts.Segment(0, 0.0, 4.25, "change"), artifacts.Segment(1, 4.25, 9.5, "end")])
    msg = json_format.ParseDict(as_proto_json(seg.to_dict()), pb("artifacts_pb2").Segmentation())
    assert not msg.HasField("tempo_bpm")
    assert msg.params.segmenter == params.segmenter
    assert [s.end_reason for s in msg.segments] == [pb("artifacts_pb2").SEGMENT_END_REASON_CHANGE,
                                                   pb("artifacts_pb2").SEGMENT_END_REASON_END]
    assert msg.segments[1].end == 9.5


def test_labels_and_script_json_parse_into_their_messages():
    group = artifacts.LabelGroup([artifacts.LabelScore("calm", 0.7), artifacts.LabelScore("dark", 0.2)], "")
    labels = artifacts.Labels("descriptors", {"mood": group},
                              [artifacts.SegmentLabels(0, {"mood": group}, {"rms": 0.1})], {"tempo_bpm": 120.0})
    msg = json_format.ParseDict(labels.to_dict(), pb("artifacts_pb2").Labels())
    assert msg.segments[0].groups["mood"].labels[0].label == "calm"

    style = artifacts.StyleBible(["#112233"], "film", "dusk", "slow", "calm")
    script = artifacts.Script("template", "Title", style, [artifacts.Character("Ada", "a woman in a red coat")],
                              [artifacts.Scene(1, "Ada waits."), artifacts.Scene(2, "The train leaves.")])
    msg = json_format.ParseDict(script.to_dict(), pb("artifacts_pb2").Script())
    # (No zero values in this script: MessageToDict leaves those out.)
    assert json_format.MessageToDict(msg, preserving_proto_field_name=True) == script.to_dict()


def test_stage_result_converts_generically():
    result = stage_api.StageResult({"segments": "runs/a/segments.json"}, {"segment_count": 12, "tempo_bpm": 120.5})
    msg = json_format.ParseDict(dataclasses.asdict(result), pb("stage_pb2").StageResult())
    assert dict(msg.keys) == result.keys
    assert json_format.MessageToDict(msg.info) == result.info  # numbers come back as floats: 12 == 12.0


def test_backend_names_are_strings():
    """Backends are configured per deployment: an open set, so strings, not enums."""
    fields = {
        ("stage_pb2", "SegmenterParams"): "segmenter",
        ("analysis_service_pb2", "AnalyzeRequest"): "analyzer",
        ("scripting_service_pb2", "WriteScriptRequest"): "writer",
        ("scripting_service_pb2", "TellStoryRequest"): "storyteller",
        ("video_service_pb2", "GenerateClipRequest"): "generator",
    }
    for (module, message), name in fields.items():
        assert getattr(pb(module), message).DESCRIPTOR.fields_by_name[name].type == FieldDescriptor.TYPE_STRING
    options = pb("job_pb2").JobOptions.DESCRIPTOR
    for name in ("analyzer", "writer", "storyteller", "fallback_writer", "generator"):
        assert options.fields_by_name[name].type == FieldDescriptor.TYPE_STRING


# --- jobs ------------------------------------------------------------------------------------------


def enum_suffixes(enum_type: Any, prefix: str) -> set[str]:
    return {v.name.removeprefix(prefix) for v in enum_type.DESCRIPTOR.values} - {"UNSPECIFIED"}


def test_job_enums():
    job = pb("job_pb2")
    assert enum_suffixes(job.JobState, "JOB_STATE_") == {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}
    assert enum_suffixes(job.Stage, "STAGE_") == {"SEGMENTATION", "ANALYSIS", "SCRIPTING", "VIDEO", "ASSEMBLY",
                                                  "REVIEW"}
    assert enum_suffixes(job.Pipeline, "PIPELINE_") == {"CLAP", "LALM"}
    assert {"PENDING", "RUNNING", "SUCCEEDED", "FAILED"} <= enum_suffixes(job.StageState, "STAGE_STATE_")
    assert {"PENDING", "RUNNING", "SUCCEEDED", "FAILED"} <= enum_suffixes(job.ClipState, "CLIP_STATE_")


def test_job_options_carry_every_choice():
    options = pb("job_pb2").JobOptions.DESCRIPTOR.fields_by_name
    assert options["segmenter"].message_type.name == "SegmenterParams"
    assert options["script_inputs"].message_type.name == "ScriptInputs"
    expected = {"pipeline", "analyzer", "top_k", "writer", "storyteller", "fallback_writer", "generator", "seed",
                "fps", "width", "height"}
    assert expected <= set(options.keys())


def test_job_reports_stages_clips_artifacts_and_urls():
    job = pb("job_pb2").Job.DESCRIPTOR.fields_by_name
    assert job["stages"].message_type.name == "StageStatus" and is_repeated(job["stages"])
    assert job["clips"].message_type.name == "ClipStatus" and is_repeated(job["clips"])
    assert is_map(job["artifact_keys"])
    assert {"job_id", "request_id", "state", "options", "song", "error_message", "create_time"} <= set(job.keys())
    clip = pb("job_pb2").ClipStatus.DESCRIPTOR.fields_by_name
    assert clip["progress"].message_type.name == "ClipProgress"
    stage = pb("job_pb2").StageStatus.DESCRIPTOR.fields_by_name
    assert {"start_time", "end_time"} <= set(stage.keys()) & set(clip.keys())
    get = pb("music_video_service_pb2").GetJobResponse.DESCRIPTOR.fields_by_name
    assert {"video_url", "artifact_urls", "clip_urls", "urls_expire_time"} <= set(get.keys())
    watch = pb("music_video_service_pb2").WatchJobResponse.DESCRIPTOR.oneofs_by_name["event"]
    assert {f.name for f in watch.fields} == {"job", "stage", "clip"}
    assert "request_id" in pb("music_video_service_pb2").CreateJobRequest.DESCRIPTOR.fields_by_name
    listing = pb("music_video_service_pb2").ListJobsRequest.DESCRIPTOR.fields_by_name
    assert {"page_size", "page_token"} <= set(listing.keys())


# --- the stubs work over a real channel ------------------------------------------------------------


def test_streaming_rpcs_round_trip_over_grpc():
    """A server-streaming clip and a client-streaming upload through real generated stubs."""
    video, video_grpc = pb("video_service_pb2"), pb("video_service_pb2_grpc")
    mv, mv_grpc = pb("music_video_service_pb2"), pb("music_video_service_pb2_grpc")
    stage, song = pb("stage_pb2"), pb("song_pb2")

    class Video(video_grpc.VideoServiceServicer):
        def GenerateClip(self, request, context):
            for step in (1, 2):
                yield video.GenerateClipResponse(progress=stage.ClipProgress(
                    step=step, total_steps=2, total_frames=request.frame_count, fraction=step / 2))
            info = struct_pb2.Struct()
            info.update({"frames": request.frame_count})
            yield video.GenerateClipResponse(result=stage.StageResult(keys={"clip": request.clip_key}, info=info))

    class Gateway(mv_grpc.MusicVideoServiceServicer):
        def UploadSong(self, request_iterator, context):
            first = next(request_iterator)
            size = sum(len(r.chunk) for r in request_iterator)
            return mv.UploadSongResponse(song=song.Song(song_id="s1", file_name=first.metadata.file_name,
                                                       size_bytes=size))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    video_grpc.add_VideoServiceServicer_to_server(Video(), server)
    mv_grpc.add_MusicVideoServiceServicer_to_server(Gateway(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = video.GenerateClipRequest(index=3, frame_count=48, clip_key="runs/a/clips/0003.mp4")
            events = list(video_grpc.VideoServiceStub(channel).GenerateClip(request, timeout=10))
            assert [e.WhichOneof("event") for e in events] == ["progress", "progress", "result"]
            assert events[-1].result.keys["clip"] == "runs/a/clips/0003.mp4"

            def upload():
                yield mv.UploadSongRequest(metadata=mv.UploadSongMetadata(file_name="song.mp3"))
                for _ in range(3):
                    yield mv.UploadSongRequest(chunk=b"x" * 1000)

            reply = mv_grpc.MusicVideoServiceStub(channel).UploadSong(upload(), timeout=10)
            assert (reply.song.file_name, reply.song.size_bytes) == ("song.mp3", 3000)
    finally:
        server.stop(None)
