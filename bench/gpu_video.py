"""Wan 2.1 1.3B on one GPU: seconds per denoising step at 480p and 81 frames, per attention backend
and cache, against the arithmetic floor measured on the same card.

Self-contained and offline: the transformer, the VAE and the UMT5-XXL text encoder are built at
full size from the published configurations with random weights, directly on the GPU (a step
costs the same whatever the weight values). The text encoder stays on the GPU throughout, as in
the `wan` backend without offload, so every peak-memory figure includes its weights (~10.6 GiB
in bf16); it encodes the prompt and the negative prompt (512 random tokens each) under inference
mode, as the backend does, and that encode's own peak is reported. Each run is WanPipeline's own
denoising loop with classifier-free guidance (two transformer passes per step), as the `wan`
backend calls it; steps are timed by callback_on_step_end after a device synchronisation, and the
first step (warm-up) is left out.

The floor: the transformer's floating-point operations per pass, counted from its configuration
(about 283 TFLOP at 480p and 81 frames), divided by the bf16 matrix-product rate this script
measures on the card; twice that per step with guidance. Measured time over floor is the gap.

    python3 -m bench.gpu_video                         # on a GPU machine, from the repository root
    python3 -m bench.gpu_video --smoke                 # a tiny configuration, to check the script anywhere (CPU too)
    python3 -m bench.gpu_video --merge FILE            # put a section written on the GPU machine into RESULTS.md

The GPU machines' image has torch and transformers but not diffusers: carry its wheel (pure
Python, into the git-ignored build/: `python3 -m pip download --no-deps diffusers==0.42.1 -d
build/wheels`) and install it with --no-deps into a folder on PYTHONPATH. One call, carrying
build/wheels, about three minutes on an H100:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        build/wheels/diffusers-0.42.1-py3-none-any.whl && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 \
        python3 -m bench.gpu_video

With $OUT set (or --out DIR), the raw numbers so far are written there after every measurement
(gpu_video.partial.json: a crash late in the one GPU call keeps the early rows), and at the end
the results section and the raw numbers, to come back from the GPU machine; merge the section
here with --merge.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION_START = "<!-- gpu_video: start -->"
SECTION_END = "<!-- gpu_video: end -->"
SMOKE_NOTE = ", SMOKE configuration (not the real model size)"

# Wan2.1-T2V-1.3B-Diffusers: transformer/config.json; the VAE is AutoencoderKLWan's defaults (Wan 2.1's VAE).
WAN_13B_TRANSFORMER: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, added_kv_proj_dim=None, rope_max_seq_len=1024,
)
SMOKE_TRANSFORMER: dict[str, Any] = dict(WAN_13B_TRANSFORMER, num_attention_heads=2, attention_head_dim=16, text_dim=32,
                         ffn_dim=64, num_layers=2)
SMOKE_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1)
# google/umt5-xxl's encoder, Wan 2.1's text encoder (Wan's shared_config: t5 umt5-xxl; the diffusers
# repositories' text_encoder/config.json): about 5.7B parameters.
UMT5_XXL: dict[str, Any] = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                                feed_forward_proj="gated-gelu", tie_word_embeddings=False)
SMOKE_UMT5: dict[str, Any] = dict(UMT5_XXL, vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
TEXT_TOKENS = 512  # UMT5's output length in WanPipeline
GUIDANCE = 5.0
# Backends worth timing on an NVIDIA card; each is tried and reported unavailable if it cannot run here.
ATTENTION_BACKENDS = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3",
                      "sage", "xformers")
CACHES: dict[str, tuple[str, dict[str, Any]]] = {
    "first_block (threshold 0.05)": ("FirstBlockCacheConfig", {"threshold": 0.05}),
    "taylorseer (interval 5, from step 3)": ("TaylorSeerCacheConfig",
                                             {"cache_interval": 5, "disable_cache_before_step": 3}),
}


@dataclass
class Run:
    attention: str
    cache: str
    steps: int
    seconds_per_step: float | None  # mean over the steps after the first (cached and full steps alike)
    peak_gib: float | None
    note: str = ""


def transformer_flops(config: dict[str, Any], frames: int, height: int, width: int,
                      text_tokens: int = TEXT_TOKENS) -> float:
    """Floating-point operations of one WanTransformer3DModel pass (a multiply-add counts 2)."""
    pt, ph, pw = config["patch_size"]
    latent_frames = (frames - 1) // 4 + 1  # the VAE's 4× temporal and 8× spatial compression
    tokens = (latent_frames // pt) * (height // 8 // ph) * (width // 8 // pw)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    per_layer = (
        8 * tokens * d * d  # self-attention q, k, v, o projections
        + 4 * tokens * tokens * d  # self-attention scores and weighted sum
        + 4 * tokens * d * d + 4 * text_tokens * d * d  # cross-attention q, o on video; k, v on text
        + 4 * tokens * text_tokens * d  # cross-attention scores and weighted sum
        + 4 * tokens * d * config["ffn_dim"]  # feed-forward, two matrices
    )
    patch = config["in_channels"] * pt * ph * pw
    outside = (2 * tokens * patch * d  # patch embedding
               + 2 * tokens * d * config["out_channels"] * pt * ph * pw  # output projection
               + 2 * text_tokens * (config["text_dim"] * d + d * d))  # text embedding MLP
    return config["num_layers"] * per_layer + outside


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """bf16 matrix-product rate on this card (random data, after warm-up), in TFLOP/s."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - began) / 1e12


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cast_for_serving(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters to `dtype` except the modules the model keeps in float32, as from_pretrained(dtype=) does."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, parameter in model.named_parameters():
        if not keep & set(name.split(".")):
            parameter.data = parameter.data.to(dtype)
    return model


class PartialResults:
    """The results so far, written (atomically) after every measurement to DIR/gpu_video.partial.json."""

    def __init__(self, out_dir: str | None):
        self.path = Path(out_dir, "gpu_video.partial.json") if out_dir else None
        self.results: dict[str, Any] = {"runs": [], "complete": False}

    def update(self, **fields: Any) -> None:
        self.results.update(fields)
        self.write()

    def add_run(self, run: Run) -> None:
        self.results["runs"].append(asdict(run))
        print(run, flush=True)
        self.write()

    def write(self) -> None:
        if self.path is None:
            return
        scratch = self.path.with_suffix(".tmp")
        scratch.write_text(json.dumps(self.results, indent=2) + "\n")
        scratch.replace(self.path)


def build_text_encoder(device: torch.device, smoke: bool) -> Any:
    """UMT5-XXL's encoder (or a tiny one) with random weights, drawn on the device in bf16, as Wan serves it."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # drawn in bf16: no float32 copy of 5.7B parameters on the card
    try:
        with torch.device(device):
            encoder = UMT5EncoderModel(UMT5Config(**(SMOKE_UMT5 if smoke else UMT5_XXL)))
    finally:
        torch.set_default_dtype(previous)
    return encoder.eval().requires_grad_(False)


def encode_prompts(encoder: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt and the negative prompt, TEXT_TOKENS random tokens each, encoded as WanPipeline does
    (its encode_prompt, under inference mode as the `wan` backend calls it)."""
    vocab = encoder.config.vocab_size
    generator = torch.Generator("cpu").manual_seed(0)
    with torch.inference_mode():
        embeds = [encoder(torch.randint(vocab, (1, TEXT_TOKENS), generator=generator).to(device),
                          torch.ones(1, TEXT_TOKENS, dtype=torch.long, device=device)).last_hidden_state
                  .to(torch.bfloat16) for _ in range(2)]
    return embeds[0], embeds[1]


def parameter_gib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**30


def build_pipeline(device: torch.device, smoke: bool):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):  # weights are drawn on the GPU, never copied from the host
        transformer = WanTransformer3DModel(**(SMOKE_TRANSFORMER if smoke else WAN_13B_TRANSFORMER))
        vae = AutoencoderKLWan(**(SMOKE_VAE if smoke else {}))  # float32, as the wan backend keeps it
    transformer = cast_for_serving(transformer.eval(), torch.bfloat16)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000, flow_shift=3.0)
    pipeline = WanPipeline(tokenizer=None, text_encoder=None, vae=vae.eval(), scheduler=scheduler,
                           transformer=transformer)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def denoise(pipeline, device: torch.device, embeds: tuple[torch.Tensor, torch.Tensor], frames: int, height: int,
            width: int, steps: int) -> tuple[torch.Tensor, list[float]]:
    """WanPipeline's loop with guidance; returns the latents and each step's seconds."""
    marks: list[float] = []

    def on_step_end(pipe, step, timestep, tensors):
        synchronize(device)
        marks.append(time.perf_counter())
        return tensors

    synchronize(device)
    began = time.perf_counter()
    latents = pipeline(prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], height=height, width=width,
                       num_frames=frames, num_inference_steps=steps, guidance_scale=GUIDANCE,
                       generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
                       callback_on_step_end=on_step_end).frames
    times = [b - a for a, b in zip([began, *marks], marks)]
    return latents, times


