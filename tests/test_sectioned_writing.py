"""Writing a script section by section: a plan call, then one call per section of the song; repairs that
stay in their section; the scene rules; resuming from what a stopped run saved; a person's edit of the
plan; cancelling; progress.

The model here is a scripted stand-in that answers each request from its JSON schema (and, where a
test says so, answers wrongly on purpose), so that the writer's own logic is checked exactly; the
real models are in test_llm_scripting.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from services.common import artifacts
from services.common.errors import InvalidInputError, JobCancelledError
from services.common.scene_rules import load_scene_rules
from services.common.stage_api import ScriptInputs
from services.common.store import LocalArtifactStore
from services.scripting.journal import JournalKeys, StoreJournal
from services.scripting.llm.chat import ChatReply, ChatRequest
from services.scripting.llm.conversation import ScriptRepairError
from services.scripting.prompt import SectionPrompts, render_plan_prompt, segment_roles
from services.scripting.sectioned import SectionedTask, write_sectioned
from services.scripting.sections import group_sections
from tests.llm_servers import canned_answer
from tests.test_scripting import make_labels, make_segmentation

KEYS = JournalKeys("prompt.txt", "response.txt", "reasoning.txt", "plan.json", "plan.txt", "sections.json")
# 20 segments: an intro of 4, a groove of 12 (split at 8), a climax of 4.
ROLES = [("soft", "melodic", "steady", "intro")] * 4 + [("moderate", "percussive", "steady", "groove")] * 12 \
    + [("intense", "bright", "building", "climax")] * 4


class ScriptedChat:
    """A ChatModel answering each request with `answer(request, number)`; a string back is the reply."""

    model = "scripted"
    temperature = 0.5

    def __init__(self, answer: Callable[[ChatRequest, int], str] | None = None, parallel: int = 1):
        self.answer = answer or (lambda request, number: canned_answer(_body(request)))
        self.parallel = parallel
        self.requests: list[ChatRequest] = []
        self.batches: list[int] = []

    def chat(self, request: ChatRequest) -> ChatReply:
        self.requests.append(request)
        text = self.answer(request, len(self.requests))
        return ChatReply(text, "", text, self.model, 100, len(text.split()), 0.01, "stop")

    def chat_many(self, requests: list[ChatRequest]) -> list[ChatReply]:
        self.batches.append(len(requests))
        return [self.chat(r) for r in requests]


def _body(request: ChatRequest) -> dict:
    return {"response_format": {"json_schema": {"schema": request.schema}}}


def keys_asked(request: ChatRequest) -> list[str]:
    return list(request.schema["properties"])


def is_plan(request: ChatRequest) -> bool:
    return "sections" in request.schema["properties"]


class Song:
    """A song's labels and segmentation in a store, and what the stage makes of them."""

    def __init__(self, tmp_path, roles=ROLES):
        self.store = LocalArtifactStore(tmp_path)
        self.labels, self.segmentation = make_labels(roles), make_segmentation(len(roles))
        self.sections = group_sections(self.segmentation, segment_roles(self.labels))
        self.plan_prompt = render_plan_prompt(self.labels, self.segmentation, self.sections, ScriptInputs())

    def write(self, chat: ScriptedChat, **options) -> artifacts.Script:
        journal = StoreJournal(self.store, KEYS, self.plan_prompt)
        task = SectionedTask(self.sections, self.plan_prompt, SectionPrompts(self.segmentation, self.labels), 7)
        try:
            return write_sectioned(chat, task, writer="scripted", max_repairs=options.pop("max_repairs", 2),
                                   rules=load_scene_rules(), journal=journal, transcript=journal.transcript,
                                   **options)
        finally:
            journal.save_transcript(journal.transcript)


