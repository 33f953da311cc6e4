"""Everything outside the stages, by role.

pipeline/  one job through the six stages: the orchestrator, the manifest, the stage clients
server/    the public gRPC gateway: songs, the job registry, auth, metrics (the gateway image)
cli/       `mvgen`: generate in this process, or submit to a gateway and watch
"""
