"""The musicnn analyser: the torch port against upstream's TensorFlow outputs (tests/data/musicnn_reference.json,
made by tools/musicnn_reference.py), and the real trained taggers on music synthesized here."""

from __future__ import annotations

import json
import shutil

import librosa
import numpy as np
import pretty_midi
import pytest
import soundfile
import torch

from services.analysis.lyrics import whisper_available
from services.analysis.musicnn.analyzer import MusicnnAnalyzer, patch_starts, segment_frames
from services.analysis.musicnn.checkpoint import read_checkpoint
from services.analysis.musicnn.frontend import LOG_GAIN, PATCH_FRAMES, SAMPLE_RATE, log_mel
from services.analysis.musicnn.network import _to_torch_layout, checkpoint_names, is_optimizer_state
from services.analysis.musicnn.weights import DIR_ENV, MODELS, checkpoint_prefix, weights_folder
from services.analysis.server import default_backends
from services.analysis.stage import AnalysisStage
from services.common import artifacts
from services.common.artifacts import Labels, Segment, Segmentation
from services.common.errors import StageFailedError
from services.common.lifecycle import BackendState
from services.common.stage_api import AnalyzeRequest
from services.common.store import LocalArtifactStore
from services.common.vocabulary import LABELS_DIR, LabelSetError, load_vocabulary, parse_label_set
from gateway.cli.main import build_parser
from tools.musicnn_reference import REFERENCE, reference_patches, upstream_frontend_audio
from tools.synth_song import render_midi

SR = 22050  # the rate the analysis stage decodes at for this analyser
REFERENCE_DATA = json.loads(REFERENCE.read_text())
FLOAT16_MAX = float(np.finfo(np.float16).max)
VOCABULARY = load_vocabulary()
VOICE_LABELS = {"vocals", "male_vocals", "female_vocals", "choir", "rap_vocals"}
VOICE_TAGS = [f"mtt:{t}" for t in ("vocal", "vocals", "singing", "voice", "male vocal", "female vocal", "male voice",
                                   "female voice", "male", "female", "man", "woman", "choir", "choral", "opera")]


@pytest.fixture(scope="module")
def analyzer() -> MusicnnAnalyzer:
    backend = MusicnnAnalyzer()
    backend.load()
    return backend


def networks(analyzer: MusicnnAnalyzer) -> dict[str, torch.nn.Module]:
    return {t.model: t.network for t in analyzer.taggers}


def tag_patches(network: torch.nn.Module, patches: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return network(torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))).numpy()


# --- music synthesized here (General MIDI soundfont, tinysoundfont) --------------------------------------

def midi_piece(notes: list[tuple[float, int, float, int]], program: int = 0, is_drum: bool = False,
               seconds: float = 6.0) -> np.ndarray:
    """Mono float32 at SR, peak -1 dBFS: (start, pitch, duration, velocity) notes on one instrument."""
    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    instrument = pretty_midi.Instrument(program, is_drum=is_drum)
    instrument.notes = [pretty_midi.Note(velocity, pitch, start, start + length) for start, pitch, length, velocity
                        in notes]
    midi.instruments.append(instrument)
    return render_midi(midi, seconds, SR).mean(axis=1).astype(np.float32)


def solo_piano(seconds: float = 6.0) -> np.ndarray:
    """A melody in eighths over a chord each bar, acoustic grand piano."""
    rng = np.random.default_rng(0)
    notes = []
    for i in range(int(seconds / 0.25)):
        notes.append((i * 0.25, 60 + int(rng.choice([0, 2, 4, 5, 7, 9, 11, 12])), 0.5, 80))
        if i % 4 == 0:
            notes += [(i * 0.25, pitch, 1.0, 60) for pitch in (48, 52, 55)]
    return midi_piece(notes, program=0, seconds=seconds)


