"""The review stage on runs made here: a real song through `mvgen generate`, then the run changed the way a
person or a bad model would change it (a repeated scene, a scene about a sound, scenes shuffled across
segments, a clip gone black), each judged again by the real stage with its real models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.assembly.stage import AssemblyStage
from services.common import encoding
from services.common.artifacts import Script, Segmentation
from services.common.stage_api import AssembleRequest, ReviewRequest
from services.common.store import LocalArtifactStore
from services.review.stage import ReviewStage
from tools.synth_song import render_song

pytestmark = pytest.mark.slow  # a video made through the whole pipeline, then reviewed several times

MVGEN = str(Path(sys.executable).parent / "mvgen")
FPS = 24


def mvgen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([MVGEN, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MVGEN_WRITER": "template"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 40 s song whose sections differ (a calm intro, a loud chorus, a breakdown), made into a video by the
    CLI with the template writer, which writes each scene from its segment's labels."""
    work = tmp_path_factory.mktemp("review")
    render_song(work / "song.wav", seconds=40, seed=5)
    done = mvgen("generate", "song.wav", "--run-dir", "run", "--analysis", "descriptors", "--transcriber", "none",
                 "--size", "160x90", "--fps", str(FPS), cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "run", done


@pytest.fixture(scope="module")
def reviewer():
    """One loaded review stage (its models) for every test; each review gets its own store."""
    loaded = ReviewStage(LocalArtifactStore(Path(os.devnull).parent))
    loaded.load()
    return loaded


def review(reviewer: ReviewStage, run_dir: Path) -> dict:
    """Judge `run_dir` with the loaded models, as the orchestrator asks the stage to."""
    store = LocalArtifactStore(run_dir)
    reviewer.store = store
    manifest = json.loads((run_dir / "manifest.json").read_text())
    segmentation = Segmentation.from_dict(json.loads((run_dir / "segments.json").read_text()))
    frames = segmentation.frame_counts(FPS)
    reviewer.run(ReviewRequest(
        song_key="song.wav", segments_key="segments.json", script_key="script.json",
        clip_keys=[f"clips/{s.index:04d}.mp4" for s in segmentation.segments],
        frame_counts=[frames[s.index] for s in segmentation.segments], fps=FPS, video_key="final.mp4",
        generator=manifest["options"]["generator"], evaluation_key="evaluation.json",
        evaluation_text_key="evaluation.txt", storyboard_key="storyboard.html", labels_key="labels.json",
        plan_key="plan.json", edit_key="edit.json"))
    return json.loads((run_dir / "evaluation.json").read_text())


def figure(evaluation: dict, key: str) -> dict:
    return next(f for f in evaluation["figures"] if f["key"] == key)


def flags_of(evaluation: dict, kind: str) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for flag in evaluation["flags"]:
        if flag["kind"] == kind:
            found.setdefault(flag["segment"], []).append(flag["detail"])
    return found


def edited_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def rewrite_scenes(run_dir: Path, texts: dict[int, str]) -> None:
    path = run_dir / "script.json"
    script = json.loads(path.read_text())
    for scene in script["scenes"]:
        if scene["index"] in texts:
            scene["text"] = texts[scene["index"]]
    path.write_text(json.dumps(script))


def test_generate_reviews_every_video_it_makes(run):
    run_dir, done = run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["review"]["state"] == "succeeded"
    assert set(manifest["stages"]["review"]["outputs"]) == {"evaluation", "evaluation_text", "storyboard"}
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    segments = json.loads((run_dir / "segments.json").read_text())["segments"]
    assert [s["index"] for s in evaluation["segments"]] == [s["index"] for s in segments]
    assert all(f["meaning"] for f in evaluation["figures"])  # every figure says what it means
    assert figure(evaluation, "video.frames_exact")["value"] is True
    assert figure(evaluation, "video.audio_is_song")["value"] is True
    assert abs(figure(evaluation, "video.audio_offset_ms")["value"]) < 1000 / FPS / 2
    assert "mvgen: storyboard " in done.stdout and "storyboard.html" in done.stdout


def test_the_animatic_is_a_preview_whose_picture_figures_mean_nothing(run):
    run_dir, _ = run
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["preview"] is True and "preview" in evaluation["preview_note"]
    picture = {f["key"]: f for f in evaluation["figures"] if f["group"] == "picture"}
    assert not picture["picture.look_consistency"]["applies"] and not picture["picture.motion"]["applies"]
    assert picture["picture.exact_length"]["applies"]  # the frames are counted whoever made the clips
    assert "(preview)" in (run_dir / "evaluation.txt").read_text()


def test_a_repeated_scene_and_a_scene_about_a_sound_are_flagged(run, reviewer, tmp_path):
    run_dir = edited_copy(run[0], tmp_path)
    script = Script.from_dict(json.loads((run_dir / "script.json").read_text()))
    first = script.scenes[0].text
    rewrite_scenes(run_dir, {
        2: first,  # repeated word for word
        3: "A lighthouse keeper climbs the spiral stairs at dawn, lantern swinging in her hand.",
        4: "At dawn a lighthouse keeper climbs the spiral staircase, her lantern swinging in her hand.",  # paraphrase
        5: "A girl sits on the pier listening to the sound of the waves.",
    })
    evaluation = review(reviewer, run_dir)
    assert 2 in flags_of(evaluation, "duplicate")
    assert 4 in flags_of(evaluation, "near_duplicate")
    assert any("sound" in detail for detail in flags_of(evaluation, "rule_break").get(5, []))
    assert figure(evaluation, "script.duplicates")["value"] >= 1
    assert figure(evaluation, "script.near_duplicates")["value"] >= 1
    assert figure(evaluation, "script.rule_breaks")["value"] > 0
    # The untouched original has none of these.
    original = json.loads((run[0] / "evaluation.json").read_text())
    assert 5 not in flags_of(original, "rule_break") and 2 not in flags_of(original, "duplicate")


def test_scenes_shuffled_across_segments_fit_the_music_worse(run, reviewer, tmp_path):
    original = json.loads((run[0] / "evaluation.json").read_text())
    fit = figure(original, "script.music_fit")["value"]
    assert fit > 0  # the template writes each scene from its segment's labels
    assert fit > figure(original, "script.music_fit_shuffled")["value"]

    run_dir = edited_copy(run[0], tmp_path)
    script = json.loads((run_dir / "script.json").read_text())
    texts = [scene["text"] for scene in script["scenes"]]
    order = np.random.default_rng(1).permutation(len(texts))
    rewrite_scenes(run_dir, {scene["index"]: texts[order[i]] for i, scene in enumerate(script["scenes"])})
    shuffled = review(reviewer, run_dir)
    assert figure(shuffled, "script.music_fit")["value"] < fit


def test_a_clip_replaced_by_black_frames_is_flagged(run, reviewer, tmp_path):
    run_dir = edited_copy(run[0], tmp_path)
    segmentation = Segmentation.from_dict(json.loads((run_dir / "segments.json").read_text()))
    frames = segmentation.frame_counts(FPS)
    blacked = segmentation.segments[1].index
    with encoding.RawVideoEncoder(run_dir / f"clips/{blacked:04d}.mp4", 160, 90, FPS) as encoder:
        for _ in range(frames[blacked]):
            encoder.write(np.zeros((90, 160, 3), np.uint8))
    store = LocalArtifactStore(run_dir)
    AssemblyStage(store).run(AssembleRequest(
        song_key="song.wav", clip_keys=[f"clips/{s.index:04d}.mp4" for s in segmentation.segments],
        frame_counts=[frames[s.index] for s in segmentation.segments], fps=FPS, width=160, height=90,
        video_key="final.mp4"))
    evaluation = review(reviewer, run_dir)
    assert list(flags_of(evaluation, "black")) == [blacked]
    assert figure(evaluation, "picture.black")["value"] == pytest.approx(1 / len(segmentation.segments), abs=1e-3)


def test_evaluate_prints_the_table_and_refuses_a_folder_that_is_no_run(run, tmp_path):
    run_dir = edited_copy(run[0], tmp_path)
    done = mvgen("evaluate", str(run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "music–text fit" in done.stdout and "cuts on a beat" in done.stdout
    assert f"storyboard: {run_dir / 'storyboard.html'}" in done.stdout
    (tmp_path / "empty").mkdir()
    refused = mvgen("evaluate", str(tmp_path / "empty"), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "not a run folder" in refused.stderr
