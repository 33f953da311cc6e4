"""Make a music video through the gateway with the generated stubs (`make proto`).

    MVGEN_SERVER=localhost:50050 MVGEN_TOKEN=... python examples/python_client.py song.mp3 video.mp4
"""

import os
import sys
import urllib.request
import uuid

import grpc

from services.common.pb import job_pb2, stage_pb2
from services.common.pb import music_video_service_pb2 as api
from services.common.pb import music_video_service_pb2_grpc as api_grpc

song_path, video_path = sys.argv[1], sys.argv[2]
auth = [("authorization", f"Bearer {os.environ['MVGEN_TOKEN']}")]
stub = api_grpc.MusicVideoServiceStub(grpc.insecure_channel(os.environ.get("MVGEN_SERVER", "localhost:50050")))


def upload_messages(data: bytes, chunk: int = 1 << 20):
    yield api.UploadSongRequest(metadata=api.UploadSongMetadata(file_name=os.path.basename(song_path),
                                                                size_bytes=len(data)))
    for start in range(0, len(data), chunk):
        yield api.UploadSongRequest(chunk=data[start:start + chunk])


with open(song_path, "rb") as f:
    song = stub.UploadSong(upload_messages(f.read()), metadata=auth).song

options = job_pb2.JobOptions(segmenter=stage_pb2.SegmenterParams(segmenter="rules"), fps=24, width=640, height=360)
# The request id makes CreateJob safe to retry: the same id returns the same job.
job = stub.CreateJob(api.CreateJobRequest(request_id=str(uuid.uuid4()), song_id=song.song_id, options=options),
                     metadata=auth).job

for event in stub.WatchJob(api.WatchJobRequest(job_id=job.job_id), metadata=auth):
    if event.HasField("job"):  # a snapshot: the first message, and each change of the job's state
        print("job", job_pb2.JobState.Name(event.job.state))
    elif event.HasField("clip") and event.clip.state == job_pb2.CLIP_STATE_SUCCEEDED:
        print("clip", event.clip.index, "done")

result = stub.GetJob(api.GetJobRequest(job_id=job.job_id), metadata=auth)
if result.job.state != job_pb2.JOB_STATE_SUCCEEDED:
    sys.exit(f"job {job_pb2.JobState.Name(result.job.state)}: {result.job.error_message}")
urllib.request.urlretrieve(result.video_url, video_path)  # a presigned URL of final.mp4
print("video:", video_path)
