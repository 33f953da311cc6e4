"""Running ffmpeg and ffprobe: the one place that knows how to find and call them."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from services.common import envs
from services.common.errors import StageFailedError


def binary(name: str) -> str:
    """Path of `ffmpeg` or `ffprobe`; MVGEN_FFMPEG / MVGEN_FFPROBE override the PATH lookup."""
    override = envs.get(f"MVGEN_{name.upper()}")
    found = override or shutil.which(name)
    if not found:
        raise StageFailedError(f"{name} was not found on PATH (install ffmpeg, or set MVGEN_{name.upper()})")
    return found


def run(name: str, args: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None) -> bytes:
    """Run the tool quietly and return its stdout; a failure raises with the tool's own last words."""
    # -nostdin keeps ffmpeg from eating the terminal's input; ffprobe never reads stdin.
    quiet_stdin = ["-nostdin"] if name == "ffmpeg" and stdin is None else []
    cmd = [binary(name), "-hide_banner", *quiet_stdin, "-loglevel", "error", *args]
    try:
        done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StageFailedError(f"{name} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise ToolError(name, done.returncode, done.stderr.decode(errors="replace"))
    return done.stdout


class ToolError(StageFailedError):
    def __init__(self, tool: str, returncode: int, stderr: str):
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        super().__init__(f"{tool} failed (exit {returncode}): {last}")
        self.stderr = stderr
