"""Regenerate tests/data/musicnn_reference.json: upstream musicnn's own TensorFlow outputs on fixed inputs.

mvgen runs musicnn in torch (services/analysis/musicnn/); tests/test_musicnn.py checks that port
against what this tool records from the original TensorFlow code. It NEEDS TensorFlow, which
mvgen does not install, so it runs in a separate environment (measured on the 2-core machine:
1 min 47 s to install, 2.6 GB):

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tf-keras librosa
    /tmp/tfvenv/bin/pip install --no-deps musicnn==0.1.0   # its own pins (numpy<1.17) predate Python 3.11
    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. /tmp/tfvenv/bin/python tools/musicnn_reference.py

TF_USE_LEGACY_KERAS=1: musicnn builds its layers with tf.compat.v1.layers, which TensorFlow >= 2.16
only provides through tf-keras.

What it records, for MTT_musicnn and MSD_musicnn:
- `patches`: the tag probabilities of upstream's network (musicnn.models.define_model, restored by
  tf.train.Saver from the wheel's checkpoint) on fixed log-mel patches of audio synthesized here
  (`reference_patches`, which the test recomputes); and the network's variables, so the test can
  check that the port uses exactly those;
- `upstream_frontend`: upstream's whole pipeline (musicnn.extractor: its own float16 spectrogram, then
  the network) on quiet audio, where its float16 log still holds, and on loud audio, where it overflows.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from services.analysis.musicnn.frontend import HOP, N_FFT, N_MELS, PATCH_FRAMES, SAMPLE_RATE, log_mel, repeat_pad

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "musicnn_reference.json"
MODELS = ("MTT_musicnn", "MSD_musicnn")
FLOAT16_MAX = 65504.0
QUIET_PEAK = 0.002  # low enough that upstream's float16 10000 * mel stays finite
LOUD_PEAK = 0.9


# --- audio synthesized here (numpy only, seeded: the same samples in any environment) ---------------

def plucked_tones(seconds: float, peak: float, seed: int = 0) -> np.ndarray:
    """Pentatonic notes every 0.4 s, six harmonics each, decaying: a plucked or struck instrument."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    t = np.arange(int(0.8 * SAMPLE_RATE)) / SAMPLE_RATE
    for start in np.arange(0.0, seconds, 0.4):
        f0 = 220.0 * 2 ** (rng.choice([0, 2, 4, 7, 9, 12, 14]) / 12)
        note = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 7)) * np.exp(-t * 5)
        a = int(start * SAMPLE_RATE)
        n = min(note.size, out.size - a)
        out[a:a + n] += note[:n]
    return _peak(out, peak)


def drum_pattern(seconds: float, peak: float, seed: int = 0) -> np.ndarray:
    """Kick on 1 and 3, noise snare on 2 and 4, closed hats on eighths, 120 BPM."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * (45 * t + 6 * (1 - np.exp(-t * 25)))) * np.exp(-t * 10)
    snare = rng.uniform(-1, 1, t.size) * np.exp(-t * 18) * 0.6
    hat = np.diff(rng.uniform(-1, 1, t.size + 1)) * np.exp(-t * 60) * 0.3
    for i, start in enumerate(np.arange(0.0, seconds, 0.25)):
        hits = [hat] + ([kick] if i % 4 == 0 else []) + ([snare] if i % 4 == 2 else [])
        a = int(start * SAMPLE_RATE)
        for sound in hits:
            n = min(sound.size, out.size - a)
            out[a:a + n] += sound[:n]
    return _peak(out, peak)


def noisy_sweep(seconds: float, peak: float, seed: int = 0) -> np.ndarray:
    """A rising sine sweep (200 Hz to 4 kHz) over white noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sweep = np.sin(2 * np.pi * (200 * t + (3800 / (2 * seconds)) * t**2))
    return _peak(sweep + 0.5 * np.random.default_rng(seed).uniform(-1, 1, t.size), peak)


def _peak(x: np.ndarray, peak: float) -> np.ndarray:
    return (peak * x / np.abs(x).max()).astype(np.float32)


