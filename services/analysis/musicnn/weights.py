"""Where the musicnn checkpoints are, and whether this machine has them; imports neither torch nor TensorFlow.

The `musicnn` wheel (ISC licence, installed with `pip install --no-deps musicnn==0.1.0`: its declared
dependencies are TensorFlow and numpy<1.17, neither of which mvgen uses) carries the trained
checkpoints as package data, one folder per model holding `.index` and `.data-00000-of-00001`.
Its `__init__.py` is empty, so finding the folder imports nothing. MVGEN_MUSICNN_DIR may point at
a copy instead (a mounted volume), laid out the same way.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

from services.common import envs
from services.common.errors import StageFailedError

DIR_ENV = "MVGEN_MUSICNN_DIR"
MODELS = ("MTT_musicnn", "MSD_musicnn")  # MagnaTagATune (instruments, voices) and MSD (genres, moods)
INSTALL_HINT = "pip install --no-deps musicnn==0.1.0"


def checkpoint_prefix(folder: Path, model: str) -> str:
    """The checkpoint prefix of `model` in `folder`: upstream saved it as the folder itself ("MTT_musicnn/"),
    so its files are named `.index` and `.data-00000-of-00001` inside it."""
    return f"{folder / model}{os.sep}"


def weights_folder(environ: Mapping[str, str] | None = None) -> Path:
    """The folder holding one subfolder per model: MVGEN_MUSICNN_DIR, else the installed musicnn package.
    Raises StageFailedError saying how to get them when neither is there."""
    configured = envs.get(DIR_ENV, environ)
    if configured:
        folder = Path(configured).expanduser()
        if not folder.is_dir():
            raise StageFailedError(f"{DIR_ENV}={configured}: no such folder")
        return folder
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise StageFailedError(f"the musicnn analyzer needs musicnn's trained weights: {INSTALL_HINT}, or set "
                               f"{DIR_ENV} to a folder holding {' and '.join(m + '/' for m in MODELS)}")
    return Path(next(iter(spec.submodule_search_locations)))


def missing_files(folder: Path) -> list[Path]:
    """The checkpoint files of MODELS that `folder` lacks."""
    wanted = [Path(checkpoint_prefix(folder, m) + suffix) for m in MODELS
              for suffix in (".index", ".data-00000-of-00001")]
    return [path for path in wanted if not path.is_file()]


def musicnn_available() -> bool:
    """Whether the musicnn analyser can load here: torch importable and both checkpoints present.
    Cheap (no import of torch), for choosing defaults."""
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        return not missing_files(weights_folder())
    except StageFailedError:
        return False
