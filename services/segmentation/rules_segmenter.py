"""The rules segmenter: cuts where a video editor would make them.

A segment ends at the first of:
- `change`: the sound changes: a peak of a novelty curve (how much the `novelty_window_seconds`
  after each instant differ from those before it, in broad log-mel bands) above an adaptive
  threshold (local median + `novelty_threshold` × local MAD, with a floor), moved to the new
  section's first attack, then snapped to the nearest beat within `snap_tolerance_seconds`;
- `beats`: `beats_per_cut` beats have passed since the last cut;
- `max`: the segment reached `max_seconds`; moved back to a beat just inside the limit when one
  is within the snap tolerance, never beyond it.
No cut comes sooner than `min_seconds` after the previous one. A beat cut that would leave a
detected change less than `min_seconds` later is moved onto that change (an editor cuts on the
change rather than just before it), provided the segment stays within `max_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import find_peaks

from services.common.artifacts import Segment
from services.common.stage_api import SegmenterParams
from services.segmentation.cuts import Cut, segments_from_cuts

HOP_LENGTH = 256  # at 22050 Hz, 11.6 ms frames; beat tracking reads tempo better than at 512
N_FFT = 2048
N_MELS = 64  # for the onset envelope that drives beat tracking
TIMBRE_BANDS = 16  # novelty compares broad bands (4 mel bands each): instrumentation and loudness, not notes
MIN_BAND_STD_DB = 1.0  # bands that barely move are not amplified into noise by standardization
MIN_SPREAD = 0.5  # in standard deviations: keeps the effect size finite between steady windows
THRESHOLD_WINDOW_SECONDS = 12.0  # span of the local median and MAD the novelty is compared with
NOVELTY_FLOOR = 0.5  # a change is at least this big, whatever the local statistics
ONSET_SEARCH_BEFORE_SECONDS = 0.3  # how far before a novelty peak the new section's first attack is looked for
ONSET_SEARCH_AFTER_SECONDS = 0.05  # onset peaks can trail the novelty peak by a frame or two


@dataclass(frozen=True)
class RulesResult:
    segments: list[Segment]
    tempo_bpm: float | None  # None when no beat was found
    beats: list[float]  # seconds
    changes: list[float]  # every detected change point (seconds), whether cut at or not


@dataclass(frozen=True)
class Features:
    frame_seconds: float
    bands_db: np.ndarray  # (TIMBRE_BANDS, frames) log energy in broad mel bands
    onset_envelope: np.ndarray  # (frames,)


def segment_rules(samples: np.ndarray, sample_rate: int, params: SegmenterParams) -> RulesResult:
    """Segment mono `samples` (any rate; the features are tuned at 22050 Hz)."""
    duration = samples.size / sample_rate
    features = compute_features(samples, sample_rate)
    tempo, beats = track_beats(features, sample_rate)
    window = _frames(params.novelty_window_seconds, features)
    novelty = novelty_curve(features.bands_db, window)
    peaks = pick_peaks(novelty, window, _frames(THRESHOLD_WINDOW_SECONDS, features), params.novelty_threshold)
    changes = snap_to_beats(move_to_onsets(peaks, features), beats, params.snap_tolerance_seconds)
    cuts = place_cuts(duration, beats, changes, params)
    segments = segments_from_cuts(cuts, duration, params.min_seconds, params.max_seconds, split_reason="max")
    return RulesResult(segments, tempo, [float(b) for b in beats], [float(c) for c in changes])


def compute_features(samples: np.ndarray, sample_rate: int) -> Features:
    power = librosa.feature.melspectrogram(y=samples, sr=sample_rate, n_fft=N_FFT, hop_length=HOP_LENGTH,
                                           n_mels=N_MELS)
    onset_envelope = librosa.onset.onset_strength(S=librosa.power_to_db(power, ref=np.max, top_db=80.0),
                                                  sr=sample_rate, hop_length=HOP_LENGTH)
    bands = power.reshape(TIMBRE_BANDS, N_MELS // TIMBRE_BANDS, -1).sum(axis=1)
    return Features(HOP_LENGTH / sample_rate, librosa.power_to_db(bands, ref=np.max, top_db=80.0), onset_envelope)


def track_beats(features: Features, sample_rate: int) -> tuple[float | None, np.ndarray]:
    """Tempo (BPM) and beat times (seconds). On synthetic tracks the phase may lock to off-beats.

    Weak beats at the ends are kept (no trimming): librosa trims against the song's mean onset
    strength, which drops every beat of a soft ending after a loud chorus."""
    tempo, beat_frames = librosa.beat.beat_track(onset_envelope=features.onset_envelope, sr=sample_rate,
                                                 hop_length=HOP_LENGTH, trim=False)
    beats = beat_frames.astype(float) * features.frame_seconds
    bpm = float(np.atleast_1d(tempo)[0])
    return (bpm if beats.size and bpm > 0 else None), beats


def novelty_curve(bands_db: np.ndarray, window_frames: int) -> np.ndarray:
    """For each frame, how much the next `window_frames` frames differ from the previous ones.

    Log band energies are standardized per band over the song; per band, the difference of the two
    windows' means is divided by their pooled spread (an effect size, so a band that fluctuates with
    the notes must move further than a steady one); the curve is the RMS of that over bands. A step
    change gives a peak at the step. Window sums come from cumulative sums: linear in the length.
    """
    std = np.maximum(bands_db.std(axis=1, keepdims=True), MIN_BAND_STD_DB)
    standardized = (bands_db - bands_db.mean(axis=1, keepdims=True)) / std
    frames = standardized.shape[1]
    zero = np.zeros((standardized.shape[0], 1))
    sums = np.concatenate([zero, np.cumsum(standardized, axis=1)], axis=1)
    squares = np.concatenate([zero, np.cumsum(standardized ** 2, axis=1)], axis=1)
    t = np.arange(frames + 1)
    lo, hi = np.maximum(t - window_frames, 0), np.minimum(t + window_frames, frames)
    before_n, after_n = np.maximum(t - lo, 1), np.maximum(hi - t, 1)  # windows are cut short at the ends
    before_mean = (sums[:, t] - sums[:, lo]) / before_n
    after_mean = (sums[:, hi] - sums[:, t]) / after_n
    before_var = np.maximum((squares[:, t] - squares[:, lo]) / before_n - before_mean ** 2, 0.0)
    after_var = np.maximum((squares[:, hi] - squares[:, t]) / after_n - after_mean ** 2, 0.0)
    effect = (after_mean - before_mean) ** 2 / ((before_var + after_var) / 2 + MIN_SPREAD ** 2)
    novelty = np.sqrt(effect.mean(axis=0))
    # A change needs at least half a window on each side: no false peaks from the song's edges.
    novelty[np.minimum(t - lo, hi - t) < max(1, window_frames // 2)] = 0.0
    return novelty[:frames]


def adaptive_threshold(novelty: np.ndarray, window_frames: int, k: float) -> np.ndarray:
    """Local median + k × local MAD, never below NOVELTY_FLOOR."""
    size = max(3, window_frames | 1)
    median = median_filter(novelty, size=size, mode="nearest")
    mad = median_filter(np.abs(novelty - median), size=size, mode="nearest")
    return np.maximum(median + k * mad, NOVELTY_FLOOR)


def pick_peaks(novelty: np.ndarray, window_frames: int, threshold_frames: int, k: float) -> np.ndarray:
    """Frames of novelty peaks above the adaptive threshold; of two closer than a window, the higher."""
    peaks, _ = find_peaks(novelty, height=adaptive_threshold(novelty, threshold_frames, k), distance=window_frames)
    return peaks


def move_to_onsets(peak_frames: np.ndarray, features: Features) -> np.ndarray:
    """Change times (seconds): each novelty peak moved to the strongest onset from
    ONSET_SEARCH_BEFORE_SECONDS before it to ONSET_SEARCH_AFTER_SECONDS after. The peak lags the
    change when the old section's sounds ring on (releases, reverb, slow attacks); the new section
    is heard from its first attack."""
    before = _frames(ONSET_SEARCH_BEFORE_SECONDS, features)
    after = _frames(ONSET_SEARCH_AFTER_SECONDS, features)
    onset_peaks, _ = find_peaks(features.onset_envelope)
    frames = []
    for peak in peak_frames:
        near = onset_peaks[(onset_peaks >= peak - before) & (onset_peaks <= peak + after)]
        frames.append(near[np.argmax(features.onset_envelope[near])] if near.size else peak)
    return np.asarray(frames, dtype=float) * features.frame_seconds


def snap_to_beats(times: np.ndarray, beats: np.ndarray, tolerance: float) -> np.ndarray:
    """Move each time to its nearest beat when that beat is at most `tolerance` away."""
    if beats.size == 0 or times.size == 0:
        return times
    nearest = beats[np.abs(beats[None, :] - times[:, None]).argmin(axis=1)]
    return np.unique(np.where(np.abs(nearest - times) <= tolerance, nearest, times))


def place_cuts(duration: float, beats: np.ndarray, changes: np.ndarray, params: SegmenterParams) -> list[Cut]:
    """Walk through the song, cutting by the rules in the module docstring. A remainder shorter than
    the minimum is left for `segments_from_cuts` to merge or split."""
    cuts: list[Cut] = []
    last = 0.0
    while True:
        earliest, latest = last + params.min_seconds, last + params.max_seconds
        change = _first_in(changes, earliest, latest)
        beat = _beat_cut(beats, last + params.snap_tolerance_seconds, earliest, latest, params.beats_per_cut)
        if change is not None and (beat is None or change <= beat):
            cut = Cut(change, "change")
        elif beat is not None:
            # Lookahead: a change just after the beat cut would make a segment shorter than the minimum.
            near_change = _first_in(changes, beat, min(beat + params.min_seconds, latest))
            cut = Cut(near_change, "change") if near_change is not None else Cut(beat, "beats")
        else:
            cut = Cut(_max_cut(beats, earliest, latest, params.snap_tolerance_seconds), "max")
        if cut.time >= duration:
            return cuts
        cuts.append(cut)
        last = cut.time


def _beat_cut(beats: np.ndarray, after: float, earliest: float, latest: float, beats_per_cut: int) -> float | None:
    """The `beats_per_cut`-th beat after `after`, or the first beat allowed by the minimum if later.
    (`after` is the last cut plus the snap tolerance: a beat that close to a cut is the cut's own.)"""
    counted = beats[beats > after]
    if counted.size < beats_per_cut:
        return None
    beat = counted[beats_per_cut - 1]
    if beat < earliest:
        beat = _first_in(counted, earliest, latest)
    return None if beat is None or beat > latest else float(beat)


def _max_cut(beats: np.ndarray, earliest: float, latest: float, tolerance: float) -> float:
    """`latest`, or the last beat inside it when one is within `tolerance` (and not before `earliest`)."""
    inside = beats[(beats <= latest) & (beats >= max(latest - tolerance, earliest))]
    return float(inside[-1]) if inside.size else latest


def _first_in(times: np.ndarray, lo: float, hi: float) -> float | None:
    inside = times[(times >= lo) & (times <= hi)]
    return float(inside[0]) if inside.size else None


def _frames(seconds: float, features: Features) -> int:
    return max(1, int(round(seconds / features.frame_seconds)))
