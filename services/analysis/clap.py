"""The `clap` analyser: Microsoft CLAP (msclap, the 2023 model) labels every segment and the track, zero-shot.

As the paper does: every label of a group, put into its group's text template ("This is a sound of
{}."), is embedded once at load by CLAP's text encoder; each segment's audio is embedded by its
audio encoder (HTSAT), and its cosine similarity to every label, scaled by CLAP's logit scale and
put through a softmax over the group, is the label's score. labels.json keeps the top-k labels of
every group with these scores, so a person sees how sure the model was.

Audio: CLAP hears 7 s windows at 44.1 kHz (the config's `duration` and `sampling_rate`). A shorter
segment is padded by repeating it, as msclap pads short clips (silence would read as "soft"); a
longer one is covered by evenly spaced, overlapping windows, and their (unit-length) embeddings
are averaged. The segments cover the song exactly, so the track's embedding is the mean of the
segments' embeddings weighted by their duration: the track labels come from windows spread over
the whole song, at no extra cost. Windows of all segments are embedded in batches.

Visual style is not scored against audio: as in the paper it follows the mood, each style scored
as its mood. A vocabulary may add groups (e.g. `instruments`); this analyser scores them too.

Configuration (read when the backend is built; see `ClapSettings`):
    MVGEN_CLAP_WEIGHTS  a checkpoint (.pth), a folder holding one (and its config.yml), or an msclap
                        version ("2023", the default, or "2022") for msclap's own download from the
                        Hugging Face hub (needs a network the first time)
    MVGEN_CLAP_CONFIG   msclap YAML config; default: config.yml beside the weights, else msclap's own
    MVGEN_CLAP_DEVICE   auto (GPU when present), cpu or cuda
    MVGEN_CLAP_BATCH    audio windows per forward pass
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
import yaml

from services.analysis.analyzer import Analyzer
from services.analysis.msclap_compat import (
    MSCLAP_VERSIONS,
    KeyReport,
    checkpoint_key_report,
    download_weights,
    msclap_text_family,
    offline_clap_class,
    packaged_config,
)
from services.common import envs
from services.common.artifacts import LabelGroup, Labels, LabelScore, Segmentation, SegmentLabels
from services.common.errors import InvalidInputError, StageFailedError
from services.common.vocabulary import LABELS_DIR, LabelSet, groups_in_scope, load_vocabulary

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "2023"
DEFAULT_BATCH = 8
DEVICES = ("auto", "cpu", "cuda")
CONFIG_BESIDE_WEIGHTS = "config.yml"
STYLE_GROUP = "visual_style"  # scored as its mood, not against the audio
MOOD_GROUP = "mood"
TEXT_FAMILY_OF_MODEL_TYPE = {"gpt2": "gpt", "bert": "bert", "roberta": "roberta", "clip": "clip"}
# msclap pads GPT-2 input with '!' and finds the end of a text by counting ids != 0 ('!' is id 0):
# a '!' in a label would shift that end.
GPT2_PAD = "!"


@dataclass(frozen=True)
class ClapSettings:
    weights: Path | None  # a checkpoint file; None: msclap downloads `version`
    version: str  # msclap version the weights are (its download name); "2023" for a file of ours
    config: Path | None  # msclap YAML config; None: msclap's own for `version`
    device: str  # "auto", "cpu" or "cuda"
    batch_size: int  # audio windows per forward pass

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClapSettings:
        return cls.resolve(envs.get("MVGEN_CLAP_WEIGHTS", environ, default=DEFAULT_WEIGHTS),
                           envs.get("MVGEN_CLAP_CONFIG", environ), envs.get("MVGEN_CLAP_DEVICE", environ),
                           envs.get("MVGEN_CLAP_BATCH", environ, default=DEFAULT_BATCH))

    @classmethod
    def resolve(cls, weights: str, config: str = "", device: str = "auto", batch_size: int = DEFAULT_BATCH,
                ) -> ClapSettings:
        """Settings from the raw values: a path is checked to exist, a folder is searched for its checkpoint."""
        if device not in DEVICES:
            raise InvalidInputError(f"MVGEN_CLAP_DEVICE must be one of {', '.join(DEVICES)}, not {device!r}")
        if batch_size < 1:
            raise InvalidInputError(f"MVGEN_CLAP_BATCH must be at least 1, not {batch_size}")
        config_path = Path(config).expanduser() if config.strip() else None
        if config_path is not None and not config_path.is_file():
            raise InvalidInputError(f"MVGEN_CLAP_CONFIG: no file at {config_path}")
        if weights in MSCLAP_VERSIONS:
            return cls(None, weights, config_path, device, batch_size)
        path = Path(weights).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.pth"))
            if len(found) != 1:
                raise InvalidInputError(f"MVGEN_CLAP_WEIGHTS: {path} holds {len(found)} .pth files; "
                                        "name the checkpoint file itself")
            path = found[0]
        elif not path.is_file():
            raise InvalidInputError(f"MVGEN_CLAP_WEIGHTS: {weights!r} is neither a checkpoint file, a folder "
                                    f"holding one, nor an msclap version ({', '.join(MSCLAP_VERSIONS)})")
        if config_path is None and (path.parent / CONFIG_BESIDE_WEIGHTS).is_file():
            config_path = path.parent / CONFIG_BESIDE_WEIGHTS
        return cls(path, DEFAULT_WEIGHTS, config_path, device, batch_size)


@dataclass
class SongEmbedding:
    segments: torch.Tensor  # (segments, dim): each segment's window embeddings averaged, unit length
    track: torch.Tensor  # (dim,): the segments' embeddings averaged, weighted by duration, unit length
    windows: list[int]  # CLAP windows per segment


@dataclass
class _Model:
    """What load() prepares: msclap's wrapper and every scored group's label embeddings."""

    clap: Any  # msclap_compat's OfflineCLAP (an msclap CLAPWrapper)
    sample_rate: int
    window_samples: int
    label_embeddings: dict[str, torch.Tensor]  # group -> (labels, dim), unit length, on the model's device
    logit_scale: float
    keys: KeyReport


class ClapAnalyzer(Analyzer):
    name = "clap"
    sample_rate = 44100  # the rate the stage decodes at for this analyser: msclap 2022 and 2023 both hear 44.1 kHz

    def __init__(self, settings: ClapSettings | None = None, labels_dir: Path = LABELS_DIR,
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(environ)
        self.settings = settings or ClapSettings.from_env(environ)
        self.labels_dir = labels_dir
        self.vocabulary: dict[str, LabelSet] = {}
        self.model: _Model | None = None

    # --- loading ---------------------------------------------------------------------------------

    def _load(self) -> None:
        vocabulary = load_vocabulary(self.labels_dir)
        styles = vocabulary[STYLE_GROUP].labels
        moods = set(vocabulary[MOOD_GROUP].ids())
        if any(style.data.get("mood") not in moods for style in styles):
            raise StageFailedError("every visual style needs the mood it belongs to (one of the mood label ids)")
        device = self._device()
        weights = self.settings.weights or self._download()
        config_text = self._config_text()
        try:
            clap = offline_clap_class()(weights, config_text, use_cuda=device == "cuda")
        except pickle.UnpicklingError as exc:
            raise StageFailedError(f"{weights}: torch.load(weights_only=True) refused it; a CLAP checkpoint holds "
                                   f"tensors only ({exc})") from exc
        except OSError as exc:
            text_model = yaml.safe_load(config_text)["text_model"]
            if not Path(text_model).is_dir():  # msclap fetches a hub text model (GPT-2) by name
                raise StageFailedError(
                    f"msclap could not fetch its text model {text_model!r} from the model hub "
                    f"({str(exc).splitlines()[0]}); without a hub, put the text model and its tokenizer in a "
                    "folder beside the checkpoint and name it in the config's text_model (config.yml beside "
                    "MVGEN_CLAP_WEIGHTS, or MVGEN_CLAP_CONFIG; tools/tiny_clap.py writes that layout)") from exc
            raise StageFailedError(f"msclap could not load {weights}: {str(exc).splitlines()[0]}") from exc
        except (RuntimeError, ValueError, KeyError) as exc:
            raise StageFailedError(f"msclap could not load {weights}: {exc}") from exc
        keys = checkpoint_key_report(clap.clap, weights)
        if keys.missing:
            more = len(keys.missing) - 8
            shown = ", ".join(keys.missing[:8]) + (f" and {more} more" if more > 0 else "")
            raise StageFailedError(f"{weights} lacks {len(keys.missing)} of the model's weights ({shown}): msclap "
                                   "loads with strict=False and would leave them random; is it a CLAP checkpoint "
                                   "for this config?")
        if keys.unexpected:
            log.warning("%s holds %d entries the model does not use, e.g. %s", weights, len(keys.unexpected),
                        ", ".join(keys.unexpected[:5]))

        scored = [g for scope in ("segment", "track") for g in groups_in_scope(vocabulary, scope) if g != STYLE_GROUP]
        prompts = {g: vocabulary[g].prompts() for g in scored}
        if "gpt" in clap.args.text_model:
            bad = [p for g in scored for p in prompts[g] if GPT2_PAD in p]
            if bad:
                raise StageFailedError(f"label texts must not contain {GPT2_PAD!r} (msclap pads GPT-2 input "
                                       f"with it): {bad[0]!r}")
        all_prompts = [p for g in scored for p in prompts[g]]
        with torch.inference_mode():
            embedded = clap.get_text_embeddings(all_prompts).float()
            embedded = torch.nn.functional.normalize(embedded, dim=-1)
            logit_scale = float(clap.clap.logit_scale.exp())
        label_embeddings, start = {}, 0
        for g in scored:
            label_embeddings[g] = embedded[start:start + len(prompts[g])]
            start += len(prompts[g])
        sample_rate = int(clap.args.sampling_rate)
        self.vocabulary = vocabulary
        self.model = _Model(clap, sample_rate, int(round(float(clap.args.duration) * sample_rate)),
                            label_embeddings, logit_scale, keys)

    def _device(self) -> str:
        if self.settings.device == "cuda" and not torch.cuda.is_available():
            raise StageFailedError("MVGEN_CLAP_DEVICE=cuda, but torch sees no CUDA device here")
        if self.settings.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.settings.device

    def _download(self) -> Path:
        try:
            return download_weights(self.settings.version)
        except Exception as exc:  # hub errors come in many types; all mean the same to a person
            raise StageFailedError(
                f"could not download msclap's {self.settings.version} weights ({type(exc).__name__}: {exc}); "
                "without a network, set MVGEN_CLAP_WEIGHTS to a checkpoint file or folder") from exc

    def _config_text(self) -> str:
        """The msclap config as YAML text, with a text-model folder given relative to the config resolved."""
        path = self.settings.config or packaged_config(self.settings.version)
        try:
            config = yaml.safe_load(path.read_text())
            text_model = str(config["text_model"])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise StageFailedError(f"{path}: not an msclap config ({exc})") from exc
        local = (path.parent / text_model).resolve()
        if self.settings.config is not None and local.is_dir():
            text_model = str(local)
            _check_text_family(local)
        config["text_model"] = text_model
        return yaml.safe_dump(config, sort_keys=False)

    # --- analysis --------------------------------------------------------------------------------

    def analyze(self, samples: np.ndarray, sr: int, segmentation: Segmentation, top_k: int) -> Labels:
        if top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, not {top_k}")
        return self.label(self.embed(samples, sr, segmentation), segmentation, top_k)

    def embed(self, samples: np.ndarray, sr: int, segmentation: Segmentation) -> SongEmbedding:
        """CLAP audio embeddings of every segment (its windows averaged) and of the whole track."""
        model = self._loaded()
        if not segmentation.segments:
            raise InvalidInputError("the segmentation has no segments")
        if samples.size == 0:
            raise InvalidInputError("the song has no audio samples")
        song_seconds = samples.size / sr
        last_end = segmentation.segments[-1].end
        if last_end > song_seconds + 0.5:
            raise InvalidInputError(f"the segments end at {last_end:.2f} s but the song is {song_seconds:.2f} s long")
        if sr != model.sample_rate:
            samples = librosa.resample(samples, orig_sr=sr, target_sr=model.sample_rate)
        audio = np.ascontiguousarray(samples, dtype=np.float32)

        spans = [_sample_span(s.start, s.end, model.sample_rate, audio.size) for s in segmentation.segments]
        starts = [window_starts(b - a, model.window_samples) for a, b in spans]
        windows = [(a + offset, min(a + offset + model.window_samples, b))
                   for (a, b), offsets in zip(spans, starts) for offset in offsets]
        embedded = self.embed_windows(audio, windows)
        segments, first = [], 0
        for offsets in starts:
            segments.append(_mean_direction(embedded[first:first + len(offsets)]))
            first += len(offsets)
        stacked = torch.stack(segments)
        durations = torch.tensor([max(s.duration, 1e-6) for s in segmentation.segments], dtype=stacked.dtype)
        return SongEmbedding(stacked, _mean_direction(stacked, weights=durations), [len(o) for o in starts])

    def label(self, embedding: SongEmbedding, segmentation: Segmentation, top_k: int) -> Labels:
        """labels.json from the embeddings: per group, a softmax over its labels, top-k kept."""
        model = self._loaded()
        segments = []
        for segment, vector, count in zip(segmentation.segments, embedding.segments, embedding.windows):
            groups = {g: self._group(g, vector, top_k) for g in groups_in_scope(self.vocabulary, "segment")}
            segments.append(SegmentLabels(segment.index, groups, {"clap_windows": float(count)}))
        track_measures = {"clap_windows": float(sum(embedding.windows)),
                          "window_seconds": model.window_samples / model.sample_rate}
        if segmentation.tempo_bpm:
            track_measures["tempo_bpm"] = float(segmentation.tempo_bpm)
        return Labels(analyzer=self.name, track=self._track_groups(embedding.track, top_k, segmentation),
                      segments=segments, track_measures=track_measures)

    def _loaded(self) -> _Model:
        if self.model is None:
            raise StageFailedError("the clap analyzer is not loaded")
        return self.model

    def embed_windows(self, audio: np.ndarray, windows: list[tuple[int, int]]) -> torch.Tensor:
        """Unit-length CLAP embeddings (windows, dim) of the audio in [start, end) sample windows, each at
        most one CLAP window long (a shorter one is padded), in batches of MVGEN_CLAP_BATCH."""
        model = self._loaded()
        device = model.clap.device
        out = []
        for first in range(0, len(windows), self.settings.batch_size):
            batch = np.stack([_fill_window(audio[a:b], model.window_samples)
                              for a, b in windows[first:first + self.settings.batch_size]])
            tensor = torch.from_numpy(batch).to(device).unsqueeze(1)  # (batch, 1, samples), as msclap collates
            with torch.inference_mode():
                embedded = model.clap._get_audio_embeddings(tensor).float()
            out.append(torch.nn.functional.normalize(embedded, dim=-1).cpu())
        return torch.cat(out)

    def _scores(self, group: str, embedding: torch.Tensor) -> list[float]:
        model = self._loaded()
        labels = model.label_embeddings[group]
        logits = model.logit_scale * (labels @ embedding.to(labels.device))
        return torch.softmax(logits, dim=0).tolist()

    def _group(self, group: str, embedding: torch.Tensor, top_k: int, note: str = "") -> LabelGroup:
        label_set = self.vocabulary[group]
        return _ranked(label_set, dict(zip(label_set.ids(), self._scores(group, embedding))), top_k, note)

    def _track_groups(self, embedding: torch.Tensor, top_k: int, segmentation: Segmentation) -> dict[str, LabelGroup]:
        groups: dict[str, LabelGroup] = {}
        for group in groups_in_scope(self.vocabulary, "track"):
            if group == STYLE_GROUP:
                continue
            note = ""
            if group == "tempo_range" and segmentation.tempo_bpm:
                note = (f"CLAP's judgement; the segmenter's beat tracking reads {segmentation.tempo_bpm:.1f} BPM "
                        "(half or double tempo is possible)")
            groups[group] = self._group(group, embedding, top_k, note)
        moods = dict(zip(self.vocabulary[MOOD_GROUP].ids(), self._scores(MOOD_GROUP, embedding)))
        styles = self.vocabulary[STYLE_GROUP]
        groups[STYLE_GROUP] = _ranked(styles, {s.id: moods[s.data["mood"]] for s in styles.labels}, top_k,
                                      "one style per mood, scored as its mood")
        return {g: groups[g] for g in groups_in_scope(self.vocabulary, "track")}

    @property
    def key_report(self) -> KeyReport | None:
        """How the checkpoint's keys matched the model's (None before load)."""
        return self.model.keys if self.model else None


def window_starts(length: int, window: int) -> list[int]:
    """Offsets of the windows that cover `length` samples: one if it fits (padded), else evenly spaced
    overlapping windows, the first at 0 and the last ending at `length`."""
    if length <= window:
        return [0]
    count = math.ceil(length / window)
    return [int(round(i * (length - window) / (count - 1))) for i in range(count)]


def _fill_window(audio: np.ndarray, window: int) -> np.ndarray:
    """Exactly `window` samples: a short piece is repeated to fill it, as msclap pads clips shorter than its window."""
    if audio.size >= window:
        return audio[:window]
    return np.tile(audio, math.ceil(window / audio.size))[:window]


def _sample_span(start: float, end: float, sr: int, total: int) -> tuple[int, int]:
    """Samples [a, b) of a segment, at least one, inside the audio (segments may end a little past it)."""
    a = min(int(round(start * sr)), total - 1)
    b = max(a + 1, min(int(round(end * sr)), total))
    return a, b


def _mean_direction(vectors: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The unit vector of the (weighted) mean of unit vectors."""
    mean = vectors.mean(dim=0) if weights is None else (weights[:, None] * vectors).sum(dim=0) / weights.sum()
    return torch.nn.functional.normalize(mean, dim=0)


def _ranked(label_set: LabelSet, scores: dict[str, float], top_k: int, note: str) -> LabelGroup:
    order = label_set.ids()
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], order.index(kv[0])))
    return LabelGroup([LabelScore(label_set.text(i), s) for i, s in ranked[:top_k]], note)


def _check_text_family(folder: Path) -> None:
    """msclap chooses its text-encoder code by substrings of the path: make sure it matches the model there."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return  # not a transformers folder of ours to judge; msclap will report what it cannot load
    expected = TEXT_FAMILY_OF_MODEL_TYPE.get(model_type)
    if expected and msclap_text_family(str(folder)) != expected:
        raise StageFailedError(
            f"{folder} holds a {model_type} model, but msclap picks its text-encoder code from the path's name and "
            f"would treat it as {msclap_text_family(str(folder))!r}: the path must contain {expected!r} and none of "
            "'clip', 'gpt', 'roberta', 'bert' that msclap tests first")
