"""The scene rules a grammar cannot hold, checked in code: no sound or music, no text on screen, no
reference to another scene, no near-duplicate of another scene, and, for a song with words, no
quote of its lyrics.

The word lists and the near-duplicate threshold live in prompts/scene_rules.yaml, beside the
prompts that state the same rules, so that a person tunes them without touching code. Every
problem is worded for the model, which gets it back in a repair turn.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import yaml

from services.common.errors import StageFailedError
from services.common.settings import PROMPTS_DIR

RULES_FILE = "scene_rules.yaml"
MIN_TRIMMED_WORDS = 6
_WORD = re.compile(r"[a-z]+")
# Where a sentence may be cut: its commas and semicolons, and before a clause that hangs on it.
_CLAUSE_BREAK = re.compile(r"[,;]\s*|\s+(?=(?:while|as|and then|where|with)\s)")
# Words as lyrics are compared: letters and digits of any script, an apostrophe inside a word kept
# out of the comparison ("Don't" and "dont" are one word).
_LYRIC_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# Text between quotation marks; a single quote only where no letter touches it from outside (not "Ada's").
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|„([^“”]+)[“”]|«([^»]+)»|(?<![\w’\'])[\'‘]([^\'’]+)[\'’](?![\w’\'])')


@dataclass(frozen=True)
class WordRule:
    name: str
    reason: str
    pattern: re.Pattern[str]
    style: bool  # also holds for a plan's style and characters

    def broken_by(self, text: str) -> list[str]:
        """The words of `text` that break this rule, as written, first occurrence of each."""
        return list(dict.fromkeys(m.group(0) for m in self.pattern.finditer(text)))


@dataclass(frozen=True)
class LyricsQuoteRule:
    """A scene quotes the song's words when it holds `min_run` consecutive words of them (of which at least
    `min_content_words` say something: "in the middle of the" is no quote), or any `min_quoted_words`
    consecutive words of them inside quotation marks."""

    reason: str
    min_run: int
    min_content_words: int
    min_quoted_words: int


@dataclass(frozen=True)
class SceneRules:
    word_rules: tuple[WordRule, ...]
    duplicate_threshold: float  # overlap of content words from which two scenes are near-duplicates
    duplicate_min_words: int
    stop_words: frozenset[str]
    lyrics_rule: LyricsQuoteRule | None = None
    # The song's words, as runs of lyrics_rule.min_run and of min_quoted_words (with_lyrics): empty for a
    # song without words, or before with_lyrics.
    lyric_runs: frozenset[tuple[str, ...]] = frozenset()
    lyric_quotes: frozenset[tuple[str, ...]] = frozenset()

    def with_lyrics(self, lines: Sequence[str]) -> SceneRules:
        """These rules, also refusing a scene that quotes `lines` (the song's words, in the order sung)."""
        rule = self.lyrics_rule
        words = [_lyric_key(m.group(0)) for line in lines for m in _LYRIC_WORD.finditer(line)]
        if rule is None or not words:
            return self
        return replace(self, lyric_runs=_runs(words, rule.min_run), lyric_quotes=_runs(words, rule.min_quoted_words))

    def problems(self, text: str, style: bool = False) -> list[str]:
        """What in one scene's sentence (`style`: a plan's style or a character) breaks a word rule or quotes
        the song's words, worded for the model."""
        found = []
        for rule in self.word_rules:
            if style and not rule.style:
                continue
            words = rule.broken_by(text)
            if words:
                found.append(f"it uses {', '.join(repr(w) for w in words)}: {rule.reason}")
        quotes = [] if style else self.quotes_lyrics(text)
        if quotes and self.lyrics_rule is not None:
            found.append(f"it quotes the song's words {', '.join(repr(q) for q in quotes)}: {self.lyrics_rule.reason}")
        return found

    def quotes_lyrics(self, text: str) -> list[str]:
        """The passages of `text`, as written there, that quote the song's words (with_lyrics); [] when none."""
        rule = self.lyrics_rule
        if rule is None or not self.lyric_runs and not self.lyric_quotes:
            return []
        found = []
        for match in _QUOTED.finditer(text):
            inner = next(g for g in match.groups() if g is not None)
            if _quoting_spans(list(_LYRIC_WORD.finditer(inner)), rule.min_quoted_words, self.lyric_quotes):
                found.append(inner.strip())
        tokens = list(_LYRIC_WORD.finditer(text))
        for first, last in _quoting_spans(tokens, rule.min_run, self.lyric_runs):
            run = [_lyric_key(t.group(0)) for t in tokens[first:last + 1]]
            if sum(1 for w in run if len(w) >= 3 and w not in self.stop_words) >= rule.min_content_words:
                passage = text[tokens[first].start():tokens[last].end()]
                if not any(passage in q or q in passage for q in found):
                    found.append(passage)
        return found

    def trimmed(self, text: str) -> str | None:
        """`text` without the clauses that break a word rule, as an editor would cut it, when what is left
        still opens the sentence and says something (MIN_TRIMMED_WORDS); else None. The last resort for a
        scene the model did not mend: "As Ada runs to the pier, she hears the waves." → "As Ada runs to the
        pier." """
        clauses = [c.strip() for c in _CLAUSE_BREAK.split(text.strip().rstrip(".!?")) if c.strip()]
        kept = [c for c in clauses if not self.problems(c)]
        if not kept or kept[0] != clauses[0] or len(" ".join(kept).split()) < MIN_TRIMMED_WORDS:
            return None
        return ", ".join(kept) + "."

    def content_words(self, text: str, names: frozenset[str] = frozenset()) -> frozenset[str]:
        """The words that say what a scene shows: three letters or more, no stop words or character names,
        a plural 's' dropped."""
        words = set()
        for word in _WORD.findall(text.lower()):
            if len(word) < 3 or word in self.stop_words or word in names:
                continue
            words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
        return frozenset(words)

    def overlap(self, a: frozenset[str], b: frozenset[str]) -> float:
        """|a ∩ b| / min(|a|, |b|): 1.0 when one scene's content words all stand in the other."""
        if not a or not b:
            return 0.0
        return len(a & b) / min(len(a), len(b))

    def near_duplicate(self, a_text: str, b_text: str, names: frozenset[str] = frozenset()) -> bool:
        a, b = _normal(a_text), _normal(b_text)
        if a == b:
            return True
        wa, wb = self.content_words(a_text, names), self.content_words(b_text, names)
        if min(len(wa), len(wb)) < self.duplicate_min_words:
            return False
        return self.overlap(wa, wb) >= self.duplicate_threshold


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def _lyric_key(word: str) -> str:
    return word.lower().replace("'", "").replace("’", "")


def _runs(words: Sequence[str], size: int) -> frozenset[tuple[str, ...]]:
    return frozenset(tuple(words[i:i + size]) for i in range(len(words) - size + 1))


def _quoting_spans(tokens: Sequence[re.Match[str]], size: int,
                   runs: frozenset[tuple[str, ...]]) -> list[tuple[int, int]]:
    """(first, last) token positions of each stretch of `tokens` made of overlapping `size`-word runs found
    in `runs`: each longest passage that follows the lyrics word for word."""
    keys = [_lyric_key(t.group(0)) for t in tokens]
    spans: list[tuple[int, int]] = []
    for i in range(len(keys) - size + 1):
        if tuple(keys[i:i + size]) in runs:
            if spans and i <= spans[-1][1]:
                spans[-1] = (spans[-1][0], i + size - 1)
            else:
                spans.append((i, i + size - 1))
    return spans


def names_of(characters: list[str]) -> frozenset[str]:
    """The lowercase words of the characters' names: they recur in scenes on purpose."""
    return frozenset(w for name in characters for w in _WORD.findall(name.lower()))


@lru_cache(maxsize=4)
def load_scene_rules(prompts_dir: Path = PROMPTS_DIR) -> SceneRules:
    path = prompts_dir / RULES_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        rules = tuple(
            WordRule(rule["name"], rule["reason"],
                     re.compile(r"\b(?:" + "|".join(rule["words"]) + r")\b", re.IGNORECASE), bool(rule.get("style")))
            for rule in raw["rules"])
        duplicate = raw["near_duplicate"]
        quote = raw["lyrics_quote"]
        lyrics_rule = LyricsQuoteRule(str(quote["reason"]), int(quote["min_run"]), int(quote["min_content_words"]),
                                      int(quote["min_quoted_words"]))
        if min(lyrics_rule.min_run, lyrics_rule.min_quoted_words) < 1:
            raise ValueError("lyrics_quote needs min_run and min_quoted_words of 1 or more")
        return SceneRules(rules, float(duplicate["threshold"]), int(duplicate["min_words"]),
                          frozenset(str(duplicate["stop_words"]).lower().split()), lyrics_rule)
    except FileNotFoundError:
        raise StageFailedError(f"{path} is missing: the scene rules cannot be checked") from None
    except (AttributeError, KeyError, TypeError, ValueError, re.error, yaml.YAMLError) as exc:
        raise StageFailedError(f"{path} is not a valid rules file ({exc})") from None
