"""What the diffusers text-to-video backends (wan, mochi) share: settings, loading, one clip.

A backend loads its pipeline once with `from_pretrained` (a hub id or a local diffusers folder,
from the environment), applies the configured dtype, memory, attention, cache and compile
options, and then makes one clip at a time:

    scene sentence + characters + style bible ─▶ prompt
    timing_policy.plan_clip ─▶ native clips to generate (frames at the model's own rate)
    pipeline(output_type="latent"), step progress and cancellation through callback_on_step_end
    VAE decode ─▶ frames scaled and letterboxed to the output size on the device
    output frame i ─▶ native frame plan.source_frames[i] ─▶ encoding.RawVideoEncoder

The pipeline returns latents and the backend decodes them itself (as the pipeline would), so
that a cancelled clip skips the VAE decode, decode time is measured apart from denoising, and a
continuation can start from the decoded last frame. torch and diffusers are imported in `_load`
only: building a backend object (which the video stage does for every enabled backend) stays light.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from services.common import encoding, envs
from services.common.artifacts import Character, Script, StyleBible
from services.common.errors import (
    InvalidInputError,
    JobCancelledError,
    ResourceExhaustedError,
    StageFailedError,
)
from services.common.lifecycle import BackendState
from services.common.stage_api import GenerateClipRequest
from services.video.generator import CancelledFn, ClipGenerator, ProgressFn
from services.video.timing_policy import POLICIES, ClipPlan, NativeFormat, plan_clip, slow_motion_warning

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
OFFLOADS = ("none", "model", "sequential")  # diffusers' enable_model_cpu_offload / enable_sequential_cpu_offload
COMPILES = ("off", "regional", "full")  # regional: torch.compile of the repeated transformer blocks only
CACHE_CONFIGS = {"first_block": "FirstBlockCacheConfig", "mag": "MagCacheConfig", "taylorseer": "TaylorSeerCacheConfig"}
DECODE_STEPS = 1  # a VAE decode counts as much as one denoising step in the progress fraction
ENCODE_SHARE = 0.02  # the part of the progress left for writing the mp4
LOCK_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class CacheSettings:
    """A diffusers cache (none, first_block, mag, taylorseer) and its config's fields, e.g. {"threshold": 0.05}."""

    kind: str = "none"
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.options}


