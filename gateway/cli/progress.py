"""Progress on the terminal: a line per stage, a bar for the clips and one per clip in flight."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from gateway.pipeline.orchestrator import JobEvent
from gateway.pipeline.states import EventKind, EventState, Stage


class ProgressDisplay:
    def __init__(self, enabled: bool = True, stream=sys.stderr):
        self.enabled = enabled
        self.stream = stream
        self.bars_enabled = enabled and stream.isatty()
        self._stage_started: dict[str, float] = {}
        self._clips_bar: tqdm | None = None
        self._parts_bar: tqdm | None = None  # a stage's parts (the script's plan and sections)
        self._clip_bars: dict[int, tuple[tqdm, int]] = {}  # clip index -> (bar, screen line)
        self._free_positions: list[int] = []

    def on_event(self, event: JobEvent) -> None:
        if not self.enabled:
            return
        if event.kind == EventKind.STAGE:
            self._on_stage(event)
        else:
            self._on_clip(event)

    def _on_stage(self, event: JobEvent) -> None:
        detail = event.detail or {}
        if event.state == EventState.RUNNING:
            self._stage_started[event.stage] = time.monotonic()
            if event.stage == Stage.VIDEO and self.bars_enabled:
                self._clips_bar = tqdm(total=detail.get("clips", 0), desc="video", unit="clip",
                                       file=self.stream, position=0, leave=True)
            return
        if event.state == EventState.PROGRESS:
            self._on_parts(event.stage, detail)
            return
        self._close_bars()
        seconds = time.monotonic() - self._stage_started.get(event.stage, time.monotonic())
        summary = stage_summary(event.stage, detail)
        if event.state == EventState.CACHED:
            self._write(f"  = {event.stage:<13} unchanged, kept from the last run")
        elif event.state == EventState.SKIPPED:
            self._write(f"  - {event.stage:<13} skipped: {detail.get('reason', '')}")
        elif event.state == EventState.SUCCEEDED:
            self._write(f"  ✓ {event.stage:<13} {summary}  ({seconds:.1f} s)")
        elif event.state == EventState.FAILED:
            self._write(f"  ✗ {event.stage:<13} {detail.get('error', '')}")

    def _on_parts(self, stage: Stage, detail: dict) -> None:
        """A stage that works in parts (scripting: the plan, then each section): a bar on a terminal, a line
        per part otherwise, so that minutes of writing never look hung."""
        done, total = int(detail.get("done", 0)), int(detail.get("total", 0))
        if not self.bars_enabled:
            elapsed = time.monotonic() - self._stage_started.get(stage, time.monotonic())
            self._write(f"  · {stage:<13} {done}/{total} {detail.get('what', '')}  ({elapsed:.0f} s)")
            return
        if self._parts_bar is None:
            self._parts_bar = tqdm(total=total, desc=stage, unit="part", file=self.stream, position=0, leave=False)
        self._parts_bar.total = total
        self._parts_bar.set_postfix_str(str(detail.get("what", "")), refresh=False)
        self._parts_bar.update(done - self._parts_bar.n)

    def _on_clip(self, event: JobEvent) -> None:
        if not self.bars_enabled or event.clip_index is None:
            return
        index = event.clip_index
        if event.state == EventState.RUNNING:
            position = self._free_positions.pop() if self._free_positions else len(self._clip_bars) + 1
            frames = (event.detail or {}).get("frames", 0)
            bar = tqdm(total=frames, desc=f"  clip {index:04d}", unit="frame",
                       file=self.stream, position=position, leave=False)
            self._clip_bars[index] = (bar, position)
        elif event.state in (EventState.PROGRESS, EventState.RETRYING) and index in self._clip_bars:
            bar, _ = self._clip_bars[index]
            bar.update(round(event.fraction * bar.total) - bar.n)  # back to 0 on a retry
        elif event.state in (EventState.SUCCEEDED, EventState.CACHED):
            if index in self._clip_bars:
                bar, position = self._clip_bars.pop(index)
                self._free_positions.append(position)
                bar.close()
            if self._clips_bar is not None:
                self._clips_bar.update(1)

    def _write(self, line: str) -> None:
        if self.bars_enabled:
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def _close_bars(self) -> None:
        for bar, _ in self._clip_bars.values():
            bar.close()
        self._clip_bars.clear()
        self._free_positions.clear()
        for bar in (self._clips_bar, self._parts_bar):
            if bar is not None:
                bar.close()
        self._clips_bar = self._parts_bar = None

    def close(self) -> None:
        self._close_bars()


def scripting_summary(info: dict) -> str:
    """Who wrote the script, with how many repairs, and whether the fallback had to write it."""
    writer = info.get("script_writer") or info.get("writer", "?")
    model = f" ({info['model']})" if info.get("model") else ""
    told = f"story by {info['storyteller']}, " if info.get("storyteller") else ""
    sections = f", {info['sections']} sections" if info.get("sections") and info.get("replies") else ""
    repairs = f", {info['repairs']} repairs" if info.get("repairs") else ""
    speed = f", {info['tokens_per_second']:.1f} tokens/s" if info.get("tokens_per_second") else ""
    fallback = f"; FELL BACK to {info['fallback']}: {info.get('fallback_reason', '')}" if info.get("fallback") else ""
    return f"{info.get('scenes', '?')} scenes, {told}written by {writer}{model}{sections}{repairs}{speed}{fallback}"


def stage_summary(stage: Stage | str, info: dict) -> str:
    """A few words on what a stage produced, from the info it reported."""
    if stage == Stage.SEGMENTATION:
        tempo = f", {info['tempo_bpm']:.0f} BPM" if info.get("tempo_bpm") else ""
        return f"{info.get('segments', '?')} segments{tempo}"
    if stage == Stage.ANALYSIS:
        heard = [str(info[k]) for k in ("genre", "tempo_range", "mood", "visual_style") if info.get(k)]
        if "vocal_segments" in info:
            language = f", {info['lyrics_language']}" if info.get("lyrics_language") else ""
            heard.append(f"words sung in {info['vocal_segments']} of {info.get('segments', '?')} segments "
                         f"({info.get('lyrics_source', '?')}{language})" if info["vocal_segments"] else
                         f"no words sung ({info.get('lyrics_source', '?')})")
        return " · ".join(heard)
    if stage == Stage.SCRIPTING:
        return scripting_summary(info)
    if stage == Stage.VIDEO:
        return f"{info.get('clips', '?')} clips"
    if stage == Stage.ASSEMBLY:
        return (f"{info.get('frames', '?')} frames, {info.get('duration', 0):.1f} s, "
                f"{info.get('clips_reencoded', 0)} clips re-encoded")
    if stage == Stage.REVIEW:
        return review_summary(info)
    return ""


def review_summary(info: dict) -> str:
    """The review's headline figures (evaluation.json holds them all, each with its meaning)."""
    parts = []
    if info.get("cuts.on_beat") is not None:
        parts.append(f"{info['cuts.on_beat']:.0%} cuts on a beat")
    if info.get("script.music_fit") is not None:
        shuffled = info.get("script.music_fit_shuffled") or 0.0
        parts.append(f"music–text fit {info['script.music_fit']:+.3f} (shuffled {shuffled:+.3f})")
    for key, name in (("script.near_duplicates", "near-duplicate pairs"), ("script.rule_breaks", "rule breaks")):
        if info.get(key):
            parts.append(f"{info[key]:.0%} scenes with {name}" if key == "script.rule_breaks"
                         else f"{info[key]} {name}")
    parts.append(f"{info.get('flags', 0)} flags")
    if info.get("preview"):
        parts.append("a preview: picture figures mean nothing")
    return ", ".join(parts)
