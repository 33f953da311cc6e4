"""msclap (Microsoft CLAP, 2022/2023) made usable on the project's stack, offline.

msclap 1.3.4 was written for numpy<2, transformers<5 and a working torchaudio. On the stack this
project runs (transformers 5, no torchaudio; see services/analysis/requirements-clap.txt):
- msclap imports torchaudio at module top, only for its file reader `read_audio`. Where torchaudio
  is missing or broken (the CPU wheel set has none; PyPI's only release is a CUDA build that fails
  to import on CPU), stand-in modules let the import succeed. mvgen never calls `read_audio`: it
  hands decoded samples to the model, so nothing of torchaudio is used.
- transformers 5 removed `encode_plus`, which msclap's `preprocess_text` calls: `OfflineCLAP`
  tokenises with the tokenizer's own call instead (the same ids, padding and attention mask).
- msclap's constructor reads its packaged YAML config and downloads weights from the hub when no
  path is given. `OfflineCLAP` takes the config from a path and downloads only when asked to.
- msclap loads the checkpoint with `strict=False`, so a checkpoint that lacks weights would load
  silently with random ones. `checkpoint_key_report` tells which keys did not match.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Versions msclap can download itself (its hub repo's files); 'clapcap' is a captioner, not a classifier.
MSCLAP_VERSIONS = ("2022", "2023")
# Buffers that transformers<4.30 saved with GPT-2 (the causal mask) and later versions rebuild at
# load: every msclap checkpoint carries them, none of them is a weight.
IGNORED_UNEXPECTED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def import_msclap() -> types.ModuleType:
    """msclap.CLAPWrapper, importable whether or not torchaudio works here."""
    if "msclap.CLAPWrapper" not in sys.modules:
        # transformers notes at import whether torchaudio exists (and caches it): let it see the truth
        # before any stand-in is installed, so it never tries to use one.
        importlib.import_module("transformers")

        try:
            importlib.import_module("torchaudio")  # by name: an optional dependency, not a requirement
        except (ImportError, OSError):  # absent, or a CUDA build without its libraries (OSError)
            _install_torchaudio_stand_in()
    import msclap.CLAPWrapper

    return msclap.CLAPWrapper


def _install_torchaudio_stand_in() -> None:
    def unavailable(name: str) -> Any:
        raise AttributeError(f"torchaudio.{name} is not available: mvgen's torchaudio stand-in only lets msclap "
                             "import; decode audio with services.common.audio instead")

    for name in ("torchaudio", "torchaudio.transforms"):
        module = types.ModuleType(name, "stand-in for torchaudio (see services/analysis/msclap_compat.py)")
        module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None)  # find_spec() must not fail on it
        module.__getattr__ = unavailable  # type: ignore[method-assign]
        sys.modules[name] = module
    sys.modules["torchaudio"].transforms = sys.modules["torchaudio.transforms"]  # type: ignore[attr-defined]


def msclap_text_family(text_model: str) -> str:
    """Which text-encoder code path msclap takes for `text_model`: it branches on substrings of the name
    or path (in this order), so a local folder must be named accordingly."""
    for family in ("clip", "gpt", "roberta", "bert"):
        if family in text_model:
            return family
    return "other"


def packaged_config(version: str) -> Path:
    """The YAML config msclap ships for one of its versions."""
    package_file = import_msclap().__file__
    assert package_file is not None  # msclap is a regular package, with an __init__.py
    return Path(package_file).parent / "configs" / f"config_{version}.yml"


@dataclass(frozen=True)
class KeyReport:
    missing: list[str]  # model weights the checkpoint lacks: they stayed random
    unexpected: list[str]  # checkpoint entries the model has no place for (known GPT-2 buffers left out)


def checkpoint_key_report(model: torch.nn.Module, checkpoint_path: Path) -> KeyReport:
    """Compare the model's state keys with the checkpoint's, as `load_state_dict(strict=True)` would."""
    try:  # memory-mapped: only the key index is read, not the weights
        checkpoint = torch.load(checkpoint_path, map_location="cpu", mmap=True)
    except RuntimeError:  # a legacy (non-zip) checkpoint cannot be memory-mapped
        checkpoint = torch.load(checkpoint_path, map_location="cpu")
    saved = set(checkpoint["model"])
    expected = set(model.state_dict())
    unexpected = [k for k in sorted(saved - expected) if not k.endswith(IGNORED_UNEXPECTED_SUFFIXES)]
    return KeyReport(missing=sorted(expected - saved), unexpected=unexpected)


@functools.cache
def offline_clap_class() -> type:
    """The `OfflineCLAP` class; defined on first use, since its base class needs msclap imported."""
    return _define_offline_clap(import_msclap().CLAPWrapper)


def _define_offline_clap(wrapper: type) -> type:
    import transformers  # imported by msclap already; here for its logging switches

    class OfflineCLAP(wrapper):
        """msclap's wrapper with the config from a path, no implicit download, and transformers-5 tokenising.

        Loading (`load_clap`: model construction, `torch.load`, `load_state_dict`, tokenizer) and the
        embedding methods are msclap's own."""

        def __init__(self, model_fp: Path, config_yaml: str, use_cuda: bool) -> None:
            # The attributes msclap's __init__ sets, without its packaged config or its download.
            self.supported_versions = self.model_name.keys()
            self.np_str_obj_array_pattern = re.compile(r"[SaUO]")
            self.default_collate_err_msg_format = (
                "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {}")
            self.config_as_str = config_yaml
            self.model_fp = str(model_fp)
            self.use_cuda = use_cuda
            transformers.utils.logging.disable_progress_bar()  # one bar per model loaded: noise in a service log
            self.clap, self.tokenizer, self.args = self.load_clap()

        def preprocess_text(self, text_queries: list[str]) -> dict[str, torch.Tensor]:
            texts = [t + " <|endoftext|>" if "gpt" in self.args.text_model else t for t in text_queries]
            tokens = self.tokenizer(texts, add_special_tokens=True, max_length=self.args.text_len,
                                    padding="max_length", truncation=True, return_tensors="pt")
            device = self.device
            return {key: tokens[key].to(device) for key in self.token_keys}

        @property
        def device(self) -> torch.device:
            return next(self.clap.parameters()).device

    return OfflineCLAP


def download_weights(version: str) -> Path:
    """msclap's own download path (Hugging Face hub, cached); needs a network the first time."""
    wrapper = import_msclap()
    return Path(wrapper.hf_hub_download(wrapper.CLAPWrapper.model_repo, wrapper.CLAPWrapper.model_name[version]))
