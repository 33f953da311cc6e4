"""The edit as a person meets it: `mvgen generate` decides a transition at each cut and keeps it as edit.json in
the run folder; a changed cut reruns assembly alone (and the review of the new video); `--transitions none`
gives hard cuts. A real song, the real CLI, the video checked with ffprobe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.media import counted_frames
from tools.synth_song import render_song

pytestmark = pytest.mark.slow  # videos made through the whole pipeline, three times

MVGEN = str(Path(sys.executable).parent / "mvgen")
FPS = 12


def mvgen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MVGEN, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MVGEN_WRITER": "template"})


def generate(work: Path, *extra: str) -> subprocess.CompletedProcess:
    done = mvgen("generate", "song.wav", "--run-dir", "run", "--analysis", "descriptors", "--transcriber", "none",
                 "--size", "160x90", "--fps", str(FPS), "-q", *(extra or ("--transitions", "auto")), cwd=work)
    assert done.returncode == 0, done.stderr
    return done


def stages(work: Path) -> dict:
    return json.loads((work / "run" / "manifest.json").read_text())["stages"]


def test_a_person_changes_one_cut_and_only_assembly_runs_again(tmp_path):
    render_song(tmp_path / "song.wav", seconds=30, seed=2)
    generate(tmp_path)
    run = tmp_path / "run"
    edit = json.loads((run / "edit.json").read_text())
    cuts = edit["cuts"]
    assert cuts[0]["transition"] == "fade_in" and cuts[-1]["transition"] == "fade_out"
    assert (run / "edit.txt").read_text().count("\n") >= len(cuts)
    first = stages(tmp_path)
    assert first["assembly"]["info"]["edit_source"] and first["assembly"]["outputs"]["edit"] == "edit.json"
    total = sum(json.loads((run / "manifest.json").read_text())["clips"][k]["frames"]
                for k in json.loads((run / "manifest.json").read_text())["clips"])
    assert counted_frames(run / "final.mp4") == total

    # The person makes the first hard cut inside the song a dissolve, and reruns.
    hard = next(c for c in cuts[1:-1] if c["transition"] == "cut")
    hard.update(transition="dissolve", frames=4, align="centre")
    (run / "edit.json").write_text(json.dumps(edit, indent=2))
    generate(tmp_path)
    second = stages(tmp_path)
    for name in ("segmentation", "analysis", "scripting", "video"):
        assert second[name].get("started_at") == first[name].get("started_at"), name  # not run again
    assert second["assembly"]["started_at"] != first["assembly"]["started_at"]
    assert second["review"]["started_at"] != first["review"]["started_at"]  # the new video is judged again
    kept = json.loads((run / "edit.json").read_text())
    assert next(c for c in kept["cuts"] if c["index"] == hard["index"])["transition"] == "dissolve"
    assert second["assembly"]["info"]["transitions"].get("dissolve", 0) == \
        first["assembly"]["info"]["transitions"].get("dissolve", 0) + 1
    assert counted_frames(run / "final.mp4") == total

    # A third run with nothing changed runs nothing.
    generate(tmp_path)
    assert stages(tmp_path)["assembly"]["started_at"] == second["assembly"]["started_at"]

    # Hard cuts on request: assembly again, every cut hard.
    generate(tmp_path, "--transitions", "none")
    hard_cuts = stages(tmp_path)["assembly"]["info"]["transitions"]
    assert set(hard_cuts) == {"cut"}
    assert counted_frames(run / "final.mp4") == total


def test_a_broken_edit_is_refused_in_one_line(tmp_path):
    render_song(tmp_path / "song.wav", seconds=20, seed=4)
    generate(tmp_path)
    run = tmp_path / "run"
    edit = json.loads((run / "edit.json").read_text())
    edit["cuts"][1]["transition"] = "spin"
    (run / "edit.json").write_text(json.dumps(edit))
    done = mvgen("generate", "song.wav", "--run-dir", "run", "--analysis", "descriptors", "--transcriber", "none",
                 "--size", "160x90", "--fps", str(FPS), "-q", "--transitions", "auto", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "spin" in done.stderr
    assert (run / "final.mp4").exists()  # the earlier video is kept
