"""Synthesize songs whose structure is known, for the demo, the tests and the benchmarks.

`render_song` composes a short pop song with pretty_midi and renders it with tinysoundfont through
the General MIDI soundfont that ships inside pretty_midi (TimGM6mb.sf2): no network, no model.
Its sections differ in instrumentation and dynamics, start on bar lines at a fixed tempo, and are
returned as a `SongTruth`, so a segmenter's change points and tempo can be checked against it.

`click_track` is a plain numpy pulse at a known tempo, for tests that need beats and nothing else.

    python -m tools.synth_song OUT.wav [--seconds S] [--tempo BPM] [--seed N]
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile
import tinysoundfont
import tinysoundfont.midi

SAMPLE_RATE = 44100
BEATS_PER_BAR = 4
RING_OUT_SECONDS = 1.5  # the last chord decays for this long after the final bar
SOUNDFONT = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"

# Section name and its share of the song's bars; boundaries fall on bar lines. Songs of several minutes
# take a structure with more parts, as real songs have.
SECTION_PLAN = (("intro", 2), ("verse", 4), ("chorus", 4), ("breakdown", 2), ("outro", 3))
STRUCTURES = {
    "short": SECTION_PLAN,
    "pop": (("intro", 2), ("verse", 4), ("chorus", 4), ("verse", 4), ("chorus", 4), ("breakdown", 2),
            ("chorus", 4), ("outro", 2)),
    "ballad": (("intro", 3), ("verse", 5), ("verse", 5), ("chorus", 4), ("breakdown", 3), ("chorus", 4),
               ("outro", 3)),
    "dance": (("intro", 4), ("chorus", 4), ("breakdown", 2), ("verse", 4), ("chorus", 6), ("breakdown", 3),
              ("chorus", 6), ("outro", 2)),
}

# General MIDI programs (0-based) and drum keys.
PIANO, ELECTRIC_PIANO, CELESTA, FINGER_BASS, STRINGS, SQUARE_LEAD, WARM_PAD = 0, 4, 8, 33, 48, 80, 89
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH = 36, 38, 42, 46, 49

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
PENTATONIC = (0, 2, 4, 7, 9)
# Four-chord loops as scale degrees (0 = I); one chord per bar.
PROGRESSIONS = ((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 5, 4))
KEY_ROOTS = (60, 62, 63, 65, 67, 57)  # C, D, Eb, F, G, A (middle octave)


@dataclass(frozen=True)
class Section:
    name: str
    start: float  # seconds
    end: float


@dataclass(frozen=True)
class SongTruth:
    """What the song is made of: what a segmenter should find."""

    tempo_bpm: float
    duration: float  # seconds, of the rendered audio
    sections: tuple[Section, ...]
    sample_rate: int

    @property
    def boundaries(self) -> list[float]:
        """The change points: where each section after the first begins, in seconds."""
        return [s.start for s in self.sections[1:]]


def render_song(path: str | Path, seconds: float = 60.0, tempo: float = 120.0, seed: int = 0,
                structure: str = "short") -> SongTruth:
    """Write a stereo 44.1 kHz 16-bit WAV song of about `seconds` (bar-aligned) to `path`."""
    audio, truth = synthesize_song(seconds, tempo, seed, structure=structure)
    soundfile.write(str(path), audio, truth.sample_rate, subtype="PCM_16")
    return truth


def synthesize_song(seconds: float = 60.0, tempo: float = 120.0, seed: int = 0,
                    sample_rate: int = SAMPLE_RATE, structure: str = "short") -> tuple[np.ndarray, SongTruth]:
    """The song as float32 samples of shape (n, 2) in [-1, 1], and its truth."""
    midi, sections = compose(seconds, tempo, seed, STRUCTURES[structure])
    duration = sections[-1].end + RING_OUT_SECONDS
    audio = render_midi(midi, duration, sample_rate)
    truth = SongTruth(tempo_bpm=float(tempo), duration=audio.shape[0] / sample_rate,
                      sections=tuple(sections), sample_rate=sample_rate)
    return audio, truth


def compose(seconds: float, tempo: float, seed: int,
            plan: tuple[tuple[str, int], ...] = SECTION_PLAN) -> tuple[pretty_midi.PrettyMIDI, list[Section]]:
    """The song as MIDI: intro (soft piano), verse (drums, bass, electric piano), chorus (loud: drums
    with crash and open hats, bass, strings, square lead), breakdown (pad and celesta, no drums), outro
    (piano and strings, ending on the tonic)."""
    if not 30 <= tempo <= 300:
        raise ValueError(f"tempo {tempo} BPM is outside 30-300")
    bar_seconds = BEATS_PER_BAR * 60.0 / tempo
    total_bars = round(seconds / bar_seconds)
    if total_bars < len(plan):
        raise ValueError(f"{seconds} s at {tempo} BPM is {total_bars} bars; the song needs at least {len(plan)}")

    rng = np.random.default_rng(seed)
    song = _Song(tempo, KEY_ROOTS[rng.integers(len(KEY_ROOTS))], PROGRESSIONS[rng.integers(len(PROGRESSIONS))], rng)
    write_bar = {"intro": song.intro, "verse": song.verse, "chorus": song.chorus, "breakdown": song.breakdown,
                 "outro": song.outro}
    # Cumulative rounding keeps every section at least one bar long and the total exact.
    shares = np.cumsum([share for _, share in plan]) / sum(share for _, share in plan)
    ends = [round(total_bars * s) for s in shares]
    starts = [0] + ends[:-1]
    sections = []
    for (name, _), first, end in zip(plan, starts, ends):
        for bar in range(first, end):
            (song.ending if bar == total_bars - 1 else write_bar[name])(bar)
        sections.append(Section(name, first * bar_seconds, end * bar_seconds))
    return song.midi(), sections


def render_midi(midi: pretty_midi.PrettyMIDI, duration: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Render with tinysoundfont; peak-normalised to -1 dBFS so the sections keep their relative loudness."""
    synth = tinysoundfont.Synth(samplerate=sample_rate)
    synth.sfload(str(SOUNDFONT))
    sequencer = tinysoundfont.Sequencer(synth)
    data = io.BytesIO()
    midi.write(data)
    sequencer.add(tinysoundfont.midi.load_memory(data.getvalue()))
    frames = int(round(duration * sample_rate))
    audio = np.frombuffer(synth.generate(frames), dtype=np.float32).reshape(-1, 2).copy()
    fade = min(frames, int(RING_OUT_SECONDS * sample_rate))
    audio[frames - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio *= np.float32(10 ** (-1 / 20) / peak)
    return audio


def click_track(seconds: float, tempo: float, sample_rate: int = 22050, first_beat: float = 0.0) -> np.ndarray:
    """Mono float32 pulse: a 40 ms decaying 1 kHz blip on every beat from `first_beat`, accented on the bar."""
    samples = np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)
    t = np.arange(int(0.04 * sample_rate)) / sample_rate
    blip = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.008)).astype(np.float32)
    for i, beat in enumerate(np.arange(first_beat, seconds, 60.0 / tempo)):
        start = int(round(beat * sample_rate))
        piece = blip[: samples.size - start]
        samples[start:start + piece.size] += piece * (0.9 if i % BEATS_PER_BAR == 0 else 0.6)
    return samples


