"""The settings registry (services/common/envs.py): every MVGEN_* variable declared once, and what is
generated from it or checked against it: .env.example (generated), the compose file's and the Helm
chart's environments (declared; secrets only from .env without a default, or from a Secret), the
configuration digest (its stage's output-changing variables), and the CLI, which passes its flags down
as settings and never writes os.environ."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common import envs
from services.common.backend_config import backend_config_digest
from services.common.errors import InvalidInputError
from services.common.settings import PROMPTS_DIR
from services.common.store import LocalArtifactStore
from k8s.chart_check import VALUE_SETS, documents, render, values_for
from tests.media import tone

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
CHART = REPO / "k8s" / "mvgen"
NAME = re.compile(r"MVGEN_[A-Z0-9_]*")
# MVGEN_ names that are not variables: the tests' constants, and what Kubernetes' service links would
# inject for a release named mvgen (the chart turns them off: k8s/mvgen/templates/_helpers.tpl).
NOT_VARIABLES = {"MVGEN_SERVICES", "MVGEN_COMPONENTS", "MVGEN_VIDEO_PORT"}
# ChatSettings reads these suffixes under a prefix it is given (MVGEN_LLM, MVGEN_LALM): f"{prefix}_{suffix}".
CHAT_PREFIXES = ("MVGEN_LLM_", "MVGEN_LALM_")
CHAT_SUFFIXES = {"URL", "MODEL", "API_KEY", "TIMEOUT_SECONDS", "MAX_RETRIES", "STRUCTURED_OUTPUT", "TEMPERATURE",
                 "MAX_TOKENS", "FREQUENCY_PENALTY", "DRY_MULTIPLIER", "CONTEXT_TOKENS", "PARALLEL"}
MVGEN_SERVICES = ("segmentation", "analysis", "scripting", "video", "assembly", "review", "gateway")


def code_files() -> list[Path]:
    """The code, deployment and documentation files that may name a variable (this file aside, which names
    undeclared ones on purpose)."""
    files = [p for folder in ("gateway", "services", "tools", "bench", "tests", "examples", "k8s")
             for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".yml", ".tpl",
                                                                                   ".json", ".txt", ".md")
             and "pb" not in p.relative_to(REPO).parts and "__pycache__" not in p.parts
             and p != Path(__file__).resolve()]
    return files + [REPO / n for n in ("docker-compose.yml", "Dockerfile", "Makefile", "README.md", "ARCHITECTURE.md",
                                       "RELIABILITY.md")]


def names_in(text: str) -> set[str]:
    return set(NAME.findall(text))


def is_known(name: str) -> bool:
    """Declared, or a prefix that stands for declared ones (MVGEN_CLAP_, the MVGEN_LLM of ChatSettings)."""
    if name in envs.VARS or name in NOT_VARIABLES:
        return True
    prefix = name if name.endswith("_") else name + "_"
    return any(v.startswith(prefix) for v in envs.VARS)


# ---------------------------------------------------------------------------------------- the registry

def test_every_mvgen_name_in_the_code_and_the_deployment_is_declared():
    unknown = {}
    for path in code_files():
        for name in names_in(path.read_text(errors="replace")):
            if not is_known(name):
                unknown.setdefault(name, path.relative_to(REPO).as_posix())
    assert not unknown, f"MVGEN_ names not declared in services/common/envs.py: {unknown}"


def test_every_declared_variable_is_read_somewhere():
    """No stale declaration: a process's variable is named in the code (ChatSettings' by suffix; the
    health checks' in the compose file and the chart), a compose-only one in docker-compose.yml."""
    compose = COMPOSE_FILE.read_text()
    readers = [p for p in code_files() if p.suffix == ".py" and p.name != "envs.py"
               and (p.relative_to(REPO).parts[0] != "tests" or p.name in ("test_load.py", "test_fuzz.py"))]
    probes = [compose, *(p.read_text() for p in (CHART / "templates").glob("*"))]
    code = "\n".join([*(p.read_text() for p in readers),
                      *(m for text in probes for m in re.findall(r"os\.environ(?:\[|\.get\()'(MVGEN_\w+)'", text))])
    unread = []
    for var in envs.VARS.values():
        if var.compose_only:
            if f"${{{var.name}" not in compose:
                unread.append(var.name)
        elif var.name not in code and not (var.name.startswith(CHAT_PREFIXES)
                                           and var.name.split("_", 2)[2] in CHAT_SUFFIXES):
            unread.append(var.name)
    assert not unread, f"declared but never read: {unread}"


