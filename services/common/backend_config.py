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

from services.common import envs


def backend_config_digest(stage: str, prompts_dir: Path, environ: Mapping[str, str]) -> str:
    """The prompts/ files, and the variables of `stage` that change its outputs (envs.py: the stage's
    own, declared changes_outputs: weights and settings, not secrets, patience, threads or wiring; for
    a path, its size and modification time too, so that weights replaced in place count as new). An
    empty variable means the default, as unset does (compose passes every setting, most of them empty)."""
    digest = hashlib.sha256(stage.encode() + b"\0")
    if prompts_dir.is_dir():
        for path in sorted(p for p in prompts_dir.rglob("*") if p.is_file()):
            digest.update(path.relative_to(prompts_dir).as_posix().encode() + b"\0" + path.read_bytes())
    counted = envs.output_variables(stage)
    for name in sorted(k for k in environ if k in counted and environ[k].strip()):
        value = environ[name].strip()
        stat = Path(value).stat() if Path(value).exists() else None
        digest.update(f"{name}={value}:{stat and (stat.st_size, stat.st_mtime_ns)}".encode())
    return digest.hexdigest()[:16]
