"""The lyrics part of an Analyze request: what the analysis stage does when `lyrics_key` is set.

    transcriber only          the song transcribed (whisper), sung phrases kept  → source "whisper-base"
    lyrics_source_key (LRC)   the person's lyrics placed by their own times        → source "file:lrc"
    lyrics_source_key (text)  the person's lyrics aligned to the transcription     → source "file:plain"
                              when the request names a transcriber, else spread over the song

It writes lyrics.json (and lyrics.txt when `lyrics_text_key` is set) and returns the keys and a few
facts for the stage's result. Transcribers are the analysis service's second set of backends,
enabled through the same list as the analysers (MVGEN_BACKENDS=descriptors,whisper).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.analysis.lyrics.gather import GatherThresholds, lyrics_from_transcription
from services.analysis.lyrics.lyrics_file import align_lyrics, parse_lyrics
from services.analysis.lyrics.transcriber import Transcriber
from services.common import artifacts
from services.common.artifacts import Lyrics, Segmentation
from services.common.audio import decode
from services.common.errors import InvalidInputError
from services.common.lifecycle import BackendSet
from services.common.stage_api import AnalyzeRequest
from services.common.store import ArtifactStore
from services.common.untrusted import quoted


def _whisper(environ: Mapping[str, str] | None = None) -> Transcriber:
    from services.analysis.lyrics.whisper import WhisperTranscriber

    return WhisperTranscriber(environ=environ)


TRANSCRIBERS: dict[str, Callable[..., Transcriber]] = {"whisper": _whisper}


def check_lyrics_request(req: AnalyzeRequest, transcribers: BackendSet[Transcriber]) -> Transcriber | None:
    """The transcriber `req` needs (None when none), or InvalidInputError before any work is done."""
    if not req.lyrics_key:
        if req.transcriber or req.lyrics_source_key or req.lyrics_text_key:
            raise InvalidInputError("the request asks for lyrics but gives no lyrics_key to write lyrics.json to")
        return None
    if not req.transcriber and not req.lyrics_source_key:
        raise InvalidInputError("lyrics_key is set but the request names neither a transcriber nor the "
                                "person's lyrics (lyrics_source_key)")
    return transcribers.get(req.transcriber) if req.transcriber else None


def write_lyrics(store: ArtifactStore, req: AnalyzeRequest, segmentation: Segmentation,
                 transcriber: Transcriber | None) -> tuple[dict[str, str], dict[str, Any]]:
    """lyrics.json (and lyrics.txt) for `req`; the keys written and the facts to report."""
    if req.lyrics_source_key:
        try:
            data = store.get_bytes(req.lyrics_source_key)
        except KeyError as exc:
            raise InvalidInputError(f"no lyrics at {quoted(req.lyrics_source_key)}") from exc
        lyrics_file = parse_lyrics(data, "the lyrics file")
        # LRC carries its own times; plain text is aligned to what the transcriber hears, if one is named.
        heard = _transcribed(store, req, segmentation, transcriber) if (
            transcriber is not None and lyrics_file.kind == "plain") else None
        lyrics = align_lyrics(lyrics_file, segmentation, heard)
    else:
        assert transcriber is not None
        lyrics = _transcribed(store, req, segmentation, transcriber)
    store.put_bytes(req.lyrics_key, artifacts.dumps(lyrics))
    keys = {"lyrics": req.lyrics_key}
    if req.lyrics_text_key:
        store.put_text(req.lyrics_text_key, lyrics.to_text())
        keys["lyrics_text"] = req.lyrics_text_key
    info = {"lyrics_source": lyrics.source, "lyrics_language": lyrics.language,
            "vocal_segments": lyrics.vocal_segments, "lyric_words": sum(len(s.words) for s in lyrics.segments)}
    return keys, info


def _transcribed(store: ArtifactStore, req: AnalyzeRequest, segmentation: Segmentation,
                 transcriber: Transcriber) -> Lyrics:
    try:
        with store.local_path(req.song_key) as path:
            samples = decode(path, sample_rate=transcriber.sample_rate)
    except KeyError as exc:
        raise InvalidInputError(f"no song at {quoted(req.song_key)}") from exc
    thresholds = GatherThresholds.from_env(transcriber.environ)
    heard = transcriber.transcribe(samples, skip_no_speech_above=thresholds.no_speech_max)
    return lyrics_from_transcription(heard, segmentation, thresholds)
