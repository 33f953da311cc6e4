"""Transitions at the cuts (issue 20): the edit decided from the music, rendered by encoding only what the
transitions cover, checked with the real segmenter, the real descriptors analyser and real ffmpeg."""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from services.analysis.stage import AnalysisStage
from services.assembly.edit import CutDecision, Edit, decide_edit
from services.assembly.stage import AssemblyStage
from services.common import encoding
from services.common.artifacts import LabelGroup, Labels, LabelScore, Segment, Segmentation, SegmentLabels, dumps
from services.common.errors import InvalidInputError
from services.common.pb import assembly_service_pb2, stage_pb2
from services.common.stage_api import AnalyzeRequest, AssembleRequest, SegmenterParams, SegmentRequest, StageResult
from services.common.store import LocalArtifactStore
from services.common.transport.convert import from_message, result_from_message, result_to_message, to_message
from services.segmentation.stage import SegmentationStage
from tests.media import decode_frames

FPS = 24
SR = 22050
WIDTH, HEIGHT = 64, 36
# The song: a calm intro, a loud chorus (drums at 120 BPM), a quiet breakdown, the groove again fading out.
INTRO, CHORUS, BREAKDOWN, OUTRO = 6.0, 16.0, 6.0, 8.0
CHORUS_END = INTRO + CHORUS


def chord(freqs: tuple[float, ...], seconds: float, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return np.asarray(amp * sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs), np.float32)


def drums(bpm: float, seconds: float, amp: float) -> np.ndarray:
    """A kick and a noise hit on every beat."""
    out = np.zeros(int(seconds * SR), np.float32)
    kick_t = np.arange(int(0.25 * SR)) / SR
    kick = np.sin(2 * np.pi * (50 * kick_t + 2 * (1 - np.exp(-kick_t * 30)))) * np.exp(-kick_t * 12)
    hit_n = int(0.15 * SR)
    hit = 0.5 * np.random.default_rng(0).uniform(-1, 1, hit_n) * np.exp(-np.arange(hit_n) / SR * 25)
    for start in np.arange(0, seconds, 60.0 / bpm):
        a = int(start * SR)
        for sound in (kick, hit):
            n = min(sound.size, out.size - a)
            out[a:a + n] += sound[:n]
    return (amp * out / np.abs(out).max()).astype(np.float32)


def song_samples() -> np.ndarray:
    a_major, d_major = (220.0, 277.18, 329.63), (293.66, 369.99, 440.0)
    fade = (10 ** (-50 * (np.arange(int(OUTRO * SR)) / SR) / OUTRO / 20)).astype(np.float32)
    return np.concatenate([
        chord(a_major, INTRO, 0.06),
        drums(120, CHORUS, 0.8) + chord(d_major, CHORUS, 0.3),
        chord(a_major, BREAKDOWN, 0.08),
        (drums(120, OUTRO, 0.8) + chord(d_major, OUTRO, 0.3)) * fade,
    ])


def flat_clips(root: Path, colours: list[tuple[int, int, int]], counts: list[int], prefix: str = "clips",
               ramp: bool = False) -> list[str]:
    """A clip per segment in one flat colour, made with the shared encoding; with `ramp`, a grey square whose
    brightness counts the clip's frames, so that a frame off by one shows."""
    keys = []
    (root / prefix).mkdir(parents=True, exist_ok=True)
    for i, (colour, n) in enumerate(zip(colours, counts)):
        key = f"{prefix}/{i:04d}.mp4"
        with encoding.RawVideoEncoder(root / key, WIDTH, HEIGHT, FPS) as encoder:
            for j in range(n):
                frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
                frame[...] = colour
                if ramp:
                    frame[4:20, 4:20] = 30 + (3 * j) % 195
                encoder.write(frame)
        keys.append(key)
    return keys


def packet_hashes(path: Path, stream: str) -> list[str]:
    """md5 of every packet of one stream ("v" or "a"), as stored: equal lists mean the same bytes."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{stream}:0", "-c", "copy",
                          "-f", "framemd5", "-"], check=True, capture_output=True, text=True).stdout
    return [line.rsplit(",", 1)[1].strip() for line in out.splitlines() if line and not line.startswith("#")]


def video_pts(path: Path) -> np.ndarray:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True).stdout.split()
    return np.sort(np.array(out, float))


def mean_colours(path: Path) -> np.ndarray:
    """Each frame's mean colour away from the ramp square, as floats."""
    frames = decode_frames(path, WIDTH, HEIGHT).astype(float)
    return frames[:, :, 24:].reshape(len(frames), -1, 3).mean(axis=1)


