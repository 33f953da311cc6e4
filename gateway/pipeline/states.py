"""The states of a job, its stages and its clips, the stages themselves, and what a JobEvent says.

Each is a StrEnum whose values are the strings the manifest has always held, so a manifest written
before (in a run folder or in S3) reads the same, a member serializes to the same JSON, and a member
equals the plain string it stands for (`JobState.FAILED == "failed"`). A raw string read back from a
manifest becomes a member with `JobState(raw)`.

Each enum that has a counterpart in the public contract (services/common/pb/job_pb2: JobState,
Stage, StageState, ClipState) maps to and from it here, and only here, by name: `member.proto`,
`Enum.from_proto(value)`. JOB_STATE_<NAME> is JobState.<NAME>, STAGE_<NAME> is Stage.<NAME>, and so
on; the one state without a counterpart, a job the manifest calls interrupted, is QUEUED to clients.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from services.common.pb import job_pb2

E = TypeVar("E", bound="ProtoMapped")
_MISSING: Any = object()


class ProtoMapped(StrEnum):
    """A StrEnum with a counterpart among the proto enums (see the module's docstring)."""

    @classmethod
    def from_record(cls: type[E], raw: Any, default: E) -> E:
        """The member a manifest's string names; `default` for a missing one or one this version does not
        know (a manifest written by a newer gateway must not stop this one from starting)."""
        try:
            return cls(raw) if raw is not None else default
        except ValueError:
            return default

    @property
    def proto(self) -> Any:  # an int; typed as the proto enum (job_pb2.JobState, ...) where it is assigned
        """The proto enum's value for this member."""
        return _TO_PROTO[type(self)][self]

    @classmethod
    def from_proto(cls: type[E], value: int, default: Any = _MISSING) -> E:
        """The member for a proto enum's value; `default` (if given) for UNSPECIFIED or a value unknown here."""
        member = _FROM_PROTO[cls].get(value)
        if member is None:
            if default is _MISSING:
                raise ValueError(f"{value!r} is not a known {cls.__name__} of the contract")
            return default
        return member


class Stage(ProtoMapped):
    """The six stages, in the order a job runs them; review judges a finished video and never fails it."""

    SEGMENTATION = "segmentation"
    ANALYSIS = "analysis"
    SCRIPTING = "scripting"
    VIDEO = "video"
    ASSEMBLY = "assembly"
    REVIEW = "review"


class JobState(ProtoMapped):
    """A job's state: the manifest's (running, then how it ended, or interrupted), and QUEUED for clients."""

    QUEUED = "queued"  # to clients: created, waiting for a slot or the stages, or to resume; no manifest says it
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # in the manifest: stopped by a shutdown, not terminal, so it resumes at the next start

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_JOB

    @classmethod
    def proto_is_terminal(cls, value: int) -> bool:
        """Whether a job_pb2.JobState value is a terminal state (UNSPECIFIED, a job not seen yet, is not)."""
        state = cls.from_proto(value, None)
        return state is not None and state.is_terminal


class StageState(ProtoMapped):
    """A stage's state. The manifest records pending, running, succeeded, failed and skipped (a stage whose
    output was reused is "succeeded" with `reused_from`); CANCELLED is what clients see of a stage a
    cancelled or failed job stopped."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_STAGE


class ClipState(ProtoMapped):
    """A clip's state. The manifest records pending, running, succeeded and failed; CANCELLED is what
    clients see of a clip a cancelled or failed job stopped."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_CLIP


class EventKind(StrEnum):
    """What a JobEvent is about: a stage, or one clip of the video stage."""

    STAGE = "stage"
    CLIP = "clip"


class EventState(StrEnum):
    """What a JobEvent says happened."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"  # made by this run
    CACHED = "cached"  # its outputs were already there, or copied from another job's
    FAILED = "failed"
    SKIPPED = "skipped"  # a stage the job's pipeline does not run
    PROGRESS = "progress"  # a clip's fraction; a part of the scripting stage (the plan, a section)
    RETRYING = "retrying"  # a clip starts again from nothing

    @property
    def is_terminal(self) -> bool:
        """Whether the stage or clip is done with (no more events about it in this run)."""
        return self in _TERMINAL_EVENT


_TERMINAL_JOB = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
_TERMINAL_STAGE = frozenset({StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED, StageState.CANCELLED})
_TERMINAL_CLIP = frozenset({ClipState.SUCCEEDED, ClipState.FAILED, ClipState.CANCELLED})
_TERMINAL_EVENT = frozenset({EventState.SUCCEEDED, EventState.CACHED, EventState.FAILED, EventState.SKIPPED})

STAGES: tuple[Stage, ...] = tuple(Stage)


def _by_name(enum: type[ProtoMapped], proto_enum: Any, prefix: str) -> dict[Any, int]:
    """Each member's proto value of the same name (JobState.SUCCEEDED: JOB_STATE_SUCCEEDED), for every member
    the contract names; every value of the proto enum but UNSPECIFIED must have its member, so that a state
    added to the contract cannot be missed here."""
    names = set(proto_enum.keys())
    mapping = {member: proto_enum.Value(prefix + member.name) for member in enum if prefix + member.name in names}
    unmatched = set(proto_enum.values()) - {0} - set(mapping.values())
    if unmatched:
        raise AssertionError(f"{proto_enum.DESCRIPTOR.name} values without a {enum.__name__}: "
                             f"{[proto_enum.Name(v) for v in sorted(unmatched)]}")
    return mapping


_SAME_NAME: dict[type[ProtoMapped], dict[Any, int]] = {
    Stage: _by_name(Stage, job_pb2.Stage, "STAGE_"),
    JobState: _by_name(JobState, job_pb2.JobState, "JOB_STATE_"),
    StageState: _by_name(StageState, job_pb2.StageState, "STAGE_STATE_"),
    ClipState: _by_name(ClipState, job_pb2.ClipState, "CLIP_STATE_"),
}
_FROM_PROTO: dict[type[ProtoMapped], dict[int, Any]] = {
    enum: {value: member for member, value in mapping.items()} for enum, mapping in _SAME_NAME.items()}
# Members without a proto value of their name: an interrupted job waits to resume, QUEUED to clients (and
# QUEUED comes back as QUEUED).
_TO_PROTO: dict[type[ProtoMapped], dict[Any, int]] = {
    **_SAME_NAME, JobState: _SAME_NAME[JobState] | {JobState.INTERRUPTED: job_pb2.JOB_STATE_QUEUED}}
assert all(member in mapping for enum, mapping in _TO_PROTO.items() for member in enum), \
    "a member without a proto value"