def test_declarations_are_consistent():
    for var in envs.VARS.values():
        assert var.help.strip(), var.name
        if var.default is not None:
            expected = {"str": str, "path": str, "int": int, "float": float, "bool": bool, "list": tuple}[var.type]
            assert isinstance(var.default, expected), (var.name, var.default)
        if var.secret:
            assert var.stage in envs.DEPLOYED_STAGES + ("cli",) and not var.changes_outputs, var.name
    assert {v.stage for v in envs.VARS.values() if v.changes_outputs} == set(envs.DIGEST_STAGES)
    assert envs.secrets() == {"MVGEN_S3_SECRET_KEY", "MVGEN_STAGE_SECRET", "MVGEN_GATEWAY_TOKENS_SHA256",
                              "MVGEN_LLM_API_KEY", "MVGEN_LALM_API_KEY", "MVGEN_TOKEN"}
    assert {"MVGEN_LOAD_JOBS", "MVGEN_FUZZ_EXAMPLES"} <= {v.name for v in envs.VARS.values() if v.stage == "tests"}


def test_typed_reading_with_the_errors_a_person_can_fix():
    environ = {"MVGEN_VIDEO_STEPS": " 30 ", "MVGEN_VIDEO_GUIDANCE": "", "MVGEN_S3_SECURE": "Yes",
               "MVGEN_ANALYZERS": "musicnn, clap,", "MVGEN_WRITERS": " , "}
    assert envs.get("MVGEN_VIDEO_STEPS", environ) == 30
    assert envs.get("MVGEN_VIDEO_GUIDANCE", environ) is None  # empty is unset; its reader decides the default
    assert envs.get("MVGEN_S3_SECURE", environ) is True
    assert envs.get("MVGEN_ANALYZERS", environ) == ("musicnn", "clap")
    assert envs.get("MVGEN_WRITERS", environ) == ("template",)  # nothing listed: the default
    assert envs.get("MVGEN_S3_RETRY_SECONDS", {}) == 60.0
    assert envs.get("MVGEN_PORT", {}, default=50051) == 50051  # a default its reader gives (each service its own)
    for name, value, message in (("MVGEN_VIDEO_STEPS", "many", "MVGEN_VIDEO_STEPS must be an integer, not 'many'"),
                                 ("MVGEN_LLM_TEMPERATURE", "warm", "MVGEN_LLM_TEMPERATURE must be a number"),
                                 ("MVGEN_SHARED_CACHE", "maybe", "MVGEN_SHARED_CACHE must be true or false")):
        with pytest.raises(InvalidInputError, match=message):
            envs.get(name, {name: value})


def test_reading_an_undeclared_name_or_restating_another_default_is_a_programming_error():
    misspelt = "MVGEN_VIDEO_" + "STPES"
    with pytest.raises(envs.UnregisteredVariableError, match=misspelt):
        envs.get(misspelt, {})
    with pytest.raises(envs.UnregisteredVariableError):
        getattr(envs, "MVGEN_NO_" + "SUCH_SETTING")  # attribute access reads through the registry too
    with pytest.raises(ValueError, match="disagrees"):
        envs.get("MVGEN_S3_RETRY_SECONDS", {}, default=30.0)
    assert envs.get("MVGEN_S3_RETRY_SECONDS", {}, default=60.0) == 60.0  # the same default restated: allowed


def test_the_digest_counts_exactly_the_output_changing_variables_of_its_stage():
    base = {s: backend_config_digest(s, PROMPTS_DIR, {}) for s in envs.DIGEST_STAGES}
    for var in envs.VARS.values():
        value = "2" if var.type in ("int", "float") else "true" if var.type == "bool" else "x"
        changed = {s for s in envs.DIGEST_STAGES if backend_config_digest(s, PROMPTS_DIR, {var.name: value}) != base[s]}
        assert changed == ({var.stage} if var.changes_outputs else set()), var.name


