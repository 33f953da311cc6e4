"""The `descriptors` analyser: librosa measures mapped onto the label vocabulary, on CPU, with no model.

Every label gets a soft membership in [0, 1] from one or two measures: logistic edges around a
documented threshold, or gaussians around a prototype. Memberships are then normalised over their
group, so that scores read like the CLAP analyser's softmax. The raw measures are kept beside the
labels (`measures`), so a person can see why a label won.

Thresholds were calibrated on synthesized audio whose properties are known (sine chords, noise,
kick/hat patterns at set tempi and levels; see tests/test_analysis.py). They are heuristics: they
separate clearly different passages well and say little about subtle ones. Genre is not guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from services.analysis.analyzer import Analyzer
from services.common.artifacts import LabelGroup, Labels, LabelScore, Segmentation, SegmentLabels
from services.common.errors import InvalidInputError, StageFailedError
from services.common.vocabulary import LABELS_DIR, SEGMENT_GROUPS, TRACK_GROUPS, LabelSet, load_vocabulary

N_FFT = 2048
HOP = 512  # ~23 ms at 22050 Hz: the frame rate of every descriptor
TEMPO_HOP = 256  # librosa's beat tracker quantises tempo coarsely at 512 (120 BPM reads 117.5)
POWER_FLOOR = 1e-10  # -100 dBFS: silence
HPSS_MEL_BANDS = 128
HPSS_KERNEL = (31, 17)  # (harmonic: frames along time, percussive: mel bands along frequency)
BASS_MAX_HZ = 200.0  # bass band: kick drums and bass lines live below this
# An onset is a peak of spectral flux this far above its neighbourhood (mean rise over mel bands, in
# dB): notes and hits give 3-30, a sustained tone or steady noise stays under 0.5. Absolute, not
# librosa's normalised default, so that a track with no onsets gets none.
ONSET_DELTA_DB = 1.0
SMOOTH_SECONDS = 1.0  # level curve for dynamics: long enough to average out single drum hits
RISE_SECONDS = 1.0  # a "sudden burst" rises within this span

# Intensity compares a level that is half absolute (dBFS) and half relative to the track's own loud
# parts placed at a typical master's loud level, so that a quiet recording is not all "soft" and a
# loud master is not all "intense".
REFERENCE_LOUD_DBFS = -12.0
INTENSITY_BOUNDS_DB = (-25.0, -17.0)  # soft | moderate | intense
INTENSITY_EDGE_DB = 2.0
TEMPO_EDGE_BPM = 3.0
MIN_PULSE_ONSETS_PER_S = 0.5  # fewer onsets than this: no beat to speak of
NO_PULSE_TEMPO_BPM = 60.0

# Mood prototypes on the valence (sad..happy) x arousal (calm..excited) plane (Russell's circumplex).
MOOD_PROTOTYPES = {
    "energetic": (0.3, 0.9),
    "uplifting": (0.8, 0.35),
    "calm": (0.55, -0.6),
    "dreamy": (0.0, -0.35),
    "melancholic": (-0.65, -0.5),
    "tense": (-0.6, 0.6),
}
MOOD_WIDTH = 0.4

# Krumhansl-Kessler key profiles, C first: the mean chroma of major and minor music.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# The label ids each rule below produces; load() checks them against prompts/labels.
RULE_IDS = {
    "instrumental_intensity": ["soft", "moderate", "intense"],
    "prominent_elements": ["percussive", "bass", "melodic", "bright", "noisy"],
    "dynamic_shift": ["building", "steady", "dropping", "burst", "fading"],
    "rhythmic_function": ["intro", "groove", "transition", "climax", "breakdown", "outro"],
    "tempo_range": ["slow", "moderate", "upbeat", "fast"],
    "mood": list(MOOD_PROTOTYPES),
}

WARM_UP_SAMPLE_RATE = 22050
GENRE_NOTE = "audio descriptors cannot tell genre; the clap analyzer can"


@dataclass
class _Frames:
    """Frame-level descriptors of the whole track, computed once and sliced per segment."""

    sr: int
    power: np.ndarray  # mean square of the samples per frame
    smooth_db: np.ndarray  # level curve in dBFS, averaged over SMOOTH_SECONDS
    rise_db: np.ndarray  # how far the level curve rose within the last RISE_SECONDS
    percussive: np.ndarray  # energy of the percussive part (HPSS) per frame
    mel_total: np.ndarray  # energy of the mel spectrogram HPSS splits, per frame
    spectral: np.ndarray  # total spectral energy per frame
    bass: np.ndarray  # spectral energy below BASS_MAX_HZ per frame
    centroid: np.ndarray  # Hz
    flatness: np.ndarray  # 0 (pure tones) .. 1 (white noise)
    onset_times: np.ndarray  # seconds
    chroma: np.ndarray  # 12 x frames

    def span(self, start: float, end: float) -> tuple[int, int]:
        """Frames [a, b) whose analysis window lies inside [start, end), so no frame straddles a cut."""
        half = N_FFT // 2
        a = int(np.ceil((start * self.sr + half) / HOP))
        b = int(np.floor((end * self.sr - half) / HOP)) + 1
        if b <= a:  # a segment shorter than one window: the frame nearest its middle
            a = int(round((start + end) / 2 * self.sr / HOP))
            b = a + 1
        last = self.power.size
        return min(a, last - 1), min(b, last)


class DescriptorAnalyzer(Analyzer):
    name = "descriptors"

    def __init__(self, labels_dir: Path = LABELS_DIR, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        self.labels_dir = labels_dir
        self.vocabulary: dict[str, LabelSet] = {}

    def _load(self) -> None:
        vocabulary = load_vocabulary(self.labels_dir)
        for group, ids in RULE_IDS.items():
            if sorted(vocabulary[group].ids()) != sorted(ids):
                raise StageFailedError(
                    f"label group {group}: the vocabulary has {vocabulary[group].ids()}, the descriptor rules {ids}")
        if any(style.data.get("mood") not in RULE_IDS["mood"] for style in vocabulary["visual_style"].labels):
            raise StageFailedError("every visual style needs the mood it belongs to (one of the mood label ids)")
        lower_bounds = [label.data.get("bpm", [None])[0] for label in vocabulary["tempo_range"].labels]
        if None in lower_bounds or lower_bounds != sorted(lower_bounds):
            raise StageFailedError("tempo_range labels need bpm: [low, high) bounds, in rising order")
        self.vocabulary = vocabulary
        # librosa compiles its numba kernels on first use (~4 s): pay that here, not in the first request.
        warm_up = np.random.default_rng(0).uniform(-0.1, 0.1, 2 * WARM_UP_SAMPLE_RATE).astype(np.float32)
        _frame_descriptors(warm_up, WARM_UP_SAMPLE_RATE)
        _estimate_tempo(warm_up, WARM_UP_SAMPLE_RATE)

    def analyze(self, samples: np.ndarray, sr: int, segmentation: Segmentation, top_k: int) -> Labels:
        if top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, not {top_k}")
        if not segmentation.segments:
            raise InvalidInputError("the segmentation has no segments")
        song_seconds = samples.size / sr
        if song_seconds < N_FFT / sr:
            raise InvalidInputError(f"the song is {song_seconds:.3f} s long: too short to analyse")
        last_end = segmentation.segments[-1].end
        if last_end > song_seconds + 0.5:
            raise InvalidInputError(f"the segments end at {last_end:.2f} s but the song is {song_seconds:.2f} s long")

        frames = _frame_descriptors(samples, sr)
        track = self._track_measures(samples, sr, frames, segmentation)
        measures = [_segment_measures(frames, s.start, s.end, song_seconds) for s in segmentation.segments]
        _add_context(measures, track)
        segments = []
        for segment, m in zip(segmentation.segments, measures):
            dynamics = _dynamic_shift(m)
            groups = {
                "instrumental_intensity": _partition(m["intensity_level_db"], INTENSITY_BOUNDS_DB, INTENSITY_EDGE_DB,
                                                     RULE_IDS["instrumental_intensity"]),
                "prominent_elements": _prominent_elements(m),
                "dynamic_shift": dynamics,
                "rhythmic_function": _rhythmic_function(m, dynamics),
            }
            ranked = {g: self._group(g, groups[g], top_k) for g in SEGMENT_GROUPS}
            segments.append(SegmentLabels(segment.index, ranked, m))
        return Labels(analyzer=self.name, track=self._track_groups(track, top_k), segments=segments,
                      track_measures=track)

    def _track_measures(self, samples: np.ndarray, sr: int, frames: _Frames,
                        segmentation: Segmentation) -> dict[str, float]:
        tracked = float(segmentation.tempo_bpm) if segmentation.tempo_bpm else _estimate_tempo(samples, sr)
        m = {
            "tempo_bpm": tracked,
            "tempo_from_segmenter": float(bool(segmentation.tempo_bpm)),
            "rms_dbfs": _db(frames.power.mean()),
            "loud_reference_dbfs": _loud_reference_db(frames),
            "spectral_centroid_hz": _weighted_mean(frames.centroid, frames.spectral),
            "percussive_ratio": _ratio(frames.percussive.sum(), frames.mel_total.sum()),
            "onset_rate_per_s": frames.onset_times.size / (samples.size / sr),
        }
        # A beat tracker always answers; with almost no onsets there is no beat to track, and the
        # music is felt as slow.
        m["effective_tempo_bpm"] = tracked if m["onset_rate_per_s"] >= MIN_PULSE_ONSETS_PER_S else NO_PULSE_TEMPO_BPM
        m["intensity_level_db"] = _intensity_level(m["rms_dbfs"], m["loud_reference_dbfs"])
        m |= _key_and_mode(frames.chroma, frames.power)
        m |= _valence_arousal(m)
        return m

    def _track_groups(self, m: dict[str, float], top_k: int) -> dict[str, LabelGroup]:
        tempo_set = self.vocabulary["tempo_range"]
        bounds = [float(label.data["bpm"][0]) for label in tempo_set.labels[1:]]
        source = "the segmenter's beat tracking" if m["tempo_from_segmenter"] else "the analyser's beat tracking"
        if m["effective_tempo_bpm"] == m["tempo_bpm"]:
            tempo_note = f"{m['tempo_bpm']:.1f} BPM from {source}; half or double tempo is possible"
        else:
            tempo_note = (f"no steady beat ({m['onset_rate_per_s']:.2f} onsets/s): read as "
                          f"{NO_PULSE_TEMPO_BPM:.0f} BPM, not the tracked {m['tempo_bpm']:.1f}")
        mood = _mood(m["valence"], m["arousal"])
        styles = self.vocabulary["visual_style"]
        groups = {
            "tempo_range": self._group(
                "tempo_range", _partition(m["effective_tempo_bpm"], bounds, TEMPO_EDGE_BPM, tempo_set.ids()),
                top_k, tempo_note),
            "mood": self._group(
                "mood", mood, top_k,
                f"valence {m['valence']:+.2f}, arousal {m['arousal']:+.2f} from mode, brightness, loudness, "
                "tempo, onsets and percussion; a heuristic"),
            "visual_style": self._group(
                "visual_style", {label.id: mood[label.data["mood"]] for label in styles.labels}, top_k,
                "one style per mood, scored as its mood"),
            "genre": LabelGroup([], GENRE_NOTE),
        }
        return {g: groups[g] for g in TRACK_GROUPS}

    def _group(self, group: str, memberships: dict[str, float], top_k: int, note: str = "") -> LabelGroup:
        order = self.vocabulary[group].ids()
        ranked = sorted(memberships.items(), key=lambda kv: (-kv[1], order.index(kv[0])))
        return LabelGroup([LabelScore(self.vocabulary[group].text(i), s) for i, s in ranked[:top_k]], note)


def _add_context(measures: list[dict[str, float]], track: dict[str, float]) -> None:
    """Measures that compare each segment with the whole track and with the other segments."""
    levels = np.array([m["rms_dbfs"] for m in measures])
    for m in measures:
        m["below_track_loud_db"] = track["loud_reference_dbfs"] - m["rms_dbfs"]
        m["end_below_track_loud_db"] = track["loud_reference_dbfs"] - m["end_dbfs"]
        m["intensity_level_db"] = _intensity_level(m["rms_dbfs"], track["loud_reference_dbfs"])
        m["relative_to_median_db"] = m["rms_dbfs"] - float(np.median(levels))
        m["below_loudest_segment_db"] = float(levels.max()) - m["rms_dbfs"]
        m["track_percussive_ratio"] = track["percussive_ratio"]


def _intensity_level(rms_dbfs: float, loud_reference_dbfs: float) -> float:
    return 0.5 * rms_dbfs + 0.5 * (REFERENCE_LOUD_DBFS - (loud_reference_dbfs - rms_dbfs))


def _frame_descriptors(samples: np.ndarray, sr: int) -> _Frames:
    y = np.ascontiguousarray(samples, dtype=np.float32)
    stft = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    power_spec = stft**2
    # HPSS on a mel spectrogram: the same split as on the full STFT at a tenth of the cost (a
    # 4-minute song: ~1 s, not ~18 s); the kernels span 0.7 s and 17 of 128 mel bands.
    mel_power = librosa.filters.mel(sr=sr, n_fft=N_FFT, n_mels=HPSS_MEL_BANDS) @ power_spec
    _, percussive = librosa.decompose.hpss(mel_power, kernel_size=HPSS_KERNEL, power=2.0)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=N_FFT)
    power = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0] ** 2
    onset_env = librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP)
    # Causal (trailing) averages, so that a loud entry shows in the segment it starts, not before it.
    smooth = int(SMOOTH_SECONDS * sr / HOP)
    rise = int(RISE_SECONDS * sr / HOP)
    smooth_db = 10 * np.log10(np.maximum(_trailing(power, smooth, np.mean), POWER_FLOOR))
    return _Frames(
        sr=sr,
        power=power,
        smooth_db=smooth_db,
        rise_db=smooth_db - _trailing(smooth_db, rise + 1, np.min),
        percussive=percussive.sum(axis=0),
        mel_total=mel_power.sum(axis=0),
        spectral=power_spec.sum(axis=0),
        bass=power_spec[freqs < BASS_MAX_HZ].sum(axis=0),
        centroid=librosa.feature.spectral_centroid(S=stft, sr=sr)[0],
        flatness=librosa.feature.spectral_flatness(S=stft)[0],
        onset_times=librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr, hop_length=HOP, units="time",
                                               normalize=False, delta=ONSET_DELTA_DB),
        chroma=librosa.feature.chroma_stft(S=power_spec, sr=sr),
    )


def _trailing(x: np.ndarray, width: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    """reduce() over the `width` values ending at each frame (the first frames see fewer)."""
    padded = np.pad(x, (width - 1, 0), mode="edge")
    return reduce(sliding_window_view(padded, width), axis=1)


def _segment_measures(f: _Frames, start: float, end: float, song_seconds: float) -> dict[str, float]:
    a, b = f.span(start, end)
    power, spectral = f.power[a:b], f.spectral[a:b]
    third = max(1, (b - a) // 3)
    frame_db = 10 * np.log10(np.maximum(power, POWER_FLOOR))
    slope = float(np.polyfit(np.arange(b - a) * HOP / f.sr, frame_db, 1)[0]) if b - a > 2 else 0.0
    end_frames = max(1, min(b - a, int(SMOOTH_SECONDS * f.sr / HOP)))
    return {
        "start_fraction": start / song_seconds,
        "end_fraction": min(end / song_seconds, 1.0),
        "rms_dbfs": _db(power.mean()),
        "end_dbfs": _db(power[-end_frames:].mean()),
        "level_change_db": _db(power[-third:].mean()) - _db(power[:third].mean()),
        "level_slope_db_per_s": slope,
        "max_rise_db": float(f.rise_db[a:b].max()),
        "spectral_centroid_hz": _weighted_mean(f.centroid[a:b], spectral),
        "spectral_flatness": _weighted_mean(f.flatness[a:b], spectral),
        "percussive_ratio": _ratio(f.percussive[a:b].sum(), f.mel_total[a:b].sum()),
        "bass_ratio": _ratio(f.bass[a:b].sum(), spectral.sum()),
        "onset_rate_per_s": float(((f.onset_times >= start) & (f.onset_times < end)).sum()) / max(end - start, 1e-9),
    }


def _loud_reference_db(f: _Frames) -> float:
    """The level of the track's loud parts: the 90th percentile of the smoothed level of audible frames."""
    audible = f.smooth_db[f.smooth_db > -80.0]
    return float(np.percentile(audible, 90)) if audible.size else -100.0