class _Song:
    """Writes the bars of each section into one instrument per part."""

    def __init__(self, tempo: float, key_root: int, progression: tuple[int, ...], rng: np.random.Generator):
        self.beat = 60.0 / tempo
        self.tempo = tempo
        self.key_root = key_root
        self.progression = progression
        self.rng = rng
        self.melody_step = 0  # position in the pentatonic scale, a random walk across bars
        self.parts = {
            "piano": pretty_midi.Instrument(PIANO, name="piano"),
            "electric piano": pretty_midi.Instrument(ELECTRIC_PIANO, name="electric piano"),
            "celesta": pretty_midi.Instrument(CELESTA, name="celesta"),
            "bass": pretty_midi.Instrument(FINGER_BASS, name="bass"),
            "strings": pretty_midi.Instrument(STRINGS, name="strings"),
            "lead": pretty_midi.Instrument(SQUARE_LEAD, name="lead"),
            "pad": pretty_midi.Instrument(WARM_PAD, name="pad"),
            "drums": pretty_midi.Instrument(0, is_drum=True, name="drums"),
        }

    def midi(self) -> pretty_midi.PrettyMIDI:
        # The resolution makes every eighth note a whole number of ticks, so note times are exact.
        midi = pretty_midi.PrettyMIDI(initial_tempo=self.tempo, resolution=480)
        midi.instruments = [part for part in self.parts.values() if part.notes]
        return midi

    # --- sections: one call per bar -------------------------------------------------------------

    def intro(self, bar: int) -> None:
        chord = self._chord(bar)
        self._play("piano", chord[0] - 12, bar, 0, 4, 80)
        for eighth in range(8):  # a gentle broken chord
            self._play("piano", chord[(0, 1, 2, 1)[eighth % 4]] + 12 * (eighth >= 4), bar, eighth / 2, 0.5, 96)

    def verse(self, bar: int) -> None:
        chord = self._chord(bar)
        self._drums(bar, kick=(0, 2, 2.5), hat=np.arange(0, 4, 0.5), velocity=72)
        for eighth in range(8):
            self._play("bass", chord[0] - 24, bar, eighth / 2, 0.45, 76)
        for beat in (0, 1.5, 2.5):
            for note in chord:
                self._play("electric piano", note, bar, beat, 0.9, 85)

    def chorus(self, bar: int) -> None:
        chord = self._chord(bar)
        self._drums(bar, kick=(0, 1, 2, 3), hat=np.arange(0.5, 4, 1.0), velocity=112, open_hat=True,
                    crash=bar % 4 == 0)
        for eighth in range(8):
            self._play("bass", chord[0] - 24 + 12 * (eighth % 2), bar, eighth / 2, 0.45, 110)
        for note in chord + [chord[0] + 12]:
            self._play("strings", note, bar, 0, 4, 100)
        self._melody(bar, chord, velocity=105)

    def breakdown(self, bar: int) -> None:
        chord = self._chord(bar)
        for note in chord:
            self._play("pad", note, bar, 0, 4, 56)
        self._play("bass", chord[0] - 24, bar, 0, 4, 70)
        for beat in range(4):
            self._play("celesta", chord[beat % 3] + 24, bar, beat, 1, 80)

    def outro(self, bar: int) -> None:
        chord = self._chord(bar)
        for note in chord:
            self._play("strings", note - 12, bar, 0, 4, 58)
        for beat in (0, 2):
            for note in chord:
                self._play("piano", note, bar, beat, 2, 55)
        self._play("piano", chord[0] - 12, bar, 0, 4, 50)

    def ending(self, bar: int) -> None:
        """The final bar: the tonic chord, held into the ring-out."""
        chord = [self.key_root + i for i in (0, 4, 7)]
        for note in chord:
            self._play("strings", note - 12, bar, 0, 4, 58)
        for note in chord + [chord[0] - 12]:
            self._play("piano", note, bar, 0, 4 + RING_OUT_SECONDS / self.beat, 60)

    # --- parts ------------------------------------------------------------------------------------

    def _chord(self, bar: int) -> list[int]:
        """The bar's triad (root, third, fifth) in the key, root near middle C."""
        degree = self.progression[bar % len(self.progression)]
        return [self.key_root + MAJOR_SCALE[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]

    def _drums(self, bar: int, kick: tuple[float, ...], hat: np.ndarray, velocity: int,
               open_hat: bool = False, crash: bool = False) -> None:
        for beat in kick:
            self._play("drums", KICK, bar, beat, 0.25, velocity)
        for beat in (1, 3):
            self._play("drums", SNARE, bar, beat, 0.25, velocity)
        for beat in hat:
            self._play("drums", OPEN_HAT if open_hat else CLOSED_HAT, bar, float(beat), 0.25, velocity - 20)
        if crash:
            self._play("drums", CRASH, bar, 0, 1, velocity)

    def _melody(self, bar: int, chord: list[int], velocity: int) -> None:
        """A pentatonic random walk in quarters and eighths, starting each bar on a chord tone."""
        rhythm = ((0, 1, 2, 3), (0, 1, 1.5, 2, 3), (0, 0.5, 1, 2, 2.5, 3))[self.rng.integers(3)]
        for i, beat in enumerate(rhythm):
            if i == 0:
                note = chord[self.rng.integers(3)] + 12
            else:
                self.melody_step = int(np.clip(self.melody_step + self.rng.choice((-2, -1, 1, 2)), 0, 9))
                note = self.key_root + 12 + PENTATONIC[self.melody_step % 5] + 12 * (self.melody_step // 5)
            end = rhythm[i + 1] if i + 1 < len(rhythm) else 4
            self._play("lead", note, bar, beat, end - beat, velocity)

    def _play(self, part: str, pitch: int, bar: int, beat: float, beats: float, velocity: int) -> None:
        start = (bar * BEATS_PER_BAR + beat) * self.beat
        self.parts[part].notes.append(pretty_midi.Note(velocity, int(pitch), start, start + beats * self.beat))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.synth_song",
                                     description="Synthesize a short song with known sections and tempo.")
    parser.add_argument("output", type=Path, help="WAV file to write")
    parser.add_argument("--seconds", type=float, default=60.0, help="length before the final ring-out (default 60)")
    parser.add_argument("--tempo", type=float, default=120.0, help="beats per minute (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="picks key, chord loop and melody (default 0)")
    parser.add_argument("--structure", choices=sorted(STRUCTURES), default="short",
                        help="the order of its parts (default short: intro, verse, chorus, breakdown, outro)")
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        truth = render_song(args.output, args.seconds, args.tempo, args.seed, args.structure)
    except ValueError as exc:
        parser.error(str(exc))
    sections = ", ".join(f"{s.name} {s.start:.1f}-{s.end:.1f} s" for s in truth.sections)
    print(f"{args.output}: {truth.duration:.1f} s at {truth.tempo_bpm:g} BPM; {sections}")


if __name__ == "__main__":
    main()