# ---------------------------------------------------------------------------------------- .env.example

def test_env_example_is_what_the_registry_generates():
    assert ENV_EXAMPLE.read_text() == envs.render_env_example(), (
        ".env.example is generated: python -m services.common.envs --env-example > .env.example")


def test_env_example_lists_the_variables_compose_reads_from_env_and_documents_the_others():
    text = ENV_EXAMPLE.read_text()
    assigned = dict(re.findall(r"^(MVGEN_[A-Z0-9_]+)=(.*)$", text, re.MULTILINE))
    assert set(assigned) == {v.name for v in envs.VARS.values() if v.dotenv is not None}
    assert all(assigned[name] == "" for name in envs.secrets() & set(assigned))
    listed = names_in(text)
    deployed = {v.name for v in envs.VARS.values() if v.stage in envs.DEPLOYED_STAGES}
    assert deployed <= listed, f"deployment variables .env.example does not document: {deployed - listed}"
    assert not {v.name for v in envs.VARS.values() if v.stage in ("cli", "dev", "tests")} & set(assigned)


def test_the_generator_prints_it():
    done = subprocess.run([sys.executable, "-m", "services.common.envs", "--env-example"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ENV_EXAMPLE.read_text()


# ---------------------------------------------------------------------------------------- compose

def compose_environments() -> dict[str, dict[str, str]]:
    """Each service's environment as written (anchors merged by YAML, values not interpolated)."""
    model = yaml.safe_load(COMPOSE_FILE.read_text())
    return {name: dict(service.get("environment") or {}) for name, service in model["services"].items()}


def test_compose_passes_declared_variables_each_to_the_service_of_its_stage():
    for service, environment in compose_environments().items():
        for name in (n for n in environment if n.startswith("MVGEN_")):
            assert name in envs.VARS, (service, name)
            if service in MVGEN_SERVICES:
                assert envs.var(name).stage in (service, "common"), (service, name, envs.var(name).stage)
            assert not envs.var(name).compose_only, (service, name)


def test_compose_reads_from_env_exactly_what_env_example_offers_and_secrets_without_a_default():
    interpolated = re.findall(r"\$\{(MVGEN_[A-Z0-9_]+)([^}]*)\}", COMPOSE_FILE.read_text())
    assert {n for n, _ in interpolated} == {v.name for v in envs.VARS.values() if v.dotenv is not None}
    for name, modifier in interpolated:
        if envs.var(name).secret:
            assert modifier == "" or modifier.startswith(":?"), f"${{{name}{modifier}}}: a secret has no default"
    # and each secret a service gets comes from .env itself, never a literal
    for service, environment in compose_environments().items():
        for name in envs.secrets() & set(environment):
            assert re.fullmatch(rf"\$\{{{name}(:\?[^}}]*)?\}}", str(environment[name])), (service, name)


# ---------------------------------------------------------------------------------------- Helm chart

def rendered_envs() -> list[tuple[str, str, dict[str, Any]]]:
    """(value set, component, env entry) of every container the chart renders, for every value set."""
    found = []
    for value_set, layers in VALUE_SETS.items():
        for doc in documents(render(values_for(layers))):
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            spec = doc["spec"]["template"]["spec"]
            component = doc["metadata"]["labels"].get("app.kubernetes.io/component", "")
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                found += [(value_set, component, entry) for entry in container.get("env", [])]
    return found


def test_the_charts_environments_are_declared_and_secrets_come_from_secrets():
    seen = set()
    for value_set, component, entry in rendered_envs():
        name = entry["name"]
        if not name.startswith("MVGEN_"):
            continue
        seen.add(name)
        var = envs.var(name)
        if component in MVGEN_SERVICES:
            assert var.stage in (component, "common"), (value_set, component, name)
        if var.secret:
            assert "value" not in entry and entry["valueFrom"]["secretKeyRef"]["name"], (value_set, component, name)
    assert {"MVGEN_STAGE_SECRET", "MVGEN_S3_SECRET_KEY", "MVGEN_LLM_API_KEY", "MVGEN_WAN_MODEL"} <= seen


def env_maps(node: Any) -> list[dict[str, Any]]:
    """Every `env:` mapping (name -> value) in a values file."""
    if isinstance(node, dict):
        found = [node["env"]] if isinstance(node.get("env"), dict) else []
        return found + [m for value in node.values() for m in env_maps(value)]
    if isinstance(node, list):
        return [m for item in node for m in env_maps(item)]
    return []


def test_the_values_files_name_only_declared_variables_and_no_secret():
    for path in [CHART / "values.yaml", *sorted((CHART / "examples").glob("*.yaml"))]:
        for mapping in env_maps(yaml.safe_load(path.read_text())):
            for name in (n for n in mapping if n.startswith("MVGEN_")):
                assert name in envs.VARS, (path.name, name)
                assert not envs.var(name).secret, f"{path.name}: {name} belongs in a Secret, not in values"


# ---------------------------------------------------------------------------------------- the CLI

def test_no_code_writes_an_mvgen_variable_into_its_own_environment():
    writes = re.compile(r"os\.environ(\[[^\]]+\]\s*=|\.update\(|\.setdefault\()|os\.putenv\(")
    offenders = []
    for folder in ("gateway", "services", "tools"):
        for path in (REPO / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                if writes.search(line) and "CACHE_DIR_ENV" not in line:  # numba's own variable, for numba
                    offenders.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert not offenders, offenders


def test_the_cli_flags_reach_the_stages_as_settings_not_through_os_environ(tmp_path, monkeypatch):
    from gateway.cli.generate import BACKEND_FLAGS, backend_settings
    from gateway.pipeline.inprocess import InProcessStages

    monkeypatch.delenv("MVGEN_CLAP_WEIGHTS", raising=False)
    before = dict(os.environ)
    args = argparse.Namespace(**{flag: None for flag in BACKEND_FLAGS})
    args.clap_weights, args.llm_url = str(tmp_path / "clap.pth"), "http://localhost:1/v1"
    settings = backend_settings(args)
    assert dict(os.environ) == before
    assert (settings["MVGEN_CLAP_WEIGHTS"], settings["MVGEN_LLM_URL"]) == (args.clap_weights, args.llm_url)
    assert settings.get("MVGEN_LLM_MODEL") == os.environ.get("MVGEN_LLM_MODEL")  # no flag: the environment's
    assert settings["PATH"] == os.environ["PATH"]

    stages = InProcessStages(LocalArtifactStore(tmp_path / "store"), analyzer="descriptors", transcriber="whisper",
                             scripting=["template", "cascade"], generator="animatic", environ=settings)
    built = {name: stages._build(name) for name in ("analysis", "scripting", "video")}  # built, not loaded
    sets = [built["analysis"].analyzers, built["analysis"].transcribers, built["scripting"].backends,
            built["video"].generators]
    backends = [b for backend_set in sets for b in backend_set.backends.values()]
    assert len(backends) == 5 and all(b.environ is settings for b in backends)
    assert dict(os.environ) == before
    digest = asyncio.run(stages.backend_config("analysis"))
    assert digest == backend_config_digest("analysis", PROMPTS_DIR, settings)
    assert digest != backend_config_digest("analysis", PROMPTS_DIR, os.environ)  # the flag counts, as a variable would


@pytest.mark.slow
def test_a_backend_flag_reaches_the_backend_that_reads_it(tmp_path):
    """--llm-gguf names the llamacpp writer's model, which it checks when it loads: the one-line error
    names the flag's file, though nothing put it in the environment."""
    tone(tmp_path / "song.wav", 6.0)
    missing = tmp_path / "no-such-model.gguf"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVGEN_")}
    done = subprocess.run([str(Path(sys.executable).parent / "mvgen"), "generate", "song.wav", "--analysis",
                           "descriptors", "--transcriber", "none", "--writer", "llamacpp", "--llm-gguf", str(missing),
                           "-q"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert f"MVGEN_LLAMACPP_MODEL: no GGUF model at {missing}" in done.stderr
