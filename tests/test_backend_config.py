"""The digest of what configures each stage's backends: what changes it, and what must not."""

from __future__ import annotations

import os
import shutil

from services.common.backend_config import backend_config_digest
from services.common.settings import PROMPTS_DIR

STAGES = ("analysis", "scripting", "video")


def digests(prompts_dir, environ) -> dict[str, str]:
    return {stage: backend_config_digest(stage, prompts_dir, environ) for stage in STAGES}


def test_a_setting_changes_the_digest_of_its_own_stage_only():
    base = digests(PROMPTS_DIR, {})
    assert len(set(base.values())) == 3  # the stage is part of the digest
    for variable, stage in (("MVGEN_CLAP_WEIGHTS", "analysis"), ("MVGEN_LLM_MODEL", "scripting"),
                            ("MVGEN_LALM_MODEL", "scripting"), ("MVGEN_WAN_MODEL", "video"),
                            ("MVGEN_VIDEO_STEPS", "video"), ("MVGEN_LONG_SEGMENT_POLICY", "video")):
        changed = digests(PROMPTS_DIR, {variable: "x"})
        assert {s for s in STAGES if changed[s] != base[s]} == {stage}, variable


def test_secrets_patience_and_wiring_leave_every_digest_alone():
    base = digests(PROMPTS_DIR, {})
    neutral = {"MVGEN_LLM_API_KEY": "s3cret", "MVGEN_LLM_TIMEOUT_SECONDS": "5", "MVGEN_LLM_MAX_RETRIES": "1",
               "MVGEN_LLAMACPP_THREADS": "2", "MVGEN_VIDEO_ADDR": "dns:///video:50054",
               "MVGEN_VIDEO_RESOLVE_SECONDS": "3", "MVGEN_VIDEO_BACKENDS": "wan", "MVGEN_VIDEO_MAX_CONCURRENT": "1",
               "MVGEN_STORE_ROOT": "/elsewhere", "PATH": os.environ.get("PATH", ""),
               "MVGEN_WAN_MODEL": "", "MVGEN_CLAP_WEIGHTS": " "}  # empty: the default, as unset
    assert digests(PROMPTS_DIR, neutral) == base


def test_weights_replaced_in_place_and_an_edited_prompt_count_as_new(tmp_path):
    weights = tmp_path / "clap.pth"
    weights.write_bytes(b"a" * 10)
    environ = {"MVGEN_CLAP_WEIGHTS": str(weights)}
    before = backend_config_digest("analysis", PROMPTS_DIR, environ)
    weights.write_bytes(b"b" * 11)
    assert backend_config_digest("analysis", PROMPTS_DIR, environ) != before

    prompts = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, prompts)
    assert digests(prompts, {}) == digests(PROMPTS_DIR, {})  # the files, not where they are
    template = next(prompts.glob("*.j2"))
    template.write_text(template.read_text() + "\nBe brief.\n")
    assert all(a != b for a, b in zip(digests(prompts, {}).values(), digests(PROMPTS_DIR, {}).values()))
