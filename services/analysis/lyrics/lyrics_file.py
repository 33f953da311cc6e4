"""A person's own lyrics: read (plain text or LRC) and aligned to the song's segments.

Reading. A file whose lines carry time tags (`[mm:ss.xx] line`, several tags for a repeated line,
`<mm:ss.xx>` word tags inside a line) is LRC; its metadata tags (`[ar:...]`, `[offset:...]`) and
untimed lines are ignored. Any other text is plain: one line per sung line, blank lines and
section headings on a line of their own ("[Chorus]", "(x2)") left out. A file that is binary, not
UTF-8 (or UTF-16 with its byte-order mark), empty of words or longer than MAX_LYRICS_CHARS is
refused in one line.

Aligning. Every word gets a time and goes to the segment that holds its midpoint.
- LRC: a line is sung from its time until the next line's, at most MAX_SECONDS_PER_WORD a word
  (a line before a long instrumental does not last through it), its words spread evenly.
- Plain text with a transcription (the request names a transcriber): the person's words are
  matched in order to the words the transcriber heard and kept (difflib's longest matching runs,
  compared lowercased without punctuation). A matched word takes its heard word's time; a run
  of the person's words facing a run of different heard words (misheard) is spread over the
  time of those; words the transcriber did not hear at all take SPOKEN_WORD_SECONDS each, after
  the word before them when they are on its line, else leading up to the next heard word (a line's
  first words belong with the rest of their line). So the person's spelling is kept and the
  transcriber's timing used.
- Plain text without a transcription, or with one that heard nothing: the words are spread
  evenly over the whole song, a rough placement the note in lyrics.json says is rough.
"""

from __future__ import annotations

import codecs
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from services.analysis.lyrics.gather import segment_at
from services.common.artifacts import Lyrics, LyricWord, Segmentation, SegmentLyrics
from services.common.errors import InvalidInputError
from services.common.timing import clock
from services.common.untrusted import quoted

LRC_SOURCE = "file:lrc"
PLAIN_SOURCE = "file:plain"
# The gateway refuses longer lyrics (gateway/pipeline/options.py, MAX_LYRICS_CHARS): a 7-minute rap holds about 6,000.
MAX_LYRICS_CHARS = 32_000
MAX_LYRICS_BYTES = 4 * MAX_LYRICS_CHARS  # before decoding: UTF-8 takes at most 4 bytes a character
MAX_SECONDS_PER_WORD = 1.0  # an LRC line lasts at most this long per word (held notes included)
SPOKEN_WORD_SECONDS = 0.4  # a word the transcriber did not hear takes this long (sung at ~150 words/min)

_TIME_TAG = re.compile(r"\[(\d{1,3}):(\d{1,2})(?:[.:](\d{1,3}))?\]")
_TAG_LIKE = re.compile(r"\[[^\]]*\]")
_TIME_LIKE = re.compile(r"\[\s*\d+\s*[:.]")  # meant as a time, whether or not it is one
_METADATA = re.compile(r"^\[[A-Za-z#][A-Za-z]*:[^\]]*\]$")  # [ar:Artist], [offset:+100], [#:comment]
_WORD_TIME_TAG = re.compile(r"<\d{1,3}:\d{1,2}(?:[.:]\d{1,3})?>")
_HEADING = re.compile(r"^\s*(\[[^\]]*\]|\([^)]*\))\s*$")  # "[Chorus]", "(x2)" alone on a line
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MATCH_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


@dataclass(frozen=True)
class LyricLine:
    text: str
    start: float | None  # LRC: seconds from the song's start; plain text: None


@dataclass(frozen=True)
class LyricsFile:
    kind: str  # "lrc" or "plain"
    lines: tuple[LyricLine, ...]  # LRC: sorted by time, a line with several tags once per tag
    ignored_lines: int = 0  # LRC lines without a time

    @property
    def source(self) -> str:
        return LRC_SOURCE if self.kind == "lrc" else PLAIN_SOURCE

    @property
    def word_count(self) -> int:
        return sum(len(line.text.split()) for line in self.lines)


def parse_lyrics(data: bytes, name: str = "the lyrics file") -> LyricsFile:
    """`data` read as LRC or plain-text lyrics, or InvalidInputError saying in one line why it cannot be."""
    text = _decode(data, name)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    timed = [(number, line) for number, line in enumerate(lines, 1) if _TIME_TAG.match(line.strip())]
    parsed = _parse_lrc(lines, name) if timed else _parse_plain(lines)
    if parsed.word_count == 0:
        raise InvalidInputError(f"{name} holds no words to sing" +
                                (" (its time tags have no text after them)" if timed else ""))
    return parsed


