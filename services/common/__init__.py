"""What the stages and the gateway must agree on: artifacts, audio decoding, frame arithmetic, the store.

Nothing here imports gRPC or a model framework, so every image can carry it.
"""