def reference_patches() -> dict[str, np.ndarray]:
    """The fixed (187, 96) log-mel patches the networks are compared on."""
    patches = {
        "tones": log_mel(plucked_tones(3.2, 0.3))[:PATCH_FRAMES],
        "drums": log_mel(drum_pattern(3.2, 0.5))[:PATCH_FRAMES],
        "sweep": log_mel(noisy_sweep(3.2, 0.2))[:PATCH_FRAMES],
        "short_tones_repeat_padded": repeat_pad(log_mel(plucked_tones(1.2, 0.1, seed=3))),
        "loud_drums": log_mel(drum_pattern(3.2, LOUD_PEAK, seed=5))[:PATCH_FRAMES],
        "random_values": np.random.default_rng(7).uniform(0.0, 4.0, (PATCH_FRAMES, N_MELS)).astype(np.float32),
    }
    assert all(p.shape == (PATCH_FRAMES, N_MELS) for p in patches.values())
    return patches


def upstream_frontend_audio() -> dict[str, np.ndarray]:
    """6.5 s pieces (two upstream patches each) for upstream's own spectrogram code."""
    return {
        "quiet_tones": plucked_tones(6.5, QUIET_PEAK, seed=11),
        "quiet_drums": drum_pattern(6.5, QUIET_PEAK, seed=12),
        "loud_tones": plucked_tones(6.5, LOUD_PEAK, seed=11),
        "loud_drums": drum_pattern(6.5, LOUD_PEAK, seed=12),
    }


def max_mel_power(audio: np.ndarray) -> float:
    import librosa

    return float(librosa.feature.melspectrogram(y=audio, sr=SAMPLE_RATE, hop_length=HOP, n_fft=N_FFT,
                                                n_mels=N_MELS).max())


def _compact_json(value: object) -> str:
    """Indented JSON with every list of numbers on one line, probabilities to 8 decimals (float32 holds ~7)."""
    text = json.dumps(_rounded(value), indent=1)
    return re.sub(r"\[\s+([-0-9.e,\snul]+?)\s+\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",")
                  + "]", text) + "\n"


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, 8)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --- TensorFlow (only in main) -------------------------------------------------------------------------

def _tf_network(model: str):
    """Upstream's graph and session with the checkpoint restored, as musicnn.extractor builds them."""
    import musicnn
    import tensorflow as tf
    from musicnn import models

    tf.compat.v1.reset_default_graph()
    x = tf.compat.v1.placeholder(tf.float32, [None, PATCH_FRAMES, N_MELS])
    logits = models.define_model(x, False, model, 50)[0]
    probabilities = tf.nn.sigmoid(logits)
    session = tf.compat.v1.Session()
    # extractor.py restores inside a bare `except:`, which would hide a failed restore: not here.
    tf.compat.v1.train.Saver().restore(session, os.path.join(os.path.dirname(musicnn.__file__), model) + "/")
    names = sorted(v.name.removesuffix(":0") for v in tf.compat.v1.global_variables())
    return session, x, probabilities, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REFERENCE)
    args = parser.parse_args()
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        sys.exit("set TF_USE_LEGACY_KERAS=1 (musicnn's tf.compat.v1.layers need tf-keras)")
    import soundfile
    import tensorflow as tf
    from musicnn.extractor import extractor

    patches = reference_patches()
    batch = np.stack(list(patches.values()))
    reference: dict = {
        "generated_by": "tools/musicnn_reference.py",
        "tensorflow": tf.__version__,
        "patch_names": list(patches),
        "patch_sums": [float(p.astype(np.float64).sum()) for p in patches.values()],
        "models": {},
        "upstream_frontend": {"max_mel_power": {}, "models": {}},
    }
    for model in MODELS:
        session, x, probabilities, names = _tf_network(model)
        tags = session.run(probabilities, feed_dict={x: batch})
        session.close()
        reference["models"][model] = {"variables": names, "patches": tags.tolist()}

    audio = upstream_frontend_audio()
    with tempfile.TemporaryDirectory() as folder:
        for name, samples in audio.items():
            reference["upstream_frontend"]["max_mel_power"][name] = max_mel_power(samples)
            soundfile.write(f"{folder}/{name}.wav", samples, SAMPLE_RATE, subtype="FLOAT")
        for model in MODELS:
            taggrams = {}
            for name in audio:
                taggram, _ = extractor(f"{folder}/{name}.wav", model=model, input_length=3, extract_features=False)
                # NaN (what overflowed input gives) is not JSON: written as null.
                taggrams[name] = [[None if np.isnan(v) else float(v) for v in row] for row in taggram]
            reference["upstream_frontend"]["models"][model] = taggrams
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_compact_json(reference))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
