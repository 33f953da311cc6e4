"""librosa's numba cache under concurrent starts (services/common/numba_cache.py), and a CLI that
never dies silently (gateway/cli/supervisor.py).

Several processes compiling one gufunc into one cache folder at once can leave a cache that crashes
every later process with SIGSEGV (numba #4807, #10128); the dev stack's services, started together
from one venv, did (`analysis exited (code -11)` in most cold starts). Here: the processes alive
together never share a cache folder, a folder is reused warm by a later process, one whose process
died while compiling is emptied for the next; the whole stack starts, several times over, each time
on an empty cache, with no service crashing. And `mvgen generate` whose worker dies of SIGSEGV or
SIGKILL, or which is sent SIGTERM, ends with one line and an exit code, the stack in the run's log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common.numba_cache import LOCK_FILE, UNPROVEN_FILE
from tests.media import tone
from tools.dev_stack import DevStack

REPO = Path(__file__).resolve().parents[1]
MVGEN = str(Path(sys.executable).parent / "mvgen")
# Leases a slot for argv[1], prints it, then: "hold" sleeps argv[2] s (killed meanwhile, it never
# proves its cache sound); "fill" writes a cache entry and exits normally.
LEASE = """
import sys, time
from services.common.numba_cache import lease_numba_cache
slot = lease_numba_cache(sys.argv[1])
print(slot, flush=True)
if sys.argv[2] == "fill":
    (slot / "entry.nbi").write_text("compiled")
else:
    time.sleep(float(sys.argv[2]))
"""
STACK_STARTS = 3
NUMBA_STAGES = ("segmentation", "analysis", "video")


def lease(root: Path, owner: str, then: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", LEASE, owner, then], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, env={**os.environ, "MVGEN_NUMBA_CACHE_ROOT": str(root)})


def slot_of(process: subprocess.Popen[str]) -> Path:
    return Path(process.stdout.readline().strip())


def test_processes_alive_together_never_share_a_slot_and_a_later_one_reuses_one(tmp_path):
    together = [lease(tmp_path, "analysis", "3") for _ in range(3)]
    slots = [slot_of(p) for p in together]
    assert sorted(s.name for s in slots) == ["analysis-0", "analysis-1", "analysis-2"]
    for process in together:
        assert process.wait(30) == 0
    later = lease(tmp_path, "analysis", "fill")
    assert slot_of(later).name == "analysis-0" and later.wait(30) == 0
    again = lease(tmp_path, "analysis", "0")
    assert slot_of(again).name == "analysis-0" and again.wait(30) == 0
    assert (tmp_path / "analysis-0" / "entry.nbi").read_text() == "compiled"  # kept: it ended normally
    assert not (tmp_path / "analysis-0" / UNPROVEN_FILE).exists()


def test_a_slot_whose_process_died_before_its_cache_proved_sound_is_emptied_for_the_next(tmp_path):
    crashed = lease(tmp_path, "video", "60")
    slot = slot_of(crashed)
    (slot / "entry.nbi").write_text("half written by a process that then died")
    (slot / "index").mkdir()
    crashed.send_signal(signal.SIGKILL)  # as a crash: no orderly exit, the mark stays
    crashed.wait(30)
    assert (slot / UNPROVEN_FILE).exists()
    following = lease(tmp_path, "video", "0")
    assert slot_of(following) == slot and following.wait(30) == 0
    assert sorted(p.name for p in slot.iterdir()) == [LOCK_FILE]  # emptied, then proven by its orderly exit


@pytest.mark.system
def test_the_stack_starts_every_time_on_an_empty_numba_cache(tmp_path):
    """The issue's case: `make dev-up` on a fresh clone, where segmentation, analysis and video compile
    librosa's kernels at once. Each start gets an empty cache root; every one must come up without a
    service crashing (none restarted), each service having compiled into its own folder."""
    came_up = []
    for attempt in range(STACK_STARTS):
        root = tmp_path / f"numba-{attempt}"
        stack = DevStack(tmp_path / f"stack-{attempt}", free_ports=True, grace_seconds=2, startup_timeout=300,
                         env={"*": {"MVGEN_NUMBA_CACHE_ROOT": str(root)}})
        try:
            stack.start()
            came_up.append(stack.crashed_at_start)
        finally:
            stack.stop()
        for stage in NUMBA_STAGES:
            assert list((root / f"{stage}-0").rglob("*.nbi")), f"{stage} compiled nothing into its own cache"
    assert came_up == [{}] * STACK_STARTS, came_up


# ---------------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    return tone(tmp_path_factory.mktemp("song") / "song.wav", 40.0)


def generate(song: Path, run_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([MVGEN, "generate", str(song), "--run-dir", str(run_dir), "--segmenter", "random",
                             "--writer", "template", "--size", "160x90", "--fps", "12", "-q"], cwd=run_dir.parent,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def worker_of(parent: subprocess.Popen[str], run_dir: Path, timeout: float = 120.0) -> int:
    """The pid of the process doing the work under `mvgen`, once the job has started."""
    deadline = time.monotonic() + timeout
    while not (run_dir / "manifest.json").exists():
        assert parent.poll() is None, parent.communicate()
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)
    children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat")
                if _parent_pid(p) == parent.pid]
    assert len(children) == 1, children
    return children[0]


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker through /proc")
@pytest.mark.parametrize("sig, code, words", [
    (signal.SIGSEGV, 139, "crashed with SIGSEGV"),
    (signal.SIGKILL, 137, "killed by SIGKILL (the out-of-memory killer, or kill -9)"),
])
@pytest.mark.slow
def test_a_worker_that_dies_of_a_signal_ends_mvgen_with_one_line_and_an_exit_code(tmp_path, song, sig, code, words):
    run_dir = tmp_path / "run"
    mvgen = generate(song, run_dir)
    os.kill(worker_of(mvgen, run_dir), sig)
    out, err = mvgen.communicate(timeout=60)
    assert mvgen.returncode == code, (mvgen.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mvgen: error: {words}"), err
    if sig is signal.SIGSEGV:
        assert f"the Python stack is in {run_dir.resolve() / 'mvgen.log'}" in lines[0]
        log = (run_dir / "mvgen.log").read_text()
        assert "Fatal Python error: Segmentation fault" in log and 'File "' in log, log
    else:
        assert f"finished artifacts are kept in {run_dir.resolve()}" in lines[0]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker through /proc")
def test_sigterm_to_mvgen_cancels_the_run_as_ctrl_c_does(tmp_path, song):
    run_dir = tmp_path / "run"
    mvgen = generate(song, run_dir)
    worker_of(mvgen, run_dir)
    mvgen.send_signal(signal.SIGTERM)  # to mvgen alone, as `timeout` or a job runner sends it
    out, err = mvgen.communicate(timeout=60)
    assert mvgen.returncode == 130, (mvgen.returncode, err)
    assert err.strip().splitlines() == ["mvgen: error: cancelled; finished artifacts are kept and a rerun resumes"]
