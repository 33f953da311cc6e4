"""Assembly: the clips in order, cut hard, with the original song as the soundtrack, in one mp4.

Clips made with the shared encoding (services.common.encoding) and exactly their expected frame
count are joined by stream copy (ffmpeg's concat demuxer): they are encoded once, never twice.
A clip that does not fit — another size, rate or encoder, or the wrong length, as GPU models
produce — is first conformed alone: scaled and padded to size, retimed to the rate (frames are
repeated or dropped, so motion keeps its real speed), then cut or padded with its last frame to
its exact frame count, with the shared encoding. The frame counts come from the segments
(services.common.timing), so the video ends with the song.

With an edit (services.assembly.edit) that has transitions, only the frames around each transition
are encoded again, and the rest of every clip is still copied (services.assembly.render).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.assembly import render
from services.assembly.edit import Edit
from services.common import audio, encoding, ffmpeg
from services.common.errors import InvalidInputError, StageFailedError
from services.common.lifecycle import Backend

DURATION_SAMPLE_RATE = 8000  # decoding rate for measuring the song: 1/8 ms resolution is plenty
PROBE_WORKERS = 4  # ffprobe is mostly process start-up: a few at once hide it
PIECE_WORKERS = 2  # ffmpeg runs encoding the transitions at once (x264 threads too)
PIECES_PER_RUN = 12  # at most this many transitions' pieces per ffmpeg run: each opens a decoder per clip stretch


@dataclass(frozen=True)
class StreamFormat:
    """What must be identical between clips for them to be joined by stream copy."""

    codec: str
    pix_fmt: str
    width: int
    height: int
    frame_rate: str  # "24/1"
    time_base: str  # "1/24000"
    headers: str  # hash of the codec's extradata (SPS/PPS for H.264)


@dataclass(frozen=True)
class ClipProbe:
    format: StreamFormat
    frames: int | None  # from the container's index; None when the container does not say
    duration_ticks: int | None  # the stream's duration in time_base units
    container_duration: float | None  # seconds, as the concat demuxer will read it
    streams: int
    keyframes: tuple[int, ...] = ()  # the frames that are keyframes, when asked for (probe_clip(keyframes=True))


@dataclass
class AssemblyReport:
    frames: int
    duration: float
    song_duration: float
    width: int
    height: int
    fps: int
    reencoded: list[int]  # indices of the clips that had to be conformed
    transition_frames: int = 0  # frames encoded again for the transitions (the rest is copied)
    transition_seconds: float = 0.0  # time spent on them: keyframes probed, pieces encoded

    def to_info(self) -> dict[str, Any]:
        info = {
            "frames": self.frames,
            "duration": round(self.duration, 4),
            "song_duration": round(self.song_duration, 4),
            "size": f"{self.width}x{self.height}",
            "fps": self.fps,
            "clips_reencoded": len(self.reencoded),
            "reencoded_indices": self.reencoded,
        }
        if self.transition_frames:
            info |= {"transition_frames_encoded": self.transition_frames,
                     "transition_seconds": round(self.transition_seconds, 3)}
        return info


class Assembler(Backend):
    name = "ffmpeg"

    def __init__(self) -> None:
        super().__init__()
        self._reference_formats: dict[tuple[int, int, int], StreamFormat] = {}

    def _load(self) -> None:
        ffmpeg.binary("ffprobe")
        missing = encoding.missing_encoders(encoding.VIDEO_CODEC, encoding.AUDIO_CODEC)
        if missing:
            raise StageFailedError(f"this ffmpeg lacks the {', '.join(missing)} encoder(s) assembly needs")

    def assemble(self, clips: Sequence[Path], frame_counts: Sequence[int], fps: int, width: int, height: int,
                 song: Path, out_path: Path, edit: Edit | None = None) -> AssemblyReport:
        """The clips joined under the song into `out_path`: by hard cuts, or with the transitions of `edit`
        (already checked against the segments the clips were made for)."""
        song_duration = audio.decode(song, DURATION_SAMPLE_RATE).size / DURATION_SAMPLE_RATE
        total_frames = sum(frame_counts)
        if abs(total_frames / fps - song_duration) > 1 / fps:
            raise InvalidInputError(
                f"the clips' frame counts add up to {total_frames} frames ({total_frames / fps:.3f} s at {fps} fps) "
                f"but the song lasts {song_duration:.3f} s: they must come from this song's segments")
        transitions = edit is not None and not edit.is_hard
        with ThreadPoolExecutor(PROBE_WORKERS) as pool:
            if transitions:  # where a copy may start: the keyframes, read in the same probe
                probes = list(pool.map(lambda clip: probe_clip(clip, keyframes=True), clips))
            else:
                probes = list(pool.map(probe_clip, clips))

        with tempfile.TemporaryDirectory(prefix="mvgen-assembly-") as scratch_dir:
            scratch = Path(scratch_dir)
            reference = self._reference_format(width, height, fps, scratch)
            parts: list[Path] = []
            keyframes: list[tuple[int, ...]] = []
            reencoded: list[int] = []
            for index, (clip, probe, frames) in enumerate(zip(clips, probes, frame_counts)):
                if fits(probe, reference, frames, fps):
                    parts.append(clip)
                    keyframes.append(probe.keyframes)
                    continue
                conformed = scratch / f"conformed-{index:05d}.mp4"
                conform_clip(clip, conformed, frames, fps, width, height)
                probe = probe_clip(conformed, keyframes=transitions)
                if not fits(probe, reference, frames, fps):
                    raise StageFailedError(f"clip {index} ({clip.name}) still does not fit after conforming it")
                parts.append(conformed)
                keyframes.append(probe.keyframes)
                reencoded.append(index)
            concat_list = scratch / "clips.txt"
            transition_frames, transition_seconds = 0, 0.0
            if edit is None or not transitions:
                concat_list.write_text("".join(f"file {_concat_quote(part)}\n" for part in parts))
            else:
                started = time.perf_counter()
                transition_frames = self._transitions(parts, keyframes, frame_counts, edit, fps, width, height,
                                                      reference, scratch, concat_list)
                transition_seconds = time.perf_counter() - started
            ffmpeg.run("ffmpeg", [
                # auto_convert 0: the clips share their headers, so packets pass byte for byte (no
                # round trip through Annex B that would repeat SPS/PPS in every keyframe).
                "-y", "-f", "concat", "-safe", "0", "-auto_convert", "0", "-i", str(concat_list), "-i", str(song),
                "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                "-c:a", encoding.AUDIO_CODEC, "-b:a", encoding.AUDIO_BITRATE,
                # AAC tops out at 96 kHz; 48 kHz is what players expect of a video anyway.
                "-af", "aresample=resampler=soxr:osr=48000" if _sample_rate(song) > 48000 else "anull",
                *encoding.mp4_muxer_args(fps), "-f", "mp4", str(out_path),
            ], timeout=1800)

        produced = probe_clip(out_path)
        if produced.frames != total_frames:
            raise StageFailedError(f"the assembled video has {produced.frames} frames; {total_frames} were expected")
        return AssemblyReport(
            frames=total_frames, duration=produced.container_duration or 0.0, song_duration=song_duration,
            width=width, height=height, fps=fps, reencoded=reencoded, transition_frames=transition_frames,
            transition_seconds=transition_seconds,
        )

    def _transitions(self, parts: Sequence[Path], keyframes: Sequence[tuple[int, ...]], frame_counts: Sequence[int],
                     edit: Edit, fps: int, width: int, height: int, reference: StreamFormat, scratch: Path,
                     concat_list: Path) -> int:
        """Encode the pieces the edit's transitions need and write the concat list that copies the rest;
        returns the frames encoded."""
        render.validate_sources(edit, frame_counts)
        timeline = render.plan(frame_counts, edit, dict(enumerate(keyframes)))
        for entry in timeline:  # a copy starts on a keyframe of its clip, or the packets before it would be lost
            if isinstance(entry, render.Copy) and entry.first and entry.first not in keyframes[entry.clip]:
                raise StageFailedError(f"clip {entry.clip} would be copied from frame {entry.first}, not a keyframe")
        pieces = [k for k, entry in enumerate(timeline) if isinstance(entry, render.Piece)]
        placed: dict[int, render.Placed] = {}

        def encode(run: int, members: range) -> None:
            path = scratch / f"transitions-{run:03d}.mp4"
            batch = [entry for m in members if isinstance(entry := timeline[pieces[m]], render.Piece)]
            offsets = render.render_pieces(batch, parts, fps, width, height, path)
            probe = probe_clip(path, keyframes=True)
            frames = sum(piece.end - piece.first for piece in batch)
            if not fits(probe, reference, frames, fps) or not set(offsets) <= set(probe.keyframes):
                raise StageFailedError(f"the transitions rendered into {path.name} do not join the clips by copy "
                                       "(another encoding, another length, or a piece not on a keyframe)")
            placed.update({pieces[m]: render.Placed(path, offset) for m, offset in zip(members, offsets)})

        runs = render.batches(len(pieces), PIECE_WORKERS, PIECES_PER_RUN)
        with ThreadPoolExecutor(PIECE_WORKERS) as pool:
            list(pool.map(encode, range(len(runs)), runs))
        concat_list.write_text(render.concat_entries(timeline, parts, placed, fps, _concat_quote))
        return render.encoded_frames(timeline)

    def _reference_format(self, width: int, height: int, fps: int, scratch: Path) -> StreamFormat:
        """The format of a clip made with the shared encoding at this size: one black frame, probed."""
        key = (width, height, fps)
        if key not in self._reference_formats:
            sample = scratch / "reference.mp4"
            with encoding.RawVideoEncoder(sample, width, height, fps) as encoder:
                encoder.write(np.zeros((height, width, 3), np.uint8))
            self._reference_formats[key] = probe_clip(sample).format
        return self._reference_formats[key]


def probe_clip(path: Path, keyframes: bool = False) -> ClipProbe:
    """What fits() compares; with `keyframes`, also which frames are keyframes (from the packet index: no
    decoding), for a copy that starts inside the clip."""
    packets = ":packet=pts,flags" if keyframes else ""
    try:
        raw = ffmpeg.run("ffprobe", [
            "-show_data_hash", "sha256", "-select_streams", "v:0",
            "-show_entries", "stream=codec_name,pix_fmt,width,height,r_frame_rate,time_base,nb_frames,duration_ts,"
                             f"extradata_hash:format=nb_streams,duration{packets}",
            "-of", "json", str(path),
        ], timeout=60)
    except ffmpeg.ToolError as exc:
        raise InvalidInputError(f"{path.name} is not a readable video: {exc}") from exc
    meta = json.loads(raw)
    if not meta.get("streams"):
        raise InvalidInputError(f"{path.name} holds no video stream")
    stream, container = meta["streams"][0], meta.get("format", {})
    return ClipProbe(
        format=StreamFormat(
            codec=stream.get("codec_name", ""), pix_fmt=stream.get("pix_fmt", ""),
            width=int(stream.get("width", 0)), height=int(stream.get("height", 0)),
            frame_rate=stream.get("r_frame_rate", ""), time_base=stream.get("time_base", ""),
            headers=stream.get("extradata_hash", ""),
        ),
        frames=_int(stream.get("nb_frames")),
        duration_ticks=_int(stream.get("duration_ts")),
        container_duration=_float(container.get("duration")),
        streams=int(container.get("nb_streams", 0)),
        keyframes=tuple(sorted(pts // encoding.TICKS_PER_FRAME for packet in meta.get("packets", [])
                               if "K" in str(packet.get("flags", "")) and (pts := _int(packet.get("pts")))
                               is not None)),
    )


def fits(probe: ClipProbe, reference: StreamFormat, frames: int, fps: int) -> bool:
    """Whether the clip can be joined by copy: the shared format, exactly `frames` frames, nothing else inside."""
    exact_seconds = frames / fps
    return (
        probe.format == reference
        and probe.streams == 1
        and probe.frames == frames
        # Constant rate over the whole clip, and a container duration the concat demuxer reads exactly.
        and probe.duration_ticks == frames * encoding.TICKS_PER_FRAME
        and probe.container_duration is not None
        and abs(probe.container_duration - exact_seconds) < 1e-5
    )


def conform_clip(src: Path, dst: Path, frames: int, fps: int, width: int, height: int) -> None:
    """Re-encode `src` with the shared encoding at exactly `frames` frames of `width`×`height` at `fps`."""
    chain = ",".join([
        f"fps={fps}",  # retime: repeat or drop frames, so that motion keeps its real speed
        f"scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2:"
        f"{encoding.COLOUR_CONVERSION}",
        f"format={encoding.PIX_FMT}",
        f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2",  # letterbox rather than crop the picture
        "setsar=1",
        "tpad=stop=-1:stop_mode=clone",  # a clip too short holds its last frame; -frames:v cuts
    ])
    try:
        ffmpeg.run("ffmpeg", [
            "-y", "-i", str(src), "-map", "0:v:0", "-vf", chain, "-frames:v", str(frames),
            *encoding.h264_encoder_args(fps), *encoding.mp4_muxer_args(fps), str(dst),
        ], timeout=600)
    except ffmpeg.ToolError as exc:
        raise InvalidInputError(f"{src.name} cannot be conformed to the video: {exc}") from exc


def _concat_quote(path: Path) -> str:
    # The concat demuxer's list syntax: single quotes, and a quote inside written as '\''.
    return "'" + os.fspath(path.resolve()).replace("'", "'\\''") + "'"


def _int(value: object) -> int | None:
    """A number from ffprobe's JSON (a string or a number); None for anything else."""
    if not isinstance(value, str | int | float):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _float(value: object) -> float | None:
    """A number from ffprobe's JSON (a string or a number); None for anything else."""
    if not isinstance(value, str | int | float):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _sample_rate(song: Path) -> int:
    raw = ffmpeg.run("ffprobe", ["-select_streams", "a:0", "-show_entries", "stream=sample_rate",
                                 "-of", "default=nw=1:nk=1", str(song)], timeout=60)
    return _int(raw.decode().strip()) or 0
