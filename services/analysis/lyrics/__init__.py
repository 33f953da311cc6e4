"""Lyrics as part of listening: what is sung in each segment (lyrics.json, lyrics.txt).

    transcriber.py   what a transcriber backend offers: what it heard, with its confidences
    whisper.py       the `whisper` backend (Whisper base, faster-whisper, CPU)
    gather.py        which heard phrases are sung, and the words of each segment
    lyrics_file.py   a person's own lyrics (plain text or LRC), read and aligned to the segments

Stage logic only; the analysis stage (services/analysis/stage.py) serves it.
"""

import importlib.util
from collections.abc import Mapping

from services.analysis.lyrics.whisper import missing_model_files, model_dir_from_env


def whisper_model_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the whisper transcriber's model files are where it will look (MVGEN_WHISPER_MODEL_DIR, or
    models/whisper-base from `make whisper-model`); loads nothing."""
    return not missing_model_files(model_dir_from_env(environ))


def whisper_available(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the whisper transcriber can load here: faster-whisper installed and its model in place."""
    return importlib.util.find_spec("faster_whisper") is not None and whisper_model_available(environ)
