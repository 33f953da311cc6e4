"""The `clap` analyser through msclap's real loading path, with a structurally real checkpoint of random weights.

tools/tiny_clap.py builds it once per session: msclap's CLAP module with HTSAT at its real size and
a tiny GPT-2 with a tokenizer trained here. The weights are random, so these tests check structure
(every weight loaded, shapes, windowing, batching, determinism, top-k bookkeeping, labels.json),
never musical truth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from services.analysis import stage as analysis_stage
from services.analysis.clap import (
    ClapAnalyzer,
    ClapSettings,
    SongEmbedding,
    _check_text_family,
    _fill_window,
    window_starts,
)
from services.analysis.msclap_compat import checkpoint_key_report, import_msclap
from services.analysis.stage import AnalysisStage
from services.common import artifacts
from services.common.artifacts import Labels, Segment, Segmentation
from services.common.errors import InvalidInputError, StageFailedError
from services.common.lifecycle import BackendState
from services.common.stage_api import AnalyzeRequest
from services.common.store import LocalArtifactStore
from services.common.vocabulary import groups_in_scope
from tools.tiny_clap import TinyClap, build_tiny_clap

SR = 44100
WINDOW = 7 * SR
REPO = Path(__file__).resolve().parents[1]
# Segments of the test song: shorter than a window, longer than one (two windows), shorter again.
BOUNDS = [0.0, 3.0, 12.0, 16.0]


def synth(seconds: float, seed: int) -> np.ndarray:
    """Tones that change every second over a little noise: audio that differs along the song."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 220.0 * 2 ** (rng.integers(0, 12, int(np.ceil(seconds)))[t.astype(int)] / 12)
    return (0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def segmentation(bounds: list[float], tempo_bpm: float | None = None) -> Segmentation:
    segments = [Segment(i, a, b, "change") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    return Segmentation("test", {}, bounds[-1], tempo_bpm, [], segments)


@pytest.fixture(scope="session")
def tiny_clap(tmp_path_factory) -> TinyClap:
    return build_tiny_clap(tmp_path_factory.mktemp("tiny-clap"))


@pytest.fixture(scope="module")
def analyzer(tiny_clap) -> ClapAnalyzer:
    backend = ClapAnalyzer(ClapSettings.resolve(str(tiny_clap.folder)))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def song() -> np.ndarray:
    return synth(BOUNDS[-1], seed=1)


@pytest.fixture(scope="module")
def embedded(analyzer, song) -> SongEmbedding:
    return analyzer.embed(song, SR, segmentation(BOUNDS))


# --- loading --------------------------------------------------------------------------------------

def test_every_weight_of_the_checkpoint_is_loaded(analyzer, tiny_clap):
    assert analyzer.ready
    assert analyzer.key_report.missing == [] and analyzer.key_report.unexpected == []
    saved = torch.load(tiny_clap.weights, map_location="cpu", mmap=True)["model"]
    loaded = analyzer.model.clap.clap.state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[key], loaded[key].cpu()) for key in saved)
    htsat_parameters = sum(p.numel() for p in analyzer.model.clap.clap.audio_encoder.base.parameters())
    assert htsat_parameters > 28_000_000  # HTSAT at its real size, as the 2023 checkpoint has it


def test_a_checkpoint_that_lacks_weights_is_refused(tiny_clap, tmp_path):
    state = torch.load(tiny_clap.weights, map_location="cpu")["model"]
    del state["audio_encoder.projection.linear1.weight"]
    partial = tmp_path / "partial.pth"
    torch.save({"model": state}, partial)
    backend = ClapAnalyzer(ClapSettings.resolve(str(partial), config=str(tiny_clap.config)))
    with pytest.raises(StageFailedError, match=r"lacks 1 of the model's weights \(audio_encoder.projection.linear1"):
        backend.load()
    assert backend.state is BackendState.FAILED


