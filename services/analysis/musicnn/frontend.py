"""musicnn's input: a log-compressed mel spectrogram at 16 kHz, cut into 3-second patches.

numpy and librosa only (no torch), so that tools/musicnn_reference.py can compute the very same
input inside a TensorFlow environment.
"""

from __future__ import annotations

import librosa
import numpy as np

# musicnn/configuration.py and the models' config.json: what the networks were trained on.
SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256  # 16 ms per frame
N_MELS = 96
PATCH_FRAMES = 187  # 3 s: librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1, as upstream
LOG_GAIN = 10000.0  # the "logC" compression: log10(10000 * mel + 1)


def log_mel(samples: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """(frames, 96) float32 log-mel of mono audio; frame i is centred at i * HOP / 16000 seconds."""
    audio = np.ascontiguousarray(samples, dtype=np.float32)
    if sr != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLE_RATE)
    mel = librosa.feature.melspectrogram(y=audio, sr=SAMPLE_RATE, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS)
    # Upstream (musicnn/extractor.py) casts the mel power to float16 and takes this log in float16:
    # 10000 * x overflows float16 (max 65504) as soon as a mel bin's power passes 6.55, which music at
    # ordinary levels does, so the input fills with inf, the network's output turns NaN or constant, and
    # every song gets the same tags. The log is taken in float32 here, where it never overflows; the
    # float16 rounding upstream also applied changes a value by at most 0.05%, below what matters.
    return np.log10(LOG_GAIN * mel.T.astype(np.float32) + 1.0, dtype=np.float32)


def repeat_pad(frames: np.ndarray, length: int = PATCH_FRAMES) -> np.ndarray:
    """Exactly `length` frames: a shorter piece is repeated until it fills them ("repeat-pad", how the
    models' training padded clips shorter than a patch, config.json `pad_short`); a longer one is cut."""
    if frames.shape[0] == 0:
        raise ValueError("no frames to pad")
    if frames.shape[0] >= length:
        return frames[:length]
    return np.tile(frames, (-(-length // frames.shape[0]), 1))[:length]
