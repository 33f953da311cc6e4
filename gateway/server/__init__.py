"""The public gateway: MusicVideoService over gRPC (`python -m gateway.server`).

app.py starts and stops it; servicer.py answers the calls; songs.py keeps uploads; the job registry
(registry.py) creates, runs, cancels and resumes jobs, each seen by clients through its JobStatus
(status.py) and remembered in the store (records.py); options.py resolves what a job asks for
against what this deployment serves; auth.py and metrics.py are interceptors.
"""
