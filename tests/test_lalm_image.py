"""The audio-language model's server image (issue 18 item 4): vLLM's OpenAI-compatible image decodes audio
with librosa, which the stock vllm/vllm-openai image lacks, so the chart's lalm component runs an image
built FROM it with vLLM's audio extra (docker/lalm-vllm/Dockerfile), at the same pinned vLLM release."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from k8s.chart_check import RELEASE, REPO, VALUE_SETS, documents, render, values_for

DOCKERFILE = REPO / "docker" / "lalm-vllm" / "Dockerfile"


def container(docs: list[dict], name: str) -> dict:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return deployment["spec"]["template"]["spec"]["containers"][0]


def instructions() -> list[tuple[str, str]]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_the_lalm_image_adds_vllms_audio_extra_to_the_pinned_vllm_image():
    steps = instructions()
    assert steps[0] == ("FROM", "vllm/vllm-openai:v0.11.0")
    (install,) = [args for op, args in steps if op == "RUN"]
    # The extra at the base's own vLLM version: pip adds librosa and soundfile and never replaces vLLM.
    assert re.search(r'"vllm\[audio\]==0\.11\.0"', install) and "--no-cache-dir" in install
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_chart_runs_the_audio_model_on_that_image_and_the_script_writer_on_the_stock_one():
    docs = list(documents(render(values_for(VALUE_SETS["llm-scale-to-zero"]))))
    version = instructions()[0][1].split(":")[1]
    assert container(docs, f"{RELEASE}-lalm")["image"] == f"mvgen/lalm-vllm:{version}"
    assert container(docs, f"{RELEASE}-llm")["image"] == f"vllm/vllm-openai:{version}"  # text only: no audio
    pushed = list(documents(render(values_for([*VALUE_SETS["llm-scale-to-zero"],
                                               {"image": {"registry": "registry.example.com/team/"}}]))))
    assert container(pushed, f"{RELEASE}-lalm")["image"] == f"registry.example.com/team/mvgen/lalm-vllm:{version}"
    assert container(pushed, f"{RELEASE}-llm")["image"] == f"vllm/vllm-openai:{version}"