def test_the_key_report_ignores_only_gpt2s_old_mask_buffers(tmp_path):
    model = torch.nn.Linear(2, 2)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"weight": torch.zeros(2, 2), "base.h.0.attn.bias": torch.ones(1),
                          "base.h.0.attn.masked_bias": torch.ones(1), "stray": torch.ones(1)}}, path)
    report = checkpoint_key_report(model, path)
    assert report.missing == ["bias"] and report.unexpected == ["stray"]


def test_text_is_tokenised_as_msclap_expects(analyzer):
    clap = analyzer.model.clap
    tokens = clap.preprocess_text(["This is a sound of rock music."])
    ids, mask = tokens["input_ids"][0], tokens["attention_mask"][0]
    assert ids.shape == (clap.args.text_len,)
    length = int((ids != 0).sum())  # msclap's count of real tokens; the pad '!' is id 0
    assert ids[length - 1] == clap.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert torch.all(ids[length:] == 0) and int(mask.sum()) == length


def test_every_label_is_embedded_once_at_load(analyzer, monkeypatch):
    vocabulary = analyzer.vocabulary
    scored = [g for s in ("segment", "track") for g in groups_in_scope(vocabulary, s) if g != "visual_style"]
    assert sorted(analyzer.model.label_embeddings) == sorted(scored)
    d_proj = analyzer.model.clap.args.d_proj
    for group in scored:
        vectors = analyzer.model.label_embeddings[group]
        assert vectors.shape == (len(vocabulary[group].labels), d_proj)
        assert torch.allclose(vectors.norm(dim=1), torch.ones(len(vectors)), atol=1e-5)
    fresh = analyzer.model.clap.get_text_embeddings(vocabulary["genre"].prompts())
    assert torch.allclose(torch.nn.functional.normalize(fresh, dim=-1), analyzer.model.label_embeddings["genre"],
                          atol=1e-5)

    def no_text_encoding(*_):
        raise AssertionError("labels must not be embedded again while analysing")

    monkeypatch.setattr(analyzer.model.clap, "get_text_embeddings", no_text_encoding)
    monkeypatch.setattr(analyzer.model.clap, "_get_text_embeddings", no_text_encoding)
    analyzer.analyze(synth(2, seed=5), SR, segmentation([0.0, 2.0]), top_k=1)


def test_asking_for_a_gpu_that_is_not_there_fails_clearly(tiny_clap):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    backend = ClapAnalyzer(replace(ClapSettings.resolve(str(tiny_clap.folder)), device="cuda"))
    with pytest.raises(StageFailedError, match="MVGEN_CLAP_DEVICE=cuda, but torch sees no CUDA device"):
        backend.load()


# --- windows, batches, embeddings -----------------------------------------------------------------

@pytest.mark.parametrize("length, expected", [
    (3, [0]), (7, [0]), (8, [0, 1]), (14, [0, 7]), (15, [0, 4, 8]), (50, [0, 6, 12, 18, 25, 31, 37, 43]),
])
def test_windows_cover_a_segment_evenly(length, expected):
    starts = window_starts(length, 7)
    assert starts == expected
    assert starts[-1] + min(7, length) == length  # the last window ends where the segment ends
    assert all(b - a <= 7 for a, b in zip(starts, starts[1:]))  # no gap between windows


