"""The typed states (gateway/pipeline/states.py): the strings manifests hold, and the one mapping to the proto enums."""

from __future__ import annotations

import json

import pytest

from services.common.pb import job_pb2
from gateway.pipeline.states import STAGES, ClipState, EventState, JobState, Stage, StageState


def test_values_are_the_strings_manifests_hold():
    # Manifests on disk and in S3 were written with these strings: they must read the same.
    assert [str(s) for s in STAGES] == ["segmentation", "analysis", "scripting", "video", "assembly", "review"]
    assert {s.value for s in JobState} == {"queued", "running", "succeeded", "failed", "cancelled", "interrupted"}
    assert {s.value for s in StageState} == {"pending", "running", "succeeded", "failed", "skipped", "cancelled"}
    assert {s.value for s in ClipState} == {"pending", "running", "succeeded", "failed", "cancelled"}
    record = {"stages": {Stage.VIDEO: {"state": StageState.SUCCEEDED}}, "state": JobState.INTERRUPTED}
    assert json.dumps(record) == '{"stages": {"video": {"state": "succeeded"}}, "state": "interrupted"}'
    read_back = json.loads(json.dumps(record))
    assert read_back["stages"][Stage.VIDEO]["state"] == StageState.SUCCEEDED
    assert JobState(read_back["state"]) is JobState.INTERRUPTED


def test_terminal_states():
    assert {s for s in JobState if s.is_terminal} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert not JobState.INTERRUPTED.is_terminal  # a shutdown's: resumed at the next start
    assert {s for s in ClipState if s.is_terminal} == {ClipState.SUCCEEDED, ClipState.FAILED, ClipState.CANCELLED}
    assert {s for s in EventState if s.is_terminal} == {EventState.SUCCEEDED, EventState.CACHED, EventState.FAILED,
                                                         EventState.SKIPPED}
    assert [JobState.proto_is_terminal(v) for v in sorted(job_pb2.JobState.values())] == \
        [False, False, False, True, True, True]  # unspecified, queued, running, succeeded, failed, cancelled


@pytest.mark.parametrize("enum, proto_enum, prefix", [
    (Stage, job_pb2.Stage, "STAGE_"), (JobState, job_pb2.JobState, "JOB_STATE_"),
    (StageState, job_pb2.StageState, "STAGE_STATE_"), (ClipState, job_pb2.ClipState, "CLIP_STATE_")])
def test_one_mapping_to_and_from_the_proto_enums(enum, proto_enum, prefix):
    for value in proto_enum.values():
        if value == 0:
            assert enum.from_proto(value, None) is None
            with pytest.raises(ValueError):
                enum.from_proto(value)
            continue
        member = enum.from_proto(value)
        assert member.proto == value and prefix + member.name == proto_enum.Name(value)
    assert JobState.INTERRUPTED.proto == job_pb2.JOB_STATE_QUEUED  # clients see a job waiting to resume as queued


def test_a_state_this_version_does_not_know_reads_as_the_default():
    """A manifest written by a newer gateway (a state added later) must not stop this one from starting."""
    assert JobState.from_record("paused", JobState.QUEUED) is JobState.QUEUED
    assert JobState.from_record("failed", JobState.QUEUED) is JobState.FAILED
    assert StageState.from_record(None, StageState.PENDING) is StageState.PENDING
    assert ClipState.from_record("succeeded", ClipState.PENDING) is ClipState.SUCCEEDED