def _prominent_elements(m: dict[str, float]) -> dict[str, float]:
    # Several elements can stand out at once: memberships are independent, scaled down only when
    # they add up to more than 1, so a segment where nothing stands out keeps low scores.
    memberships = {
        # HPSS percussive share of the energy (sustained tones ~0.01, a pop verse ~0.12, a drum-heavy
        # chorus ~0.28, drums alone 0.7), gated by onsets: steady noise is half "percussive" to HPSS.
        "percussive": _rise(m["percussive_ratio"], 0.15, 0.04) * _rise(m["onset_rate_per_s"], 0.7, 0.2),
        # Share of energy below 200 Hz; a bass line or kick under the mix ~0.3-0.5, a bass solo 0.9.
        "bass": _rise(m["bass_ratio"], 0.4, 0.08),
        # Harmonic (not percussive) and tonal (not noise-like) energy.
        "melodic": _rise(0.5 - m["percussive_ratio"], 0.0, 0.06) * _rise(0.08 - m["spectral_flatness"], 0.0, 0.02),
        # Spectral centroid: pads and voices ~500-1500 Hz, hats and cymbals 4 kHz+.
        "bright": _rise(m["spectral_centroid_hz"], 2500.0, 400.0),
        # Spectral flatness: tones ~0.001, dense mixes ~0.01-0.05, noise and distortion 0.2+.
        "noisy": _rise(m["spectral_flatness"], 0.12, 0.03),
    }
    total = max(1.0, sum(memberships.values()))
    return {k: v / total for k, v in memberships.items()}