@dataclass(frozen=True)
class DiffusionSettings:
    """Everything configurable about a diffusion backend; `from_env` reads it with the family's defaults."""

    model: str  # hub id or local diffusers folder
    continuation_model: str  # image-to-video model for the `continue` policy ("" where the family has none)
    device: str
    dtype: str
    offload: str
    vae_tiling: bool
    vae_slicing: bool
    attention: str  # diffusers attention backend name; "" keeps diffusers' default (PyTorch SDPA)
    cache: CacheSettings
    compile: str
    steps: int
    guidance: float
    width: int  # the native (generated) size
    height: int
    resolution: str  # as configured: 480p, 720p or WxH
    negative_prompt: str
    long_segment_policy: str
    max_frames: int  # the longest native clip, at most the family's
    flow_shift: float | None  # Wan's scheduler shift (3 at 480p, 5 at 720p); None keeps the checkpoint's

    @classmethod
    def from_env(cls, family: type[DiffusionClipGenerator],
                 environ: Mapping[str, str] | None = None) -> DiffusionSettings:
        """Read the MVGEN_* variables (of `environ`, else this process's environment), with `family`'s
        defaults; a bad value raises InvalidInputError naming it."""
        def get(name: str, **default: Any) -> Any:
            return envs.get(name, environ, **default)

        def choice(name: str, choices: Iterable[str]) -> str:
            return _choice(name, get(name), tuple(choices))

        resolution = get("MVGEN_VIDEO_RESOLUTION")
        width, height = family.native_size(resolution)
        device = get("MVGEN_VIDEO_DEVICE")
        policy = choice("MVGEN_LONG_SEGMENT_POLICY", POLICIES)
        # Two models on one GPU under `continue` (Wan 14B: ~72 GB of weights together): an offload of its own.
        offload_name = "MVGEN_VIDEO_OFFLOAD"
        if policy == "continue" and get("MVGEN_VIDEO_CONTINUATION_OFFLOAD"):
            offload_name = "MVGEN_VIDEO_CONTINUATION_OFFLOAD"
        offload = choice(offload_name, OFFLOADS)
        if offload != "none" and not device.startswith("cuda"):
            raise InvalidInputError(f"{offload_name}={offload} moves weights between the CPU and a GPU: "
                                    f"it needs MVGEN_VIDEO_DEVICE=cuda (got {device!r})")
        if policy == "continue" and not family.continuation_model_env:
            raise InvalidInputError(f"MVGEN_LONG_SEGMENT_POLICY=continue needs an image-to-video model, which "
                                    f"{family.name} does not have; use retime")
        max_frames = get("MVGEN_VIDEO_MAX_FRAMES") or family.native.max_frames
        if not (family.native.allowed(max_frames) and 1 < max_frames <= family.native.max_frames):
            raise InvalidInputError(
                f"MVGEN_VIDEO_MAX_FRAMES must be {family.native.frame_step}·k + 1 frames, between "
                f"{family.native.frame_step + 1} and {family.native.max_frames} for {family.name} (got {max_frames})")
        steps = get("MVGEN_VIDEO_STEPS") or family.default_steps
        if steps < 1:
            raise InvalidInputError(f"MVGEN_VIDEO_STEPS must be at least 1 (got {steps})")
        guidance = get("MVGEN_VIDEO_GUIDANCE")
        continuation = ""
        if policy == "continue":
            name = family.continuation_model_env
            continuation = _model_source(name, get(name, default=family.default_continuation_model(resolution)))
        flow_shift = get(family.flow_shift_env) if family.flow_shift_env else None
        return cls(
            model=_model_source(family.model_env, get(family.model_env, default=family.default_model)),
            continuation_model=continuation,
            device=device,
            dtype=choice("MVGEN_VIDEO_DTYPE", DTYPES),
            offload=offload,
            vae_tiling=get("MVGEN_VIDEO_VAE_TILING", default=family.default_vae_tiling),
            vae_slicing=get("MVGEN_VIDEO_VAE_SLICING"),
            attention=get("MVGEN_VIDEO_ATTENTION"),
            cache=_cache_settings(choice("MVGEN_VIDEO_CACHE", ("none", *CACHE_CONFIGS)),
                                  get("MVGEN_VIDEO_CACHE_OPTIONS")),
            compile=choice("MVGEN_VIDEO_COMPILE", COMPILES),
            steps=steps,
            guidance=family.default_guidance if guidance is None else guidance,
            width=width,
            height=height,
            resolution=resolution,
            negative_prompt=get("MVGEN_VIDEO_NEGATIVE_PROMPT", default=family.default_negative_prompt),
            long_segment_policy=policy,
            max_frames=max_frames,
            flow_shift=flow_shift if flow_shift is not None else family.default_flow_shift(resolution),
        )


@dataclass
class GenerationStats:
    steps: int = 0  # denoising steps run, over all native clips
    denoise_seconds: float = 0.0  # text encoding and denoising
    decode_seconds: float = 0.0


class StepProgress:
    """Denoising steps and VAE decodes as a non-decreasing fraction; the last ENCODE_SHARE is the mp4's."""

    def __init__(self, total_units: int, on_progress: ProgressFn):
        self.total_units = total_units
        self.done = 0
        self.on_progress = on_progress

    def advance(self, units: int = 1) -> None:
        self.done += units
        self.on_progress((1 - ENCODE_SHARE) * min(self.done, self.total_units) / self.total_units)


