"""Job options through a gateway on loopback: a backend this gateway does not serve is refused
whichever option names it, even one the job's pipeline would not use."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from services.common.errors import InvalidInputError
from services.common.pb import job_pb2
from services.common.pb import music_video_service_pb2 as api_pb2
from services.common.store import LocalArtifactStore
from tests.test_gateway import AUTH, RunningGateway, songs, upload  # noqa: F401 (songs is a fixture)


def test_an_unknown_storyteller_is_refused_on_a_clap_job_as_an_unknown_writer_is(tmp_path, songs):  # noqa: F811
    gateway = RunningGateway(LocalArtifactStore(tmp_path / "store"))
    try:
        song_id = upload(gateway.stub, songs / "short.wav").song_id
        for options, says in ((job_pb2.JobOptions(writer="nonesuch"), "unknown writer 'nonesuch'"),
                              (job_pb2.JobOptions(storyteller="nonesuch"), "unknown storyteller 'nonesuch'"),
                              (job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_CLAP, storyteller="openai-audio"),
                               "unknown storyteller 'openai-audio'; this gateway serves: none")):
            with pytest.raises(grpc.RpcError) as refused:
                gateway.stub.CreateJob(api_pb2.CreateJobRequest(song_id=song_id, options=options), metadata=AUTH)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert says in refused.value.details()
        assert not gateway.stub.ListJobs(api_pb2.ListJobsRequest(), metadata=AUTH).jobs
    finally:
        gateway.stop()


def test_a_storyteller_the_gateway_serves_is_accepted_on_a_clap_job_and_not_used():
    from gateway.server.options import BackendChoices, resolve_options

    choices = BackendChoices(("descriptors",), ("template",), ("animatic",), ("openai-audio",))
    resolved = resolve_options(job_pb2.JobOptions(storyteller="openai-audio"), choices)
    assert (resolved.pipeline, resolved.writer, resolved.storyteller) == (job_pb2.PIPELINE_CLAP, "template", "")


def test_lyrics_are_transcribed_by_the_deployments_default_where_the_job_has_an_analysis_stage():
    from gateway.server.options import BackendChoices, job_options, resolve_options

    choices = BackendChoices(("descriptors",), ("template", "llamacpp"), ("animatic",), ("openai-audio", "cascade"),
                             ("whisper",))
    clap = resolve_options(job_pb2.JobOptions(), choices)
    assert clap.transcriber == "whisper" and job_options(clap).wants_lyrics
    assert resolve_options(job_pb2.JobOptions(transcriber="none"), choices).transcriber == ""
    cascade = resolve_options(job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM, storyteller="cascade"), choices)
    assert cascade.transcriber == "whisper" and job_options(cascade).runs_analysis
    # An audio-language model hears the song itself: no analysis stage, so no lyrics by default ...
    audio = resolve_options(job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM), choices)
    assert audio.storyteller == "openai-audio" and audio.transcriber == ""
    # ... and none on request, in one line saying why.
    with pytest.raises(InvalidInputError, match="lyrics are heard by the analysis stage, which the LALM pipeline "
                                                "skips when an audio-language model"):
        resolve_options(job_pb2.JobOptions(pipeline=job_pb2.PIPELINE_LALM, lyrics="la la la"), choices)
    with pytest.raises(InvalidInputError, match="unknown transcriber 'nonesuch'; this gateway serves: whisper"):
        resolve_options(job_pb2.JobOptions(transcriber="nonesuch"), choices)
    # A deployment that serves no transcriber makes no lyrics, unless the job brings its own.
    bare = BackendChoices(("descriptors",), ("template",), ("animatic",))
    assert resolve_options(job_pb2.JobOptions(), bare).transcriber == ""
    own = resolve_options(job_pb2.JobOptions(lyrics="[00:01.00] la la la"), bare)
    assert own.lyrics == "[00:01.00] la la la" and job_options(own).wants_lyrics


def test_lyrics_past_the_limit_are_refused_and_the_manifest_names_them_by_digest():
    from gateway.pipeline.options import MAX_LYRICS_CHARS, JobOptions

    with pytest.raises(InvalidInputError, match=f"the lyrics are longer than {MAX_LYRICS_CHARS} characters"):
        JobOptions(lyrics="la " * MAX_LYRICS_CHARS).check()
    recorded = JobOptions(lyrics="la la la\n").to_dict()["lyrics"]
    assert recorded == {"sha256": hashlib.sha256(b"la la la\n").hexdigest(), "chars": 9}
    assert JobOptions().to_dict()["lyrics"] == ""
