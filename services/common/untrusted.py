"""Text that came from a client (an id, a name, an option's value), made fit for a message or a log line.

Every error message and log line that repeats what a caller sent goes through `quoted` (or
`printable` where no quotes fit, as for a file name before a colon): whatever the caller sent, the
line stays short (a status message travels in a gRPC trailer, which clients refuse beyond 16 KiB,
and a log must not grow by what a caller chooses to send) and stays one line (a newline could
forge a log line, a bidirectional override could reorder one).
"""

from __future__ import annotations

SHOWN_CHARS = 48  # of an id or a name in a message: enough to recognise it


def printable(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` with control, format and separator characters escaped (\\n, \\x00, \\u202e), cut to
    at most `limit` characters, then '…' and the length of the whole: at most `limit` + 24 characters."""
    shown, cut = _escaped(text, limit, "\\")
    return f"{shown}… ({len(text)} characters)" if cut else shown


def quoted(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` escaped and cut as by `printable`, between single quotes: for an id or a value inside a sentence."""
    shown, cut = _escaped(text, limit, "\\'")
    return f"'{shown}…' ({len(text)} characters)" if cut else f"'{shown}'"


def _escaped(text: str, limit: int, backslashed: str) -> tuple[str, bool]:
    """Up to `limit` characters of `text` escaped, and whether some were left out. Characters in
    `backslashed` get a backslash, so that an escape in the text cannot pass for one of ours."""
    shown: list[str] = []
    used = 0
    for char in text:
        if char in backslashed:
            escaped = "\\" + char
        elif char.isprintable():
            escaped = char
        else:
            escaped = char.encode("unicode_escape").decode("ascii")
        if used + len(escaped) > limit:
            return "".join(shown), True
        shown.append(escaped)
        used += len(escaped)
    return "".join(shown), False
