"""The diffusers video backends (wan, mochi) on tiny pipelines with random weights, built here and
loaded through the production path (`from_pretrained` on a folder named by the environment).

The clips are noise; what is checked is everything around the model: frame counts and the
long-segment policies, seeds, progress, cancellation, errors, the encoding the assembler joins by
copy, and the service's answers over gRPC.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch

from services.assembly.assembler import Assembler, fits, probe_clip
from services.common.artifacts import Character, Scene, Script, StyleBible, dumps
from services.common.errors import (
    InvalidInputError,
    JobCancelledError,
    ResourceExhaustedError,
    StageFailedError,
)
from services.common.lifecycle import BackendState
from services.common.pb import video_service_pb2 as video_pb
from services.common.pb import video_service_pb2_grpc as video_grpc
from services.common.stage_api import GenerateClipRequest
from services.common.store import LocalArtifactStore
from services.common.timing import frame_count
from services.video.diffusion import DiffusionSettings, compose_prompt, fit_frames
from services.video.mochi import MochiGenerator, weights_variant
from services.video.stage import VideoStage, clip_meta_key
from services.video.timing_policy import NativeFormat, native_frames_needed, plan_clip, slow_motion_warning
from services.video.wan import WanGenerator
from tests.media import counted_frames, decode_frames, tone
from tests.servers import local_store_env, serving, stage_channel, stage_server
from tools.tiny_t2v import save_tiny_pipeline

WAN = NativeFormat(fps=16, frame_step=4, max_frames=81)
MOCHI = NativeFormat(fps=30, frame_step=6, max_frames=163)
FPS, WIDTH, HEIGHT = 24, 64, 36  # the output clips: another size and rate than the models make
SCRIPT = Script(
    writer="test", title="Harbour",
    style=StyleBible(["#e0a458", "#1b263b", "moss"], "ink wash", "dusk light", "slow dolly", "calm"),
    characters=[Character("Ada", "a tall woman in a long red coat"), Character("Bo", "a small grey dog")],
    scenes=[Scene(0, "Ada walks along the harbour wall at night."), Scene(1, "Gulls wheel over the sea.")],
)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in ("wan", "wan-i2v", "mochi")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> LocalArtifactStore:
    root = tmp_path_factory.mktemp("store")
    tone(root / "song.wav", 12.0)
    store = LocalArtifactStore(root)
    store.put_bytes("script.json", dumps(SCRIPT))
    return store


def tiny_env(models: dict[str, Path], **overrides: str) -> dict[str, str]:
    """The environment of a backend on the tiny models: CPU, float32, 32×32, two steps."""
    return {"MVGEN_WAN_MODEL": str(models["wan"]), "MVGEN_MOCHI_MODEL": str(models["mochi"]),
            "MVGEN_VIDEO_DEVICE": "cpu", "MVGEN_VIDEO_DTYPE": "float32", "MVGEN_VIDEO_RESOLUTION": "32x32",
            "MVGEN_VIDEO_STEPS": "2", **overrides}


@pytest.fixture
def stage_with(models, store, monkeypatch):
    """`stage_with(generator, **env)`: a loaded VideoStage serving that backend under that environment."""
    def build(generator: str, **env: str) -> VideoStage:
        for name, value in tiny_env(models, **env).items():
            monkeypatch.setenv(name, value)
        stage = VideoStage(store, enabled=(generator,))
        stage.load()
        return stage
    return build


def clip_request(generator: str, start: float, end: float, key: str, *, seed: int = 3, index: int = 0,
                 fps: int = FPS) -> GenerateClipRequest:
    return GenerateClipRequest(index=index, song_key="song.wav", script_key="script.json", start=start, end=end,
                               frame_count=frame_count(start, end, fps), fps=fps, width=WIDTH, height=HEIGHT,
                               generator=generator, clip_key=key, seed=seed)


def joinable_by_copy(path: Path, frames: int, fps: int) -> bool:
    """What the assembler checks before joining a clip by stream copy."""
    import tempfile
    with tempfile.TemporaryDirectory() as scratch:
        reference = Assembler()._reference_format(WIDTH, HEIGHT, fps, Path(scratch))
    return fits(probe_clip(path), reference, frames, fps)


# ---- timing policy (no model)

@pytest.mark.parametrize("seconds", [0.03, 0.5, 1.0, 2.377, 5.0, 5.1, 7.0, 8.0, 13.0])
@pytest.mark.parametrize("native", [WAN, MOCHI], ids=["wan", "mochi"])
@pytest.mark.parametrize("fps", [24, 30])
def test_plans_cover_the_segment_within_the_frame_rule(seconds: float, native: NativeFormat, fps: int) -> None:
    n = frame_count(0.0, seconds, fps)
    for policy in ("retime", "continue"):
        plan = plan_clip(n, fps, native, policy)
        assert len(plan.source_frames) == n
        assert all((c - 1) % native.frame_step == 0 and 1 < c <= native.max_frames for c in plan.chunk_frames)
        assert list(plan.source_frames) == sorted(plan.source_frames)  # time never runs backwards
        assert plan.source_frames[0] == 0 and plan.source_frames[-1] < plan.native_frames
        needed = native_frames_needed(n, fps, native.fps)
        if needed <= native.max_frames:  # one clip at real speed, no longer than the frame rule demands
            assert plan.policy == "native" and plan.speed == 1.0
            assert plan.chunk_frames[0] - native.frame_step < max(needed, 2)
        elif policy == "retime":  # the longest clip, stretched so that its last frame ends the segment
            assert plan.chunk_frames == (native.max_frames,) and plan.source_frames[-1] == native.max_frames - 1
            assert plan.speed == pytest.approx(native.max_frames / native.fps / (n / fps), abs=1e-4)
        else:  # continued at real speed: output frame i shows the native frame on screen at i / fps
            assert plan.policy == "continue" and plan.chunk_frames[0] == native.max_frames
            assert plan.source_frames == tuple(i * native.fps // fps for i in range(n))


def test_wan_native_clip_of_five_seconds_is_81_frames() -> None:
    plan = plan_clip(frame_count(0.0, 5.0, 24), 24, WAN, "retime")
    assert plan.chunk_frames == (81,)
    seven = plan_clip(frame_count(0.0, 7.0, 24), 24, WAN, "continue")
    assert seven.chunk_frames == (81, 33) and seven.native_frames == 113  # 112 needed, 4k+1 rounds up


# ---- prompt and settings

def test_prompt_has_the_scene_its_characters_and_the_style_bible() -> None:
    prompt = compose_prompt(SCRIPT.scenes[0].text, SCRIPT.style, SCRIPT.characters)
    assert prompt.startswith("Ada walks along the harbour wall at night.")
    assert "Ada: a tall woman in a long red coat." in prompt
    assert "dog" not in prompt  # Bo is not in this scene
    assert "Style: ink wash." in prompt and "Camera: slow dolly." in prompt
    assert "Colour palette: amber, navy, moss." in prompt  # hex colours named, free text kept
    assert "Ada" not in compose_prompt(SCRIPT.scenes[1].text, SCRIPT.style, SCRIPT.characters)


def test_settings_defaults_per_model(models, monkeypatch) -> None:
    monkeypatch.setenv("MVGEN_WAN_MODEL", str(models["wan"]))
    monkeypatch.setenv("MVGEN_MOCHI_MODEL", str(models["mochi"]))
    wan = DiffusionSettings.from_env(WanGenerator)
    assert (wan.width, wan.height, wan.steps, wan.guidance, wan.dtype) == (832, 480, 50, 5.0, "bfloat16")
    assert (wan.flow_shift, wan.vae_tiling, wan.long_segment_policy, wan.max_frames) == (3.0, False, "retime", 81)
    assert "subtitles" in wan.negative_prompt
    mochi = DiffusionSettings.from_env(MochiGenerator)
    assert (mochi.width, mochi.height, mochi.steps, mochi.guidance, mochi.vae_tiling) == (848, 480, 64, 4.5, True)
    monkeypatch.setenv("MVGEN_VIDEO_RESOLUTION", "720p")
    assert (DiffusionSettings.from_env(WanGenerator).width, DiffusionSettings.from_env(WanGenerator).flow_shift) == \
        (1280, 5.0)


@pytest.mark.parametrize("env, message", [
    ({"MVGEN_VIDEO_DTYPE": "int8"}, "MVGEN_VIDEO_DTYPE"),
    ({"MVGEN_VIDEO_RESOLUTION": "100x100"}, "multiples of 16"),
    ({"MVGEN_VIDEO_RESOLUTION": "1080p"}, "MVGEN_VIDEO_RESOLUTION"),
    ({"MVGEN_VIDEO_OFFLOAD": "model", "MVGEN_VIDEO_DEVICE": "cpu"}, "needs MVGEN_VIDEO_DEVICE=cuda"),
    ({"MVGEN_VIDEO_STEPS": "many"}, "MVGEN_VIDEO_STEPS"),
    ({"MVGEN_VIDEO_MAX_FRAMES": "80"}, r"4·k \+ 1 frames"),
    ({"MVGEN_VIDEO_CACHE": "first_block", "MVGEN_VIDEO_CACHE_OPTIONS": "threshold=0.1"}, "JSON object"),
    ({"MVGEN_VIDEO_CACHE": "turbo"}, "MVGEN_VIDEO_CACHE"),
    ({"MVGEN_WAN_MODEL": "/nowhere/wan"}, "neither a folder nor a hub id"),
])
def test_bad_settings_name_the_variable(models, monkeypatch, env: dict[str, str], message: str) -> None:
    for name, value in tiny_env(models, **env).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInputError, match=message):
        DiffusionSettings.from_env(WanGenerator)


def test_mochi_has_no_continuation_and_no_720p(models, monkeypatch) -> None:
    for name, value in tiny_env(models, MVGEN_LONG_SEGMENT_POLICY="continue").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidInputError, match="image-to-video"):
        DiffusionSettings.from_env(MochiGenerator)
    monkeypatch.setenv("MVGEN_LONG_SEGMENT_POLICY", "retime")
    monkeypatch.setenv("MVGEN_VIDEO_RESOLUTION", "720p")
    with pytest.raises(InvalidInputError, match="480p"):
        DiffusionSettings.from_env(MochiGenerator)


def test_building_the_stage_imports_no_torch(store) -> None:
    code = ("import sys; from services.common.store import LocalArtifactStore; "
            "from services.video.stage import VideoStage; "
            f"VideoStage(LocalArtifactStore({str(store.root)!r})); "
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_frames_are_scaled_to_fit_and_letterboxed() -> None:
    white = torch.ones(3, 2, 32, 32)  # (channels, frames, h, w) in [-1, 1]
    frames = fit_frames(white, 64, 36)  # a square into 16:9: 36×36 in the middle, bars left and right
    assert frames.shape == (2, 36, 64, 3) and frames.dtype == np.uint8
    assert (frames[:, :, 14:50] == 255).all()
    assert (frames[:, :, :14] == 0).all() and (frames[:, :, 50:] == 0).all()


# ---- clips from the tiny models

@pytest.mark.parametrize("generator, start, end, fps", [
    ("wan", 0.0, 0.03, 24),  # one output frame
    ("wan", 1.013, 2.377, 24),  # fractional boundaries
    ("wan", 0.0, 6.0, 30),  # longer than 81 frames at 16 fps: retimed
    ("mochi", 2.5, 3.7, 24),
])
def test_clip_has_the_segments_exact_frames_and_joins_by_copy(stage_with, store, generator: str, start: float,
                                                             end: float, fps: int) -> None:
    stage = stage_with(generator)
    req = clip_request(generator, start, end, f"clips/{generator}-{start}-{end}-{fps}.mp4", fps=fps)

    result = stage.run(req)

    path = store.path(req.clip_key)
    assert counted_frames(path) == req.frame_count
    assert joinable_by_copy(path, req.frame_count, fps)
    meta = json.loads(store.get_text(clip_meta_key(req.clip_key)))
    assert result.keys["clip_meta"] == clip_meta_key(req.clip_key)
    native = {"wan": WAN, "mochi": MOCHI}[generator]
    assert meta["native"]["fps"] == native.fps
    assert all((c - 1) % native.frame_step == 0 for c in meta["native"]["clips"])
    assert meta["long_segment_policy"] == ("retime" if end - start > 5.5 else "native")
    assert (meta["model"], meta["steps"], meta["seed"], meta["resolution"]) == (
        str(Path(stage.generators.get(generator).settings.model)), 2, 3, "32x32")
    assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (req.frame_count, fps, WIDTH, HEIGHT)
    assert meta["generation_seconds"] > 0 and meta["decode_seconds"] > 0 and meta["seconds_per_step"] > 0
    assert "peak_gpu_memory_gib" in meta and meta["peak_gpu_memory_gib"] is None  # CPU: no GPU memory
    assert "Ada: a tall woman" in meta["prompt"]


def test_long_segment_continues_from_the_last_frame(stage_with, store, models) -> None:
    # Clips of at most 17 native frames (~1 s), so that a 2.5 s segment needs three.
    stage = stage_with("wan", MVGEN_LONG_SEGMENT_POLICY="continue", MVGEN_WAN_I2V_MODEL=str(models["wan-i2v"]),
                       MVGEN_VIDEO_MAX_FRAMES="17")
    progress: list[float] = []
    req = clip_request("wan", 0.0, 2.5, "clips/continued.mp4")

    stage.run(req, on_progress=progress.append)

    meta = json.loads(store.get_text(clip_meta_key(req.clip_key)))
    assert meta["long_segment_policy"] == "continue" and meta["playback_speed"] == 1.0
    assert meta["native"]["clips"] == [17, 17, 9] and meta["native"]["frames"] == 41  # 40 needed at 16 fps
    assert meta["continuation_model"] == str(models["wan-i2v"])
    assert counted_frames(store.path(req.clip_key)) == req.frame_count == 60
    assert len(progress) == 3 * (2 + 1) + 1  # per clip: each step and the decode; then the finished file


@pytest.mark.slow
def test_same_seed_same_clip_other_seed_other_clip(stage_with, store) -> None:
    stage = stage_with("wan")
    clips = {}
    for key, seed in (("a", 11), ("b", 11), ("c", 12)):
        req = clip_request("wan", 0.0, 0.5, f"clips/seed-{key}.mp4", seed=seed)
        stage.run(req)
        clips[key] = decode_frames(store.path(req.clip_key), WIDTH, HEIGHT)
    assert np.array_equal(clips["a"], clips["b"])
    assert not np.array_equal(clips["a"], clips["c"])


@pytest.mark.parametrize("generator", ["wan", "mochi"])
def test_own_decode_matches_the_pipelines(stage_with, generator: str) -> None:
    backend = stage_with(generator).generators.get(generator)
    pipeline, settings = backend.pipeline, backend.settings
    frames = 13 if generator == "mochi" else 9
    common = dict(prompt="a dog in the rain", negative_prompt="blur", width=settings.width, height=settings.height,
                  num_frames=frames, num_inference_steps=2)
    reference = pipeline(**common, generator=torch.Generator().manual_seed(5), output_type="np").frames[0]
    latents = pipeline(**common, generator=torch.Generator().manual_seed(5), output_type="latent").frames
    with torch.inference_mode():
        ours = backend._decode(pipeline, latents)[0]  # (channels, frames, h, w) in [-1, 1]
    ours = ((ours.float() / 2 + 0.5).clamp(0, 1)).permute(1, 2, 3, 0).numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_progress_streams_each_step(stage_with) -> None:
    stage = stage_with("wan", MVGEN_VIDEO_STEPS="4")
    progress: list[float] = []
    stage.run(clip_request("wan", 0.0, 0.5, "clips/progress.mp4"), on_progress=progress.append)
    assert len(progress) == 4 + 1 + 1  # four steps, the decode, the finished file
    assert progress == sorted(progress) and progress[-1] == 1.0 and progress[-2] < 1.0


def test_cancel_interrupts_the_denoising_loop(stage_with, store) -> None:
    stage = stage_with("wan", MVGEN_VIDEO_STEPS="8")
    progress: list[float] = []
    req = clip_request("wan", 0.0, 0.5, "clips/cancelled.mp4")

    with pytest.raises(JobCancelledError, match="after step 3 of 8"):
        stage.run(req, on_progress=progress.append, is_cancelled=lambda: len(progress) >= 2)

    assert len(progress) == 2  # the steps after the cancel were skipped, and nothing was decoded
    assert not store.exists(req.clip_key) and not store.exists(clip_meta_key(req.clip_key))
    stage.run(clip_request("wan", 0.0, 0.5, "clips/after-cancel.mp4"))  # the model is free again


def test_out_of_memory_is_resource_exhausted_and_keeps_serving(stage_with, monkeypatch) -> None:
    stage = stage_with("wan")
    backend = stage.generators.get("wan")
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    with monkeypatch.context() as patch:
        patch.setattr(type(backend.pipeline), "__call__", _raises(torch.cuda.OutOfMemoryError("CUDA out of memory.")))
        with pytest.raises(ResourceExhaustedError, match="out of GPU memory"):
            stage.run(clip_request("wan", 0.0, 0.5, "clips/oom.mp4"))
    assert emptied and stage.ready
    stage.run(clip_request("wan", 0.0, 0.5, "clips/after-oom.mp4"))


def test_a_device_error_fails_the_backend_for_good(stage_with, monkeypatch) -> None:
    stage = stage_with("wan")
    backend = stage.generators.get("wan")
    with monkeypatch.context() as patch:
        patch.setattr(type(backend.pipeline), "__call__",
                      _raises(RuntimeError("CUDA error: an illegal memory access was encountered")))
        with pytest.raises(StageFailedError, match="illegal memory access"):
            stage.run(clip_request("wan", 0.0, 0.5, "clips/broken.mp4"))
    assert backend.state is BackendState.FAILED and not stage.ready
    with pytest.raises(StageFailedError, match="restart"):  # no reload on a broken CUDA context
        stage.run(clip_request("wan", 0.0, 0.5, "clips/still-broken.mp4"))


def test_attention_backend_and_cache_are_applied(stage_with) -> None:
    stage = stage_with("wan", MVGEN_VIDEO_ATTENTION="native", MVGEN_VIDEO_CACHE="first_block",
                       MVGEN_VIDEO_CACHE_OPTIONS='{"threshold": 0.2}')
    transformer = stage.generators.get("wan").pipeline.transformer
    assert transformer.is_cache_enabled and transformer._cache_config.threshold == 0.2
    assert {getattr(m.processor, "_attention_backend", None) for m in transformer.modules()
            if hasattr(m, "processor")} == {"native"}
    stage.run(clip_request("wan", 0.0, 0.5, "clips/cached.mp4"))


def test_unsupported_options_fail_at_load(stage_with) -> None:
    with pytest.raises(InvalidInputError, match="attention dispatcher"):
        stage_with("mochi", MVGEN_VIDEO_ATTENTION="native")
    with pytest.raises(InvalidInputError, match="no nonsense"):
        stage_with("wan", MVGEN_VIDEO_CACHE="first_block", MVGEN_VIDEO_CACHE_OPTIONS='{"nonsense": 1}')


def _raises(exc: BaseException):
    def call(*args, **kwargs):
        raise exc
    return call


# ---- the service over gRPC

def grpc_request(key: str, end: float) -> video_pb.GenerateClipRequest:
    return video_pb.GenerateClipRequest(index=0, song_key="song.wav", script_key="script.json", start=0.0, end=end,
                                        frame_count=frame_count(0.0, end, FPS), fps=FPS, width=WIDTH, height=HEIGHT,
                                        generator="wan", clip_key=key, seed=9)


@pytest.mark.system
def test_service_streams_progress_and_can_be_cancelled(models, store, tmp_path) -> None:
    env = {**local_store_env(store.root), **tiny_env(models, MVGEN_VIDEO_STEPS="40"), "MVGEN_BACKENDS": "wan"}
    server = stage_server("video", tmp_path, env)
    with serving(server), stage_channel(server.address) as channel:
        stub = video_grpc.VideoServiceStub(channel)

        answers = list(stub.GenerateClip(grpc_request("clips/grpc.mp4", 0.4), timeout=120))
        fractions = [a.progress.fraction for a in answers if a.HasField("progress")]
        assert fractions and fractions == sorted(fractions)
        assert answers[-1].HasField("result") and answers[-1].result.keys["clip"] == "clips/grpc.mp4"
        assert counted_frames(store.path("clips/grpc.mp4")) == frame_count(0.0, 0.4, FPS)

        call = stub.GenerateClip(grpc_request("clips/grpc-cancelled.mp4", 5.0), timeout=120)
        assert next(call).HasField("progress")  # denoising has begun
        call.cancel()
        deadline = time.monotonic() + 60
        while "cancelled after step" not in server.log_tail():
            assert time.monotonic() < deadline, f"generation not interrupted:\n{server.log_tail()}"
            time.sleep(0.1)
        steps = int(server.log_tail().split("cancelled after step ")[1].split()[0])
        assert steps < 40
        assert not store.exists("clips/grpc-cancelled.mp4")

        after = _retry_while_busy(lambda: list(stub.GenerateClip(grpc_request("clips/grpc-after.mp4", 0.4),
                                                                 timeout=120)))
        assert after[-1].HasField("result")


def _retry_while_busy(call, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_gpu_benchmark_floor_is_counted_from_the_configuration() -> None:
    from bench.gpu_video import WAN_13B_TRANSFORMER, transformer_flops

    flops = transformer_flops(WAN_13B_TRANSFORMER, frames=81, height=480, width=832)
    assert 282e12 < flops < 285e12  # about 283 TFLOP per pass at 480p and 81 frames


# ---- no autograd on the device (issue 18, item 1)

@pytest.mark.parametrize("generator, policy", [("wan", "retime"), ("wan", "continue"), ("mochi", "retime")])
def test_generation_keeps_no_autograd_graph(stage_with, models, generator: str, policy: str) -> None:
    """The prompt embeddings (encoded once, reused by continuations), the latents and the frames a
    clip makes carry no autograd graph: one would keep the text encoder's activations (~5 GiB a
    prompt for UMT5-XXL) alive through denoising and decoding."""
    env = {"MVGEN_LONG_SEGMENT_POLICY": policy}
    if policy == "continue":
        env |= {"MVGEN_WAN_I2V_MODEL": str(models["wan-i2v"]), "MVGEN_VIDEO_MAX_FRAMES": "17"}
    stage = stage_with(generator, **env)
    backend = stage.generators.get(generator)
    seen: dict[str, list[Any]] = {"prompt": [], "latents": [], "video": [], "grad_enabled": []}
    originals = backend._prompt_arguments, backend._denoise, backend._decode

    def prompt_arguments(prompt: str) -> dict[str, Any]:
        arguments = originals[0](prompt)
        seen["prompt"] += [v for v in arguments.values() if isinstance(v, torch.Tensor)]
        return arguments

    def denoise(*args: Any, **kwargs: Any) -> Any:
        seen["grad_enabled"].append(torch.is_grad_enabled())
        latents, steps = originals[1](*args, **kwargs)
        seen["latents"].append(latents)
        return latents, steps

    def decode(*args: Any) -> Any:
        video = originals[2](*args)
        seen["video"].append(video)
        return video

    backend._prompt_arguments, backend._denoise, backend._decode = prompt_arguments, denoise, decode
    end = 2.5 if policy == "continue" else 0.5  # continued: three native clips, one prompt encoding
    stage.run(clip_request(generator, 0.0, end, f"clips/nograd-{generator}-{policy}.mp4"))

    assert seen["latents"] and seen["video"]
    if generator == "wan":  # Wan encodes the prompt itself, once per clip; Mochi's pipeline does it inside
        assert len(seen["prompt"]) == 2  # the prompt and the negative prompt
    graphs = {kind: [t.requires_grad or t.grad_fn is not None for t in seen[kind]]
              for kind in ("prompt", "latents", "video")}
    assert not any(any(flags) for flags in graphs.values()), graphs
    assert seen["grad_enabled"] == [False] * len(seen["latents"])  # the whole pipeline call, not only its loop
    kept = [v for v in vars(backend).values() if isinstance(v, torch.Tensor)]
    assert not [t for t in kept if t.requires_grad]


# ---- Mochi's bf16 weights, slow motion (issue 18, item 10)

def test_mochi_loads_the_bf16_variant_where_the_folder_has_it(stage_with, store, tmp_path) -> None:
    from tools.tiny_t2v import build_mochi

    only_variant = tmp_path / "mochi-bf16"
    build_mochi().save_pretrained(only_variant, variant="bf16")  # as a download of the variant alone
    assert not list(only_variant.glob("*/diffusion_pytorch_model.safetensors"))
    stage = stage_with("mochi", MVGEN_MOCHI_MODEL=str(only_variant))
    stage.run(clip_request("mochi", 0.0, 0.5, "clips/mochi-bf16.mp4"))
    assert counted_frames(store.path("clips/mochi-bf16.mp4")) == frame_count(0.0, 0.5, FPS)


def test_mochi_weights_variant_follows_the_folder_and_the_dtype(models, tmp_path) -> None:
    from tools.tiny_t2v import build_mochi

    assert weights_variant("genmo/mochi-1-preview", "bfloat16") == "bf16"  # the hub repository has it
    assert weights_variant("genmo/mochi-1-preview", "float32") is None
    assert weights_variant(str(models["mochi"]), "bfloat16") is None  # a folder without it loads as saved
    both = tmp_path / "both"
    pipeline = build_mochi()
    pipeline.save_pretrained(both)
    pipeline.save_pretrained(both, variant="bf16")
    assert weights_variant(str(both), "bfloat16") == "bf16"
    assert weights_variant(str(both), "float32") is None


def test_slow_motion_below_half_speed_is_flagged(stage_with, store, caplog) -> None:
    assert slow_motion_warning(plan_clip(frame_count(0.0, 8.0, 24), 24, WAN, "retime"), WAN.fps) is None  # 0.63x
    assert slow_motion_warning(plan_clip(frame_count(0.0, 20.0, 24), 24, WAN, "continue"), WAN.fps) is None
    stage = stage_with("wan")
    req = clip_request("wan", 0.0, 20.0, "clips/slow.mp4", fps=8)  # 81 frames at 16 fps over 20 s: 0.25x
    with caplog.at_level("WARNING", logger="services.video.diffusion"):
        stage.run(req)
    meta = json.loads(store.get_text(clip_meta_key(req.clip_key)))
    assert meta["playback_speed"] == pytest.approx(0.2531, abs=1e-4)
    assert "0.25x" in meta["slow_motion_warning"] and "continue" in meta["slow_motion_warning"]
    assert "0.25x" in caplog.text
    assert counted_frames(store.path(req.clip_key)) == req.frame_count  # made as asked, not capped


def test_gpu_benchmark_keeps_its_rows_when_a_late_measurement_fails(tmp_path, monkeypatch) -> None:
    """bench/gpu_video.py writes what it has measured after every measurement, so a crash late in
    the one GPU call (here: the VAE decode, measured last) keeps the early rows; the text encoder
    is built and counted."""
    import argparse

    import services.video.wan
    from bench import gpu_video

    def broken_decode(*args: Any) -> Any:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_video, "ATTENTION_BACKENDS", ("native",))
    monkeypatch.setattr(gpu_video, "CACHES", {})
    monkeypatch.setattr(services.video.wan, "decode_wan_latents", broken_decode)
    args = argparse.Namespace(device="cpu", frames=9, steps=2, cache_steps=2, smoke=True)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        gpu_video.measure(args, gpu_video.PartialResults(str(tmp_path)))
    partial = json.loads((tmp_path / "gpu_video.partial.json").read_text())
    assert not partial["complete"] and partial["floor_seconds_per_step"] > 0
    assert [run["attention"] for run in partial["runs"]] == ["native"] and partial["runs"][0]["seconds_per_step"] > 0
    assert partial["text_encoder_params"] > 0 and partial["text_encoder_gib"] > 0


# ---- offload for the continuation policy (issue 18, item 9)

def test_continuation_offload_applies_only_under_continue(models, monkeypatch) -> None:
    """MVGEN_VIDEO_CONTINUATION_OFFLOAD: the offload when two 14B models share the GPU (the `continue`
    policy); retime keeps MVGEN_VIDEO_OFFLOAD (none: full speed), so one preset fits either policy."""
    for name, value in tiny_env(models, MVGEN_VIDEO_DEVICE="cuda", MVGEN_VIDEO_CONTINUATION_OFFLOAD="model").items():
        monkeypatch.setenv(name, value)
    assert DiffusionSettings.from_env(WanGenerator).offload == "none"
    monkeypatch.setenv("MVGEN_LONG_SEGMENT_POLICY", "continue")
    monkeypatch.setenv("MVGEN_WAN_I2V_MODEL", str(models["wan-i2v"]))
    assert DiffusionSettings.from_env(WanGenerator).offload == "model"
    monkeypatch.setenv("MVGEN_VIDEO_CONTINUATION_OFFLOAD", "")  # unset: MVGEN_VIDEO_OFFLOAD's
    monkeypatch.setenv("MVGEN_VIDEO_OFFLOAD", "sequential")
    assert DiffusionSettings.from_env(WanGenerator).offload == "sequential"
    monkeypatch.setenv("MVGEN_VIDEO_CONTINUATION_OFFLOAD", "all")
    with pytest.raises(InvalidInputError, match="MVGEN_VIDEO_CONTINUATION_OFFLOAD"):
        DiffusionSettings.from_env(WanGenerator)
    monkeypatch.setenv("MVGEN_VIDEO_CONTINUATION_OFFLOAD", "model")
    monkeypatch.setenv("MVGEN_VIDEO_DEVICE", "cpu")
    with pytest.raises(InvalidInputError, match="MVGEN_VIDEO_CONTINUATION_OFFLOAD=model .* needs MVGEN_VIDEO_DEVICE"):
        DiffusionSettings.from_env(WanGenerator)
