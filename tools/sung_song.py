"""Songs with words at known times: a synthesized song (tools/synth_song) with a voice over it.

The voice is espeak-ng (Debian's `espeak-ng`, installed by `make setup`) saying known sentences
at known times, mixed over the music at a chosen level. It is speech, not singing: a transcriber
that hears it in the right places is checked on words whose text and times are known, and the
same music without the voice checks that it invents none. No model, no network.

    python -m tools.sung_song OUT.wav [--seconds S] [--seed N]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from tools.synth_song import SongTruth, synthesize_song

ESPEAK = "espeak-ng"
VOICE_LEVEL = 0.8  # the voice's peak over the music's (-1 dBFS): clearly above it, as a lead vocal is mixed
WORDS_PER_MINUTE = 140  # espeak's default is 175; slower is nearer a sung line


@dataclass(frozen=True)
class Line:
    text: str
    start: float  # seconds, when the voice starts
    end: float  # seconds, when it stops (measured from the rendered speech)


# Sentences with concrete, common words (a transcriber of 74 M parameters spells them right) that
# differ from each other, so that a word found in the wrong segment is noticed.
LINES = (
    "The river carries paper boats beneath the silver bridge",
    "Golden lanterns float across the midnight sky",
    "A red fox runs through the frozen forest",
    "We dance together on the empty station platform",
)


def speak(text: str, sample_rate: int, voice: str = "en", words_per_minute: int = WORDS_PER_MINUTE) -> np.ndarray:
    """`text` spoken by espeak-ng, mono float32 at `sample_rate`, peak 1."""
    if shutil.which(ESPEAK) is None:
        raise RuntimeError(f"{ESPEAK} is not installed: run `make setup` (apt-get install espeak-ng)")
    wav = subprocess.run([ESPEAK, "--stdout", "-v", voice, "-s", str(words_per_minute), text],
                         capture_output=True, check=True, timeout=60).stdout
    speech, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    if speech.ndim > 1:
        speech = speech.mean(axis=1)
    speech = resample_poly(speech, sample_rate, rate).astype(np.float32)
    nonzero = np.flatnonzero(np.abs(speech) > 1e-3)  # espeak pads with silence: keep the times true
    speech = speech[nonzero[0]:nonzero[-1] + 1] if nonzero.size else speech
    return speech / max(float(np.abs(speech).max()), 1e-9)


def sung_song(seconds: float, lines: list[tuple[float, str]], *, seed: int = 0, tempo: float = 120.0,
              voice: str = "en", voice_level: float = VOICE_LEVEL,
              structure: str = "short") -> tuple[np.ndarray, SongTruth, list[Line]]:
    """A synthesized song (stereo float32) with each (start, text) of `lines` spoken over it."""
    music, truth = synthesize_song(seconds, tempo, seed, structure=structure)
    rate = truth.sample_rate
    mix = music.copy()
    said = []
    for start, text in lines:
        speech = speak(text, rate, voice) * voice_level
        first = round(start * rate)
        if first + speech.size > mix.shape[0]:
            raise ValueError(f"the line {text!r} at {start} s runs past the song's end ({truth.duration:.1f} s)")
        mix[first:first + speech.size] += speech[:, None]
        said.append(Line(text, start, start + speech.size / rate))
    peak = float(np.abs(mix).max())
    if peak > 1.0:  # the voice on top of a -1 dBFS peak: scale back rather than clip
        mix /= peak
    return mix, truth, said


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.sung_song", description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="WAV file to write")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    step = args.seconds / len(LINES)
    audio, truth, said = sung_song(args.seconds, [(1.0 + i * step, text) for i, text in enumerate(LINES)],
                                   seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(args.output), audio, truth.sample_rate, subtype="PCM_16")
    for line in said:
        print(f"{line.start:6.2f}-{line.end:6.2f} s  {line.text}")


if __name__ == "__main__":
    main()
