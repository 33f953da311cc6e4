"""The storyboard page (services/review/storyboard.py): its parts on hand-made artifacts, then the page of
a real run (a synthesized song through the in-process stages: descriptors, the template writer, the
animatic, assembly) opened in headless Chromium: the DOM it builds and a screenshot."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from services.common.artifacts import (
    Character,
    Labels,
    Lyrics,
    Scene,
    Script,
    Segment,
    Segmentation,
    StyleBible,
    read_artifact,
)
from services.common.audio import decode
from services.common.stage_api import (
    AnalyzeRequest,
    AssembleRequest,
    GenerateClipRequest,
    SegmenterParams,
    SegmentRequest,
    WriteScriptRequest,
)
from services.common.store import LocalArtifactStore
from services.review.storyboard import (
    Section,
    StoryboardPage,
    frame_strip_jpegs,
    render_storyboard,
    sections_from_plan,
    waveform_peaks,
)
from services.scripting.plan import Plan, PlannedSection
from services.scripting.sections import group_sections
from gateway.pipeline.inprocess import InProcessStages
from tests.browser import dump_dom, parse_dom, screenshot
from tests.media import decode_frames
from tools.synth_song import render_song

HOSTILE = "<script>alert(1)</script>"
FPS, WIDTH, HEIGHT = 12, 320, 180
FRAMES_PER_STRIP = 4
SHOT_WIDTH, SHOT_HEIGHT = 1280, 2400


# ---- the parts, on hand-made artifacts


def small_run(count: int = 4) -> tuple[Script, Segmentation]:
    segments = [Segment(i, 4.0 * i, 4.0 * (i + 1), "beats" if i < count - 1 else "end") for i in range(count)]
    segmentation = Segmentation("rules", {}, 4.0 * count, 120.0, [0.5 * b for b in range(8 * count)], segments)
    script = Script("template", "Tide & <Glass>", StyleBible(["#112233", "red;background:url(http://x)", "#abc"],
                                                           "grainy film", "low sun", "handheld", "hushed"),
                    [Character("Ana", "a tall woman in a yellow coat")],
                    [Scene(i, f"Scene {i}: a boat drifts {HOSTILE if i == 1 else ''}.") for i in range(count)])
    return script, segmentation


def test_waveform_peaks_are_the_min_and_max_of_each_column():
    samples = np.concatenate([np.full(100, 0.5), np.linspace(-1, 1, 100), np.zeros(100)]).astype(np.float32)
    peaks = waveform_peaks(samples, 3)
    assert peaks == [(0.5, 0.5), (-1.0, 1.0), (0.0, 0.0)]
    assert waveform_peaks(np.stack([samples, -samples], axis=1), 3)[1] == (0.0, 0.0)  # stereo is mixed down
    assert waveform_peaks(np.array([0.25, -2.0], np.float32), 4) == [(0.25, 0.25), (0.25, 0.25), (-1.0, -1.0),
                                                                     (-1.0, -1.0)]  # fewer samples than columns
    assert waveform_peaks(np.zeros(0, np.float32), 5) == [(0.0, 0.0)] * 5
    assert len(waveform_peaks(np.random.default_rng(0).uniform(-1, 1, 44100 * 3), 1200)) == 1200


def test_sections_come_from_the_plan_timed_by_their_segments():
    script, segmentation = small_run(6)
    plan = Plan(script.title, script.style, script.characters, [
        PlannedSection(0, 0, 1, 0.0, 7.9, "intro", "a harbour at dawn", "the boat leaves"),
        PlannedSection(1, 2, 5, 8.1, 24.0, "", "open sea", "a storm gathers"),
    ])
    sections = sections_from_plan(plan.to_dict(), segmentation)
    assert sections == [Section(0.0, 8.0, "intro", "a harbour at dawn: the boat leaves"),
                        Section(8.0, 24.0, "open sea", "open sea: a storm gathers")]
    assert sections_from_plan(None, segmentation) == []
    assert sections_from_plan({"sections": [{"segments": "bad"}]}, segmentation) == []
    assert sections_from_plan({"title": "no sections"}, segmentation) == []


def test_frame_strips_are_small_jpegs_of_the_asked_width():
    frames = [np.full((144, 256, 3), (i * 60, 100, 200), np.uint8) for i in range(3)]
    jpegs = frame_strip_jpegs(frames, width=160)
    assert len(jpegs) == 3
    for jpeg in jpegs:
        image = Image.open(io.BytesIO(jpeg))
        assert (image.format, image.size) == ("JPEG", (160, 90))
        assert len(jpeg) < 8000
    assert Image.open(io.BytesIO(frame_strip_jpegs([np.zeros((90, 160), np.uint8)])[0])).size == (160, 90)


def test_the_page_escapes_every_text_and_links_a_video_it_does_not_hold():
    script, segmentation = small_run()
    # edit.json as services/assembly/edit.py writes it: index -1 the start, i the cut after segment i.
    edit = {"fps": 24, "cuts": [
        {"index": -1, "time": 0.0, "frame": 0, "transition": "fade_in", "frames": 12, "reason": "the song begins"},
        {"index": 0, "time": 4.02, "frame": 96, "transition": "dissolve", "frames": 12, "reason": "a quiet passage"},
        {"index": 1, "time": 8.0, "frame": 192, "transition": "cut", "frames": 0, "reason": "on a beat"},
        {"index": 2, "frame": 288, "transition": "flash", "frames": 0},  # no time: placed by index; 0 frames: hard
        {"index": 3, "time": 16.0, "frame": 384, "transition": "fade_out", "frames": 24}]}
    html = render_storyboard(StoryboardPage(script=script, segmentation=segmentation, edit=edit,
                                            waveform=[(-0.5, 0.5)] * 10, video_name="../x/java:script.mp4"))
    assert HOSTILE not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "Tide &amp; &lt;Glass&gt;" in html
    assert 'style="background: #112233"' in html and "url(http" not in html.replace(
        "red;background:url(http://x)</span>", "")  # a colour that is not one is shown, never styled
    assert re.findall(r'<a href="([^"]*)" class="untrusted">', html) == ["java_script.mp4"]
    assert "too large to hold in this page" in html
    assert "No evaluation was made" in html
    assert "opens with <b>fade in</b>" in html and "ends with <b>fade out</b>" in html
    assert html.count('class="transition">in: ') == 1 and 'class="transition">in: dissolve' in html
    assert re.findall(r'<line class="([^"]+)" data-segment="(\d)"', html) == [
        ("cut transition", "1"), ("cut", "2"), ("cut", "3")]
    assert "cut at 0:12.0 into segment 3 (beats): flash" in html  # named on the cut line, drawn as a plain cut
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_a_preview_greys_the_picture_figures_and_flags_are_summed_up_by_kind():
    script, segmentation = small_run()
    evaluation = fake_evaluation(segmentation)
    evaluation["segments"][0]["figures"] |= {"pixel_motion": 0.01, "look": 0.9}
    evaluation["figures"].append({"key": "picture.look_consistency", "group": "clips", "label": "look", "value": 0.9,
                                  "display": "0.90", "meaning": "one film", "applies": False})
    html = render_storyboard(StoryboardPage(script=script, segmentation=segmentation, evaluation=evaluation))
    assert html.count('<tr class="figure na"') == 2 and html.count("means nothing for a preview</span>") == 2
    card = html[html.index('id="segment-0"'):html.index('id="segment-1"')]
    greyed = re.findall(r'<div class="na"[^>]*><dt>([^<]+)</dt>', card)
    assert greyed == ["motion", "pixel motion", "look"]  # beat offset ms and fit margin stay
    summary = html[html.index('id="flags"'):html.index("</ul>", html.index('id="flags"'))]
    assert re.search(r"rule break</span> × 1: segment\s", summary) and '<a href="#segment-1">1</a>' in summary


# ---- a real run in a real browser


async def make_run(store: LocalArtifactStore) -> None:
    """segments, labels, lyrics (a person's LRC), script, clips and final.mp4 in `store`, in process."""
    stages = InProcessStages(store, analyzer="descriptors", scripting=["template"], generator="animatic",
                             clip_workers=2)
    await stages.segment(SegmentRequest(song_key="song.wav", params=SegmenterParams(), segments_key="segments.json",
                                        segments_text_key="segments.txt"))
    store.put_text("lyrics_source.txt", "[00:13.00]<b>wind</b>\n[00:17.00]we row until the light\n")
    await stages.analyze(AnalyzeRequest(song_key="song.wav", segments_key="segments.json", analyzer="descriptors",
                                        labels_key="labels.json", lyrics_source_key="lyrics_source.txt",
                                        lyrics_key="lyrics.json"))
    await stages.write_script(WriteScriptRequest(labels_key="labels.json", segments_key="segments.json",
                                                 writer="template", prompt_key="prompt.txt",
                                                 script_key="script.json", script_text_key="script.txt"),
                              lambda *_: None, lambda: False)
    segmentation = read_artifact(store, "segments.json", Segmentation)
    counts = segmentation.frame_counts(FPS)

    async def clip(s: Segment) -> None:
        await stages.generate_clip(GenerateClipRequest(
            index=s.index, song_key="song.wav", script_key="script.json", start=s.start, end=s.end,
            frame_count=counts[s.index], fps=FPS, width=WIDTH, height=HEIGHT, generator="animatic",
            clip_key=f"clips/{s.index:04d}.mp4"), lambda *_: None, lambda: False, lambda *_: None)

    await asyncio.gather(*(clip(s) for s in segmentation.segments))
    await stages.assemble(AssembleRequest(song_key="song.wav",
                                          clip_keys=[f"clips/{s.index:04d}.mp4" for s in segmentation.segments],
                                          frame_counts=[counts[s.index] for s in segmentation.segments], fps=FPS,
                                          width=WIDTH, height=HEIGHT, video_key="final.mp4"))


def fake_evaluation(segmentation: Segmentation) -> dict:
    """evaluation.json as services/review/evaluate.py writes it (its shape, made-up figures)."""
    note = "the clips are an animatic (a storyboard preview): figures about the picture mean nothing for a preview"
    return {
        "version": 1, "preview": True, "generator": "animatic", "preview_note": note,
        "figures": [
            {"key": "cuts.on_beat", "group": "cuts", "label": "cuts on a beat", "value": 0.91, "display": "91%",
             "meaning": "share of cuts within 50 ms of a detected beat", "applies": True},
            {"key": "script.near_duplicates", "group": "script", "label": "near-duplicate scene pairs", "value": 1,
             "display": "1", "meaning": "pairs of scenes whose text embeddings are closer than 0.9", "applies": True},
            {"key": "picture.motion", "group": "clips", "label": "motion within a clip", "value": 0.03,
             "display": "0.03", "meaning": "mean change of the image features within a clip", "applies": False},
        ],
        "segments": [{"index": s.index,
                      "figures": {"beat_offset_ms": 12.0 + s.index, "fit_margin": 0.08, "motion": 0.03},
                      "flags": [] if s.index != 2 else [
                          {"kind": "near_duplicate", "detail": f"nearly the same as scene 0 (cosine 0.93) {HOSTILE}"}]}
                     for s in segmentation.segments],
        "flags": [{"segment": 1, "kind": "rule_break", "detail": "a reference to another scene"},
                  {"segment": 2, "kind": "black", "detail": "the clip is black"}],
    }


@pytest.fixture(scope="module")
def storyboard(tmp_path_factory):
    """A real run's page, written to disk: (path, page, final.mp4's bytes, the HTML)."""
    work = tmp_path_factory.mktemp("storyboard")
    render_song(work / "song.wav", seconds=30, seed=3)
    store = LocalArtifactStore(work / "run")
    store.put_file("song.wav", work / "song.wav")
    asyncio.run(make_run(store))

    segmentation = read_artifact(store, "segments.json", Segmentation)
    script = read_artifact(store, "script.json", Script)
    script.title = f"Salt & Light {HOSTILE}"
    script.scenes[1] = Scene(1, f"A lighthouse keeper writes {HOSTILE} on a fogged window.")
    sections = group_sections(segmentation, max_segments=3)
    roles = ("intro", "groove", "climax", "outro")
    plan = Plan(script.title, script.style, script.characters,
                [PlannedSection(s.index, s.first, s.last, s.start, s.end, roles[min(s.index, len(roles) - 1)],
                                f"place {s.index}", f"action {s.index}") for s in sections])
    segments = segmentation.segments
    edit = {"fps": FPS, "cuts": [{"index": -1, "time": 0.0, "transition": "fade_in", "frames": 6, "reason": "start"}]
            + [{"index": i - 1, "time": segments[i].start, "transition": "dissolve" if i % 2 else "cut",
                "frames": 6 if i % 2 else 0, "reason": segments[i - 1].end_reason} for i in range(1, len(segments))]
            + [{"index": len(segments) - 1, "time": segments[-1].end, "transition": "cut", "frames": 0}]}
    strips = {}
    for s in segments:
        frames = decode_frames(work / "run" / "clips" / f"{s.index:04d}.mp4", WIDTH, HEIGHT)
        picked = np.linspace(0, len(frames) - 1, FRAMES_PER_STRIP).round().astype(int)
        strips[s.index] = frame_strip_jpegs([frames[i] for i in picked])
    video = store.get_bytes("final.mp4")
    page = StoryboardPage(
        script=script, segmentation=segmentation, labels=read_artifact(store, "labels.json", Labels),
        lyrics=read_artifact(store, "lyrics.json", Lyrics),
        sections=sections_from_plan(plan.to_dict(), segmentation), edit=edit,
        waveform=waveform_peaks(decode(work / "run" / "song.wav", 8000), 1200), frame_strips=strips,
        evaluation=fake_evaluation(segmentation), video=video)
    html = render_storyboard(page)
    path = work / "run" / "storyboard.html"
    path.write_text(html)
    return path, page, video, html


@pytest.mark.slow
def test_the_page_in_a_browser_shows_every_segment_the_cuts_and_the_video(storyboard):
    path, page, video, html = storyboard
    segments = page.segmentation.segments
    assert len(segments) >= 4
    dom = parse_dom(dump_dom(path))

    title = dom.by_id("title")
    assert title is not None and title.text == page.script.title and not title.find_all("script")

    cards = dom.find_all("article", "segment")
    assert [c.attrs["data-index"] for c in cards] == [str(s.index) for s in segments]
    assert [c.attrs["id"] for c in cards] == [f"segment-{s.index}" for s in segments]
    scenes = {s.index: s.text for s in page.script.scenes}
    for card in cards:
        index = int(card.attrs["data-index"])
        (scene,) = card.find_all("p", "scene")
        assert scene.text == scenes[index]
        images = card.find_all("img")
        assert len(images) == FRAMES_PER_STRIP and all(i.attrs["src"].startswith("data:image/jpeg;base64,")
                                                       for i in images)
        assert card.find_all("dl", "seg-figures")
        assert card.find_all("ul", "labels")
    (sung,) = [lyric for c in cards for lyric in c.find_all("p", "lyrics") if "<b>wind</b>" in lyric.text]
    assert sung.text == "“<b>wind</b>”" and not sung.find_all("b")  # a person's lyrics are text too

    waveform = dom.by_id("waveform")
    assert waveform is not None and waveform.tag == "svg"
    cut_links = [a for a in waveform.find_all("a") if a.find_all("line", "cut")]
    assert len(waveform.find_all("line", "cut")) == len(cut_links) == len(segments) - 1
    assert [a.attrs["href"] for a in cut_links] == [f"#segment-{s.index}" for s in segments[1:]]
    dissolves = [line.attrs["data-segment"] for line in waveform.find_all("line", "transition")]
    assert dissolves == [str(s.index) for s in segments[1::2]]  # a plain "cut" is drawn as one
    assert len(waveform.find_all("path", "outline")) == 1
    assert [g.text.strip().split()[0] for g in waveform.find_all("g", "sec")] == \
        [s.name for s in page.sections] and len(page.sections) >= 2

    video_element = dom.by_id("final-video")
    assert video_element is not None and video_element.tag == "video" and "controls" in video_element.attrs
    src = video_element.attrs["src"]
    assert src.startswith("data:video/mp4;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == video

    rows = dom.find_all("tr", "figure")
    assert len(rows) == 3 and [("na" in r.classes) for r in rows] == [False, False, True]
    assert "means nothing for a preview" in rows[2].text
    flagged = {c.attrs["data-index"]: [f.text for f in c.find_all("span", "flag")] for c in cards}
    assert flagged["1"] == ["rule break"] and flagged["2"] == ["near duplicate", "black"]

    # Escaped everywhere: the only script is the page's own; the hostile text is text.
    assert len(dom.find_all("script")) == 1 and "alert" not in dom.find_all("script")[0].text
    assert HOSTILE in cards[1].text and HOSTILE in cards[2].text
    assert not [e for e in dom.iter() if any(k.startswith("on") for k in e.attrs)]
    # Self-contained: nothing to fetch (the only URL is SVG's namespace).
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"]
    (policy,) = [m.attrs["content"] for m in dom.find_all("meta") if m.attrs.get("http-equiv")]
    assert policy.startswith("default-src 'none';")
    assert "js" in dom.find_all("html")[0].classes  # the page's script ran: its hash is the one the policy names


@pytest.mark.slow
def test_the_screenshot_shows_the_page(storyboard, tmp_path):
    path, _, _, _ = storyboard
    shot = screenshot(path, tmp_path / "storyboard.png", SHOT_WIDTH, SHOT_HEIGHT)
    image = Image.open(shot)
    assert image.size == (SHOT_WIDTH, SHOT_HEIGHT)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20  # not blank
    # Every band of the page holds something: the header, the waveform, the cards with their frames.
    bands = pixels.reshape(8, SHOT_HEIGHT // 8, SHOT_WIDTH, 3)
    assert all(band.std() > 10 for band in bands)
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 500  # frames and swatches, not just text