def _dynamic_shift(m: dict[str, float]) -> dict[str, float]:
    change = m["level_change_db"]  # last third vs first third of the segment
    burst = _rise(m["max_rise_db"], 10.0, 1.5)  # 10 dB up within a second: an entry, a drop
    # Fading: the last second falls well below the segment's level, down toward silence.
    fading = _rise(m["rms_dbfs"] - m["end_dbfs"], 6.0, 1.5) * _rise(m["end_below_track_loud_db"], 24.0, 3.0)
    return _normalise({
        "building": _rise(change, 4.0, 1.2) * (1 - burst),
        "steady": _gauss(change, 0.0, 2.5) * (1 - burst) * (1 - fading),
        "dropping": _rise(-change, 4.0, 1.2) * (1 - fading),
        "burst": burst,
        "fading": fading,
    })


def _rhythmic_function(m: dict[str, float], dynamics: dict[str, float]) -> dict[str, float]:
    # Position decides intro and outro (within ~8% of either end). In between, loudness relative to
    # the other segments decides climax; being quieter, or losing the drums of a track that has
    # them, decides breakdown; a segment whose energy moves is a transition; the rest is groove.
    early = float(np.exp(-m["start_fraction"] / 0.08))
    late = float(np.exp(-(1.0 - m["end_fraction"]) / 0.08))
    middle = (1 - early) * (1 - late)
    louder = _rise(m["relative_to_median_db"], 2.0, 1.0) * _rise(-m["below_loudest_segment_db"], -2.0, 0.75)
    quieter = _rise(-m["relative_to_median_db"], 4.0, 1.5)
    drums_out = (_rise(m["track_percussive_ratio"], 0.08, 0.02)
                 * _rise(0.35 - m["percussive_ratio"] / max(m["track_percussive_ratio"], 1e-9), 0.0, 0.08))
    calmer = max(quieter, drums_out)
    moving = dynamics["building"] + dynamics["dropping"]
    return _normalise({
        "intro": early,
        "groove": middle * (1 - louder) * (1 - calmer) * (1 - moving),
        "transition": middle * moving,
        "climax": middle * louder * (1 - moving),
        "breakdown": middle * calmer * (1 - moving),
        "outro": late,
    })