def test_sections_follow_the_songs_parts_and_one_call_writes_each(tmp_path):
    song = Song(tmp_path)
    assert [(s.first, s.last, s.role) for s in song.sections] == [(0, 3, "intro"), (4, 11, "groove"),
                                                                  (12, 15, "groove"), (16, 19, "climax")]
    progress: list[tuple[int, int, str]] = []
    chat = ScriptedChat()
    script = song.write(chat, on_progress=lambda *p: progress.append(p))

    assert [s.index for s in script.scenes] == list(range(20))
    assert script.title == "Kites over the harbour" and [c.name for c in script.characters] == ["Mara"]
    assert is_plan(chat.requests[0]) and len(chat.requests) == 1 + len(song.sections)
    for request, section in zip(chat.requests[1:], song.sections):
        assert keys_asked(request) == [f"scene {i}" for i in section.segment_indices]
        prompt = request.messages[0]["content"]
        # Its own segments, and no other section's.
        assert f"- scene {section.first} (" in prompt and f"- scene {section.last + 1} (" not in prompt
    assert [p[:2] for p in progress] == [(i, 5) for i in range(1, 6)]
    assert progress[-1][2] == "section 3 (scenes 16-19) written"

    plan = json.loads(song.store.get_text("plan.json"))
    assert [s["segments"] for s in plan["sections"]] == [[0, 3], [4, 11], [12, 15], [16, 19]]
    assert plan["sections"][0]["role"] == "intro" and plan["sections"][0]["place"]
    assert "Mara: a woman of thirty in a yellow raincoat" in song.store.get_text("plan.txt")
    prompts = song.store.get_text("prompt.txt")
    assert prompts.startswith("===== plan\n") and prompts.count("\n===== section ") == 4
    response = song.store.get_text("response.txt")
    assert response.count("===== plan: reply") == 1 and response.count("===== section ") == 4


def test_the_section_prompt_is_the_same_up_to_its_section_and_holds_pictures_not_sounds(tmp_path):
    song = Song(tmp_path)
    chat = ScriptedChat()
    song.write(chat)
    first, second = (r.messages[0]["content"] for r in chat.requests[1:3])
    shared = first[:first.index("# Your section")]
    assert second.startswith(shared)  # a server's prompt cache reads it once
    assert "Title: Kites over the harbour" in shared and "Mara: a woman of thirty" in shared
    # The labels become what they show; their sound words never reach the model.
    assert "one or two subjects, little motion" in first and "the camera holds steady" in first
    for sound_word in ("melodic", "percussion", "instrumentation", "the song begins"):
        assert sound_word not in first
    assert len(first) < 6000


def test_a_scene_that_breaks_a_rule_is_asked_for_again_alone(tmp_path):
    song = Song(tmp_path)
    broken = {}

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if number == 2:  # the first section: scene 1 mentions the music, scene 2 writes on screen
            text["scene 1"] = "A red kite dances to the music above a misty harbour at dawn."
            text["scene 2"] = "A neon sign with the words of love glows in a harbour at night."
            broken.update(text)
        return json.dumps(text)

    chat = ScriptedChat(answer)
    script = song.write(chat)
    repair = chat.requests[2]
    assert keys_asked(repair) == ["scene 1", "scene 2"]
    assert [m["role"] for m in repair.messages] == ["user", "assistant", "user"]
    asked = repair.messages[2]["content"]
    assert re.search(r"scene 1 \(a close-up of a face\): it uses 'music': a camera cannot film sound", asked)
    assert re.search(r"scene 2 \(a medium shot of the characters in action\): it uses 'words': written text", asked)
    assert repair.temperature > chat.temperature
    # The scenes that were right are kept as first written.
    assert [script.scenes[i].text for i in (0, 3)] == [broken["scene 0"], broken["scene 3"]]
    assert "----- refused:" in song.store.get_text("response.txt")


def test_a_near_repeat_of_another_sections_scene_is_written_again(tmp_path):
    song = Song(tmp_path)
    original = "A one-eyed sailor paints a blue boat on the pier of a foggy bay."

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if number == 2:
            text["scene 0"] = original
        if number == 3:  # the next section repeats it with a clause added
            text["scene 5"] = "A one-eyed sailor paints a blue boat on the pier of a foggy bay, smiling."
        return json.dumps(text)

    chat = ScriptedChat(answer)
    script = song.write(chat)
    assert keys_asked(chat.requests[3]) == ["scene 5"]
    assert re.search(r"scene 5 \(.*\): it shows nearly the same as scene 0", chat.requests[3].messages[2]["content"])
    assert script.scenes[0].text == original and script.scenes[5].text != script.scenes[0].text


def test_a_section_that_stays_wrong_fails_the_script_and_keeps_what_was_written(tmp_path):
    song = Song(tmp_path)

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if "scene 4" in text or "scene 5" in text:
            text["scene 5"] = "A lone cyclist listens to the song of the wind."
        return json.dumps(text)

    with pytest.raises(ScriptRepairError, match=r"no valid section 1 \(scenes 4-11\) in 3 replies.*'listens'"):
        song.write(ScriptedChat(answer))
    saved = json.loads(song.store.get_text("sections.json"))
    assert [s["index"] for s in saved["sections"]] == [0]
    assert song.store.get_text("response.txt").count("===== section 1") == 3


