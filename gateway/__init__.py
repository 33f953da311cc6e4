"""Orchestration: the job orchestrator, its stage clients (in-process and gRPC) and the CLI."""
