"""ReviseJob through the gateway over real gRPC on loopback (stages in-process): a finished job revised in
some scenes (or its style, or its cast) becomes a new job that copies everything the change does not
touch and generates exactly the clips it does; the request's checks (status codes and messages),
ownership, idempotency, resuming after a restart, and the output cache never handing out a revised
script as a written one. The same through real stage services: tests/test_system.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from services.common.artifacts import Character, Scene, Script, StyleBible
from services.common.errors import MvgenError
from services.common.pb import artifacts_pb2, job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.store import ArtifactStore
from gateway.pipeline.revision import ScriptEdits
from gateway.server.auth import token_digest
from gateway.server.registry import output_cache
from tests.media import tone

# local_store and s3_store are fixtures: imported, pytest finds them here.
from tests.test_gateway import (  # noqa: F401
    AUTH,
    TOKEN,
    RunningGateway,
    create,
    local_store,
    s3_store,
    upload,
    watch_until,
)

OTHER_TOKEN = "the-token-of-another-client"
OTHER_AUTH = (("authorization", f"Bearer {OTHER_TOKEN}"),)
# A 24 s song in 4-8 s segments: four or five scenes.
# Transitions auto: a revision may change the edit's cuts too.
OPTIONS = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="random", seed=3), fps=12, width=160,
                             height=90, transitions="auto")
NEW_TEXTS = {1: "A red kite climbs over a quiet harbour at dawn.",
             2: "Two children chase paper boats along a narrow canal."}
STYLE = artifacts_pb2.StyleBible(palette=["#102030", "#F0C020"], look="grainy 16 mm film",
                                 lighting="low golden sun", camera="slow handheld push-ins",
                                 atmosphere="wistful and warm")


def revise(stub, job_id: str, scenes: dict[int, str] | None = None, request_id: str | None = None,
           metadata=AUTH, **fields) -> job_pb2.Job:
    request = api_pb2.ReviseJobRequest(
        request_id=request_id or str(uuid.uuid4()), job_id=job_id,
        scenes=[job_pb2.SceneRevision(index=i, text=t) for i, t in (scenes or {}).items()], **fields)
    return stub.ReviseJob(request, metadata=metadata, timeout=60).job


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def manifest_of(store: ArtifactStore, job_id: str) -> dict:
    return json.loads(store.get_bytes(f"jobs/{job_id}/manifest.json"))


def script_of(store: ArtifactStore, job_id: str) -> Script:
    return Script.from_dict(json.loads(store.get_bytes(f"jobs/{job_id}/script.json")))


def finished(stub, job_id: str) -> job_pb2.Job:
    job, _ = watch_until(stub, job_id)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job.error_message
    return job


@dataclass
class Revisable:
    gateway: RunningGateway
    store: ArtifactStore
    parent: job_pb2.Job  # finished
    script: Script  # the parent's


@pytest.fixture(scope="module")
def revisable(tmp_path_factory) -> Iterator[Revisable]:
    """A gateway with an S3 store (moto) and two clients, and one finished job of the first."""
    from moto.server import ThreadedMotoServer

    from services.common.s3_store import S3ArtifactStore
    from services.common.settings import StoreSettings

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = S3ArtifactStore(StoreSettings("s3", "", f"http://{host}:{port}", "mvgen", "test", "test", "us-east-1",
                                          False))
    store.ensure_bucket()
    song = tone(tmp_path_factory.mktemp("songs") / "song.wav", 24.0)
    running = RunningGateway(store, tokens=(TOKEN, OTHER_TOKEN))
    try:
        parent = finished(running.stub, create(running.stub, upload(running.stub, song).song_id, OPTIONS).job_id)
        assert len(parent.clips) >= 4
        yield Revisable(running, store, parent, script_of(store, parent.job_id))
    finally:
        running.stop()
        server.stop()


@pytest.mark.slow
def test_a_revision_of_transitions_alone_assembles_again_and_makes_no_clip(revisable):
    stub, store, parent = revisable.gateway.stub, revisable.store, revisable.parent
    edit = json.loads(store.get_text(f"jobs/{parent.job_id}/edit.json"))
    inner = [c for c in edit["cuts"] if 0 <= c["index"] < len(parent.clips) - 1]
    changed = next(c for c in inner if c["transition"] == "cut")
    cuts = [job_pb2.CutRevision(index=changed["index"], transition="dissolve", frames=4)]
    created = revise(stub, parent.job_id, cuts=cuts)
    assert [c.index for c in created.revision.changes.cuts] == [changed["index"]]
    job = finished(stub, created.job_id)
    assert all(c.cached for c in job.clips)  # no clip generated

    manifest = manifest_of(store, created.job_id)
    assert manifest["stages"]["video"]["info"]["generated"] == 0
    assert all("reused_from" in c for c in manifest["clips"].values())
    for stage in ("segmentation", "analysis", "scripting"):
        assert manifest["stages"][stage]["reused_from"] == f"jobs/{parent.job_id}/", stage
    assert "reused_from" not in manifest["stages"]["assembly"]  # assembled again, with the new transition
    assert manifest["stages"]["assembly"]["info"]["transitions"]["dissolve"] == \
        manifest_of(store, parent.job_id)["stages"]["assembly"]["info"]["transitions"].get("dissolve", 0) + 1
    revised = json.loads(store.get_text(f"jobs/{created.job_id}/edit.json"))
    after = next(c for c in revised["cuts"] if c["index"] == changed["index"])
    assert (after["transition"], after["frames"]) == ("dissolve", 4)
    assert [c for c in revised["cuts"] if c["index"] != changed["index"]] == \
        [c for c in edit["cuts"] if c["index"] != changed["index"]]
    assert store.get_bytes(f"jobs/{created.job_id}/final.mp4") != store.get_bytes(f"jobs/{parent.job_id}/final.mp4")

    # A cut the edit lacks, an unknown transition, or the same transitions again are refused with the cut named.
    for bad, says in (([job_pb2.CutRevision(index=999, transition="dissolve")], "cut 999"),
                      ([job_pb2.CutRevision(index=changed["index"], transition="spin")], "unknown transition"),
                      ([job_pb2.CutRevision(index=changed["index"], transition="cut")], "changes nothing")):
        error = refused(lambda b=bad: revise(stub, parent.job_id, cuts=b))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()


@pytest.mark.slow
def test_a_revision_generates_exactly_the_changed_clips_and_reuses_everything_else(revisable):
    stub, store, parent = revisable.gateway.stub, revisable.store, revisable.parent
    request_id = str(uuid.uuid4())
    created = revise(stub, parent.job_id, NEW_TEXTS, request_id)
    assert created.job_id != parent.job_id
    assert created.revision.revises_job_id == parent.job_id
    assert [(s.index, s.text) for s in created.revision.changes.scenes] == sorted(NEW_TEXTS.items())
    assert not created.revision.changes.HasField("style") and not created.revision.changes.HasField("characters")
    assert created.options == parent.options and created.song == parent.song

    # Idempotent: the same request id gives the same job; with other changes it is refused.
    assert revise(stub, parent.job_id, NEW_TEXTS, request_id).job_id == created.job_id
    other = refused(lambda: revise(stub, parent.job_id, {1: NEW_TEXTS[2]}, request_id))
    assert other.code() == grpc.StatusCode.ALREADY_EXISTS, other.details()

    job = finished(stub, created.job_id)
    clips = {c.index: c for c in job.clips}
    assert {i for i, c in clips.items() if not c.cached} == set(NEW_TEXTS)
    assert all(clips[i].scene_text == text for i, text in NEW_TEXTS.items())
    assert job.revision == created.revision and job.title == parent.title

    manifest = manifest_of(store, created.job_id)
    parent_prefix = f"jobs/{parent.job_id}/"
    made = {int(k) for k, c in manifest["clips"].items() if "reused_from" not in c}
    assert made == set(NEW_TEXTS)
    assert all(c["reused_from"] == parent_prefix for k, c in manifest["clips"].items() if int(k) not in made)
    assert all(manifest["clips"][f"{i:04d}"]["attempts"] == 1 for i in made)
    assert manifest["stages"]["video"]["info"] == {"clips": len(job.clips), "generated": 2}
    for stage in ("segmentation", "analysis", "scripting"):
        assert manifest["stages"][stage]["reused_from"] == parent_prefix, stage
    assert "reused_from" not in manifest["stages"]["assembly"]  # made again from the new clips
    assert manifest["revision"] == {"revises_job_id": parent.job_id, "scenes": sorted(NEW_TEXTS), "style": False,
                                    "characters": False, "cuts": [], "edited_scenes": sorted(NEW_TEXTS)}

    script = script_of(store, created.job_id)
    assert script == Script(**{**revisable.script.__dict__, "scenes": [
        Scene(s.index, NEW_TEXTS.get(s.index, s.text)) for s in revisable.script.scenes]})
    assert all(text in store.get_text(f"jobs/{created.job_id}/script.txt") for text in NEW_TEXTS.values())
    assert script_of(store, parent.job_id) == revisable.script  # the job revised is left as it was
    for index in clips:
        same = store.get_bytes(f"jobs/{created.job_id}/clips/{index:04d}.mp4") == \
            store.get_bytes(f"jobs/{parent.job_id}/clips/{index:04d}.mp4")
        assert same == (index not in NEW_TEXTS), index
    assert store.get_bytes(f"jobs/{created.job_id}/final.mp4") != store.get_bytes(f"jobs/{parent.job_id}/final.mp4")

    # Another client sees neither job: a revision of a job it cannot see is NOT_FOUND, as GetJob of it.
    for job_id in (parent.job_id, created.job_id):
        hidden = refused(lambda j=job_id: revise(stub, j, {1: "A gull glides over a grey sea."}, metadata=OTHER_AUTH))
        assert hidden.code() == grpc.StatusCode.NOT_FOUND and hidden.details() == f"no job '{job_id}'"
        looked = refused(lambda j=job_id: stub.GetJob(api_pb2.GetJobRequest(job_id=j), metadata=OTHER_AUTH))
        assert (looked.code(), looked.details()) == (hidden.code(), hidden.details())


@pytest.mark.slow
@pytest.mark.parametrize(("scenes", "fields", "says"), [
    ({}, {}, "the revision changes nothing: give new text for at least one scene"),
    ({99: "A gull glides over a grey sea."}, {}, "scene 99: the script has no such scene (its scenes are 0 to"),
    ({-1: "A gull glides over a grey sea."}, {}, "scene -1: the script has no such scene"),
    ({1: "The sound of the waves fills the bay."}, {}, "scene 1: it uses 'sound': a camera cannot film sound"),
    ({1: "A sign that reads welcome hangs over the door."}, {}, "scene 1: it uses 'sign that reads'"),
    ({1: "She walks back to the pier again."}, {}, "scene 1: it uses 'walks back', 'again'"),
    ({1: "A gull glides. The sea is grey."}, {}, "scene 1: the scene has 2 sentences; write exactly one"),
    ({1: "   "}, {}, "scene 1: the scene is empty"),
    ({1: "A gull glides over a grey sea"}, {}, "scene 1: the sentence must end with '.', '!' or '?'"),
    ({1: "A gull \u202eglides over a grey sea."}, {}, "scene 1: it holds a control or formatting character"),
    ({1: "A gull glides\nover a grey sea."}, {}, "scene 1: it holds a control or formatting character ('\\n')"),
    ({1: "word " * 2000}, {}, "scene 1: it is 10000 characters long; at most 600"),
    ({}, {"style": artifacts_pb2.StyleBible(palette=["red" * 1000], look="film", lighting="sun", camera="still",
                                           atmosphere="calm")}, "style palette: colours are hex like '#1A2B3C'"),
    ({}, {"style": artifacts_pb2.StyleBible(palette=["#102030"], look="film with subtitles", lighting="sun",
                                           camera="still", atmosphere="")},
     "style look: it uses 'subtitles'"),
    ({}, {"characters": job_pb2.CharacterList(characters=[artifacts_pb2.Character(name="Ada")])},
     "characters: every character needs a visual description"),
])
def test_a_bad_revision_is_an_invalid_argument_that_names_the_scene_and_the_problem(revisable, scenes, fields, says):
    stub = revisable.gateway.stub
    before = len(stub.ListJobs(api_pb2.ListJobsRequest(), metadata=AUTH).jobs)
    error = refused(lambda: revise(stub, revisable.parent.job_id, scenes, **fields))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert says in error.details() and len(error.details()) < 1000, error.details()
    assert len(stub.ListJobs(api_pb2.ListJobsRequest(), metadata=AUTH).jobs) == before  # nothing was made


@pytest.mark.slow
def test_a_revision_of_the_script_as_it_is_repeated_twice_or_repeating_a_scene_is_refused(revisable):
    stub, script = revisable.gateway.stub, revisable.script
    cases = (([job_pb2.SceneRevision(index=1, text=script.scenes[1].text)], "the revision changes nothing"),
             ([job_pb2.SceneRevision(index=2, text=script.scenes[0].text.upper())],
              "scene 2: it repeats scene 0; every scene must be different"),
             ([job_pb2.SceneRevision(index=1, text=NEW_TEXTS[1]), job_pb2.SceneRevision(index=1, text=NEW_TEXTS[2])],
              "scene 1 is given 2 times; give each scene once"))
    for scenes, says in cases:
        request = api_pb2.ReviseJobRequest(request_id=str(uuid.uuid4()), job_id=revisable.parent.job_id, scenes=scenes)
        error = refused(lambda r=request: stub.ReviseJob(r, metadata=AUTH, timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()
    for job_id, code in (("not-a-job", grpc.StatusCode.INVALID_ARGUMENT), ("", grpc.StatusCode.INVALID_ARGUMENT),
                         ("0" * 32, grpc.StatusCode.NOT_FOUND)):
        assert refused(lambda j=job_id: revise(stub, j, NEW_TEXTS)).code() == code, job_id
    unauthenticated = refused(lambda: revise(stub, revisable.parent.job_id, NEW_TEXTS, metadata=None))
    assert unauthenticated.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.slow
def test_a_job_that_has_not_succeeded_cannot_be_revised(revisable, tmp_path):
    stub = revisable.gateway.stub
    long_song = tone(tmp_path / "long.wav", 60.0)
    running = create(stub, upload(stub, long_song).song_id, job_pb2.JobOptions(width=320, height=180))
    try:
        error = refused(lambda: revise(stub, running.job_id, NEW_TEXTS))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details().startswith(f"job {running.job_id} is ")
        assert "only a job that has succeeded can be revised; wait for it to end" in error.details()
    finally:
        cancelled = stub.CancelJob(api_pb2.CancelJobRequest(job_id=running.job_id), metadata=AUTH).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    error = refused(lambda: revise(stub, running.job_id, NEW_TEXTS))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {running.job_id} is cancelled: only a job that has succeeded can be revised")


@pytest.mark.slow
def test_a_new_style_and_cast_regenerate_every_clip_and_a_revision_of_a_revision_keeps_its_scenes(revisable):
    stub, store, parent = revisable.gateway.stub, revisable.store, revisable.parent
    first = finished(stub, revise(stub, parent.job_id, {1: NEW_TEXTS[1]}).job_id)
    cast = job_pb2.CharacterList()
    cast.SetInParent()  # set and empty: no characters
    second = revise(stub, first.job_id, {2: NEW_TEXTS[2]}, style=STYLE, characters=cast)
    assert second.revision.revises_job_id == first.job_id
    assert [s.index for s in second.revision.changes.scenes] == [2]
    assert [s.index for s in second.revision.script_edits.scenes] == [1, 2]  # the first revision's edit is kept
    edits = second.revision.script_edits
    assert edits.HasField("characters") and not edits.characters.characters
    job = finished(stub, second.job_id)
    assert not any(c.cached for c in job.clips)  # the style and the cast are in every clip
    script = script_of(store, second.job_id)
    assert [s.text for s in script.scenes][1:3] == [NEW_TEXTS[1], NEW_TEXTS[2]]
    assert script.style.look == STYLE.look and script.style.palette == list(STYLE.palette) and script.characters == []
    assert manifest_of(store, second.job_id)["revision"] == {
        "revises_job_id": first.job_id, "scenes": [2], "style": True, "characters": True, "cuts": [],
        "edited_scenes": [1, 2]}


@pytest.mark.slow
def test_a_revision_resumes_after_a_gateway_restart(local_store, tmp_path):  # noqa: F811
    song = tone(tmp_path / "song.wav", 24.0)
    first = RunningGateway(local_store)
    try:
        parent = finished(first.stub, create(first.stub, upload(first.stub, song).song_id, OPTIONS).job_id)
        revision = revise(first.stub, parent.job_id, {1: NEW_TEXTS[1]}, style=STYLE)
    finally:
        first.stop()  # the revision is queued or running: it is left to resume
    assert not local_store.exists(f"jobs/{revision.job_id}/final.mp4")  # not finished: it resumes below
    record = json.loads(local_store.get_bytes(f"jobs/{revision.job_id}/job.json"))
    assert record["revision"]["revises_job_id"] == parent.job_id

    second = RunningGateway(local_store)
    try:
        job = finished(second.stub, revision.job_id)
    finally:
        second.stop()
    assert job.revision == revision.revision and job.clips[1].scene_text == NEW_TEXTS[1]
    script = script_of(local_store, revision.job_id)
    assert script.scenes[1].text == NEW_TEXTS[1] and script.style.look == STYLE.look
    assert manifest_of(local_store, revision.job_id)["revision"]["revises_job_id"] == parent.job_id


@pytest.mark.slow
def test_a_script_a_revision_wrote_itself_is_published_as_written_not_as_revised(local_store, tmp_path):  # noqa: F811
    """Where the revision finds no script to copy (here: its cache entry is gone), it runs the scripting
    stage itself, which publishes its output; a later job of the same song and options copies the script
    as written, never the revised one."""
    song = tone(tmp_path / "song.wav", 24.0)
    running = RunningGateway(local_store)
    try:
        song_id = upload(running.stub, song).song_id
        parent = finished(running.stub, create(running.stub, song_id, OPTIONS).job_id)
        script_fp = manifest_of(local_store, parent.job_id)["stages"]["scripting"]["fingerprint"]
        entry = f"{output_cache(token_digest(TOKEN)[:12], False)}{script_fp}.json"
        local_store.path(entry).unlink()
        revision = finished(running.stub, revise(running.stub, parent.job_id, {1: NEW_TEXTS[1]}).job_id)
        later = finished(running.stub, create(running.stub, song_id, OPTIONS).job_id)
    finally:
        running.stop()
    assert "reused_from" not in manifest_of(local_store, revision.job_id)["stages"]["scripting"]
    assert script_of(local_store, revision.job_id).scenes[1].text == NEW_TEXTS[1]
    written = f"jobs/{revision.job_id}/written/"
    assert json.loads(local_store.get_bytes(entry))["prefix"] == written
    assert manifest_of(local_store, later.job_id)["stages"]["scripting"]["reused_from"] == written
    assert script_of(local_store, later.job_id) == script_of(local_store, parent.job_id)


def test_script_edits_apply_in_order_and_name_a_scene_the_script_lacks():
    script = Script("template", "T", StyleBible(["#000000"], "a", "b", "c", "d"), [Character("Ada", "tall")],
                    [Scene(0, "Zero."), Scene(1, "One.")])
    first = ScriptEdits(scenes=((0, "Nought."),), characters=())
    later = ScriptEdits(scenes=((0, "Null."), (1, "Uno.")), style=StyleBible(["#ffffff"], "e", "f", "g", "h"))
    both = first.then(later)
    assert both == ScriptEdits(scenes=((0, "Null."), (1, "Uno.")), style=later.style, characters=())
    revised = both.apply(script)
    assert [s.text for s in revised.scenes] == ["Null.", "Uno."] and revised.characters == []
    assert revised.style == later.style and revised.style.palette is not later.style.palette
    assert both.apply(revised) == revised  # idempotent
    assert script.scenes[0].text == "Zero."  # the original is left as it was
    with pytest.raises(MvgenError, match=r"changes scenes \[5\], which the script does not have"):
        ScriptEdits(scenes=((5, "Five."),)).apply(script)
    assert ScriptEdits().is_empty and not first.is_empty
