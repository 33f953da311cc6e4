"""A numba cache of its own for every process that compiles librosa's kernels.

librosa compiles its kernels with numba and caches the machine code on disk, by default beside its
sources in the virtual environment. That cache is not safe for processes writing it at the same
time: a gufunc's kernel and its wrapper are saved as two entries whose symbols carry a counter of
the process that compiled them, so two processes compiling one gufunc together can leave the kernel
of one beside the wrapper of the other, and from then on every process that loads it crashes with
SIGSEGV (numba issues #4807 and #10128). The services of the dev stack, started together from one
venv, did exactly that.

So each process leases a cache folder, a slot, before numba is imported: the first of
<root>/<owner>-0, <owner>-1, ... whose lock it can take. The lock is an flock, which the kernel
releases when the process ends, however it ends. No two live processes ever write one slot, and
slots outlive their processes, so the next process of the same kind starts with a warm cache.
A lessee that dies before its cache proved sound (its kernels loaded and ran) leaves a mark, and
the next lessee empties the slot first: a crash while compiling is never inherited.

MVGEN_NUMBA_CACHE_ROOT says where the slots are (default: $XDG_CACHE_HOME/mvgen/numba, else
~/.cache/mvgen/numba). NUMBA_CACHE_DIR is set by the lease: one inherited from a shell or a parent
process is replaced, since it would be shared.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from services.common import envs

log = logging.getLogger(__name__)

ROOT_ENV = "MVGEN_NUMBA_CACHE_ROOT"
CACHE_DIR_ENV = "NUMBA_CACHE_DIR"
LOCK_FILE = ".lease"
UNPROVEN_FILE = ".unproven"  # there while the lessee has not shown its cache sound

_slot: Path | None = None
_lock_fd: int | None = None  # held open for the life of the process: closing it would end the lease


def default_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvgen" / "numba"


def lease_numba_cache(owner: str) -> Path | None:
    """Point NUMBA_CACHE_DIR at a slot this process alone writes, and return it. Call it before numba
    is imported; a second call returns the same slot. Never stops a process from starting: without
    a writable root it uses a new temporary folder (cold), and without that numba's own default."""
    if _slot is not None:
        return _slot
    try:
        slot = _take_slot(Path(envs.get(ROOT_ENV) or default_root()), owner)
    except OSError as exc:
        try:
            slot = Path(tempfile.mkdtemp(prefix=f"mvgen-numba-{owner}-"))
        except OSError:
            log.warning("numba cache: no writable folder for a slot (%s); numba's default is used", exc)
            return None
        log.warning("numba cache: cannot lease a slot (%s); compiling into %s", exc, slot)
    _use(slot)
    return slot


def mark_numba_cache_sound() -> None:
    """This process's kernels loaded and ran: a later crash is not the cache's, keep it."""
    if _slot is not None:
        (_slot / UNPROVEN_FILE).unlink(missing_ok=True)


def _take_slot(root: Path, owner: str) -> Path:
    global _lock_fd
    index = 0
    while True:
        slot = root / f"{owner}-{index}"
        slot.mkdir(parents=True, exist_ok=True)
        fd = os.open(slot / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            os.close(fd)  # a live process holds this one
            index += 1
        except OSError:
            os.close(fd)
            raise
    _lock_fd = fd
    unproven = slot / UNPROVEN_FILE
    if unproven.exists():
        log.info("numba cache %s: its last process ended before its cache proved sound; "
                 "emptying it, so this one compiles afresh", slot)
        for entry in slot.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name != LOCK_FILE:
                entry.unlink()
    unproven.write_text(f"{os.getpid()}\n")
    return slot


def _use(slot: Path) -> None:
    global _slot
    _slot = slot
    os.environ[CACHE_DIR_ENV] = str(slot)
    numba_config = sys.modules.get("numba.core.config")
    if numba_config is not None:  # numba is imported already: make it read the variable again
        numba_config.reload_config()
    atexit.register(mark_numba_cache_sound)  # an orderly exit, even with an exception, is no crash