def _estimate_tempo(samples: np.ndarray, sr: int) -> float:
    env = librosa.onset.onset_strength(y=samples, sr=sr, hop_length=TEMPO_HOP)
    tempo, _ = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=TEMPO_HOP)
    return float(np.atleast_1d(tempo)[0])


def _key_and_mode(chroma: np.ndarray, power: np.ndarray) -> dict[str, float]:
    """Correlate the energy-weighted mean chroma with the 24 rotated key profiles."""
    mean = (chroma * power[: chroma.shape[1]]).sum(axis=1)
    if not np.any(mean > 0) or np.allclose(mean, mean[0]):
        return {"key_tonic_pitch_class": 0.0, "major_minus_minor": 0.0}
    major = [np.corrcoef(mean, np.roll(MAJOR_PROFILE, k))[0, 1] for k in range(12)]
    minor = [np.corrcoef(mean, np.roll(MINOR_PROFILE, k))[0, 1] for k in range(12)]
    best_major, best_minor = int(np.argmax(major)), int(np.argmax(minor))
    tonic = best_major if major[best_major] >= minor[best_minor] else best_minor
    return {"key_tonic_pitch_class": float(tonic), "major_minus_minor": float(major[best_major] - minor[best_minor])}


def _valence_arousal(m: dict[str, float]) -> dict[str, float]:
    # Each term maps a measure onto [-1, 1] around a typical value; the spans are the ranges seen
    # between clearly calm and clearly excited (or sad and happy) synthesized passages.
    tempo = _clip((m["effective_tempo_bpm"] - 110.0) / 40.0)
    arousal = float(np.mean([
        tempo,
        _clip((m["intensity_level_db"] + 20.0) / 8.0),
        _clip((m["onset_rate_per_s"] - 2.5) / 2.0),
        _clip((m["percussive_ratio"] - 0.15) / 0.15),
    ]))
    valence = (0.7 * _clip(m["major_minus_minor"] / 0.15)
               + 0.2 * _clip((m["spectral_centroid_hz"] - 1800.0) / 1200.0)
               + 0.1 * tempo)
    return {"valence": float(valence), "arousal": arousal}