def timed_run(pipeline, device, embeds, frames, height, width, steps, attention: str, cache: str) -> Run:
    reset_peak(device)
    try:
        _, times = denoise(pipeline, device, embeds, frames, height, width, steps)
    except Exception as exc:  # an attention kernel that cannot run this shape or dtype here
        return Run(attention, cache, steps, None, None, f"failed: {str(exc).splitlines()[0][:120]}")
    return Run(attention, cache, steps, statistics.fmean(times[1:]), peak_gib(device))


def measure(args: argparse.Namespace, partial: PartialResults | None = None) -> dict[str, Any]:
    import diffusers

    from services.video.wan import decode_wan_latents

    partial = partial or PartialResults(None)
    device = torch.device(args.device)
    frames, height, width = (9, 64, 64) if args.smoke else (args.frames, 480, 832)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"card: {card}; torch {torch.__version__}, diffusers {diffusers.__version__}", flush=True)
    partial.update(card=card, device=str(device), torch=torch.__version__, diffusers=diffusers.__version__,
                   smoke=args.smoke, frames=frames, height=height, width=width, guidance=GUIDANCE)
    rate = matmul_tflops(device, size=1024 if args.smoke else 8192, repeats=3 if args.smoke else 20)
    print(f"bf16 matrix product: {rate:.0f} TFLOP/s", flush=True)

    config = SMOKE_TRANSFORMER if args.smoke else WAN_13B_TRANSFORMER
    flops = transformer_flops(config, frames, height, width)
    floor_per_step = 2 * flops / (rate * 1e12)  # two passes per step with guidance
    partial.update(matmul_tflops=rate, tflop_per_pass=flops / 1e12, floor_seconds_per_step=floor_per_step)
    began = time.perf_counter()
    text_encoder = build_text_encoder(device, args.smoke)  # stays on the card: in every peak below
    pipeline = build_pipeline(device, args.smoke)
    built = time.perf_counter() - began
    reset_peak(device)
    embeds = encode_prompts(text_encoder, device)
    synchronize(device)
    assert embeds[0].shape == (1, TEXT_TOKENS, config["text_dim"]) and not embeds[0].requires_grad, embeds[0].shape
    partial.update(build_seconds=built, text_encoder_gib=parameter_gib(text_encoder),
                   text_encoder_params=sum(p.numel() for p in text_encoder.parameters()),
                   encode_peak_gib=peak_gib(device))
    transformer = pipeline.transformer

    runs: list[Run] = []

    def record(run: Run) -> None:
        runs.append(run)
        partial.add_run(run)

    for backend in ATTENTION_BACKENDS:
        try:
            transformer.set_attention_backend(backend)
        except Exception as exc:  # not installed, or not for this card
            record(Run(backend, "none", 0, None, None, f"unavailable: {str(exc).splitlines()[0][:120]}"))
            continue
        record(timed_run(pipeline, device, embeds, frames, height, width, args.steps, backend, "none"))
    fastest = min((r for r in runs if r.seconds_per_step is not None), key=lambda r: r.seconds_per_step or 0.0)
    transformer.set_attention_backend(fastest.attention)

    for label, (config_name, options) in CACHES.items():
        transformer.enable_cache(getattr(diffusers, config_name)(**options))
        record(timed_run(pipeline, device, embeds, frames, height, width, args.cache_steps, fastest.attention, label))
        transformer.disable_cache()

    # VAE decode of the clip's latents, twice: the first pays cuDNN's algorithm search.
    latents, _ = denoise(pipeline, device, embeds, frames, height, width, 1)
    decode_times = []
    reset_peak(device)
    with torch.inference_mode():
        for _ in range(2):
            synchronize(device)
            start = time.perf_counter()
            video = decode_wan_latents(pipeline.vae, latents)
            synchronize(device)
            decode_times.append(time.perf_counter() - start)
    decode_peak = peak_gib(device)
    assert video.shape[2] == frames, video.shape
    partial.update(decode_seconds=decode_times[-1], decode_first_seconds=decode_times[0], decode_peak_gib=decode_peak,
                   complete=True)
    return dict(partial.results)