def drum_groove(seconds: float = 6.0) -> np.ndarray:
    """Kick, snare and closed hats, the General MIDI drum kit, nothing else."""
    notes = []
    for i in range(int(seconds / 0.25)):
        notes.append((i * 0.25, 42, 0.1, 90))
        if i % 4 == 0:
            notes.append((i * 0.25, 36, 0.1, 120))
        if i % 4 == 2:
            notes.append((i * 0.25, 38, 0.1, 110))
    return midi_piece(notes, is_drum=True, seconds=seconds)


def two_segments(seconds: float = 6.0, cut: float = 4.0) -> Segmentation:
    """A 4 s segment (two patches) and a 2 s one (shorter than a patch: repeat-padded)."""
    return Segmentation("test", {}, seconds, 120.0, [],
                        [Segment(0, 0.0, cut, "change"), Segment(1, cut, seconds, "end")])


@pytest.fixture(scope="module")
def piano_and_drums(analyzer) -> dict[str, Labels]:
    return {name: analyzer.analyze(audio, SR, two_segments(), top_k=5)
            for name, audio in (("piano", solo_piano()), ("drums", drum_groove()))}


def label_id(group: str, text: str) -> str:
    return next(label.id for label in VOCABULARY[group].labels if label.text == text)


# --- the port against TensorFlow ---------------------------------------------------------------------------

def test_the_port_gives_tensorflows_tag_probabilities_on_fixed_patches(analyzer):
    patches = reference_patches()
    assert list(patches) == REFERENCE_DATA["patch_names"]
    # The inputs are the ones the reference was made from (same synthesis, same librosa spectrogram) ...
    assert [float(p.astype(np.float64).sum()) for p in patches.values()] == pytest.approx(
        REFERENCE_DATA["patch_sums"], rel=1e-6)
    batch = np.stack(list(patches.values()))
    for model, network in networks(analyzer).items():
        expected = np.array(REFERENCE_DATA["models"][model]["patches"])
        # ... and every probability agrees with TensorFlow's to float32 rounding (measured: < 3e-6) ...
        assert np.abs(tag_patches(network, batch) - expected).max() < 2e-5, model
        # ... on patches that TensorFlow itself tags differently: no comparison of constant outputs.
        assert np.abs(expected[0] - expected[1]).max() > 0.1, model


def test_every_checkpoint_variable_is_used_and_every_parameter_loaded(analyzer):
    folder = weights_folder()
    for tagger in analyzer.taggers:
        variables = read_checkpoint(checkpoint_prefix(folder, tagger.model))
        graph_variables = set(REFERENCE_DATA["models"][tagger.model]["variables"])  # upstream's TF graph
        names = checkpoint_names(tagger.network)
        assert set(names.values()) == graph_variables
        assert set(tagger.unused_variables) == set(variables) - graph_variables
        assert tagger.unused_variables and all(is_optimizer_state(n) for n in tagger.unused_variables)
        state = tagger.network.state_dict()
        assert {n for n in state if not n.endswith("num_batches_tracked")} == set(names)
        for torch_name, tf_name in names.items():
            expected = _to_torch_layout(variables[tf_name], state[torch_name].shape)
            assert np.array_equal(state[torch_name].numpy(), expected), torch_name


def test_our_spectrogram_matches_upstreams_where_its_float16_log_holds(analyzer):
    """Quiet audio: upstream's own pipeline (musicnn.extractor, float16 log-mel) worked, and ours agrees."""
    audio = upstream_frontend_audio()
    for name in ("quiet_tones", "quiet_drums"):
        assert LOG_GAIN * REFERENCE_DATA["upstream_frontend"]["max_mel_power"][name] < FLOAT16_MAX
        spectrogram = log_mel(audio[name], SAMPLE_RATE)
        patches = np.stack([spectrogram[s:s + PATCH_FRAMES]
                            for s in range(0, spectrogram.shape[0] - PATCH_FRAMES + 1, PATCH_FRAMES)])
        for model, network in networks(analyzer).items():
            upstream = np.array(REFERENCE_DATA["upstream_frontend"]["models"][model][name])
            assert upstream.shape == (2, 50)
            # float16 rounding of upstream's mel power is all that differs (measured: < 4e-5).
            assert np.abs(tag_patches(network, patches) - upstream).max() < 5e-4, (model, name)


