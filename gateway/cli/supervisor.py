"""The `mvgen` a person starts runs its command in a child process and outlives it.

A process cannot report its own death by SIGSEGV or SIGKILL, its parent can: a crash that no
Python code survives (a compiled kernel's SIGSEGV, the out-of-memory killer's SIGKILL) ends in
one line and exit code 128 + the signal's number, the child's Python stack kept in the run folder.
"""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from gateway.cli.output import fail

# Set in the child that runs the command; CRASH_REPORT_ENV names the file its fatal-signal stack goes to.
WORKER_ENV = "MVGEN_CLI_WORKER"
CRASH_REPORT_ENV = "MVGEN_CLI_CRASH_REPORT"
RUN_FOLDER_LINE = "run folder: "  # the crash report's first line, once the run folder is known
_crash_report: TextIO | None = None


def supervise(argv: list[str]) -> int:
    """Run the command in a child process and outlive it: a process cannot report its own death by
    SIGSEGV or SIGKILL, its parent can. The child's Python stack at a fatal signal (faulthandler's)
    goes to the run folder's mvgen.log."""
    fd, name = tempfile.mkstemp(prefix="mvgen-crash-", suffix=".txt")
    os.close(fd)
    report = Path(name)
    child = subprocess.Popen([sys.executable, "-c", "import sys; from gateway.cli.main import main; sys.exit(main())",
                              *argv], env={**os.environ, WORKER_ENV: "1", CRASH_REPORT_ENV: str(report)})
    # Ctrl-C and Ctrl-\ reach the child from the terminal (one process group): this process only waits.
    # SIGTERM is sent to one process (timeout, a job runner): passed on, the child cancels as for Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    code = child.wait()
    if code >= 0:
        report.unlink(missing_ok=True)
        return code
    return _died(signal.Signals(-code), report)


def _died(sig: signal.Signals, report: Path) -> int:
    """One line for a child that `sig` ended, and exit code 128 + its number, as a shell gives."""
    text = report.read_text(errors="replace") if report.exists() else ""
    run_dir = None
    if text.startswith(RUN_FOLDER_LINE):
        first, _, text = text.partition("\n")
        run_dir = Path(first.removeprefix(RUN_FOLDER_LINE))
    kept = f"; finished artifacts are kept in {run_dir} and a rerun resumes" if run_dir else ""
    stack_file = None
    if sig is signal.SIGINT:
        message = f"interrupted{kept}"
    elif sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        message = f"stopped by {sig.name}{kept}"
    elif sig is signal.SIGKILL:
        message = f"killed by SIGKILL (the out-of-memory killer, or kill -9){kept}"
    else:
        message = f"crashed with {sig.name}{_innermost_frame(text)}"
        if text.strip():
            stack_file = report if run_dir is None else run_dir / "mvgen.log"
            if run_dir is not None:
                with stack_file.open("a") as log:
                    log.write(f"mvgen: the process died of {sig.name}; its Python stack (faulthandler):\n{text}")
            message += f"; the Python stack is in {stack_file}"
    if stack_file != report:
        report.unlink(missing_ok=True)
    return fail(message, 128 + sig.value)


def _innermost_frame(stack: str) -> str:
    """ ' in librosa/util/utils.py line 1352 (peak_pick)' from faulthandler's text, or ''."""
    frame = re.search(r'Current thread [^\n]*\n\s+File "([^"]+)", line (\d+) in (\S+)', stack)
    if not frame:
        return ""
    path = frame[1].rpartition("site-packages/")[2]
    return f" in {path} line {frame[2]} ({frame[3]})"


def report_fatal_signals(report: str | None) -> None:
    """In the child: SIGTERM cancels the run as Ctrl-C does; on SIGSEGV, SIGBUS, SIGFPE, SIGILL or
    SIGABRT, faulthandler writes every thread's Python stack to the report the parent reads."""
    global _crash_report
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    if report:
        _crash_report = open(report, "a")  # noqa: SIM115 (faulthandler writes to its descriptor: it stays open)
        faulthandler.enable(_crash_report)


def note_run_folder(run_dir: Path) -> None:
    """The run folder, as the crash report's first line: the parent puts a stack in its log."""
    if _crash_report is not None:
        _crash_report.write(f"{RUN_FOLDER_LINE}{run_dir.resolve()}\n")
        _crash_report.flush()