def test_a_stopped_run_resumes_from_the_plan_and_the_sections_it_saved(tmp_path):
    song = Song(tmp_path)

    def crash_at_section_two(request: ChatRequest, number: int) -> str:
        if "scene 12" in keys_asked(request):
            raise KeyboardInterrupt  # the process is stopped here
        return canned_answer(_body(request))

    with pytest.raises(KeyboardInterrupt):
        song.write(ScriptedChat(crash_at_section_two))
    first_run = song.store.get_text("response.txt")
    assert first_run.count("=====") == 3  # the plan and two sections, saved as they came

    rerun = ScriptedChat()
    progress: list[tuple[int, int, str]] = []
    script = song.write(rerun, on_progress=lambda *p: progress.append(p))
    assert [keys_asked(r)[0] for r in rerun.requests] == ["scene 12", "scene 16"]  # no plan, no sections 0, 1
    assert len(script.scenes) == 20
    assert progress[1][2].endswith("kept from an earlier run") and progress[-1][:2] == (5, 5)
    response = song.store.get_text("response.txt")
    assert response.startswith(first_run.rstrip()) and "===== resumed" in response


def test_an_edited_plan_is_kept_and_the_scenes_it_changes_are_written_again(tmp_path):
    song = Song(tmp_path)
    song.write(ScriptedChat())
    plan = json.loads(song.store.get_text("plan.json"))
    plan["sections"][3]["action"] = "Mara releases a hundred paper lanterns over the harbour at night."
    plan["characters"][0]["description"] = "a woman of thirty in a green raincoat"
    song.store.put_text("plan.json", json.dumps(plan))

    rerun = ScriptedChat()
    script = song.write(rerun)
    assert not any(is_plan(r) for r in rerun.requests)  # the person's plan is kept
    assert script.characters[0].description == "a woman of thirty in a green raincoat"
    # The characters stand in every section's prompt: every section is written again from the new plan.
    assert [keys_asked(r)[0] for r in rerun.requests] == ["scene 0", "scene 4", "scene 12", "scene 16"]
    assert "Mara releases a hundred paper lanterns" in rerun.requests[-1].messages[0]["content"]


def test_an_unreadable_or_mismatched_plan_is_a_clear_error(tmp_path):
    song = Song(tmp_path)
    song.write(ScriptedChat())
    plan = json.loads(song.store.get_text("plan.json"))
    plan["style"]["palette"] = ["red"]
    song.store.put_text("plan.json", json.dumps(plan))
    with pytest.raises(InvalidInputError, match=r"plan.json cannot be used: palette colours must be hex"):
        song.write(ScriptedChat())
    song.store.put_text("plan.json", "{not json")
    with pytest.raises(InvalidInputError, match="plan.json cannot be read .* delete it to plan anew"):
        song.write(ScriptedChat())


def test_sections_go_out_together_as_the_model_serves_several_at_once(tmp_path):
    song = Song(tmp_path)
    chat = ScriptedChat(parallel=3)
    script = song.write(chat)
    assert chat.batches == [3, 1] and len(script.scenes) == 20


def test_a_cancelled_job_stops_before_its_next_request_and_keeps_what_was_written(tmp_path):
    song = Song(tmp_path)
    chat = ScriptedChat()
    with pytest.raises(JobCancelledError):
        song.write(chat, is_cancelled=lambda: len(chat.requests) >= 2)
    assert len(chat.requests) == 2
    assert [s["index"] for s in json.loads(song.store.get_text("sections.json"))["sections"]] == [0]


def test_sections_bound_their_size_and_follow_change_cuts_without_labels():
    segmentation = make_segmentation(30)
    sections = group_sections(segmentation, None, max_segments=8)
    assert [s.size for s in sections] == [8, 8, 8, 6]
    # A spectral change cut closes a section once it holds six segments.
    cut = [artifacts.Segment(s.index, s.start, s.end, "change" if s.index == 6 else s.end_reason)
           for s in segmentation.segments]
    segmentation.segments = cut
    assert [s.first for s in group_sections(segmentation, None, max_segments=8)][:2] == [0, 7]


def test_a_transition_opens_a_section_and_a_short_remainder_joins_the_last():
    roles = ["intro"] * 5 + ["groove"] * 4 + ["transition"] + ["groove"] * 5 + ["outro"]
    sections = group_sections(make_segmentation(len(roles)), roles, max_segments=8)
    assert [(s.first, s.last) for s in sections] == [(0, 4), (5, 8), (9, 15)]
    assert sections[2].roles_text() == "transition, then groove, then outro"