def test_loud_music_no_longer_gets_identical_tags(analyzer):
    """The float16 trap: upstream's 10000 * mel in float16 overflows on music at ordinary levels, and then
    every song gets the same tags. TensorFlow showed it (the reference); our float32 log does not."""
    upstream = REFERENCE_DATA["upstream_frontend"]
    for name in ("loud_tones", "loud_drums"):
        assert LOG_GAIN * upstream["max_mel_power"][name] > FLOAT16_MAX
    for model in MODELS:
        tones, drums = (np.array(upstream["models"][model][n], dtype=float) for n in ("loud_tones", "loud_drums"))
        assert np.array_equal(tones, drums)  # upstream: different music, identical tags

    audio = upstream_frontend_audio()
    ours = {name: np.concatenate([tag_patches(network, log_mel(audio[name], SAMPLE_RATE)[None, :PATCH_FRAMES])
                                  for network in networks(analyzer).values()], axis=1)[0]
            for name in ("loud_tones", "loud_drums")}
    assert np.abs(ours["loud_tones"] - ours["loud_drums"]).max() > 0.2
    # The synthesized songs below are as loud: upstream's expression (extractor.batch_data) turns them to inf.
    for song in (solo_piano(3.2), drum_groove(3.2)):
        mel = librosa.feature.melspectrogram(y=librosa.resample(song, orig_sr=SR, target_sr=SAMPLE_RATE),
                                             sr=SAMPLE_RATE, hop_length=256, n_fft=512, n_mels=96).T
        with np.errstate(over="ignore"):
            assert np.isinf(np.log10(10000 * mel.astype(np.float16) + 1)).any()
        assert np.isfinite(log_mel(song, SR)).all()


# --- the analyser on real music ----------------------------------------------------------------------------

def test_a_solo_piano_and_a_drum_groove_get_different_tags(piano_and_drums):
    piano, drums = piano_and_drums["piano"], piano_and_drums["drums"]
    for segment in piano.segments:  # the 2 s segment too, heard repeat-padded
        assert label_id("instruments", segment.groups["instruments"].top()) == "piano"
        assert segment.measures["mtt:piano"] > 0.8
    for segment in drums.segments:
        assert label_id("instruments", segment.groups["instruments"].top()) in ("drum_kit", "drum_machine")
        assert segment.measures["mtt:piano"] < 0.05
        assert max(segment.measures["mtt:drums"], segment.measures["mtt:beat"]) > 0.25
    genre = {name: label_id("genre", labels.track["genre"].top()) for name, labels in piano_and_drums.items()}
    assert genre["piano"] in ("classical", "jazz") and genre["drums"] in ("electronic", "techno")


def test_music_without_a_voice_does_not_top_the_voice_labels(piano_and_drums):
    for labels in piano_and_drums.values():
        for segment in labels.segments:
            assert label_id("instruments", segment.groups["instruments"].top()) not in VOICE_LABELS
            assert max(segment.measures[t] for t in VOICE_TAGS) < 0.2


def test_labels_keep_the_descriptors_groups_and_every_tags_probability(piano_and_drums):
    labels = piano_and_drums["piano"]
    assert labels.analyzer == "musicnn"
    assert list(labels.track) == ["tempo_range", "mood", "visual_style", "genre"]
    for segment in labels.segments:
        assert list(segment.groups) == ["instrumental_intensity", "prominent_elements", "dynamic_shift",
                                        "rhythmic_function", "instruments"]
        assert "rms_dbfs" in segment.measures  # the descriptors' measures stay beside the tags
        tags = {k: v for k, v in segment.measures.items() if k.startswith(("mtt:", "msd:"))}
        assert len(tags) == 100 and all(0.0 <= v <= 1.0 for v in tags.values())
    assert [s.measures["musicnn_patches"] for s in labels.segments] == [2.0, 1.0]
    # A label scores its most probable tag; the track is the segments' duration-weighted mean.
    first, second = labels.segments
    assert labels.track_measures["msd:jazz"] == pytest.approx(
        (4 * first.measures["msd:jazz"] + 2 * second.measures["msd:jazz"]) / 6)
    genre = labels.track["genre"]
    best = VOCABULARY["genre"].by_id(label_id("genre", genre.top()))
    assert genre.labels[0].score == max(labels.track_measures[tag] for tag in best.data["musicnn"])
    assert "musicnn tag probabilities" in genre.note
    # The visual style follows the tagger's mood.
    mood = label_id("mood", labels.track["mood"].top())
    style = next(s for s in VOCABULARY["visual_style"].labels if s.data["mood"] == mood)
    assert labels.track["visual_style"].top() == style.text
    assert labels.track["visual_style"].labels[0].score == labels.track["mood"].labels[0].score


