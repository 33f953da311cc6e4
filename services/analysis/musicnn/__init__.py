"""The `musicnn` analysis backend: musicnn's trained music taggers, ported to torch and read from the
checkpoints in the `musicnn` wheel without TensorFlow (analyzer.py says what it hears and how).

Nothing is imported here, so that weights.py (which the CLI asks for its default) and frontend.py
(which tools/musicnn_reference.py runs under TensorFlow) load without torch.
"""
