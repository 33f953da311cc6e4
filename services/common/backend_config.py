"""What configures a stage's backends beyond their names: weights, generation settings, prompts.

Its digest is part of the fingerprint of every output the stage makes, so that new weights or an
edited prompt regenerate what they produced, and nothing else. A stage service computes its own
at start and reports it (StageInfoService), since only it sees its environment; the CLI computes
all three in process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

# The MVGEN_* variables each stage's backends read at load. Segmentation and assembly have none.
STAGE_ENV_PREFIXES: dict[str, tuple[str, ...]] = {
    "analysis": ("MVGEN_CLAP_", "MVGEN_MUSICNN_", "MVGEN_WHISPER_", "MVGEN_LYRICS_"),
    "scripting": ("MVGEN_SCRIPT_", "MVGEN_LLM_", "MVGEN_LALM_", "MVGEN_LLAMACPP_", "MVGEN_VLLM_", "MVGEN_CASCADE_"),
    "video": ("MVGEN_WAN_", "MVGEN_MOCHI_", "MVGEN_VIDEO_", "MVGEN_LONG_SEGMENT_"),
}
# Under those prefixes, settings that change no output: secrets, network patience, threads, and the
# deployment's own wiring (the gateway's MVGEN_VIDEO_ADDR, compose's MVGEN_VIDEO_BACKENDS, ...).
NEUTRAL_ENV_SUFFIXES = ("_API_KEY", "_TIMEOUT_SECONDS", "_MAX_RETRIES", "_THREADS", "_ADDR", "_RESOLVE_SECONDS",
                        "_BACKENDS", "_MAX_CONCURRENT", "_REQUIREMENTS")


def backend_config_digest(stage: str, prompts_dir: Path, environ: Mapping[str, str]) -> str:
    """The prompts/ files, and the variables of `stage` that name weights or settings (for a path,
    its size and modification time too, so that weights replaced in place count as new). An empty
    variable means the default, as unset does (compose passes every setting, most of them empty)."""
    digest = hashlib.sha256(stage.encode() + b"\0")
    if prompts_dir.is_dir():
        for path in sorted(p for p in prompts_dir.rglob("*") if p.is_file()):
            digest.update(path.relative_to(prompts_dir).as_posix().encode() + b"\0" + path.read_bytes())
    prefixes = STAGE_ENV_PREFIXES.get(stage, ())
    for name in sorted(k for k in environ if k.startswith(prefixes) and not k.endswith(NEUTRAL_ENV_SUFFIXES)
                       and environ[k].strip()):
        value = environ[name].strip()
        stat = Path(value).stat() if Path(value).exists() else None
        digest.update(f"{name}={value}:{stat and (stat.st_size, stat.st_mtime_ns)}".encode())
    return digest.hexdigest()[:16]