def _decode(data: bytes, name: str) -> str:
    if not data.strip():
        raise InvalidInputError(f"{name} is empty")
    if len(data) > MAX_LYRICS_BYTES:
        raise InvalidInputError(f"{name} is {len(data)} bytes; lyrics are at most {MAX_LYRICS_CHARS} characters")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif b"\x00" in data:
        raise InvalidInputError(f"{name} is binary, not text: give the lyrics as plain text or LRC")
    else:
        encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{name} is not UTF-8 text (byte {exc.start} is not): "
                                f"save the lyrics as UTF-8 plain text or LRC") from None
    if _CONTROL.search(text):
        raise InvalidInputError(f"{name} holds control characters, as a binary file does: "
                                f"give the lyrics as plain text or LRC")
    if len(text) > MAX_LYRICS_CHARS:
        raise InvalidInputError(f"{name} is {len(text)} characters long; lyrics are at most {MAX_LYRICS_CHARS}")
    return text


def _parse_lrc(lines: list[str], name: str) -> LyricsFile:
    timed: list[LyricLine] = []
    ignored = 0
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or _METADATA.match(line):
            continue
        times = []
        while (tag := _TAG_LIKE.match(line)) is not None:
            time = _TIME_TAG.fullmatch(tag.group(0))
            if time is None:
                if _TIME_LIKE.match(tag.group(0)):
                    raise InvalidInputError(f"{name}, line {number}: {quoted(tag.group(0))} is not a time "
                                            f"(LRC times are [mm:ss.xx])")
                break  # a heading ("[Chorus]") or, after a time, part of the text
            minutes, seconds, fraction = time.groups()
            if int(seconds) >= 60:
                raise InvalidInputError(f"{name}, line {number}: {quoted(tag.group(0))} has {seconds} seconds")
            times.append(int(minutes) * 60 + int(seconds) + (int(fraction) / 10 ** len(fraction) if fraction else 0))
            line = line[tag.end():].lstrip()
        if not times:
            ignored += 1  # a line without a time has no place in the song
            continue
        words = " ".join(_WORD_TIME_TAG.sub(" ", line).split())
        timed.extend(LyricLine(words, t) for t in times)  # an empty text ends the line before it
    timed.sort(key=_start)
    return LyricsFile("lrc", tuple(timed), ignored)


def _start(line: LyricLine) -> float:
    """An LRC line's time (every LRC line has one)."""
    assert line.start is not None
    return line.start


def _parse_plain(lines: list[str]) -> LyricsFile:
    kept = [" ".join(line.split()) for line in lines if line.strip() and not _HEADING.match(line)]
    return LyricsFile("plain", tuple(LyricLine(line, None) for line in kept))


# --- alignment ---------------------------------------------------------------------------------------

def align_lyrics(lyrics_file: LyricsFile, segmentation: Segmentation, heard: Lyrics | None = None) -> Lyrics:
    """The person's lyrics placed on the song's segments. `heard`: what a transcriber heard in the same
    song (its kept words and their times), for plain text; ignored for LRC, which carries its own times."""
    duration = segmentation.song_duration
    if lyrics_file.kind == "lrc":
        words, note = _lrc_words(lyrics_file, duration)
        language = ""
    else:
        heard_words = [w for s in heard.segments for w in s.words] if heard is not None else []
        if heard is not None and heard_words:
            words, note = _matched_words(lyrics_file, heard_words, duration, heard.source)
            language = heard.language
        else:
            words = _spread(_words(lyrics_file), 0.0, duration)
            note = ("plain-text lyrics spread evenly over the song: a rough placement"
                    + (f" ({heard.source} heard no singing to align them to)" if heard is not None else
                       " (no transcriber was asked to align them)"))
            language = ""
    segments = segmentation.segments
    per_segment: list[list[LyricWord]] = [[] for _ in segments]
    for word in words:
        per_segment[segment_at(segments, (word.start + word.end) / 2)].append(word)
    out = [SegmentLyrics(s.index, s.start, s.end, bool(ws), ws) for s, ws in zip(segments, per_segment)]
    return Lyrics(source=lyrics_file.source, language=language, segments=out, note=note)