@pytest.fixture(scope="module")
def song_store(tmp_path_factory: pytest.TempPathFactory) -> LocalArtifactStore:
    """The song segmented by the rules segmenter and labelled by the descriptors analyser, a flat clip per segment."""
    root = tmp_path_factory.mktemp("song")
    sf.write(root / "song.wav", song_samples(), SR)
    store = LocalArtifactStore(root)
    SegmentationStage(store).run(SegmentRequest(song_key="song.wav", params=SegmenterParams(),
                                                segments_key="segments.json", segments_text_key="segments.txt"))
    AnalysisStage(store).run(AnalyzeRequest(song_key="song.wav", segments_key="segments.json",
                                            analyzer="descriptors", labels_key="labels.json"))
    segmentation = segments_of(store)
    counts = list(segmentation.frame_counts(FPS).values())
    palette = [(200, 40, 40), (40, 40, 200), (40, 200, 40), (200, 200, 40), (200, 40, 200), (40, 200, 200)]
    flat_clips(root, [palette[i % len(palette)] for i in range(len(counts))], counts, ramp=True)
    return store


def segments_of(store: LocalArtifactStore) -> Segmentation:
    return Segmentation.from_dict(json.loads(store.get_text("segments.json")))


def request(store: LocalArtifactStore, **fields: object) -> AssembleRequest:
    segmentation = segments_of(store)
    counts = list(segmentation.frame_counts(FPS).values())
    base = AssembleRequest(song_key="song.wav", clip_keys=[f"clips/{i:04d}.mp4" for i in range(len(counts))],
                           frame_counts=counts, fps=FPS, width=WIDTH, height=HEIGHT, video_key="final.mp4",
                           transitions="auto", segments_key="segments.json", labels_key="labels.json",
                           edit_key="edit.json", edit_text_key="edit.txt")
    return replace(base, **fields)  # type: ignore[arg-type]


# --- (a) the policy, on the real segmenter's and analyser's reading of the song ----------------------


def test_the_edit_follows_the_music(song_store: LocalArtifactStore) -> None:
    segmentation = segments_of(song_store)
    labels = Labels.from_dict(json.loads(song_store.get_text("labels.json")))

    edit = decide_edit(segmentation, labels, FPS)

    cuts = edit.cuts
    assert (cuts[0].transition, cuts[0].frame, cuts[0].align) == ("fade_in", 0, "start")
    assert (cuts[-1].transition, cuts[-1].frame, cuts[-1].align) == ("fade_out", edit.frames, "end")
    assert cuts[0].frames == cuts[-1].frames == FPS  # a second each
    inner = cuts[1:-1]
    in_chorus = [c for c in inner if INTRO + 1 < c.time < CHORUS_END - 1]
    assert len(in_chorus) >= 2, edit.to_text()
    for cut in in_chorus:  # inside the groove: hard cuts, on beats
        assert cut.transition == "cut", edit.to_text()
        assert min(abs(b - cut.time) for b in segmentation.beats) < 0.06
        assert "on the beat" in cut.reason
    into_breakdown = min(inner, key=lambda c: abs(c.time - CHORUS_END))
    assert abs(into_breakdown.time - CHORUS_END) < 0.3
    assert into_breakdown.transition == "dissolve", edit.to_text()
    assert into_breakdown.frames == FPS // 2 and into_breakdown.align == "centre"
    assert "breakdown" in into_breakdown.reason and "dB" in into_breakdown.reason
    into_chorus = min(inner, key=lambda c: abs(c.time - INTRO))
    assert into_chorus.transition == "flash", edit.to_text()  # soft intro -> loud chorus: a burst

    # Without labels: the fades and hard cuts (the segmenter's cuts are on beats).
    plain = decide_edit(segmentation, None, FPS)
    assert [c.transition for c in plain.cuts] == ["fade_in"] + ["cut"] * len(inner) + ["fade_out"]
    # "none": every cut hard, no fades.
    assert {c.transition for c in decide_edit(segmentation, labels, FPS, "none").cuts} == {"cut"}
    # edit.json round-trips and fits the segments it was made for.
    again = Edit.from_dict(json.loads(dumps(edit)))
    assert again == edit and not again.edited
    assert again.checked(segmentation, FPS) is again