class DiffusionClipGenerator(ClipGenerator):
    """A diffusers text-to-video family. Subclasses give the constants below and the loading and decoding."""

    native: ClassVar[NativeFormat]
    title: ClassVar[str]  # what the clip is, for its metadata, e.g. "Wan 2.1 text-to-video"
    model_env: ClassVar[str]
    default_model: ClassVar[str]
    continuation_model_env: ClassVar[str] = ""  # empty: the family has no image-to-video model
    flow_shift_env: ClassVar[str] = ""
    sizes: ClassVar[dict[str, tuple[int, int]]]  # named resolutions → native (width, height)
    size_multiple: ClassVar[int]  # VAE downsampling × transformer patch: sizes must be multiples of it
    default_steps: ClassVar[int]
    default_guidance: ClassVar[float]
    default_negative_prompt: ClassVar[str]
    default_vae_tiling: ClassVar[bool] = False

    def __init__(self, settings: DiffusionSettings | None = None, environ: Mapping[str, str] | None = None):
        super().__init__(environ)
        self.settings = settings or DiffusionSettings.from_env(type(self), environ)
        self.native_format = NativeFormat(self.native.fps, self.native.frame_step, self.settings.max_frames)
        self.pipeline: DiffusionPipeline | None = None
        self.continuation: DiffusionPipeline | None = None
        self._device_failure = ""  # set once the accelerator failed: this process cannot recover
        self._one_at_a_time = threading.Lock()

    # ---- the family's part

    @classmethod
    def native_size(cls, resolution: str) -> tuple[int, int]:
        """The generated (width, height) for MVGEN_VIDEO_RESOLUTION: a named size or WxH."""
        if resolution in cls.sizes:
            return cls.sizes[resolution]
        match = re.fullmatch(r"(\d+)x(\d+)", resolution)
        if not match:
            raise InvalidInputError(f"MVGEN_VIDEO_RESOLUTION must be one of {', '.join(cls.sizes)} or WIDTHxHEIGHT "
                                    f"for {cls.name} (got {resolution!r})")
        width, height = int(match[1]), int(match[2])
        if width % cls.size_multiple or height % cls.size_multiple or not width or not height:
            raise InvalidInputError(f"{cls.name} makes sizes that are multiples of {cls.size_multiple} "
                                    f"(MVGEN_VIDEO_RESOLUTION={resolution})")
        return width, height

    @classmethod
    def default_continuation_model(cls, resolution: str) -> str:
        return ""

    @classmethod
    def default_flow_shift(cls, resolution: str) -> float | None:
        return None

    @abstractmethod
    def _load_pipeline(self, dtype: torch.dtype) -> DiffusionPipeline:
        """The text-to-video pipeline from `settings.model`, on the CPU, weights in `dtype` where the family wants."""

    def _load_continuation(self, dtype: torch.dtype, text_to_video: DiffusionPipeline) -> DiffusionPipeline:
        """The image-to-video pipeline of the `continue` policy (only families with `continuation_model_env`)."""
        raise NotImplementedError

    def _prompt_arguments(self, prompt: str) -> dict[str, Any]:
        """The pipeline arguments that carry the prompt and the negative prompt; the same for every
        native clip of one output clip."""
        return {"prompt": prompt, "negative_prompt": self.settings.negative_prompt}

    @abstractmethod
    def _decode(self, pipeline: DiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
        """Latents → video (batch, channels, frames, height, width) in [-1, 1], exactly as the pipeline decodes."""

    # ---- loading

    def _load(self) -> None:
        if self._device_failure:
            raise StageFailedError(f"the accelerator failed earlier ({self._device_failure}); restart the service")
        import torch

        settings = self.settings
        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise StageFailedError(f"MVGEN_VIDEO_DEVICE={settings.device} but torch sees no CUDA device")
        dtype = getattr(torch, settings.dtype)
        began = time.monotonic()
        pipeline = self._load_pipeline(dtype)
        continuation = (self._load_continuation(dtype, pipeline)
                        if settings.long_segment_policy == "continue" else None)
        for loaded in (pipeline, continuation):
            if loaded is not None:
                self._configure(loaded)
        self.pipeline, self.continuation = pipeline, continuation
        log.info("%s loaded from %s in %.1f s on %s (%s)", self.name, settings.model, time.monotonic() - began,
                 settings.device, settings.dtype)

    def _configure(self, pipeline: DiffusionPipeline) -> None:
        """Apply the memory, attention, cache and compile options, then place the pipeline on the device."""
        settings = self.settings
        pipeline.set_progress_bar_config(disable=True)
        if settings.vae_tiling:
            pipeline.vae.enable_tiling()
        if settings.vae_slicing:
            pipeline.vae.enable_slicing()
        transformer = pipeline.transformer
        if settings.attention:
            set_attention_backend(transformer, settings.attention)
        if settings.cache.kind != "none":
            transformer.enable_cache(cache_config(settings.cache, settings.steps))
        if settings.offload == "model":
            pipeline.enable_model_cpu_offload(device=settings.device)
        elif settings.offload == "sequential":
            pipeline.enable_sequential_cpu_offload(device=settings.device)
        else:
            pipeline.to(settings.device)
        if settings.compile == "regional":
            if not getattr(transformer, "_repeated_blocks", None):
                raise InvalidInputError(f"{self.name}'s transformer names no repeated blocks to compile by region; "
                                        f"use MVGEN_VIDEO_COMPILE=full")
            # Cache hooks branch on tensor values: graph breaks are expected there.
            transformer.compile_repeated_blocks(fullgraph=settings.cache.kind == "none")
        elif settings.compile == "full":
            transformer.compile()

    # ---- one clip

    def generate(self, req: GenerateClipRequest, song_path: Path, script: Script, out_path: Path,
                 on_progress: ProgressFn, is_cancelled: CancelledFn) -> dict[str, Any]:
        began = time.monotonic()
        scene = next(s for s in script.scenes if s.index == req.index)
        prompt = compose_prompt(scene.text, script.style, script.characters)
        try:
            plan = plan_clip(req.frame_count, req.fps, self.native_format, self.settings.long_segment_policy)
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        slow_motion = slow_motion_warning(plan, self.native.fps)
        if slow_motion:
            log.warning("%s: clip %d (%.2f s): %s", self.name, req.index, req.end - req.start, slow_motion)

        with self._exclusive(req.index, is_cancelled):
            frames, stats, peak_memory = self._on_device(
                lambda: self._generate_native(req, plan, prompt, on_progress, is_cancelled))

        encode_began = time.monotonic()
        with encoding.RawVideoEncoder(out_path, req.width, req.height, req.fps) as encoder:
            for source in plan.source_frames:
                if is_cancelled():
                    raise JobCancelledError(f"clip {req.index} cancelled while encoding")
                encoder.write(frames[source])
        on_progress(1.0)
        seconds = time.monotonic() - began
        settings = self.settings
        return {
            "generator": self.name,
            "kind": f"AI video ({self.title}, diffusers)",
            "model": settings.model,
            "continuation_model": settings.continuation_model or None,
            "prompt": prompt,
            "negative_prompt": settings.negative_prompt,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "resolution": f"{settings.width}x{settings.height}",
            "native": {"fps": self.native.fps, "frames": plan.native_frames, "clips": list(plan.chunk_frames)},
            "long_segment_policy": plan.policy,
            "playback_speed": plan.speed,
            "slow_motion_warning": slow_motion,
            "device": settings.device,
            "dtype": settings.dtype,
            "offload": settings.offload,
            "attention": settings.attention or "default",
            "cache": settings.cache.describe(),
            "compile": settings.compile,
            "generation_seconds": round(stats.denoise_seconds, 3),
            "seconds_per_step": round(stats.denoise_seconds / stats.steps, 4) if stats.steps else None,
            "decode_seconds": round(stats.decode_seconds, 3),
            "encode_seconds": round(time.monotonic() - encode_began, 3),
            "seconds": round(seconds, 3),
            "peak_gpu_memory_gib": None if peak_memory is None else round(peak_memory / 2**30, 3),
        }

    @contextmanager
    def _exclusive(self, index: int, is_cancelled: CancelledFn) -> Iterator[None]:
        """One clip at a time on this model (in-process callers may ask for several at once); a
        clip waiting its turn can still be cancelled."""
        while not self._one_at_a_time.acquire(timeout=LOCK_POLL_SECONDS):
            if is_cancelled():
                raise JobCancelledError(f"clip {index} cancelled while waiting for the model")
        try:
            yield
        finally:
            self._one_at_a_time.release()

    def _on_device(self, work: Callable[[], tuple[np.ndarray, GenerationStats]]
                   ) -> tuple[np.ndarray, GenerationStats, int | None]:
        """Run `work` and return its result with the peak accelerator memory (None off CUDA). Out of
        memory frees the cache and is RESOURCE_EXHAUSTED; any other accelerator error leaves a CUDA
        context that cannot be trusted, so the backend turns FAILED (the stage is no longer ready) for good."""
        import torch

        on_cuda = self.settings.device.startswith("cuda")
        if self._device_failure:
            raise StageFailedError(f"the accelerator failed earlier ({self._device_failure}); restart the service")
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(self.settings.device)
        try:
            frames, stats = work()
        except torch.cuda.OutOfMemoryError as exc:
            self._reset_pipelines()
            torch.cuda.empty_cache()
            raise ResourceExhaustedError(f"out of GPU memory generating a clip: {_first_line(exc)}") from exc
        except Exception as exc:
            if not is_device_error(exc):
                raise
            self._device_failure = _first_line(exc)
            self.state = BackendState.FAILED
            self.load_error = f"accelerator error: {self._device_failure}"
            log.critical("%s: accelerator error, the backend is FAILED until the service restarts: %s",
                         self.name, self._device_failure)
            raise StageFailedError(f"the accelerator failed ({self._device_failure}); this replica stops serving") \
                from exc
        peak = torch.cuda.max_memory_allocated(self.settings.device) if on_cuda else None
        return frames, stats, peak

    def _reset_pipelines(self) -> None:
        """After a call that raised: re-arm offload hooks and clear cache state, as a finished call does."""
        for pipeline in (self.pipeline, self.continuation):
            if pipeline is not None:
                pipeline.maybe_free_model_hooks()

    def _generate_native(self, req: GenerateClipRequest, plan: ClipPlan, prompt: str, on_progress: ProgressFn,
                         is_cancelled: CancelledFn) -> tuple[np.ndarray, GenerationStats]:
        """The plan's native clips, joined, as uint8 frames (n, height, width, 3) at the output size.

        All of it under inference mode: the prompt embeddings (encoded once, reused by every
        continuation), the latents and the frames carry no autograd graph, which would otherwise keep
        the text encoder's activations (~5 GiB a prompt for UMT5-XXL) alive to the end of the clip.
        """
        import torch

        with torch.inference_mode():
            return self._generate_native_inference(req, plan, prompt, on_progress, is_cancelled)

    def _generate_native_inference(self, req: GenerateClipRequest, plan: ClipPlan, prompt: str,
                                   on_progress: ProgressFn, is_cancelled: CancelledFn
                                   ) -> tuple[np.ndarray, GenerationStats]:
        settings = self.settings
        progress = StepProgress(len(plan.chunk_frames) * (settings.steps + DECODE_STEPS), on_progress)
        stats = GenerationStats()
        joined: list[np.ndarray] = []
        last_frame = None
        began = time.perf_counter()
        prompt_arguments = self._prompt_arguments(prompt)
        for chunk, frames in enumerate(plan.chunk_frames):
            pipeline = self.pipeline if chunk == 0 else self.continuation
            arguments = prompt_arguments if chunk == 0 else {**prompt_arguments, "image": last_frame}
            latents, steps = self._denoise(pipeline, req.index, frames, req.seed + chunk, arguments, progress,
                                           is_cancelled)
            self._synchronize()
            decode_began = time.perf_counter()
            video = self._decode(pipeline, latents)[0]
            if chunk + 1 < len(plan.chunk_frames):
                last_frame = to_image(video[:, -1])
            fitted = fit_frames(video, req.width, req.height)
            self._synchronize()
            stats.steps += steps
            stats.denoise_seconds += decode_began - began
            stats.decode_seconds += time.perf_counter() - decode_began
            progress.advance(DECODE_STEPS)
            began = time.perf_counter()
            # A continuation's first frame is the previous clip's last: keep it once.
            joined.append(fitted if chunk == 0 else fitted[1:])
        return np.concatenate(joined), stats

    def _denoise(self, pipeline: DiffusionPipeline, index: int, frames: int, seed: int, arguments: dict[str, Any],
                 progress: StepProgress, is_cancelled: CancelledFn) -> tuple[torch.Tensor, int]:
        """Run the pipeline's denoising loop (prompt and conditioning in `arguments`); returns the
        latents and the steps run."""
        import torch

        settings = self.settings
        if is_cancelled():
            raise JobCancelledError(f"clip {index} cancelled before generating")
        steps_run = 0

        def on_step_end(pipe: DiffusionPipeline, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            nonlocal steps_run
            steps_run = step + 1
            if is_cancelled():
                pipe._interrupt = True  # diffusers' stop flag: the loop skips the remaining steps
            else:
                progress.advance()
            return tensors

        # Noise drawn on the CPU: the same seed starts from the same noise on any device.
        generator = torch.Generator("cpu").manual_seed(seed)
        result = pipeline(width=settings.width, height=settings.height, num_frames=frames,
                          num_inference_steps=settings.steps, guidance_scale=settings.guidance, generator=generator,
                          output_type="latent", callback_on_step_end=on_step_end, **arguments)
        if pipeline.interrupt:
            log.info("%s: clip %d cancelled after step %d of %d", self.name, index, steps_run, settings.steps)
            raise JobCancelledError(f"clip {index} cancelled after step {steps_run} of {settings.steps}")
        return result.frames, steps_run

    def _synchronize(self) -> None:
        import torch

        if self.settings.device.startswith("cuda"):
            torch.cuda.synchronize(self.settings.device)


# ---- prompt

# Names for palette colours: a text encoder reads "amber", not "#e0a458".
COLOUR_NAMES: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "charcoal": (54, 69, 79), "grey": (128, 128, 128), "silver": (192, 192, 192),
    "white": (255, 255, 255), "ivory": (245, 240, 225), "beige": (222, 205, 170), "brown": (120, 72, 36),
    "rust": (170, 70, 30), "crimson": (175, 20, 45), "red": (220, 30, 30), "pink": (240, 150, 180),
    "coral": (250, 120, 95), "orange": (245, 135, 20), "amber": (225, 165, 70), "gold": (212, 175, 55),
    "yellow": (245, 220, 40), "olive": (110, 115, 40), "green": (40, 150, 60), "forest green": (34, 85, 45),
    "teal": (0, 128, 128), "turquoise": (60, 200, 200), "sky blue": (120, 190, 235), "blue": (30, 80, 200),
    "navy": (20, 30, 80), "indigo": (60, 30, 130), "purple": (120, 50, 150), "violet": (170, 120, 220),
    "magenta": (210, 40, 160), "burgundy": (110, 20, 40),
}


def colour_word(colour: str) -> str:
    """A palette entry as words: the nearest named colour for '#rrggbb'/'#rgb', free text as it is."""
    digits = colour.strip().lstrip("#")
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    if not re.fullmatch(r"[0-9a-fA-F]{6}", digits):
        return colour.strip()
    rgb = np.array([int(digits[i:i + 2], 16) for i in (0, 2, 4)])
    return min(COLOUR_NAMES, key=lambda name: float(np.sum((rgb - COLOUR_NAMES[name]) ** 2)))


def compose_prompt(scene_text: str, style: StyleBible, characters: list[Character]) -> str:
    """The clip's prompt: the scene first (most weight), then the description of each character the
    scene names, then the style bible that every clip shares, so that scenes look like one film.

    A character is described only where the scene names them: the script's rules refer to
    characters by name, and describing someone absent invites the model to add them.
    """
    parts = [_sentence(scene_text)]
    for character in characters:
        if re.search(rf"(?<!\w){re.escape(character.name.strip())}(?!\w)", scene_text, re.IGNORECASE):
            parts.append(_sentence(f"{character.name.strip()}: {character.description.strip()}"))
    colours = list(dict.fromkeys(colour_word(c) for c in style.palette if c.strip()))
    look = [("Style", style.look), ("Lighting", style.lighting), ("Camera", style.camera),
            ("Atmosphere", style.atmosphere), ("Colour palette", ", ".join(colours))]
    parts += [_sentence(f"{label}: {value.strip()}") for label, value in look if value.strip()]
    return " ".join(parts)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?")) else text + "."


# ---- device-side helpers (torch is imported by the caller before these run)

def fit_frames(video: torch.Tensor, width: int, height: int) -> np.ndarray:
    """Video (channels, frames, h, w) in [-1, 1] → uint8 frames (frames, height, width, 3), scaled
    to fit and letterboxed (black bars), as the assembler conforms a clip; resized on the device."""
    import torch

    frames = ((video.float().clamp(-1, 1) + 1) / 2).permute(1, 0, 2, 3)  # (frames, channels, h, w) in [0, 1]
    h, w = frames.shape[-2:]
    scale = min(width / w, height / h)
    fit_w, fit_h = min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale)))
    if (fit_w, fit_h) != (w, h):
        frames = torch.nn.functional.interpolate(frames, size=(fit_h, fit_w), mode="bicubic", antialias=True,
                                                 align_corners=False).clamp(0, 1)
    out = torch.zeros((frames.shape[0], 3, height, width), dtype=torch.uint8, device=frames.device)
    top, left = (height - fit_h) // 2, (width - fit_w) // 2
    out[:, :, top:top + fit_h, left:left + fit_w] = (frames * 255).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def to_image(frame: torch.Tensor):
    """One decoded frame (channels, h, w) in [-1, 1] as a PIL image, the input of image-to-video."""
    from PIL import Image

    pixels = ((frame.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels)


def set_attention_backend(transformer: Any, backend: str) -> None:
    """Route the transformer's attention to a diffusers backend (flash, _flash_3, sage, flex, ...)."""
    processors = [getattr(m, "processor", None) for m in transformer.modules()]
    if not any(hasattr(p, "_attention_backend") for p in processors if p is not None):
        raise InvalidInputError(f"{type(transformer).__name__}'s attention does not go through diffusers' attention "
                                f"dispatcher in this diffusers version: leave MVGEN_VIDEO_ATTENTION unset")
    try:
        transformer.set_attention_backend(backend)
    except (ValueError, RuntimeError, ImportError) as exc:
        raise InvalidInputError(f"MVGEN_VIDEO_ATTENTION={backend}: {_first_line(exc)}") from exc


def cache_config(cache: CacheSettings, steps: int) -> Any:
    """The diffusers cache config for MVGEN_VIDEO_CACHE and MVGEN_VIDEO_CACHE_OPTIONS."""
    import dataclasses

    import diffusers

    config_class = getattr(diffusers, CACHE_CONFIGS[cache.kind])
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(cache.options) - fields)
    if unknown:
        raise InvalidInputError(f"MVGEN_VIDEO_CACHE_OPTIONS: {config_class.__name__} has no {', '.join(unknown)}; "
                                f"its fields are {', '.join(sorted(fields))}")
    options = dict(cache.options)
    if "num_inference_steps" in fields:
        options.setdefault("num_inference_steps", steps)  # MagCache interpolates its ratios to the step count
    try:
        return config_class(**options)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"MVGEN_VIDEO_CACHE={cache.kind}: {_first_line(exc)}") from exc