def _mood(valence: float, arousal: float) -> dict[str, float]:
    return _normalise({
        mood: _gauss(float(np.hypot(valence - v, arousal - a)), 0.0, MOOD_WIDTH)
        for mood, (v, a) in MOOD_PROTOTYPES.items()
    })


def _partition(x: float, bounds: tuple[float, ...] | list[float], edge: float, ids: list[str]) -> dict[str, float]:
    """Memberships of x in the ordered ranges split at `bounds`, with logistic edges; they sum to 1."""
    above = [_rise(x, b, edge) for b in bounds]
    values = [1 - above[0]] + [above[i] - above[i + 1] for i in range(len(above) - 1)] + [above[-1]]
    return dict(zip(ids, values))


def _normalise(memberships: dict[str, float]) -> dict[str, float]:
    total = sum(memberships.values())
    if total <= 1e-12:
        return {k: 1.0 / len(memberships) for k in memberships}
    return {k: v / total for k, v in memberships.items()}


def _rise(x: float, threshold: float, width: float) -> float:
    """Logistic membership: 0.5 at threshold, 0.73 one width above, 0.95 three widths above."""
    return float(1.0 / (1.0 + np.exp(np.clip(-(x - threshold) / width, -60.0, 60.0))))


def _gauss(x: float, centre: float, width: float) -> float:
    return float(np.exp(-0.5 * ((x - centre) / width) ** 2))


def _clip(x: float) -> float:
    return float(np.clip(x, -1.0, 1.0))


def _db(power: float) -> float:
    return float(10 * np.log10(max(float(power), POWER_FLOOR)))


def _ratio(part: float, whole: float) -> float:
    return float(part / whole) if whole > POWER_FLOOR else 0.0


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(weights.sum())
    return float((values * weights).sum() / total) if total > POWER_FLOOR else 0.0