def render(results: dict[str, Any]) -> str:
    floor = results["floor_seconds_per_step"]
    decode = results["decode_seconds"]
    size = f"{results['width']}×{results['height']}, {results['frames']} frames"
    lines = [
        SECTION_START,
        f"## Wan 2.1 1.3B on {results['card']} (`python3 -m bench.gpu_video`, {time.strftime('%Y-%m-%d')})",
        "",
        f"{size}, guidance {results['guidance']} (two transformer passes per step), random weights "
        f"(bf16 transformer, float32 VAE, bf16 text encoder), random prompt tokens; torch {results['torch']}, "
        f"diffusers {results['diffusers']}{SMOKE_NOTE if results['smoke'] else ''}.",
        f"Floor: {results['tflop_per_pass']:.4g} TFLOP per pass × 2 ÷ {results['matmul_tflops']:.4g} TFLOP/s "
        f"(bf16 matrix product measured on this card) = {floor:.3f} s per step. "
        f"VAE decode {decode:.2f} s (first call {results['decode_first_seconds']:.2f} s), "
        f"peak {_gib(results['decode_peak_gib'])}.",
        f"Text encoder (UMT5-XXL, {results['text_encoder_params'] / 1e9:.2f}B parameters, bf16) resident on the "
        f"card throughout: {_gib(results['text_encoder_gib'])} GiB of weights, in every peak below; encoding the "
        f"prompt and the negative prompt peaks at {_gib(results['encode_peak_gib'])} GiB.",
        "",
        "| attention | cache | steps timed | s / step | 50-step clip, s (with decode) | × floor | "
        "peak GiB (text encoder included) | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in results["runs"]:
        per_step = run["seconds_per_step"]
        if per_step is None:
            numbers = "- | - | - | - | -"
        else:
            numbers = (f"{run['steps'] - 1} | {per_step:.3f} | {50 * per_step + decode:.0f} | {per_step / floor:.2f} | "
                       f"{_gib(run['peak_gib'])}")
        note = run["note"].replace("|", "/")
        lines.append(f"| {run['attention']} | {run['cache']} | {numbers} | {note} |")
    lines += ["", "Caches with random weights: whether a step is skipped depends on the weights, so the cached "
                  "rows show the hooks' cost and the best case, not the real model's hit rate.", SECTION_END]
    return "\n".join(lines)


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def merge_section(section: str, results_path: Path = RESULTS) -> None:
    """Replace this benchmark's section of RESULTS.md (or append it), leaving the rest as it is."""
    text = results_path.read_text() if results_path.exists() else "# Benchmark results\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    results_path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=4, help="steps per attention backend (the first is warm-up)")
    parser.add_argument("--cache-steps", type=int, default=10, help="steps per cache run (caches act after a few)")
    parser.add_argument("--smoke", action="store_true", help="tiny configuration: checks the script, measures nothing")
    parser.add_argument("--merge", type=Path, metavar="FILE", help="merge a section written by a GPU run and exit")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--out", metavar="DIR", default=os.environ.get("OUT"),
                        help="write the results there, the partial ones after each measurement (default: $OUT)")
    args = parser.parse_args()
    if args.merge:
        merge_section(args.merge.read_text().strip())
        return

    if not args.smoke and not args.device.startswith("cuda"):
        parser.error(f"the full-size benchmark needs a GPU (--device {args.device}); --smoke checks the script here")
    out = args.out
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
    results = measure(args, PartialResults(out))
    section = render(results)
    print(section)
    if out:
        Path(out, "gpu_video_section.md").write_text(section + "\n")
        Path(out, "gpu_video.json").write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_write and not args.smoke:
        merge_section(section)


if __name__ == "__main__":
    main()
