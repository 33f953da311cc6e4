"""A job's options as a client asked for them, resolved against what this deployment serves."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TypeVar

from services.common.errors import InvalidInputError
from services.common.pb import job_pb2, stage_pb2
from services.common.stage_api import LISTENING_STORYTELLERS, ScriptInputs, SegmenterParams
from services.common.transport.convert import from_message, to_message
from services.common.untrusted import quoted
from gateway.pipeline.options import JobOptions

log = logging.getLogger(__name__)
T = TypeVar('T')

# Shorter segments are not scenes, and would let one request ask for thousands of clips.
MIN_SEGMENT_SECONDS = 1.0
SEGMENT_LENGTHS = ("min_seconds", "max_seconds", "random_min_seconds", "random_max_seconds")


@dataclass(frozen=True)
class BackendChoices:
    """The backends this deployment serves; the first of each is the default."""

    analyzers: tuple[str, ...]
    writers: tuple[str, ...]
    generators: tuple[str, ...]
    storytellers: tuple[str, ...] = ()  # LALM pipeline; none: the pipeline is refused
    transcribers: tuple[str, ...] = ()  # lyrics; first = default; none: no lyrics unless a job gives its own


def resolve_options(requested: job_pb2.JobOptions, choices: BackendChoices) -> job_pb2.JobOptions:
    """The options a job runs with, every default filled in; InvalidInputError for a bad one."""
    defaults = JobOptions()
    for name in SEGMENT_LENGTHS:
        if requested.segmenter.HasField(name) and getattr(requested.segmenter, name) < MIN_SEGMENT_SECONDS:
            raise InvalidInputError(f"segmenter.{name} must be at least {MIN_SEGMENT_SECONDS:g} s "
                                    f"(got {getattr(requested.segmenter, name):g})")
    pipeline = requested.pipeline or job_pb2.PIPELINE_CLAP
    if pipeline not in job_pb2.Pipeline.values():
        raise InvalidInputError(f"unknown pipeline {pipeline}; use PIPELINE_CLAP or PIPELINE_LALM")
    lalm = pipeline == job_pb2.PIPELINE_LALM
    if lalm and not choices.storytellers:
        raise InvalidInputError("this gateway serves no audio-language model, so only the CLAP pipeline "
                                "(PIPELINE_CLAP); its operator can enable one with MVGEN_STORYTELLERS")
    # A CLAP job uses no storyteller, but one it names must be served here, as a writer it names must.
    storyteller = (_backend("storyteller", requested.storyteller, choices.storytellers)
                   if lalm or requested.storyteller else "")
    resolved = job_pb2.JobOptions(
        pipeline=pipeline,
        segmenter=to_message(from_message(requested.segmenter, SegmenterParams), stage_pb2.SegmenterParams),
        analyzer=_backend("analyzer", requested.analyzer, choices.analyzers),
        top_k=requested.top_k or defaults.top_k,
        # In the LALM pipeline an empty writer means the storyteller writes the scenes itself.
        writer=(_backend("writer", requested.writer, choices.writers) if requested.writer or not lalm else ""),
        storyteller=storyteller if lalm else "",
        fallback_writer=(_backend("fallback writer", requested.fallback_writer, choices.writers)
                         if requested.fallback_writer else ""),
        script_inputs=to_message(from_message(requested.script_inputs, ScriptInputs), stage_pb2.ScriptInputs),
        generator=_backend("generator", requested.generator, choices.generators),
        transcriber=_transcriber(requested, choices, lalm and storyteller not in LISTENING_STORYTELLERS),
        lyrics=requested.lyrics,
        seed=requested.seed,
        fps=requested.fps or defaults.fps,
        width=requested.width or defaults.width,
        height=requested.height or defaults.height,
        transitions=requested.transitions or defaults.transitions,
    )
    job_options(resolved).check()
    return resolved


def _transcriber(requested: job_pb2.JobOptions, choices: BackendChoices, hears_itself: bool) -> str:
    """The lyrics transcriber: the one asked for, 'none', or the default where the job has an analysis stage."""
    if requested.transcriber == "none":
        return ""
    if requested.transcriber:
        return _backend("transcriber", requested.transcriber, choices.transcribers)
    return "" if hears_itself or not choices.transcribers else choices.transcribers[0]


def _backend(kind: str, requested: str, served: tuple[str, ...]) -> str:
    name = requested or served[0]
    if name not in served:
        raise InvalidInputError(f"unknown {kind} {quoted(name)}; "
                                f"this gateway serves: {', '.join(served) or 'none'}")
    return name


def job_options(options: job_pb2.JobOptions) -> JobOptions:
    """The orchestrator's form of resolved options."""
    return JobOptions(
        segmenter=from_message(options.segmenter, SegmenterParams),
        pipeline="lalm" if options.pipeline == job_pb2.PIPELINE_LALM else "clap", analyzer=options.analyzer,
        writer=options.writer, storyteller=options.storyteller or JobOptions.storyteller,
        fallback_writer=options.fallback_writer, generator=options.generator,
        script_inputs=from_message(options.script_inputs, ScriptInputs), seed=options.seed,
        top_k=options.top_k, fps=options.fps, width=options.width, height=options.height,
        transcriber=options.transcriber, lyrics=options.lyrics,
        transitions=options.transitions or JobOptions.transitions)
