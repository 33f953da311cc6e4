"""`mvgen generate` as a user runs it: a real process, a real song, the video checked with ffprobe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import timing
from tests.media import audio_stream, counted_frames, probe_streams, tone, video_stream
from tools.synth_song import render_song

pytestmark = pytest.mark.slow  # each test makes a video through the whole pipeline (make check leaves it out)

MVGEN = str(Path(sys.executable).parent / "mvgen")
RUN_ARTIFACTS = ("segments.json", "segments.txt", "labels.json", "prompt.txt", "script.json", "script.txt",
                 "final.mp4", "manifest.json")


def mvgen(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, with the template writer by default: these tests are about the
    pipeline around the script (tests/test_llm_scripting.py runs the real LLM writer)."""
    return subprocess.run([MVGEN, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MVGEN_WRITER": "template", **(env or {})})


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One 30 s song through the whole pipeline; several tests read the result."""
    work = tmp_path_factory.mktemp("generate")
    truth = render_song(work / "song.wav", seconds=30, seed=3)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(work / "song.wav"), "-b:a", "160k", str(work / "song.ogg")],
                   check=True)
    done = mvgen("generate", "song.ogg", "-o", "out/video.mp4", "--run-dir", "run", cwd=work)
    assert done.returncode == 0, done.stderr
    return work, truth, done


def test_generate_makes_a_video_as_long_as_the_song(generated):
    work, _, done = generated
    info = probe_streams(work / "out/video.mp4")
    video, sound = video_stream(info), audio_stream(info)
    assert video["codec_name"] == "h264" and sound["codec_name"] == "aac"
    assert (video["width"], video["height"]) == (640, 360)
    song_seconds = float(probe_streams(work / "song.ogg")["format"]["duration"])
    assert float(info["format"]["duration"]) == pytest.approx(song_seconds, abs=1 / 24 + 0.03)
    assert counted_frames(work / "out/video.mp4") == timing.frame_at(song_seconds, 24)
    assert "out/video.mp4" in done.stdout and "segments" in done.stdout  # the one-line summary


def test_the_video_is_cut_where_the_segmenter_says(generated):
    work, _, _ = generated
    run = work / "run"
    segments = json.loads((run / "segments.json").read_text())["segments"]
    clips = sorted((run / "clips").glob("*.mp4"))
    assert len(clips) == len(segments) >= 4
    for segment, clip in zip(segments, clips):
        assert counted_frames(clip) == timing.frame_count(segment["start"], segment["end"], 24)


def test_every_intermediate_is_kept_and_readable(generated):
    work, _, _ = generated
    run = work / "run"
    for name in RUN_ARTIFACTS:
        assert (run / name).stat().st_size > 0, name
    segments = json.loads((run / "segments.json").read_text())["segments"]
    script = json.loads((run / "script.json").read_text())
    assert len(script["scenes"]) == len(segments)
    assert len((run / "segments.txt").read_text().splitlines()) == len(segments) + 2
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["state"] == "succeeded"
    assert [manifest["stages"][s]["state"] for s in ("segmentation", "analysis", "scripting", "video", "assembly")] \
        == ["succeeded"] * 5
    assert manifest["stages"]["segmentation"]["backend"] == "rules"
    assert manifest["options"]["segmenter"]["max_seconds"] == 7.0
    assert len(manifest["clips"]) == len(segments)
    assert all(c["state"] == "succeeded" and c["seconds"] >= 0 for c in manifest["clips"].values())


def test_a_rerun_regenerates_nothing_and_an_edited_scene_regenerates_one_clip(generated, tmp_path):
    work, _, _ = generated
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    clips_before = {p.name: p.stat().st_mtime_ns for p in (run / "clips").glob("*.mp4")}

    again = mvgen("generate", str(work / "song.ogg"), "--run-dir", str(run), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("unchanged") == 6  # every stage, the review included
    assert {p.name: p.stat().st_mtime_ns for p in (run / "clips").glob("*.mp4")} == clips_before

    script = json.loads((run / "script.json").read_text())
    script["scenes"][2]["text"] = "A lighthouse keeper climbs the spiral stairs as the storm arrives."
    (run / "script.json").write_text(json.dumps(script))
    edited = mvgen("generate", str(work / "song.ogg"), "--run-dir", str(run), cwd=tmp_path)
    assert edited.returncode == 0, edited.stderr
    changed = {p.name for p in (run / "clips").glob("*.mp4") if p.stat().st_mtime_ns != clips_before[p.name]}
    assert changed == {"0002.mp4"}
    assert "lighthouse keeper" in (run / "clips/0002.json").read_text()


def test_random_segmenter_and_another_seed(tmp_path):
    tone(tmp_path / "song.mp3", 21.0)
    done = mvgen("generate", "song.mp3", "--segmenter", "random", "--seed", "7", "--run-dir", "run",
                 "--size", "320x180", "--fps", "12", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # --quiet: only the summary, on stdout
    segments = json.loads((tmp_path / "run/segments.json").read_text())["segments"]
    assert all(4.0 <= s["duration"] <= 8.0 for s in segments)
    assert {s["end_reason"] for s in segments[:-1]} == {"random"}
    assert video_stream(probe_streams(tmp_path / "run/final.mp4"))["width"] == 320


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such file"),
    (lambda d: (d / "song.mp3").write_bytes(b""), "empty"),
    (lambda d: (d / "song.mp3").write_text("this is a text file, not a song\n" * 50), "not a readable audio file"),
    (lambda d: (d / "song.mp3").write_bytes(bytes(range(256)) * 200), "not a readable audio file"),
    (lambda d: tone(d / "song.mp3", 14.0), "maximum is 10.0 s"),
])
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, setup, message):
    setup(tmp_path)
    done = mvgen("generate", "song.mp3", "--max-duration", "10", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("mvgen: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "run/final.mp4").exists()


def test_truncated_song_still_decodes_what_is_there(tmp_path):
    # A cut-off download is a real case: keep the part that decodes rather than refuse it.
    full = tone(tmp_path / "full.mp3", 12.0)
    data = full.read_bytes()
    (tmp_path / "song.mp3").write_bytes(data[: len(data) // 2])
    done = mvgen("generate", "song.mp3", "--run-dir", "run", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seconds = float(probe_streams(tmp_path / "run/final.mp4")["format"]["duration"])
    assert 5.0 < seconds < 7.0


def test_bad_options_are_refused(tmp_path):
    tone(tmp_path / "song.wav", 3.0)
    (tmp_path / "lyrics.bin").write_bytes(bytes(range(256)))
    (tmp_path / "blank.txt").write_text("\n  \n")
    for args, message in ((["--size", "641x360"], "must be even"), (["--fps", "0"], "fps must be between 1 and 120"),
                          (["--generator", "nonesuch"], "nonesuch"),
                          (["--lyrics", "missing.txt"], "cannot read the lyrics file missing.txt: No such file"),
                          (["--lyrics", "lyrics.bin"], "the lyrics file lyrics.bin is not UTF-8 text (byte 128"),
                          (["--lyrics", "blank.txt"], "the lyrics file blank.txt is empty"),
                          (["--pipeline", "lalm", "--transcriber", "whisper"], "lyrics are heard by the analysis "
                                                                               "stage, which the LALM pipeline")):
        done = mvgen("generate", "song.wav", "--run-dir", "run", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run/final.mp4").exists()


def test_surround_high_rate_song_becomes_stereo_compatible_aac(tmp_path):
    tone(tmp_path / "song.flac", 6.0, rate=192000, channels=8)
    done = mvgen("generate", "song.flac", "--run-dir", "run", "--size", "160x90", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    sound = audio_stream(probe_streams(tmp_path / "run/final.mp4"))
    assert sound["codec_name"] == "aac" and int(sound["sample_rate"]) == 48000


def test_a_song_only_libsndfile_reads_is_converted_at_ingest(tmp_path):
    # Stands in for real files ffmpeg rejects but players read (e.g. Ogg Vorbis from old encoders):
    # MATLAB 5 audio, which libsndfile writes and ffmpeg cannot open.
    import numpy as np
    import soundfile as sf

    t = np.arange(44100 * 6) / 44100
    sf.write(tmp_path / "song.mat", (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), 44100,
             format="MAT5", subtype="PCM_16")
    assert subprocess.run(["ffprobe", "-v", "error", str(tmp_path / "song.mat")], capture_output=True).returncode != 0
    done = mvgen("generate", "song.mat", "--run-dir", "run", "--size", "160x90", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run/song.flac").exists()
    seconds = float(probe_streams(tmp_path / "run/final.mp4")["format"]["duration"])
    assert seconds == pytest.approx(6.0, abs=0.1)


def test_the_analysis_line_says_what_was_heard_and_how_much_is_sung():
    from gateway.cli.progress import stage_summary

    heard = {"genre": "pop music", "tempo_range": "fast tempo", "mood": "uplifting, happy mood", "segments": 49}
    assert stage_summary("analysis", heard) == "pop music · fast tempo · uplifting, happy mood"
    sung = heard | {"vocal_segments": 21, "lyrics_source": "whisper-base", "lyrics_language": "en"}
    assert stage_summary("analysis", sung).endswith(" · words sung in 21 of 49 segments (whisper-base, en)")
    none = heard | {"vocal_segments": 0, "lyrics_source": "whisper-base", "lyrics_language": ""}
    assert stage_summary("analysis", none).endswith(" · no words sung (whisper-base)")
