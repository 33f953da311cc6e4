"""The LALM pipeline's storyteller: an audio-language model hears the song and tells its story.

    openai-audio  any OpenAI-compatible server that takes audio in a chat message, e.g.
                  `vllm serve Qwen/Qwen2.5-Omni-7B` or Qwen2-Audio-7B-Instruct
                  (MVGEN_LALM_URL, MVGEN_LALM_MODEL, MVGEN_LALM_API_KEY)

The song is sent once, downmixed to mono, resampled to the rate audio encoders use (16 kHz) and
compressed to MP3, stepping the bitrate down until it fits MVGEN_LALM_AUDIO_MAX_BYTES. It goes in
the content part vLLM's server documents: `input_audio` (base64 data and format, OpenAI's own
shape; the default) or `audio_url` with a data: URL (MVGEN_LALM_AUDIO_PART).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import ffmpeg
from services.common.errors import InvalidInputError, StageFailedError
from services.common.lifecycle import Backend
from services.common.settings import env_int, env_str
from services.scripting.llm.chat import ChatModel, ChatReply, ChatRequest, ChatSettings, OpenAIChat

AUDIO_MODEL = "Qwen/Qwen2.5-Omni-7B"
AUDIO_PARTS = ("input_audio", "audio_url")
BITRATES_KBPS = (64, 48, 32, 24, 16, 8)  # tried in order until the song fits


@dataclass(frozen=True)
class AudioSettings:
    part: str  # MVGEN_LALM_AUDIO_PART: input_audio or audio_url
    sample_rate: int  # MVGEN_LALM_AUDIO_RATE: Qwen2-Audio and Qwen2.5-Omni hear 16 kHz
    max_bytes: int  # MVGEN_LALM_AUDIO_MAX_BYTES: the compressed song, before base64 (+33 %)

    @classmethod
    def from_env(cls) -> AudioSettings:
        settings = cls(env_str("MVGEN_LALM_AUDIO_PART", "input_audio"), env_int("MVGEN_LALM_AUDIO_RATE", 16000),
                       env_int("MVGEN_LALM_AUDIO_MAX_BYTES", 8 * 1024 * 1024))
        if settings.part not in AUDIO_PARTS:
            raise InvalidInputError(f"MVGEN_LALM_AUDIO_PART must be one of {', '.join(AUDIO_PARTS)}, not {settings.part!r}")
        return settings


def encode_song(path: Path, settings: AudioSettings) -> tuple[bytes, int]:
    """The song as mono MP3 at `settings.sample_rate`, at the highest bitrate that fits; (bytes, kbps)."""
    for kbps in BITRATES_KBPS:
        data = ffmpeg.run("ffmpeg", ["-i", str(path), "-vn", "-ac", "1", "-ar", str(settings.sample_rate),
                                     "-c:a", "libmp3lame", "-b:a", f"{kbps}k", "-f", "mp3", "-"])
        if len(data) <= settings.max_bytes:
            return data, kbps
    raise InvalidInputError(f"the song does not fit the audio model's limit of {settings.max_bytes} bytes even at "
                            f"{BITRATES_KBPS[-1]} kbit/s; raise MVGEN_LALM_AUDIO_MAX_BYTES or send a shorter song")


def audio_part(mp3: bytes, part: str) -> dict[str, Any]:
    data = base64.b64encode(mp3).decode("ascii")
    if part == "audio_url":
        return {"type": "audio_url", "audio_url": {"url": f"data:audio/mpeg;base64,{data}"}}
    return {"type": "input_audio", "input_audio": {"data": data, "format": "mp3"}}


@dataclass(frozen=True)
class ToldStory:
    reply: ChatReply
    audio_bytes: int
    audio_kbps: int


class AudioStoryteller(Backend):
    name = "openai-audio"
    chat: ChatModel

    def _load(self) -> None:
        self.audio = AudioSettings.from_env()
        self.chat = OpenAIChat(ChatSettings.from_env("MVGEN_LALM", default_model=AUDIO_MODEL))

    def tell(self, song: Path, prompt: str, seed: int) -> ToldStory:
        mp3, kbps = encode_song(song, self.audio)
        messages = [{"role": "user", "content": [audio_part(mp3, self.audio.part), {"type": "text", "text": prompt}]}]
        reply = self.chat.chat(ChatRequest(messages, None, seed, what="the story prompt"))
        if not reply.answer.strip():
            raise StageFailedError(f"the audio model ({reply.model}) told no story (finish: {reply.finish_reason})")
        return ToldStory(reply, len(mp3), kbps)
