"""The descriptor analyser and the analysis stage, on audio synthesized here with known properties."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile

from services.analysis.descriptors import DescriptorAnalyzer
from services.analysis.stage import AnalysisStage
from services.common import artifacts
from services.common.artifacts import Labels, Segment, Segmentation
from services.common.errors import InvalidInputError, StageFailedError
from services.common.lifecycle import BackendState
from services.common.stage_api import AnalyzeRequest
from services.common.store import LocalArtifactStore
from services.common.vocabulary import LABELS_DIR, SEGMENT_GROUPS, TRACK_GROUPS, load_vocabulary

SR = 22050
A_MAJOR_TRIAD = (220.0, 277.18, 329.63)
C_MAJOR_CADENCE = [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)]  # I IV V I
A_MINOR_CADENCE = [(57, 60, 64), (62, 65, 69), (64, 67, 71), (57, 60, 64)]  # i iv v i
VOCABULARY = load_vocabulary()


# --- synthesized audio ------------------------------------------------------------------------------

def chord(freqs: tuple[float, ...], seconds: float, amp: float) -> np.ndarray:
    """Sustained sine tones: harmonic, tonal, no onsets, no percussion."""
    t = np.arange(int(seconds * SR)) / SR
    return (amp * sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)).astype(np.float32)


def progression(triads: list[tuple[int, int, int]], seconds_each: float, amp: float) -> np.ndarray:
    return np.concatenate([chord(tuple(440.0 * 2 ** ((n - 69) / 12) for n in triad), seconds_each, amp)
                           for triad in triads])


def noise(seconds: float, amp: float, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).uniform(-1, 1, int(seconds * SR))).astype(np.float32)


def drums(bpm: float, seconds: float, amp: float, seed: int = 0) -> np.ndarray:
    """A kick and a noise hit on every beat: one uniform pulse, which a beat tracker cannot halve."""
    out = np.zeros(int(seconds * SR), np.float32)
    kick_t = np.arange(int(0.25 * SR)) / SR
    kick = np.sin(2 * np.pi * (50 * kick_t + 2 * (1 - np.exp(-kick_t * 30)))) * np.exp(-kick_t * 12)
    hit_n = int(0.15 * SR)
    hit = 0.5 * np.random.default_rng(seed).uniform(-1, 1, hit_n) * np.exp(-np.arange(hit_n) / SR * 25)
    for start in np.arange(0, seconds, 60.0 / bpm):
        a = int(start * SR)
        for sound in (kick, hit):
            n = min(sound.size, out.size - a)
            out[a:a + n] += sound[:n]
    return (amp * out / np.abs(out).max()).astype(np.float32)


def segmentation(bounds: list[float], tempo_bpm: float | None = None) -> Segmentation:
    segments = [Segment(i, a, b, "change") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return Segmentation("test", {}, bounds[-1], tempo_bpm, [], segments)


def text(group: str, label_id: str) -> str:
    return VOCABULARY[group].text(label_id)


def scores(group: artifacts.LabelGroup) -> dict[str, float]:
    return {x.label: x.score for x in group.labels}


@pytest.fixture(scope="module")
def analyzer() -> DescriptorAnalyzer:
    backend = DescriptorAnalyzer()
    backend.load()
    return backend


# --- track labels -----------------------------------------------------------------------------------

def test_slow_and_fast_tracks_get_different_tempo_labels(analyzer):
    labelled = {}
    for bpm in (70, 160):
        track = drums(bpm, 12, 0.5) + chord(A_MAJOR_TRIAD, 12, 0.1)
        labelled[bpm] = analyzer.analyze(track, SR, segmentation([0, 12]), top_k=4)
    assert labelled[70].track["tempo_range"].top() == text("tempo_range", "slow")
    assert labelled[160].track["tempo_range"].top() == text("tempo_range", "fast")
    assert labelled[70].track_measures["tempo_bpm"] == pytest.approx(70, rel=0.05)
    assert labelled[160].track_measures["tempo_bpm"] == pytest.approx(160, rel=0.05)


def test_the_segmenters_tempo_is_used_when_known(analyzer):
    track = drums(70, 8, 0.5)
    labels = analyzer.analyze(track, SR, segmentation([0, 8], tempo_bpm=150.0), top_k=1)
    assert labels.track["tempo_range"].top() == text("tempo_range", "fast")
    assert "segmenter" in labels.track["tempo_range"].note


def test_music_without_a_beat_reads_as_slow(analyzer):
    labels = analyzer.analyze(chord(A_MAJOR_TRIAD, 10, 0.3), SR, segmentation([0, 10]), top_k=1)
    assert labels.track["tempo_range"].top() == text("tempo_range", "slow")
    assert "no steady beat" in labels.track["tempo_range"].note


def test_mood_follows_mode_tempo_and_energy(analyzer):
    sad = np.tile(progression(A_MINOR_CADENCE, 2, 0.05), 2) + drums(70, 16, 0.05)
    happy = np.tile(progression(C_MAJOR_CADENCE, 2, 0.3), 2) + drums(160, 16, 0.7)
    sad_labels = analyzer.analyze(sad, SR, segmentation([0, 16]), top_k=2)
    happy_labels = analyzer.analyze(happy, SR, segmentation([0, 16]), top_k=2)
    assert sad_labels.track["mood"].top() == text("mood", "melancholic")
    assert happy_labels.track["mood"].top() in (text("mood", "uplifting"), text("mood", "energetic"))
    assert sad_labels.track_measures["major_minus_minor"] < 0 < happy_labels.track_measures["major_minus_minor"]
    assert sad_labels.track_measures["arousal"] < happy_labels.track_measures["arousal"]
    # The visual style is the mood's own style, with the mood's score.
    style = next(s for s in VOCABULARY["visual_style"].labels if s.data["mood"] == "melancholic")
    assert sad_labels.track["visual_style"].top() == style.text
    assert sad_labels.track["visual_style"].labels[0].score == sad_labels.track["mood"].labels[0].score


def test_genre_is_left_empty_with_a_note(analyzer):
    labels = analyzer.analyze(chord(A_MAJOR_TRIAD, 4, 0.3), SR, segmentation([0, 4]), top_k=3)
    assert labels.track["genre"].labels == []
    assert "clap" in labels.track["genre"].note


# --- segment labels ---------------------------------------------------------------------------------

def test_quiet_and_loud_passages_get_different_intensity_labels(analyzer):
    track = np.concatenate([chord(A_MAJOR_TRIAD, 6, 0.02), chord(A_MAJOR_TRIAD, 6, 0.5)])
    quiet, loud = analyzer.analyze(track, SR, segmentation([0, 6, 12]), top_k=3).segments
    assert quiet.groups["instrumental_intensity"].top() == text("instrumental_intensity", "soft")
    assert loud.groups["instrumental_intensity"].top() == text("instrumental_intensity", "intense")
    assert loud.measures["rms_dbfs"] - quiet.measures["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / 0.02), abs=0.5)


def test_a_change_of_instrumentation_changes_the_prominent_elements(analyzer):
    track = np.concatenate([chord(A_MAJOR_TRIAD, 6, 0.3), drums(120, 6, 0.6) + noise(6, 0.1, seed=1)])
    tones, beats = analyzer.analyze(track, SR, segmentation([0, 6, 12]), top_k=5).segments
    melodic, percussive, noisy = (text("prominent_elements", i) for i in ("melodic", "percussive", "noisy"))
    assert tones.groups["prominent_elements"].top() == melodic
    assert beats.groups["prominent_elements"].top() in (percussive, noisy)
    assert scores(beats.groups["prominent_elements"])[melodic] < scores(tones.groups["prominent_elements"])[melodic]
    assert beats.measures["percussive_ratio"] > tones.measures["percussive_ratio"] + 0.2
    assert beats.measures["onset_rate_per_s"] > 1.5 > tones.measures["onset_rate_per_s"]


def test_dynamic_shifts_and_song_functions(analyzer):
    t = np.arange(8 * SR) / SR
    rising = chord(A_MAJOR_TRIAD, 8, 1.0) * (10 ** ((-40 + 35 * t / 8) / 20)).astype(np.float32)
    fading = chord(A_MAJOR_TRIAD, 8, 1.0) * (10 ** ((-6 - 54 * t / 8) / 20)).astype(np.float32)
    track = np.concatenate([
        chord(A_MAJOR_TRIAD, 8, 0.05),  # 0: a quiet opening
        rising,  # 1: a crescendo
        chord(A_MAJOR_TRIAD, 4, 0.02),  # 2: near silence
        drums(120, 8, 0.8) + chord(A_MAJOR_TRIAD, 8, 0.3),  # 3: drums enter, the loudest part
        chord(A_MAJOR_TRIAD, 8, 0.3),  # 4: the drums drop out
        fading,  # 5: fade to silence
    ])
    labels = analyzer.analyze(track, SR, segmentation([0, 8, 16, 20, 28, 36, 44]), top_k=1).segments
    shifts = [s.groups["dynamic_shift"].top() for s in labels]
    functions = [s.groups["rhythmic_function"].top() for s in labels]
    assert shifts[1] == text("dynamic_shift", "building")
    assert shifts[3] == text("dynamic_shift", "burst")
    assert shifts[5] == text("dynamic_shift", "fading")
    assert shifts[0] == shifts[4] == text("dynamic_shift", "steady")
    assert functions[0] == text("rhythmic_function", "intro")
    assert functions[1] == text("rhythmic_function", "transition")
    assert functions[3] == text("rhythmic_function", "climax")
    assert functions[4] == text("rhythmic_function", "breakdown")
    assert functions[5] == text("rhythmic_function", "outro")


@pytest.mark.parametrize("top_k", [1, 2, 6])
def test_scores_are_normalised_sorted_and_cut_to_top_k(analyzer, top_k):
    track = np.concatenate([chord(A_MAJOR_TRIAD, 5, 0.05), drums(120, 5, 0.7) + noise(5, 0.05)])
    labels = analyzer.analyze(track, SR, segmentation([0, 5, 10]), top_k=top_k)
    groups = [g for s in labels.segments for g in s.groups.values()]
    groups += [labels.track[name] for name in TRACK_GROUPS if name != "genre"]
    for group in groups:
        values = [x.score for x in group.labels]
        assert 1 <= len(values) <= top_k
        assert values == sorted(values, reverse=True)
        assert all(0.0 <= v <= 1.0 for v in values)
        assert sum(values) <= 1.0 + 1e-9
    if top_k == 6:  # every label kept: the one-of-a-kind groups add up to exactly 1
        for segment in labels.segments:
            for name in ("instrumental_intensity", "dynamic_shift", "rhythmic_function"):
                assert sum(x.score for x in segment.groups[name].labels) == pytest.approx(1.0)
    assert all(set(s.groups) == set(SEGMENT_GROUPS) for s in labels.segments)
    assert list(labels.track) == list(TRACK_GROUPS)


def test_bad_requests_are_refused(analyzer):
    with pytest.raises(InvalidInputError, match="top_k"):
        analyzer.analyze(chord(A_MAJOR_TRIAD, 4, 0.3), SR, segmentation([0, 4]), top_k=0)
    with pytest.raises(InvalidInputError, match="segments end at 9.00 s"):
        analyzer.analyze(chord(A_MAJOR_TRIAD, 4, 0.3), SR, segmentation([0, 4, 9]), top_k=1)


def test_a_vocabulary_that_does_not_match_the_rules_fails_to_load(tmp_path):
    labels_dir = tmp_path / "labels"
    shutil.copytree(LABELS_DIR, labels_dir)
    intensity = labels_dir / "instrumental_intensity.yaml"
    intensity.write_text(intensity.read_text().replace("id: moderate", "id: medium"))
    backend = DescriptorAnalyzer(labels_dir)
    with pytest.raises(StageFailedError, match="instrumental_intensity"):
        backend.load()
    assert backend.state is BackendState.FAILED


# --- the stage --------------------------------------------------------------------------------------

def test_stage_end_to_end_through_the_store(tmp_path):
    store = LocalArtifactStore(tmp_path)
    song = np.concatenate([chord(A_MAJOR_TRIAD, 4, 0.03), drums(120, 4, 0.6) + chord(A_MAJOR_TRIAD, 4, 0.2)])
    soundfile.write(tmp_path / "song.wav", song, SR)
    store.put_bytes("job/segments.json", artifacts.dumps(segmentation([0, 4, 8])))
    stage = AnalysisStage(store)
    stage.load()
    result = stage.run(AnalyzeRequest(song_key="song.wav", segments_key="job/segments.json", analyzer="descriptors",
                                      labels_key="job/labels.json", top_k=2))

    assert result.keys == {"labels": "job/labels.json"}
    labels = Labels.from_dict(json.loads(store.get_text("job/labels.json")))
    assert labels.analyzer == "descriptors"
    assert [s.index for s in labels.segments] == [0, 1]
    assert all(len(g.labels) <= 2 for s in labels.segments for g in s.groups.values())
    assert labels.segments[0].groups["instrumental_intensity"].top() == text("instrumental_intensity", "soft")
    assert labels.segments[1].groups["instrumental_intensity"].top() == text("instrumental_intensity", "intense")
    assert result.info["mood"] == labels.track["mood"].top()


def test_stage_refuses_analyzers_it_does_not_run(tmp_path):
    store = LocalArtifactStore(tmp_path)
    stage = AnalysisStage(store)
    stage.load()
    with pytest.raises(InvalidInputError,
                       match="analysis backend 'clap' is not enabled here; choose one of: descriptors"):
        stage.run(AnalyzeRequest(song_key="song.wav", segments_key="segments.json", analyzer="clap",
                                 labels_key="labels.json"))
    with pytest.raises(InvalidInputError, match="choose one of: clap, descriptors"):
        AnalysisStage(store, enabled=("descriptors", "nope"))


def test_stage_reports_missing_inputs(tmp_path):
    store = LocalArtifactStore(tmp_path)
    stage = AnalysisStage(store)
    stage.load()
    with pytest.raises(InvalidInputError, match="segments.json"):
        stage.run(AnalyzeRequest(song_key="song.wav", segments_key="segments.json", analyzer="descriptors",
                                 labels_key="labels.json"))
    store.put_bytes("segments.json", artifacts.dumps(segmentation([0, 4])))
    with pytest.raises(InvalidInputError, match="song.wav"):
        stage.run(AnalyzeRequest(song_key="song.wav", segments_key="segments.json", analyzer="descriptors",
                                 labels_key="labels.json"))
    assert not store.exists("labels.json")


def test_labels_json_is_readable(tmp_path, analyzer):
    labels = analyzer.analyze(chord(A_MAJOR_TRIAD, 4, 0.3), SR, segmentation([0, 2, 4]), top_k=2)
    data = json.loads(artifacts.dumps(labels))
    assert Labels.from_dict(data).segments[1].groups["dynamic_shift"].top() == labels.segments[1].groups[
        "dynamic_shift"].top()
    assert "rms_dbfs" in data["segments"][0]["measures"]
