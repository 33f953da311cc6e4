"""Talking to language models: chat clients (an OpenAI-compatible server, a local llama.cpp server,
the in-process vLLM engine), the script's JSON schema, reasoning stripping and the repair loop."""
