"""Job options through a gateway on loopback: a backend this gateway does not serve is refused
whichever option names it, even one the job's pipeline would not use."""

from __future__ import annotations

import grpc
import pytest

from services.common.pb import job_pb2, music_video_service_pb2 as api_pb2
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
    from gateway.jobs import BackendChoices, resolve_options

    choices = BackendChoices(("descriptors",), ("template",), ("animatic",), ("openai-audio",))
    resolved = resolve_options(job_pb2.JobOptions(storyteller="openai-audio"), choices)
    assert (resolved.pipeline, resolved.writer, resolved.storyteller) == (job_pb2.PIPELINE_CLAP, "template", "")