def is_device_error(exc: BaseException) -> bool:
    """A CUDA error other than out-of-memory (illegal address, device-side assert, ECC, lost device)."""
    if type(exc).__name__ == "AcceleratorError":  # torch ≥ 2.8 raises this for CUDA errors
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in message for marker in ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "NCCL error"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- environment

def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    value = value.lower()
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(choices)} (got {value!r})")
    return value


def _cache_settings(kind: str, raw: str) -> CacheSettings:
    """MVGEN_VIDEO_CACHE (`kind`, checked) and MVGEN_VIDEO_CACHE_OPTIONS (`raw`, JSON)."""
    if not raw:
        return CacheSettings(kind)
    if kind == "none":
        raise InvalidInputError("MVGEN_VIDEO_CACHE_OPTIONS is set but MVGEN_VIDEO_CACHE is none")
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"MVGEN_VIDEO_CACHE_OPTIONS must be a JSON object, e.g. "
                                f"{{\"threshold\": 0.05}}: {exc}") from None
    if not isinstance(options, dict):
        raise InvalidInputError("MVGEN_VIDEO_CACHE_OPTIONS must be a JSON object, e.g. {\"threshold\": 0.05}")
    return CacheSettings(kind, options)


def _model_source(name: str, value: str) -> str:
    """A local diffusers folder (checked now) or a hub id (fetched by from_pretrained, or found in HF_HOME)."""
    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise InvalidInputError(f"{name}={value} is a folder without model_index.json: not a diffusers pipeline")
        return str(path.resolve())
    if value.startswith(("/", ".", "~")) or value.count("/") != 1:
        raise InvalidInputError(f"{name}={value} is neither a folder nor a hub id (owner/name)")
    return value