def _words(lyrics_file: LyricsFile) -> list[str]:
    return [word for line in lyrics_file.lines for word in line.text.split()]


def _placed(times: Sequence[tuple[float, float] | None], k: int) -> tuple[float, float]:
    """Word k's (start, end), once it has been placed."""
    placed = times[k]
    assert placed is not None
    return placed


def _spread(words: Sequence[str], start: float, end: float) -> list[LyricWord]:
    """`words` one after another, each an equal share of start..end."""
    if not words:
        return []
    step = max(end - start, 0.0) / len(words)
    return [LyricWord(word, start + i * step, start + (i + 1) * step) for i, word in enumerate(words)]


def _lrc_words(lyrics_file: LyricsFile, duration: float) -> tuple[list[LyricWord], str]:
    lines = lyrics_file.lines
    words: list[LyricWord] = []
    late = 0
    for position, line in enumerate(lines):
        start = _start(line)
        if start >= duration:
            late += 1 if line.text else 0
            continue
        following = _start(lines[position + 1]) if position + 1 < len(lines) else duration
        texts = line.text.split()
        end = min(following, duration, start + MAX_SECONDS_PER_WORD * len(texts))
        words += _spread(texts, start, end)
    if not words:
        raise InvalidInputError(f"every line of the LRC lyrics is timed at or after the song's end "
                                f"({clock(duration, 1)})")
    note = f"LRC lyrics, {len(words)} words placed by their line times"
    if late:
        note += f"; {_lines(late)} timed after the song's end ({clock(duration, 1)}) left out"
    if lyrics_file.ignored_lines:
        note += f"; {_lines(lyrics_file.ignored_lines)} without a time left out"
    return words, note


def _lines(count: int) -> str:
    return f"{count} line" + ("" if count == 1 else "s")


def match_key(word: str) -> str:
    """A word as compared with a transcriber's: lowercase, letters and digits only ("Don't," → "dont")."""
    return "".join(_MATCH_WORD.findall(word.lower())).replace("'", "").replace("’", "")


def _matched_words(lyrics_file: LyricsFile, heard: Sequence[LyricWord], duration: float,
                   heard_source: str) -> tuple[list[LyricWord], str]:
    mine = _words(lyrics_file)
    matcher = difflib.SequenceMatcher(None, [match_key(w) for w in mine], [match_key(w.text) for w in heard],
                                      autojunk=False)
    times: list[tuple[float, float] | None] = [None] * len(mine)
    matched = 0
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2)):
                times[i] = (heard[j].start, heard[j].end)
            matched += i2 - i1
        elif tag == "replace":  # misheard: the person's words over the time of what was heard instead
            for i, word in zip(range(i1, i2), _spread(mine[i1:i2], heard[j1].start, heard[j2 - 1].end)):
                times[i] = (word.start, word.end)
    # Words nobody heard: those on the line of the word before them follow it, the others lead up to the
    # next placed word (a line's first words belong with the rest of their line).
    lines = [number for number, line in enumerate(lyrics_file.lines) for _ in line.text.split()]
    i = 0
    while i < len(mine):
        if times[i] is not None:
            i += 1
            continue
        j = i
        while j < len(mine) and times[j] is None:
            j += 1
        after = _placed(times, i - 1)[1] if i > 0 else None
        before = _placed(times, j)[0] if j < len(mine) else None
        split = i
        if after is not None:
            while split < j and (before is None or lines[split] == lines[i - 1]):
                split += 1
            end = min(before if before is not None else duration, after + (split - i) * SPOKEN_WORD_SECONDS)
            for k, word in zip(range(i, split), _spread(mine[i:split], after, max(after, end))):
                times[k] = (word.start, word.end)
        if split < j:
            assert before is not None
            floor = _placed(times, split - 1)[1] if split > 0 else 0.0
            start = max(floor, before - (j - split) * SPOKEN_WORD_SECONDS)
            for k, word in zip(range(split, j), _spread(mine[split:j], min(start, before), before)):
                times[k] = (word.start, word.end)
        i = j
    words = [LyricWord(word, *_placed(times, k)) for k, word in enumerate(mine)]
    note = (f"plain-text lyrics aligned to what {heard_source} heard: {matched} of {len(mine)} words matched "
            f"a heard word")
    return words, note