def test_patches_stay_inside_their_segment_and_short_ones_are_repeated():
    assert patch_starts(100) == [0]
    assert patch_starts(PATCH_FRAMES) == [0]
    assert patch_starts(400) == [0, 106, 213]  # three patches, the last ending at frame 400
    spectrogram = np.arange(1000, dtype=np.float32)[:, None] * np.ones((1, 96), np.float32)
    frames = segment_frames(spectrogram, 1.0, 2.0)  # frame i is centred at i * 16 ms
    assert frames[0, 0] == 63 and frames[-1, 0] == 124  # centres 1.008 s .. 1.984 s
    assert segment_frames(spectrogram, 1.0, 1.001).shape[0] == 1  # shorter than a frame: the nearest one


def test_the_stage_writes_labels_json_with_genre_instruments_and_measures(tmp_path):
    store = LocalArtifactStore(tmp_path)
    song = np.concatenate([solo_piano(4.0), drum_groove(4.0)])
    soundfile.write(tmp_path / "song.wav", song, SR)
    store.put_bytes("job/segments.json", artifacts.dumps(two_segments(8.0, 4.0)))
    stage = AnalysisStage(store, enabled=("musicnn",))
    stage.load()
    result = stage.run(AnalyzeRequest(song_key="song.wav", segments_key="job/segments.json", analyzer="musicnn",
                                      labels_key="job/labels.json", top_k=3))

    data = json.loads(store.get_text("job/labels.json"))
    assert data["analyzer"] == "musicnn" and result.info["analyzer"] == "musicnn"
    genre = data["track"]["genre"]["labels"]
    assert 1 <= len(genre) <= 3 and all(0.0 < g["score"] <= 1.0 for g in genre)
    piano, drums = data["segments"]
    assert piano["groups"]["instruments"]["labels"][0]["label"] == VOCABULARY["instruments"].text("piano")
    assert drums["groups"]["instruments"]["labels"][0]["label"] in (
        VOCABULARY["instruments"].text("drum_kit"), VOCABULARY["instruments"].text("drum_machine"))
    assert piano["measures"]["mtt:piano"] > 0.8 > drums["measures"]["mtt:piano"]
    assert "tempo_bpm" in data["track_measures"] and "msd:rock" in data["track_measures"]


# --- configuration and errors ------------------------------------------------------------------------------

def test_a_folder_without_the_checkpoints_is_refused_naming_what_is_missing(tmp_path):
    backend = MusicnnAnalyzer(weights=tmp_path)
    with pytest.raises(StageFailedError, match=rf"{tmp_path}: not a musicnn weights folder: it lacks .*MTT_musicnn"):
        backend.load()
    assert backend.state is BackendState.FAILED


