"""CLAP audio windows per second on a GPU, at batch sizes 1 to 64: what MVGEN_CLAP_BATCH should be there.

Self-contained and offline: it builds msclap's audio encoder (HTSAT and its projection, exactly the
module the clap analyser calls for every 7 s window) at its real size with random weights; the
speed of a forward pass does not depend on the weight values. Each batch is timed as the analyser
runs it: a float32 batch copied from host memory to the GPU, then the encoder, synchronised.

    python3 -m bench.gpu_clap                      # on a GPU machine, from the repository root
    python3 -m bench.gpu_clap --device cpu --max-batch 2 --iterations 1   # a smoke test anywhere

The GPU machines' image has torch, torchaudio and transformers but not msclap, torchlibrosa or
librosa: carry them as wheels (see the device notes), e.g. msclap==1.3.4 torchlibrosa==0.1.0
librosa==0.11.0 audioread soundfile soxr pooch decorator, installed with --no-deps into a folder on
PYTHONPATH.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from services.analysis.msclap_compat import import_msclap

# msclap's 2023 config: 7 s at 44.1 kHz into HTSAT (768-d), projected to 1024-d.
SAMPLE_RATE = 44100
WINDOW_SECONDS = 7
HTSAT_EMBEDDING = 768
PROJECTION = 1024


def build_audio_encoder(device: torch.device) -> torch.nn.Module:
    import_msclap()  # msclap's package imports torchaudio; see services/analysis/msclap_compat.py
    from msclap.models.clap import AudioEncoder

    torch.manual_seed(0)
    encoder = AudioEncoder("HTSAT", HTSAT_EMBEDDING, PROJECTION, SAMPLE_RATE, window_size=1024, hop_size=320,
                           mel_bins=64, fmin=50, fmax=8000, classes_num=527)
    return encoder.eval().to(device)


def windows_per_second(encoder: torch.nn.Module, device: torch.device, batch: int, iterations: int,
                       warmup: int) -> tuple[float, float]:
    """(windows per second, seconds per batch) for batches copied from host memory, as the analyser sends them."""
    host = torch.randn(batch, 1, SAMPLE_RATE * WINDOW_SECONDS).mul_(0.1)
    timings = []
    with torch.inference_mode():
        for i in range(warmup + iterations):
            _synchronize(device)
            started = time.perf_counter()
            audio = host.to(device).reshape(batch, -1)  # msclap's _get_audio_embeddings flattens (B, 1, T)
            encoder(audio)
            _synchronize(device)
            if i >= warmup:
                timings.append(time.perf_counter() - started)
    per_batch = sorted(timings)[len(timings) // 2]  # the median: robust to a stray slow iteration
    return batch / per_batch, per_batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch; batches double from 1")
    parser.add_argument("--iterations", type=int, default=10, help="timed batches per size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches per size first")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu for a smoke test")

    encoder = build_audio_encoder(device)
    parameters = sum(p.numel() for p in encoder.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"msclap audio encoder (HTSAT + projection), {parameters / 1e6:.1f} M parameters, random weights, "
          f"float32; {name}; torch {torch.__version__}")
    print("| batch | windows/s | ms per batch | peak GPU memory, MiB |")
    print("|---:|---:|---:|---:|")
    batch = 1
    while batch <= args.max_batch:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rate, per_batch = windows_per_second(encoder, device, batch, args.iterations, args.warmup)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        print(f"| {batch} | {rate:.1f} | {per_batch * 1e3:.1f} | {peak:.0f} |", flush=True)
        batch *= 2


if __name__ == "__main__":
    main()