def test_a_plan_with_repeated_sections_or_a_style_that_sounds_is_mended_part_by_part(tmp_path):
    song = Song(tmp_path)

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if number == 1:  # the plan: section 3 repeats section 1, the look names the music
            text["sections"]["section 3"] = text["sections"]["section 1"]
            text["style"]["look"] = "grainy film that pulses with the music"
        return json.dumps(text)

    chat = ScriptedChat(answer)
    script = song.write(chat)
    mend = chat.requests[1]
    assert keys_asked(mend) == ["style", "section 3"]  # the title, the characters and the other sections are kept
    assert "section 3: it repeats section 1" in mend.messages[2]["content"]
    assert "style: it uses 'music': a camera cannot film sound" in mend.messages[2]["content"]
    assert json.loads(mend.messages[1]["content"])["sections"]["section 3"]  # its own plan, sent back
    plan = json.loads(song.store.get_text("plan.json"))
    assert plan["style"]["look"] != "grainy film that pulses with the music"
    assert script.style.look == plan["style"]["look"]
    assert len({s["action"] for s in plan["sections"]}) == 4


def test_a_plans_sections_are_a_guide_held_to_no_word_rule(tmp_path):
    """What a section's action says of sound reaches its scenes only if the model copies it, and is caught
    there; rewriting a whole plan for it would cost more than rewriting a scene."""
    song = Song(tmp_path)

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if number == 1:
            text["sections"]["section 2"]["action"] = "Mara listens to the rain on the harbour roofs."
        return json.dumps(text)

    chat = ScriptedChat(answer)
    song.write(chat)
    assert not is_plan(chat.requests[1])


def test_a_long_songs_plan_is_written_a_few_sections_at_a_time_after_the_plan_so_far(tmp_path):
    song = Song(tmp_path, roles=ROLES * 3)  # 60 segments, 12 sections
    assert len(song.sections) == 12
    chat = ScriptedChat()
    script = song.write(chat)
    plans = [r for r in chat.requests if not keys_asked(r)[0].startswith("scene")]
    assert [keys_asked(r) for r in plans] == [
        ["title", "style", "characters", "sections"], [f"section {i}" for i in range(4, 8)],
        [f"section {i}" for i in range(8, 12)]]
    assert list(plans[0].schema["properties"]["sections"]["properties"]) == [f"section {i}" for i in range(4)]
    # Each continuation follows the plan so far: the earlier replies are in its conversation.
    assert [m["role"] for m in plans[2].messages] == ["user", "assistant", "user", "assistant", "user"]
    assert "Now plan sections 8 to 11 of the 12" in plans[2].messages[-1]["content"]
    assert len(json.loads(song.store.get_text("plan.json"))["sections"]) == 12 and len(script.scenes) == 60


def test_a_scene_still_wrong_after_its_repairs_is_cut_to_the_clauses_that_break_no_rule(tmp_path):
    song = Song(tmp_path)

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if "scene 1" in text:
            text["scene 1"] = "As Mara runs along the harbour wall at dusk, she hears the gulls."
        return json.dumps(text)

    script = song.write(ScriptedChat(answer), max_repairs=1)
    assert script.scenes[1].text == "As Mara runs along the harbour wall at dusk."
    response = song.store.get_text("response.txt")
    assert ("===== section 0 (scenes 0-3): the writer\nscene 1 cut to the clauses that break no rule: As Mara"
            in response)


def test_a_scene_whose_rewrites_keep_the_mistake_is_asked_for_afresh_without_it(tmp_path):
    song = Song(tmp_path)
    bad = "The fountain plays a melody that makes Mara feel restless."

    def answer(request: ChatRequest, number: int) -> str:
        text = json.loads(canned_answer(_body(request)))
        if "scene 1" in text and len(request.messages) > 1 or keys_asked(request)[:2] == ["scene 0", "scene 1"]:
            text["scene 1"] = bad  # the first answer and every rewrite that sees it
        return json.dumps(text)

    chat = ScriptedChat(answer)
    script = song.write(chat, max_repairs=4)
    section = [r for r in chat.requests if "scene 1" in keys_asked(r)]
    assert [len(r.messages) for r in section] == [1, 3, 3, 1]  # asked, rewritten twice, then afresh
    fresh = section[-1].messages[0]["content"]
    assert fresh.startswith(section[0].messages[0]["content"].rstrip()) and bad not in fresh
    # ... dealt another shot than its own (a close-up of a face), to move it off what it kept writing
    assert "Write scene 1 only, now: scene 1 as a tracking shot that follows movement" in fresh
    assert script.scenes[1].text != bad
