"""One job through the six stages, whoever started it (the `mvgen` CLI or the gateway server).

The Orchestrator (orchestrator.py) drives a job (options.py: what it asks for) and keeps its
memory in the manifest (manifest.py) beside its artifacts (layout.py: where each lives),
reporting JobEvents (events.py); states.py types the states of the job, its stages and clips, and maps
them to the contract's enums. It calls the stages through StageClients (stage_clients.py):
in this process (inprocess.py) or over gRPC (grpc_stages.py, clips through video_pool.py).
"""
