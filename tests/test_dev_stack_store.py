"""The dev stack across `make dev-down` and `make dev-up` (tools/dev_stack.py): moto keeps objects in
memory only, so dev-down copies the bucket out and says so, and dev-up puts it back with the dev token
that owns it; `down --discard` drops it, saying plainly that it is gone. Checked the way a person does
it: a real job made with `mvgen submit`, the stack stopped and started with the CLI, the job asked for
again with `mvgen status` and `mvgen jobs`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.media import tone
from tests.servers import dev_stack_store
from tests.test_dev_stack import dev_stack_cli
from tools.dev_stack import DevStack

pytestmark = pytest.mark.system  # the dev stack's processes, through its command line (make check leaves it out)

MVGEN = str(Path(sys.executable).parent / "mvgen")


def mvgen(state: dict, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MVGEN_TOKEN": state["gateway"]["token"], "MVGEN_SERVER": state["gateway"]["server"]}
    return subprocess.run([MVGEN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def up(base_dir: Path) -> tuple[subprocess.CompletedProcess, dict]:
    started = dev_stack_cli(base_dir, "up", "--free-ports")
    assert started.returncode == 0, started.stdout + started.stderr
    return started, json.loads((base_dir / "state.json").read_text())


@pytest.fixture
def base_dir(tmp_path):
    base = tmp_path / "stack"
    yield base
    DevStack(base).stop(grace_seconds=5)  # whatever happened, nothing is left running


@pytest.mark.real_llm
def test_a_finished_job_outlives_dev_down_and_dev_up(base_dir, tmp_path):
    _, state = up(base_dir)
    tone(tmp_path / "song.wav", 8.0)
    submitted = mvgen(state, "submit", "song.wav", "--segmenter", "random", "--size", "160x90", "--fps", "12",
                      "-o", "first.mp4", "-q", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    objects = set(dev_stack_store(state).list(""))
    job_id = next(key.split("/")[1] for key in objects if key.startswith("jobs/"))

    down = dev_stack_cli(base_dir, "down")
    assert down.returncode == 0, down.stderr
    assert f"Kept the store's {len(objects)} objects" in down.stdout, down.stdout
    assert "the next `make dev-up` puts them back, with the same dev token" in down.stdout
    assert stat.S_IMODE((base_dir / "kept.json").stat().st_mode) == 0o600  # it holds the dev token

    again, state_again = up(base_dir)
    assert f"The store holds again the {len(objects)} objects (" in again.stdout, again.stdout
    assert state_again["gateway"]["token"] == state["gateway"]["token"]
    assert set(dev_stack_store(state_again).list("")) >= objects
    status = mvgen(state_again, "status", job_id, cwd=tmp_path)
    assert status.returncode == 0 and "succeeded" in status.stdout.lower(), status.stdout + status.stderr
    assert job_id in mvgen(state_again, "jobs", cwd=tmp_path).stdout


def test_down_discard_says_the_objects_are_gone_and_the_next_up_starts_empty(base_dir):
    _, state = up(base_dir)
    dev_stack_store(state).put_bytes("jobs/kept-once/job.json", b"{}")
    assert dev_stack_cli(base_dir, "down").returncode == 0
    assert (base_dir / "store" / "jobs" / "kept-once" / "job.json").exists()

    _, state = up(base_dir)
    assert dev_stack_store(state).exists("jobs/kept-once/job.json")
    discarded = dev_stack_cli(base_dir, "down", "--discard")
    assert discarded.returncode == 0, discarded.stderr
    assert "The store's objects are gone: moto held them in memory only" in discarded.stdout, discarded.stdout
    assert not (base_dir / "store").exists() and not (base_dir / "kept.json").exists()

    fresh, state = up(base_dir)
    assert dev_stack_store(state).list("") == []
    assert "holds again" not in fresh.stdout


def test_down_says_plainly_when_moto_was_not_there_to_copy_from(base_dir):
    up(base_dir)
    DevStack(base_dir).kill("s3")
    down = dev_stack_cli(base_dir, "down")
    assert down.returncode == 0, down.stderr
    assert "The store's objects are lost: moto (S3) was not running to copy them from" in down.stdout, down.stdout
