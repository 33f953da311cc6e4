"""How every `mvgen` command ends: an exit code, and for an error one line on stderr."""

from __future__ import annotations

import sys

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> int:
    print(f"mvgen: error: {message}", file=sys.stderr)
    return code
