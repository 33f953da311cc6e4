"""The orchestrator over the in-process stages: cancellation keeps what finished, a rerun resumes."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import replace

import pytest

from services.common.errors import InvalidInputError, JobCancelledError
from services.common.stage_api import SegmenterParams
from services.common.store import LocalArtifactStore
from gateway.pipeline.inprocess import InProcessStages
from gateway.pipeline.layout import JobLayout
from gateway.pipeline.options import JobOptions
from gateway.pipeline.orchestrator import JobSpec, Orchestrator
from tests.llm_servers import RecordingProxy, canned_answer
from tests.media import tone

OPTIONS = JobOptions(segmenter=SegmenterParams(segmenter="random", seed=1), fps=12, width=160, height=90)


def make_job(tmp_path, options: JobOptions = OPTIONS):
    store = LocalArtifactStore(tmp_path / "run")
    tone(tmp_path / "song.wav", 30.0)
    store.put_file("song.wav", tmp_path / "song.wav")
    sha = hashlib.sha256((tmp_path / "song.wav").read_bytes()).hexdigest()
    job = JobSpec("job-1", JobLayout(), "song.wav", {"sha256": sha, "duration": 30.0}, options)
    stages = InProcessStages(store, analyzer=options.analyzer, scripting=[options.writer],
                             generator=options.generator, clip_workers=1)
    return store, stages, job


@pytest.mark.slow
def test_cancel_keeps_finished_clips_and_a_rerun_resumes(tmp_path):
    store, stages, job = make_job(tmp_path)
    events = []

    def cancel_after_two_clips(event):
        events.append(event)
        if event.kind == "clip" and event.state == "succeeded" and event.clip_index == 1:
            orchestrator.cancel()

    orchestrator = Orchestrator(store, stages, on_event=cancel_after_two_clips)
    with pytest.raises(JobCancelledError):
        asyncio.run(orchestrator.run(job))

    manifest = json.loads(store.get_bytes("manifest.json"))
    assert manifest["state"] == "cancelled"
    finished = sorted(k for k, c in manifest["clips"].items() if c["state"] == "succeeded")
    assert finished == ["0000", "0001"]
    assert all(store.exists(f"clips/{k}.mp4") for k in finished)
    assert not store.exists("final.mp4")

    resumed_events = []
    asyncio.run(Orchestrator(store, stages, on_event=resumed_events.append).run(job))
    cached = {e.clip_index for e in resumed_events if e.kind == "clip" and e.state == "cached"}
    generated = {e.clip_index for e in resumed_events if e.kind == "clip" and e.state == "succeeded"}
    assert cached == {0, 1}
    assert generated and generated.isdisjoint(cached)
    assert [e.stage for e in resumed_events if e.kind == "stage" and e.state == "cached"] == \
        ["segmentation", "analysis", "scripting"]
    assert json.loads(store.get_bytes("manifest.json"))["state"] == "succeeded"
    assert store.exists("final.mp4")


@pytest.mark.slow
def test_changed_settings_rerun_the_stages_they_touch(tmp_path):
    store, stages, job = make_job(tmp_path)
    asyncio.run(Orchestrator(store, stages).run(job))
    other_seed = JobOptions(segmenter=SegmenterParams(segmenter="random", seed=2), fps=12, width=160, height=90)
    events = []
    asyncio.run(Orchestrator(store, stages, on_event=events.append).run(
        JobSpec(job.job_id, job.layout, job.song_key, job.song, other_seed)))
    ran = [e.stage for e in events if e.kind == "stage" and e.state == "succeeded"]
    assert ran == ["segmentation", "analysis", "scripting", "video", "assembly", "review"]


# The template writer and the animatic ignore these settings, so the script and the clips come out
# the same: a clip depends on its scene, not on how the script was made, and is reused.
@pytest.mark.parametrize(("variable", "rerun"), [
    ("MVGEN_VIDEO_GUIDANCE", ["video", "assembly", "review"]),
    # The review judges the script against the labels: new labels or a new script are judged again.
    ("MVGEN_CLAP_WEIGHTS", ["analysis", "scripting", "review"]),
    ("MVGEN_LLM_MODEL", ["scripting", "review"]),
])
@pytest.mark.slow
def test_a_changed_backend_setting_reruns_its_stage_and_what_follows_from_it(tmp_path, monkeypatch, variable, rerun):
    store, stages, job = make_job(tmp_path)
    asyncio.run(Orchestrator(store, stages).run(job))
    monkeypatch.setenv(variable, "other-weights")
    events = []
    asyncio.run(Orchestrator(store, stages, on_event=events.append).run(job))
    stage_events = {e.stage: e.state for e in events if e.kind == "stage" and e.state in ("succeeded", "cached")}
    assert stage_events == {s: "succeeded" if s in rerun else "cached"
                            for s in ("segmentation", "analysis", "scripting", "video", "assembly", "review")}


def test_an_unknown_backend_is_refused_before_any_work(tmp_path):
    store, stages, _ = make_job(tmp_path, JobOptions(generator="nonesuch"))
    with pytest.raises(InvalidInputError, match="nonesuch"):
        asyncio.run(stages.wait_ready())
    assert not store.exists("manifest.json")


def test_a_second_job_with_the_same_song_and_settings_reuses_every_output(tmp_path):
    store, stages, job = make_job(tmp_path)
    first = JobSpec("a", JobLayout("jobs/a/"), job.song_key, job.song, job.options)
    second = JobSpec("b", JobLayout("jobs/b/"), job.song_key, job.song, job.options)
    asyncio.run(Orchestrator(store, stages, output_cache="cache/clients/c/").run(first))
    events = []
    second_run = Orchestrator(store, stages, on_event=events.append, output_cache="cache/clients/c/")
    manifest = asyncio.run(second_run.run(second))

    assert not [e for e in events if e.state == "succeeded"]  # nothing generated again
    assert {e.stage for e in events if e.kind == "stage" and e.state == "cached"} == \
        {"segmentation", "analysis", "scripting", "video", "assembly", "review"}
    assert all(c["reused_from"] == "jobs/a/" for c in manifest.data["clips"].values())
    assert store.get_bytes("jobs/b/final.mp4") == store.get_bytes("jobs/a/final.mp4")
    assert store.list("jobs/b/clips/") == [k.replace("jobs/a/", "jobs/b/") for k in store.list("jobs/a/clips/")]


def test_resolved_lalm_options_name_the_storyteller_and_leave_the_scenes_to_it():
    from services.common.errors import InvalidInputError
    from services.common.pb import job_pb2
    from gateway.server.options import BackendChoices, job_options, resolve_options

    choices = BackendChoices(("descriptors",), ("template", "openai"), ("animatic",), ("openai-audio",))
    resolved = resolve_options(job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM), choices)
    assert (resolved.storyteller, resolved.writer) == ("openai-audio", "")
    options = job_options(resolved)
    assert options.pipeline == "lalm" and options.scene_writer == "openai-audio"
    by_llm = job_options(resolve_options(job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM, writer="openai"), choices))
    assert by_llm.scene_writer == "openai"
    clap = resolve_options(job_pb2.JobOptions(writer="openai", fallback_writer="template"), choices)
    assert (clap.pipeline, clap.storyteller, clap.fallback_writer) == (job_pb2.PIPELINE_CLAP, "", "template")
    for refused, says in ((job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM, writer="template"), "template writer"),
                          (job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM, fallback_writer="template",
                                              writer="openai"), "needs the CLAP pipeline's labels"),
                          (job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM, storyteller="gpt-4o"), "storyteller")):
        with pytest.raises(InvalidInputError, match=says):
            resolve_options(refused, choices)


@pytest.mark.slow
def test_an_edited_plan_rewrites_the_scenes_and_the_clips_they_change_and_nothing_upstream(tmp_path, monkeypatch):
    model = RecordingProxy(answer=canned_answer)
    monkeypatch.setenv("MVGEN_LLM_URL", model.base_url)
    store, stages, job = make_job(tmp_path, replace(OPTIONS, writer="openai"))
    try:
        asyncio.run(Orchestrator(store, stages).run(job))
        first_script = json.loads(store.get_bytes("script.json"))
        asked = len(model.requests)
        plan = json.loads(store.get_bytes("plan.json"))
        plan["characters"][0]["description"] = "a woman of thirty in a green raincoat"
        store.put_bytes("plan.json", json.dumps(plan).encode())

        events = []
        asyncio.run(Orchestrator(store, stages, on_event=events.append).run(job))
    finally:
        model.close()
    stage_events = {e.stage: e.state for e in events if e.kind == "stage"}
    assert stage_events["segmentation"] == stage_events["analysis"] == "cached"
    assert stage_events["scripting"] == "succeeded"  # written again from the edited plan ...
    assert not any("sections" in r["response_format"]["json_schema"]["schema"]["properties"]
                   for r in model.requests[asked:])  # ... which was kept, not planned anew
    script = json.loads(store.get_bytes("script.json"))
    assert script["characters"][0]["description"] == "a woman of thirty in a green raincoat"
    assert [s["text"] for s in script["scenes"]] == [s["text"] for s in first_script["scenes"]]
    # The characters stand beside every scene in its clip's prompt: every clip is made again.
    regenerated = {e.clip_index for e in events if e.kind == "clip" and e.state == "succeeded"}
    assert regenerated == set(range(len(script["scenes"])))

    events = []
    asyncio.run(Orchestrator(store, stages, on_event=events.append).run(job))  # and then nothing more
    finished = {e.stage: e.state for e in events if e.kind == "stage"}
    assert set(finished.values()) == {"cached"} and not any(e.state == "succeeded" for e in events)