def test_a_corrupt_or_foreign_checkpoint_is_refused(tmp_path):
    source = weights_folder()
    for model in MODELS:
        shutil.copytree(source / model, tmp_path / "corrupt" / model)
    index = tmp_path / "corrupt" / "MTT_musicnn" / ".index"
    raw = bytearray(index.read_bytes())
    raw[100] ^= 0xFF
    index.write_bytes(bytes(raw))
    with pytest.raises(StageFailedError, match=r"MTT_musicnn.*fails its CRC-32C check: corrupt"):
        MusicnnAnalyzer(weights=tmp_path / "corrupt").load()

    # The vgg model of the same wheel in musicnn's place: another architecture.
    shutil.copytree(source / "MTT_vgg", tmp_path / "vgg" / "MTT_musicnn")
    shutil.copytree(source / "MSD_musicnn", tmp_path / "vgg" / "MSD_musicnn")
    with pytest.raises(StageFailedError, match=r"MTT_musicnn/: not a musicnn checkpoint: it lacks \d+ of the "
                                               "network's variables"):
        MusicnnAnalyzer(weights=tmp_path / "vgg").load()

    data = tmp_path / "corrupt" / "MSD_musicnn" / ".data-00000-of-00001"
    shutil.copytree(source / "MTT_musicnn", tmp_path / "corrupt" / "MTT_musicnn", dirs_exist_ok=True)
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(StageFailedError, match=r"MSD_musicnn: .*lies at bytes .* but the file has 1000: truncated"):
        MusicnnAnalyzer(weights=tmp_path / "corrupt").load()


def test_the_default_analyser_is_musicnn_where_it_is_installed(monkeypatch, tmp_path):
    args = ["generate", "song.wav"]
    assert build_parser().parse_args(args).analysis == "musicnn"
    lyrics = ("whisper",) if whisper_available() else ()  # the transcriber, where its model is
    assert default_backends() == ("descriptors", "musicnn", *lyrics)
    monkeypatch.setenv(DIR_ENV, str(tmp_path))  # a weights folder without weights: musicnn cannot load
    assert build_parser().parse_args(args).analysis == "descriptors"
    assert default_backends() == ("descriptors", *lyrics)
    monkeypatch.setenv(DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(StageFailedError, match=f"{DIR_ENV}=.*nowhere: no such folder"):
        weights_folder()


# --- the label sets' musicnn tags ----------------------------------------------------------------------------

def test_the_shipped_label_sets_map_genre_mood_and_instruments_onto_musicnn_tags():
    tagged = {g: [label.id for label in s.labels if "musicnn" in label.data] for g, s in VOCABULARY.items()}
    assert {g for g, ids in tagged.items() if ids} == {"genre", "mood", "instruments"}
    assert tagged["mood"] == VOCABULARY["mood"].ids()  # every mood, so every visual style, gets a score
    assert {"piano", "drum_kit", "strings", "vocals", "male_vocals", "female_vocals"} <= set(tagged["instruments"])


@pytest.mark.parametrize("tags, line, message", [
    ("[mtt:pianos]", 7, "unknown musicnn tag 'mtt:pianos': tags are mtt:<tag> or msd:<tag>; did you mean 'mtt:piano'?"),
    ("[msd:hip-hop]", 7, "did you mean 'msd:Hip-Hop'?"),
    ("[mtt:piano, mtt:piano]", 7, "musicnn tag 'mtt:piano' given twice"),
    ("mtt:piano", 7, "musicnn must be a list of musicnn tags"),
    ("[]", 7, "musicnn must be a list of musicnn tags"),
])
def test_an_unknown_musicnn_tag_is_refused_with_its_file_and_line(tmp_path, tags, line, message):
    path = tmp_path / "colour.yaml"
    path.write_text("group: colour\nscope: track\nlabels:\n  - id: red\n    text: red music\n  - id: blue\n"
                    f"    musicnn: {tags}\n    text: blue music\n")
    with pytest.raises(LabelSetError) as caught:
        parse_label_set(path)
    assert str(caught.value).startswith(f"{path}:{line}: ") and message in str(caught.value), str(caught.value)


def test_a_vocabulary_with_a_bad_tag_stops_the_analyser_from_loading(tmp_path):
    labels_dir = tmp_path / "labels"
    shutil.copytree(LABELS_DIR, labels_dir)
    genre = labels_dir / "genre.yaml"
    genre.write_text(genre.read_text().replace("msd:punk", "msd:punks"))
    with pytest.raises(LabelSetError, match=rf"{genre}:\d+: unknown musicnn tag 'msd:punks'"):
        MusicnnAnalyzer(labels_dir).load()