def test_a_short_piece_is_padded_by_repeating_it():
    piece = np.arange(3, dtype=np.float32)
    assert _fill_window(piece, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert _fill_window(np.arange(9, dtype=np.float32), 7).tolist() == list(range(7))


def test_embedding_shapes_and_windows_per_segment(analyzer, embedded):
    d_proj = analyzer.model.clap.args.d_proj
    assert embedded.windows == [1, 2, 1]  # 3 s, 9 s and 4 s
    assert embedded.segments.shape == (3, d_proj) and embedded.track.shape == (d_proj,)
    assert torch.allclose(embedded.segments.norm(dim=1), torch.ones(3), atol=1e-5)
    assert float(embedded.track.norm()) == pytest.approx(1.0, abs=1e-5)


def test_short_segments_are_padded_and_long_ones_averaged(analyzer, song, embedded):
    """The segment embeddings, recomputed by hand through msclap's audio path."""
    short = song[: 3 * SR]
    padded = np.tile(short, 3)[:WINDOW]
    first, second = song[3 * SR: 3 * SR + WINDOW], song[12 * SR - WINDOW: 12 * SR]
    batch = torch.from_numpy(np.stack([padded, first, second])).unsqueeze(1)
    with torch.inference_mode():
        by_hand = torch.nn.functional.normalize(analyzer.model.clap._get_audio_embeddings(batch), dim=-1)
    expected_long = torch.nn.functional.normalize(by_hand[1] + by_hand[2], dim=0)
    assert torch.allclose(embedded.segments[0], by_hand[0], atol=1e-4)
    assert torch.allclose(embedded.segments[1], expected_long, atol=1e-4)
    # The track: the segments weighted by their durations (3 s, 9 s, 4 s).
    weighted = 3 * embedded.segments[0] + 9 * embedded.segments[1] + 4 * embedded.segments[2]
    assert torch.allclose(embedded.track, torch.nn.functional.normalize(weighted, dim=0), atol=1e-5)


def test_windows_are_embedded_in_batches_with_the_same_result(analyzer, song, embedded, monkeypatch):
    clap = analyzer.model.clap
    sizes: list[int] = []
    real = clap._get_audio_embeddings

    def counting(batch):
        sizes.append(batch.shape[0])
        return real(batch)

    monkeypatch.setattr(clap, "_get_audio_embeddings", counting)
    monkeypatch.setattr(analyzer, "settings", replace(analyzer.settings, batch_size=3))
    again = analyzer.embed(song, SR, segmentation(BOUNDS))
    assert sizes == [3, 1]
    assert torch.allclose(again.segments, embedded.segments, atol=1e-4)


def test_analysis_is_deterministic(analyzer):
    audio = synth(2, seed=3)
    first = analyzer.analyze(audio, SR, segmentation([0.0, 2.0]), top_k=3)
    second = analyzer.analyze(audio, SR, segmentation([0.0, 2.0]), top_k=3)
    assert artifacts.dumps(first) == artifacts.dumps(second)


# --- labels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("top_k", [1, 3, 100])
def test_top_k_labels_per_group_with_scores_normalised_over_the_group(analyzer, embedded, top_k):
    seg = segmentation(BOUNDS, tempo_bpm=120.0)
    labels = analyzer.label(embedded, seg, top_k)
    vocabulary = analyzer.vocabulary
    assert labels.analyzer == "clap"
    assert list(labels.track) == groups_in_scope(vocabulary, "track")
    assert [s.index for s in labels.segments] == [0, 1, 2]
    assert [s.measures["clap_windows"] for s in labels.segments] == [1.0, 2.0, 1.0]
    assert labels.track_measures == {"clap_windows": 4.0, "window_seconds": 7.0, "tempo_bpm": 120.0}
    ranked = [(name, group) for s in labels.segments for name, group in s.groups.items()]
    ranked += list(labels.track.items())
    for name, group in ranked:
        texts = [label.text for label in vocabulary[name].labels]
        scores = [x.score for x in group.labels]
        assert len(group.labels) == min(top_k, len(texts))
        assert all(x.label in texts for x in group.labels)
        assert scores == sorted(scores, reverse=True) and all(0.0 <= v <= 1.0 for v in scores)
        if top_k >= len(texts) and name != "visual_style":
            assert sum(scores) == pytest.approx(1.0, abs=1e-5)  # a softmax over the group
    for segment in labels.segments:
        assert list(segment.groups) == groups_in_scope(vocabulary, "segment")

    # The best genre is the label nearest the track's embedding, scored by softmax(scale * cosine).
    logits = analyzer.model.logit_scale * analyzer.model.label_embeddings["genre"] @ embedded.track
    probabilities = torch.softmax(logits, dim=0)
    best = int(probabilities.argmax())
    assert labels.track["genre"].labels[0].label == vocabulary["genre"].labels[best].text
    assert labels.track["genre"].labels[0].score == pytest.approx(float(probabilities[best]), abs=1e-6)
    # Each visual style is scored as its mood, as the paper chooses the style from the mood.
    moods = {x.label: x.score for x in analyzer.label(embedded, seg, 100).track["mood"].labels}
    for style in labels.track["visual_style"].labels:
        mood_id = next(s.data["mood"] for s in vocabulary["visual_style"].labels if s.text == style.label)
        assert style.score == pytest.approx(moods[vocabulary["mood"].text(mood_id)])
    assert "120.0 BPM" in labels.track["tempo_range"].note
    # labels.json keeps group, label and score as they are, for the scripting stage.
    assert Labels.from_dict(json.loads(artifacts.dumps(labels))).to_dict() == labels.to_dict()


def test_bad_requests_are_refused(analyzer):
    audio = synth(4, seed=2)
    with pytest.raises(InvalidInputError, match="top_k"):
        analyzer.analyze(audio, SR, segmentation([0.0, 4.0]), top_k=0)
    with pytest.raises(InvalidInputError, match="segments end at 9.00 s"):
        analyzer.analyze(audio, SR, segmentation([0.0, 4.0, 9.0]), top_k=1)
    with pytest.raises(InvalidInputError, match="no segments"):
        analyzer.analyze(audio, SR, Segmentation("test", {}, 4.0, None, [], []), top_k=1)


# --- configuration --------------------------------------------------------------------------------

def test_settings_from_the_environment(tiny_clap, tmp_path, monkeypatch):
    monkeypatch.setenv("MVGEN_CLAP_WEIGHTS", str(tiny_clap.folder))
    monkeypatch.setenv("MVGEN_CLAP_BATCH", "32")
    settings = ClapSettings.from_env()
    assert (settings.weights, settings.config) == (tiny_clap.weights, tiny_clap.config)
    assert (settings.device, settings.batch_size, settings.version) == ("auto", 32, "2023")
    monkeypatch.setenv("MVGEN_CLAP_WEIGHTS", str(tiny_clap.weights))
    assert ClapSettings.from_env().config == tiny_clap.config  # found beside the checkpoint
    monkeypatch.setenv("MVGEN_CLAP_WEIGHTS", "2023")
    assert ClapSettings.from_env() == ClapSettings(None, "2023", None, "auto", 32)  # msclap downloads

    for name, value, message in [
        ("MVGEN_CLAP_DEVICE", "tpu", "MVGEN_CLAP_DEVICE must be one of auto, cpu, cuda"),
        ("MVGEN_CLAP_BATCH", "0", "MVGEN_CLAP_BATCH must be at least 1"),
        ("MVGEN_CLAP_BATCH", "many", "MVGEN_CLAP_BATCH must be an integer"),
        ("MVGEN_CLAP_CONFIG", str(tmp_path / "none.yml"), "MVGEN_CLAP_CONFIG: no file at"),
        ("MVGEN_CLAP_WEIGHTS", str(tmp_path / "none.pth"), "neither a checkpoint file, a folder holding one"),
        ("MVGEN_CLAP_WEIGHTS", str(tmp_path), "holds 0 .pth files"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(InvalidInputError, match=message):
                ClapSettings.from_env()


def test_a_text_model_folder_must_be_named_as_msclap_branches(tmp_path):
    for name, fails in (("encoder", True), ("gpt2-clip", True), ("my-gpt2", False)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
        if fails:
            with pytest.raises(StageFailedError, match="the path must contain 'gpt'"):
                _check_text_family(folder)
        else:
            _check_text_family(folder)


def test_msclap_imports_without_torchaudio():
    import_msclap()
    stand_in = sys.modules["torchaudio"]
    if getattr(stand_in, "__file__", None):
        pytest.skip("a working torchaudio is installed")
    with pytest.raises(AttributeError, match="stand-in only lets msclap import"):
        stand_in.load("song.wav")


# --- the stage ------------------------------------------------------------------------------------

def test_the_stage_runs_clap_from_the_store(analyzer, tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path)
    soundfile.write(tmp_path / "song.wav", synth(9, seed=4), SR)
    store.put_bytes("job/segments.json", artifacts.dumps(segmentation([0.0, 4.0, 9.0], tempo_bpm=90.0)))
    rates: list[int] = []
    real_analyze = analyzer.analyze

    def recording(samples, sr, seg, top_k):
        rates.append(sr)
        return real_analyze(samples, sr, seg, top_k)

    monkeypatch.setattr(analyzer, "analyze", recording)
    monkeypatch.setitem(analysis_stage.ANALYZERS, "clap", lambda: analyzer)
    stage = AnalysisStage(store, enabled=("clap",))
    stage.load()
    result = stage.run(AnalyzeRequest(song_key="song.wav", segments_key="job/segments.json", analyzer="clap",
                                      labels_key="job/labels.json", top_k=2))

    assert rates == [SR]  # decoded at CLAP's rate, not the descriptors' 22.05 kHz
    labels = Labels.from_dict(json.loads(store.get_text("job/labels.json")))
    assert labels.analyzer == "clap" and [s.index for s in labels.segments] == [0, 1]
    assert all(len(g.labels) == 2 for s in labels.segments for g in s.groups.values())
    assert "instruments" in labels.segments[0].groups and len(labels.track["genre"].labels) == 2
    assert result.info["mood"] == labels.track["mood"].top()


def test_the_descriptors_only_stage_imports_no_torch(tmp_path):
    code = ("import sys\n"
            "from services.analysis.stage import AnalysisStage\n"
            "from services.common.store import LocalArtifactStore\n"
            f"AnalysisStage(LocalArtifactStore({str(tmp_path)!r}), enabled=('descriptors',))\n"
            "heavy = sorted(m for m in ('torch', 'msclap', 'transformers') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


HUB_BLOCKED = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
               "HF_HOME": "", "HF_HUB_CACHE": ""}  # the two homes set per test: an empty cache, nothing to find


def _load_with_the_hub_blocked(tmp_path: Path, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Load the CLAP backend in a fresh process whose hub access fails and whose hub cache is empty."""
    env = {**os.environ, **HUB_BLOCKED, **settings, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    code = ("from services.analysis.clap import ClapAnalyzer\n"
            "backend = ClapAnalyzer(); backend.load(); print('loaded', len(backend.settings.__dict__))")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_clap_backend_loads_from_its_paths_alone_with_the_hub_blocked(tiny_clap, tmp_path):
    """Weights, config and text model (GPT-2 and its tokenizer) all from MVGEN_CLAP_WEIGHTS' folder: a
    cluster without a model hub loads it; nothing is fetched."""
    done = _load_with_the_hub_blocked(tmp_path, {"MVGEN_CLAP_WEIGHTS": str(tiny_clap.folder)})
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


def test_without_a_local_text_model_the_blocked_hub_is_said_in_one_error(tiny_clap, tmp_path):
    """msclap's own config names GPT-2 on the hub: offline, loading fails with a message saying what to set."""
    alone = tmp_path / "checkpoint-alone"
    alone.mkdir()
    (alone / "clap_weights.pth").symlink_to(tiny_clap.folder / "clap_weights.pth")
    done = _load_with_the_hub_blocked(tmp_path, {"MVGEN_CLAP_WEIGHTS": str(alone)})
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "could not fetch its text model 'gpt2' from the model hub" in last and "MVGEN_CLAP_CONFIG" in last, last