def test_max_cuts_off_the_beat_dissolve_and_short_segments_keep_hard_cuts() -> None:
    bounds = [0.0, 7.0, 7.2, 12.0]
    segments = [Segment(0, 0.0, 7.0, "max"), Segment(1, 7.0, 7.2, "change"), Segment(2, 7.2, 12.0, "end")]
    segmentation = Segmentation("rules", {}, bounds[-1], 120.0, [0.5 * k for k in range(1, 24) if k != 14], segments)
    edit = decide_edit(segmentation, None, FPS)
    assert [c.transition for c in edit.cuts] == ["fade_in", "dissolve", "cut", "fade_out"]
    assert "off the beat" in edit.cuts[1].reason
    # The dissolve keeps to half of the 5-frame segment after it: 4 frames, 2 each side.
    assert edit.cuts[1].frames == 4
    edit.checked(segmentation, FPS)


def test_the_rules_read_the_labels_on_both_sides_of_the_cut() -> None:
    """Labels as any analyser writes them (texts of prompts/labels, no level measures): a dissolve where a
    breakdown begins, hard cuts inside it, a whip into a climax the music built up to, a flash into a burst."""
    def side(index: int, intensity: str, dynamic: str, function: str) -> SegmentLabels:
        return SegmentLabels(index, {name: LabelGroup([LabelScore(text, 1.0)]) for name, text in (
            ("instrumental_intensity", intensity), ("dynamic_shift", dynamic), ("rhythmic_function", function))})

    song = [("intense, loud instrumentation", "holding a steady, constant energy", "steady rhythmic groove"),
            ("soft, sparse instrumentation", "holding a steady, constant energy", "quiet breakdown"),
            ("soft, sparse instrumentation", "holding a steady, constant energy", "quiet breakdown"),
            ("moderate instrumentation", "building up in energy", "transition between sections"),
            ("intense, loud instrumentation", "holding a steady, constant energy", "climax, the peak of the song"),
            ("soft, sparse instrumentation", "holding a steady, constant energy", "quiet breakdown"),
            ("intense, loud instrumentation", "bursting suddenly with energy", "steady rhythmic groove")]
    bounds = [4.0 * k for k in range(len(song) + 1)]
    segments = [Segment(i, a, b, "beats") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    segmentation = Segmentation("rules", {}, bounds[-1], 120.0, [0.5 * k for k in range(1, 56)], segments)
    labels = Labels("clap", {}, [side(i, *words) for i, words in enumerate(song)])

    edit = decide_edit(segmentation, labels, FPS)

    assert [c.transition for c in edit.cuts] == ["fade_in", "dissolve", "cut", "cut", "whip", "dissolve", "flash",
                                                 "fade_out"], edit.to_text()
    assert "dissolve into breakdown" in edit.cuts[1].reason and "inside a groove" in edit.cuts[2].reason


# --- (b) the final video: exact frames, the song's audio, the rest copied ----------------------------


def test_transitions_keep_every_frame_the_timing_and_the_audio(song_store: LocalArtifactStore) -> None:
    hard = AssemblyStage(song_store).run(request(song_store, transitions="none", video_key="hard.mp4"))
    auto = AssemblyStage(song_store).run(request(song_store, video_key="auto.mp4"))

    assert auto.keys == {"video": "auto.mp4", "edit": "edit.json", "edit_text": "edit.txt"}
    assert hard.keys == {"video": "hard.mp4"}
    edit = Edit.from_dict(json.loads(song_store.get_text("edit.json")))
    assert auto.info["transitions"] == edit.counts()
    assert auto.info["transitions"]["fade_in"] == auto.info["transitions"]["fade_out"] == 1
    assert auto.info["edit_sha256"] == hashlib.sha256(song_store.get_bytes("edit.json")).hexdigest()
    assert auto.info["edit_source"] == "policy"
    assert song_store.get_text("edit.txt") == edit.to_text()
    total = sum(request(song_store).frame_counts)
    assert auto.info["frames"] == hard.info["frames"] == total
    final, before = song_store.path("auto.mp4"), song_store.path("hard.mp4")
    # Every frame there, each at n / fps.
    pts = video_pts(final)
    assert len(pts) == total
    assert np.abs(pts - np.arange(total) / FPS).max() < 0.0005
    # The song's audio, bit for bit what the hard-cut assembly gives.
    assert packet_hashes(final, "a") == packet_hashes(before, "a")
    # Only the pieces around the transitions were encoded again: the other packets are the clips' own.
    new, old = packet_hashes(final, "v"), packet_hashes(before, "v")
    assert len(new) == len(old) == total
    changed = sum(a != b for a, b in zip(new, old))
    assert 0 < changed <= auto.info["transition_frames_encoded"] < total / 2
    # And the frames outside the transitions show what the hard cuts show, frame for frame (the ramp square
    # would show a frame off by one).
    covered = np.zeros(total, bool)
    for cut in edit.cuts:
        first, end = cut.span()
        covered[first:end] = True
    frames_new = decode_frames(final, WIDTH, HEIGHT).astype(float)
    frames_old = decode_frames(before, WIDTH, HEIGHT).astype(float)
    difference = np.abs(frames_new - frames_old).reshape(total, -1).mean(axis=1)
    assert difference[~covered].max() < 1.5
    assert difference[covered].min() > 2  # the first frames of a dissolve: 4 % of the other picture


# --- (c) what each transition looks like, measured on flat colours -----------------------------------


@pytest.fixture(scope="module")
def colour_store(tmp_path_factory: pytest.TempPathFactory) -> LocalArtifactStore:
    """Four 2.5 s segments in red, blue, green and yellow, and a tone for the song."""
    root = tmp_path_factory.mktemp("colours")
    store = LocalArtifactStore(root)
    bounds = [0.0, 2.5, 5.0, 7.5, 10.0]
    segments = [Segment(i, a, b, "change" if i < 3 else "end") for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    segmentation = Segmentation("test", {}, 10.0, None, [], segments)
    store.put_bytes("segments.json", dumps(segmentation))
    t = np.arange(10 * 44100) / 44100
    sf.write(root / "song.wav", (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    flat_clips(root, [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)],
               list(segmentation.frame_counts(FPS).values()))
    return store


def written_edit(store: LocalArtifactStore, kinds: list[str], frames: list[int], key: str) -> Edit:
    """A person's edit.json at `key`: these transitions at the start, the three cuts and the end."""
    segmentation = segments_of(store)
    policy = decide_edit(segmentation, None, FPS, "none")
    aligns = {"fade_in": "start", "fade_out": "end"}
    edit = Edit(fps=FPS, decided_by="a person", cuts=[
        CutDecision(c.index, c.time, c.frame, kind, n, aligns.get(kind, "centre"), "by hand")
        for c, kind, n in zip(policy.cuts, kinds, frames)])
    store.put_bytes(key, dumps(edit))
    return edit


def colour_request(store: LocalArtifactStore, edit_key: str, video_key: str) -> AssembleRequest:
    segmentation = segments_of(store)
    return AssembleRequest(song_key="song.wav", clip_keys=[f"clips/{i:04d}.mp4" for i in range(4)],
                           frame_counts=list(segmentation.frame_counts(FPS).values()), fps=FPS, width=WIDTH,
                           height=HEIGHT, video_key=video_key, transitions="auto", segments_key="segments.json",
                           edit_key=edit_key)


def test_each_transition_mixes_the_pictures_as_it_says(colour_store: LocalArtifactStore) -> None:
    kinds = ["fade_in", "dissolve", "flash", "whip", "fade_out"]
    written_edit(colour_store, kinds, [24, 12, 4, 6, 24], "colours/edit.json")
    result = AssemblyStage(colour_store).run(colour_request(colour_store, "colours/edit.json", "colours.mp4"))
    assert result.info["edit_source"] == "edit.json, changed by a person"
    assert result.info["transitions"] == {"fade_in": 1, "dissolve": 1, "flash": 1, "whip": 1, "fade_out": 1}
    colours = mean_colours(colour_store.path("colours.mp4"))
    assert len(colours) == 240
    red, blue, green, yellow = (np.array(c, float) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0)))

    def near(frame: int, colour: np.ndarray) -> bool:
        return bool(np.abs(colours[frame] - colour).max() < 12)

    # Fade in from black over frames 0-23, then red.
    brightness = colours.sum(axis=1)
    assert brightness[0] < 20 and near(24, red)
    assert np.all(np.diff(brightness[:25]) > 0)
    # The dissolve at frame 60 covers 54-65: from red to blue, monotonic, halfway at the cut.
    assert near(53, red) and near(66, blue)
    share = colours[54:66, 2] / (colours[54:66, 0] + colours[54:66, 2])  # blue's share of the mix
    assert np.all(np.diff(share) > 0)
    assert abs(share[5] - 0.46) < 0.05 and abs(share[6] - 0.54) < 0.05
    # The flash at frame 120 covers 118-121: toward white and back, white on both sides of the cut.
    assert near(117, blue) and near(122, green)
    assert colours[119].min() > 240 and colours[120].min() > 240
    assert colours[118].min() > 100 and colours[121].min() > 100
    # The whip at frame 180 covers 177-182: green slides out, yellow in; the red channel says how much.
    assert near(176, green) and near(183, yellow)
    assert np.all(np.diff(colours[177:184, 0]) >= -1) and colours[179, 0] < colours[181, 0]
    # Fade out to black over the last 24 frames.
    assert near(215, yellow) and brightness[-1] < 20
    assert np.all(np.diff(brightness[216:]) < 0)


def test_a_transition_may_end_on_the_cut_or_start_from_it(colour_store: LocalArtifactStore) -> None:
    edit = written_edit(colour_store, ["cut", "dissolve", "dissolve", "cut", "cut"], [0, 12, 12, 0, 0],
                        "aligned/edit.json")
    edit.cuts[1] = replace(edit.cuts[1], align="end")  # red to blue over frames 48-59: blue is whole on the cut
    edit.cuts[2] = replace(edit.cuts[2], align="start")  # blue to green over frames 120-131
    colour_store.put_bytes("aligned/edit.json", dumps(edit))
    AssemblyStage(colour_store).run(colour_request(colour_store, "aligned/edit.json", "aligned.mp4"))
    colours = mean_colours(colour_store.path("aligned.mp4"))
    assert len(colours) == 240
    assert colours[47, 0] > 240 and colours[60, 2] > 240 and colours[60, 0] < 12
    blue = colours[48:60, 2] / (colours[48:60, 0] + colours[48:60, 2])
    assert np.all(np.diff(blue) > 0) and blue[0] < 0.1 and blue[-1] > 0.9
    assert colours[119, 2] > 240 and colours[132, 1] > 240 and colours[132, 2] < 12
    green = colours[120:132, 1] / (colours[120:132, 1] + colours[120:132, 2])
    assert np.all(np.diff(green) > 0) and green[0] < 0.1 and green[-1] > 0.9


# --- (d) a person's edit is used as written; one that does not fit is refused --------------------------


def test_a_persons_edit_is_used_and_a_wrong_one_refused(song_store: LocalArtifactStore) -> None:
    stage = AssemblyStage(song_store)
    stage.run(request(song_store, edit_key="person/edit.json", edit_text_key="person/edit.txt",
                      video_key="person/first.mp4"))
    decided = json.loads(song_store.get_text("person/edit.json"))
    # The person turns the first hard cut into a whip and reruns: only assembly.
    position = next(k for k, c in enumerate(decided["cuts"]) if c["transition"] == "cut")
    decided["cuts"][position] |= {"transition": "whip", "frames": 6}
    song_store.put_text("person/edit.json", json.dumps(decided, indent=2))
    written = song_store.get_bytes("person/edit.json")

    result = stage.run(request(song_store, edit_key="person/edit.json", edit_text_key="person/edit.txt",
                               video_key="person/second.mp4"))

    assert song_store.get_bytes("person/edit.json") == written  # used as written, not decided again
    assert "edit" not in result.keys and result.keys["edit_text"] == "person/edit.txt"
    assert result.info["edit_source"] == "edit.json, changed by a person"
    assert result.info["edit_sha256"] == hashlib.sha256(written).hexdigest()
    assert result.info["transitions"]["whip"] == 1
    assert "whip" in song_store.get_text("person/edit.txt")

    index = decided["cuts"][position]["index"]
    wrong_cases = [
        ({"transition": "wipe"}, f"cut {index} .*transition 'wipe' cannot go there"),
        ({"frames": 10_000}, f"cut {index} .*frames of segment"),
        ({"time": decided["cuts"][position]["time"] + 1.0}, f"cut {index} .*cannot move cuts"),
        ({"frames": 0}, f"cut {index} .*needs frames >= 1"),
        ({"align": "middle"}, f"cut {index} .*align 'middle'"),
    ]
    for change, message in wrong_cases:
        broken = json.loads(written)
        broken["cuts"][position] |= change
        song_store.put_text("person/edit.json", json.dumps(broken))
        with pytest.raises(InvalidInputError, match=message):
            stage.run(request(song_store, edit_key="person/edit.json", video_key="person/refused.mp4"))
        assert not song_store.exists("person/refused.mp4")
        assert json.loads(song_store.get_text("person/edit.json")) == broken  # never overwritten
    song_store.put_text("person/edit.json", "{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        stage.run(request(song_store, edit_key="person/edit.json", video_key="person/refused.mp4"))
    fades = json.loads(written)
    fades["cuts"][0] |= {"align": "centre"}
    song_store.put_text("person/edit.json", json.dumps(fades))
    with pytest.raises(InvalidInputError, match="the start: the fade in must start at the start"):
        stage.run(request(song_store, edit_key="person/edit.json", video_key="person/refused.mp4"))


def test_an_edit_for_other_segments_or_labels_is_decided_again(song_store: LocalArtifactStore) -> None:
    stage = AssemblyStage(song_store)
    keys = {"edit_key": "stale/edit.json", "edit_text_key": "stale/edit.txt", "video_key": "stale/final.mp4"}
    stage.run(request(song_store, **keys))
    policy = json.loads(song_store.get_text("stale/edit.json"))
    # Made for other segments (a person's edit or not): decided again.
    song_store.put_text("stale/edit.json", json.dumps(policy | {"segments_sha256": "0" * 64}))
    assert stage.run(request(song_store, **keys)).info["edit_source"] == "policy"
    # The policy's own, unchanged, for labels that have changed since: decided again ...
    song_store.put_text("stale/edit.json", json.dumps(policy | {"labels_sha256": "0" * 64}))
    assert stage.run(request(song_store, **keys)).info["edit_source"] == "policy"
    # ... and for the same labels, used as it is.
    assert stage.run(request(song_store, **keys)).info["edit_source"] == "edit.json"


# --- (e) "none": the hard cuts of before, by stream copy alone ----------------------------------------


def test_none_joins_by_copy_as_before_and_ignores_an_edit(colour_store: LocalArtifactStore) -> None:
    written_edit(colour_store, ["fade_in", "dissolve", "flash", "whip", "fade_out"], [24, 12, 4, 6, 24],
                 "none/edit.json")
    req = replace(colour_request(colour_store, "none/edit.json", "none/final.mp4"), transitions="none")
    before = colour_store.get_bytes("none/edit.json")

    result = AssemblyStage(colour_store).run(req)

    assert result.keys == {"video": "none/final.mp4"}
    assert result.info["transitions"] == {"cut": 3} and result.info["edit_source"] == "none"
    assert "transition_frames_encoded" not in result.info
    assert colour_store.get_bytes("none/edit.json") == before
    copied = [h for key in req.clip_keys for h in packet_hashes(colour_store.path(key), "v")]
    assert packet_hashes(colour_store.path("none/final.mp4"), "v") == copied
    # An edit of hard cuts only, without fades, takes the same path: the same bytes.
    written_edit(colour_store, ["cut"] * 5, [0] * 5, "none/hard.json")
    hard = AssemblyStage(colour_store).run(colour_request(colour_store, "none/hard.json", "none/hard.mp4"))
    assert hard.info["transitions"] == {"cut": 3}
    assert packet_hashes(colour_store.path("none/hard.mp4"), "v") == copied


# --- the contract ---------------------------------------------------------------------------------


def test_the_request_and_result_cross_grpc() -> None:
    bare = assembly_service_pb2.AssembleRequest(song_key="s.wav", clip_keys=["c.mp4"], frame_counts=[24], fps=24,
                                                width=64, height=36, video_key="final.mp4")
    assert from_message(bare, AssembleRequest).transitions == "none"  # an older caller keeps hard cuts
    req = AssembleRequest(song_key="s.wav", clip_keys=["c.mp4"], frame_counts=[24], fps=24, width=64, height=36,
                          video_key="final.mp4", transitions="auto", segments_key="segments.json",
                          labels_key="labels.json", edit_key="edit.json", edit_text_key="edit.txt")
    assert from_message(to_message(req, assembly_service_pb2.AssembleRequest), AssembleRequest) == req
    result = StageResult({"video": "final.mp4"}, {"transitions": {"cut": 7, "dissolve": 2}, "edit_sha256": "ab",
                                                  "reencoded_indices": [1, 2]})
    back = result_from_message(result_to_message(result, stage_pb2.StageResult))
    assert back.info == result.info  # whole numbers stay whole, nested ones too
