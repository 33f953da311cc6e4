"""The Helm chart k8s/mvgen, rendered offline (helm-python-sdk) for each value set of
k8s/chart_check.py (defaults, each video autoscaler, external S3, Wan 14B, the vLLM servers with
scale-to-zero, gateway TLS): what the deployment relies on, checked on the rendered manifests.

`make k8s-check` adds helm lint, kubernetes-validate --strict on every value set and yamllint; here
the manifests of two value sets are validated too, so that `make test` catches an invalid one.
What this cannot check: that the pods schedule and run (no cluster, no GPU nodes here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import helm_python as helm
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from k8s.chart_check import (
    CHART,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    REPO,
    VALUE_SETS,
    documents,
    render,
    validation_problems,
    values_for,
)
from tests.tls import self_signed_certificate

H100_PRODUCTS = {"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"}
STAGE_PORTS = {"segmentation": 50051, "analysis": 50052, "scripting": 50053, "video": 50054, "assembly": 50055,
               "review": 50056}
MVGEN_COMPONENTS = {*STAGE_PORTS, "gateway"}
SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN)$")  # MVGEN_S3_SECRET_KEY, HF_TOKEN, ...
VIDEO = f"{RELEASE}-video"
GATEWAY = f"{RELEASE}-gateway"
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


@cache
def manifests(value_set: str) -> tuple[dict[str, Any], ...]:
    """Rendered once per value set for the whole module."""
    return tuple(documents(render(values_for(VALUE_SETS[value_set]))))


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def env_value(container: dict[str, Any], name: str) -> str:
    return env_of(container)[name]["value"]


def deployment_container(docs: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    return one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def spec_labels(docs: tuple[dict[str, Any], ...], deployment: str) -> dict[str, str]:
    return one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def gateway_tls(value_set: str) -> bool:
    return values_for(VALUE_SETS[value_set]).get("gateway", {}).get("tls", {}).get("enabled", False)


def gibibytes(quantity: str) -> int:
    assert quantity.endswith("Gi"), quantity
    return int(quantity.removesuffix("Gi"))


value_sets = pytest.mark.parametrize("value_set", list(VALUE_SETS))


# ---------------------------------------------------------------------------- video on H100s

@value_sets
def test_gpu_pods_request_a_gpu_and_carry_the_h100_affinity(value_set):
    docs = manifests(value_set)
    gpu_deployments = [d for d in find(docs, "Deployment") if component(d) in ("video", "llm", "lalm")]
    assert VIDEO in {d["metadata"]["name"] for d in gpu_deployments}
    for deployment in gpu_deployments:
        spec = deployment["spec"]["template"]["spec"]
        resources = spec["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert [(e["key"], e["operator"], set(e["values"])) for t in terms for e in t["matchExpressions"]] == [
            ("nvidia.com/gpu.product", "In", H100_PRODUCTS)]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        cache_volume = volumes[mounts["/models"]]
        assert "persistentVolumeClaim" in cache_volume or "hostPath" in cache_volume
        assert env_value(spec["containers"][0], "HF_HOME") == "/models/huggingface"


def test_gpu_models_and_runtime_class_are_overridable():
    values = {"gpu": {"productLabel": "cloud.google.com/gke-accelerator", "products": ["nvidia-h100-80gb"],
                      "runtimeClassName": "nvidia"}}
    spec = one(tuple(documents(render(values))), "Deployment", VIDEO)["spec"]["template"]["spec"]
    expression = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"][0]
    assert (expression["key"], expression["values"]) == ("cloud.google.com/gke-accelerator", ["nvidia-h100-80gb"])
    assert spec["runtimeClassName"] == "nvidia"


def test_the_model_cache_is_a_shared_claim_or_a_host_folder():
    defaults = manifests("defaults")
    claim = one(defaults, "PersistentVolumeClaim", f"{RELEASE}-model-cache")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    host = manifests("llm-scale-to-zero")
    assert not find(host, "PersistentVolumeClaim", f"{RELEASE}-model-cache")
    for name in (VIDEO, f"{RELEASE}-llm", f"{RELEASE}-lalm"):
        volumes = one(host, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "model-cache", "hostPath": {"path": "/var/lib/mvgen/models", "type": "DirectoryOrCreate"}} \
            in volumes


@value_sets
def test_a_video_pod_may_finish_its_clip_and_has_time_to_load_weights(value_set):
    docs = manifests(value_set)
    spec = one(docs, "Deployment", VIDEO)["spec"]["template"]["spec"]
    grace = int(env_value(spec["containers"][0], "MVGEN_GRACE_SECONDS"))
    assert spec["terminationGracePeriodSeconds"] > grace >= 300
    startup = spec["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    pdb = one(docs, "PodDisruptionBudget", VIDEO)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= spec_labels(docs, VIDEO).items()


def test_the_14b_preset_runs_the_14b_model_with_more_of_everything():
    small = deployment_container(manifests("defaults"), VIDEO)
    large = deployment_container(manifests("wan14b"), VIDEO)
    assert env_value(large, "MVGEN_WAN_MODEL") == "Wan-AI/Wan2.1-T2V-14B-Diffusers"
    assert env_value(small, "MVGEN_WAN_MODEL") == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    for kind in ("requests", "limits"):
        assert gibibytes(large["resources"][kind]["memory"]) > gibibytes(small["resources"][kind]["memory"])
    assert large["startupProbe"]["failureThreshold"] > small["startupProbe"]["failureThreshold"]
    claim = one(manifests("wan14b"), "PersistentVolumeClaim", f"{RELEASE}-model-cache")
    assert claim["spec"]["resources"]["requests"]["storage"] == "500Gi"
    # Fits an 80 GB card by construction (README, "GPU memory of the video models"): the VAE decodes
    # in tiles, and the continue policy (a second 14B model) offloads whole models to host memory,
    # which must hold all their weights (~76 GB with the text and image encoders).
    assert env_value(large, "MVGEN_VIDEO_VAE_TILING") == "true"
    assert env_value(large, "MVGEN_VIDEO_CONTINUATION_OFFLOAD") == "model"
    assert env_of(large).get("MVGEN_VIDEO_OFFLOAD", {}).get("value", "none") == "none"  # retime: all resident
    assert gibibytes(large["resources"]["requests"]["memory"]) >= 96


# ---------------------------------------------------------------------------- scaling

@value_sets
def test_exactly_one_autoscaler_targets_the_video_deployment(value_set):
    docs = manifests(value_set)
    scaling = values_for(VALUE_SETS[value_set]).get("video", {}).get("autoscaling", {}).get("type", "keda")
    autoscalers = [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
                   and d["spec"]["scaleTargetRef"]["name"] == VIDEO]
    video = one(docs, "Deployment", VIDEO)
    if scaling == "none":
        assert autoscalers == []
        assert video["spec"]["replicas"] == 3  # video-manual: `kubectl scale` owns the count
        return
    assert [d["kind"] for d in autoscalers] == [{"keda": "ScaledObject", "hpa": "HorizontalPodAutoscaler"}[scaling]]
    # An autoscaler owns the replica count: `helm upgrade` must not reset it.
    assert "replicas" not in video["spec"]


def test_keda_scales_video_on_the_gateways_clip_metrics():
    scaled = one(manifests("defaults"), "ScaledObject", VIDEO)
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    for metric in ("mvgen_clips_pending", "mvgen_clips_in_flight", "mvgen_jobs"):
        assert f'{metric}{{namespace="media",pod=~"{RELEASE}-gateway-.*"' in query
    assert trigger["metadata"]["threshold"] == "1"
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)
    assert scaled["spec"]["cooldownPeriod"] == 600
    zero = one(manifests("llm-scale-to-zero"), "ScaledObject", VIDEO)
    assert zero["spec"]["minReplicaCount"] == 0


def test_the_hpa_alternative_reads_the_external_clip_metric():
    hpa = one(manifests("video-hpa"), "HorizontalPodAutoscaler", VIDEO)
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "mvgen_video_clips_wanted"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}


@value_sets
def test_cpu_stages_scale_on_cpu_and_the_gateway_stays_single(value_set):
    docs = manifests(value_set)
    values = values_for(VALUE_SETS[value_set])
    for stage in ("segmentation", "analysis", "scripting", "assembly", "review"):
        enabled = values.get(stage, {}).get("autoscaling", {}).get("enabled", True)
        hpas = find(docs, "HorizontalPodAutoscaler", f"{RELEASE}-{stage}")
        assert len(hpas) == enabled
        if enabled:
            assert hpas[0]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
            assert "replicas" not in one(docs, "Deployment", f"{RELEASE}-{stage}")["spec"]
    gateway = one(docs, "Deployment", f"{RELEASE}-gateway")
    assert gateway["spec"]["replicas"] == 1
    assert gateway["spec"]["strategy"]["type"] == "Recreate"
    assert not [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")
                and d["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-gateway"]


@value_sets
def test_the_gateway_reaches_every_replica_through_headless_services(value_set):
    docs = manifests(value_set)
    gateway = deployment_container(docs, f"{RELEASE}-gateway")
    services = {d["metadata"]["name"]: d for d in find(docs, "Service")}
    for stage, port in STAGE_PORTS.items():
        service_name = f"{RELEASE}-{stage}-headless" if stage == "video" else f"{RELEASE}-{stage}"
        assert env_value(gateway, f"MVGEN_{stage.upper()}_ADDR") == f"dns:///{service_name}:{port}"
        service = services[service_name]
        assert service["spec"]["clusterIP"] == "None"
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        assert service["spec"]["selector"].items() <= spec_labels(docs, f"{RELEASE}-{stage}").items()
    # What jobs may choose is what the services load: the scripting service's backends are the
    # gateway's writers and, for the LALM pipeline, its storytellers; the analysis service's are its
    # analysers and its lyrics transcribers.
    video = deployment_container(docs, f"{RELEASE}-video")
    assert env_value(gateway, "MVGEN_GENERATORS") == env_value(video, "MVGEN_BACKENDS")
    for stage, (main, apart), kinds in (
            ("scripting", ("MVGEN_WRITERS", "MVGEN_STORYTELLERS"), {"openai-audio", "cascade"}),
            ("analysis", ("MVGEN_ANALYZERS", "MVGEN_TRANSCRIBERS"), {"whisper"})):
        loaded = env_value(deployment_container(docs, f"{RELEASE}-{stage}"), "MVGEN_BACKENDS").split(",")
        offered_apart = env_of(gateway).get(apart, {"value": ""})["value"]
        assert env_value(gateway, main).split(",") == [b for b in loaded if b not in kinds]
        assert (offered_apart.split(",") if offered_apart else []) == [b for b in loaded if b in kinds]


# ---------------------------------------------------------------------------- probes and hardening

@value_sets
def test_mvgen_services_are_probed_with_grpc_health(value_set):
    docs = manifests(value_set)
    deployments = [d for d in find(docs, "Deployment") if component(d) in MVGEN_COMPONENTS]
    assert {component(d) for d in deployments} == MVGEN_COMPONENTS
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
        assert int(env_value(container, "MVGEN_PORT")) == grpc_port
        tls = component(deployment) == "gateway" and gateway_tls(value_set)
        for probe in PROBES:
            # Native gRPC probes speak plain text only: a TLS gateway is probed by a command instead.
            assert ("exec" if tls else "grpc") in container[probe], (deployment["metadata"]["name"], probe)
            if not tls:
                assert container[probe]["grpc"] == {"port": grpc_port}, (deployment["metadata"]["name"], probe)
        if not tls:
            assert not {e["name"] for e in container["env"]} & {"MVGEN_TLS_CERT_FILE", "MVGEN_TLS_KEY_FILE"}


# ---------------------------------------------------------------------------- gateway TLS

@pytest.fixture(scope="module")
def server_certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the gateway Service's in-cluster name, and its key (PEM files)."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"), [f"{GATEWAY}.{NAMESPACE}.svc"])


def test_with_tls_the_gateway_mounts_its_certificate_and_reads_it_from_the_env():
    docs = manifests("gateway-tls")
    spec = one(docs, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volume = {v["name"]: v for v in spec["volumes"]}["gateway-tls"]["secret"]
    assert volume["secretName"] == "mvgen-gateway-tls"
    assert [(i["key"], i["path"]) for i in volume["items"]] == [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]
    mount = {m["name"]: m for m in container["volumeMounts"]}["gateway-tls"]
    assert mount["readOnly"] is True
    assert env_value(container, "MVGEN_TLS_CERT_FILE") == f"{mount['mountPath']}/tls.crt"
    assert env_value(container, "MVGEN_TLS_KEY_FILE") == f"{mount['mountPath']}/tls.key"
    assert env_value(container, "MVGEN_TLS_SERVER_NAME") == f"{GATEWAY}.{NAMESPACE}.svc"
    # Only the gateway changes: no other pod mounts the certificate.
    for name, other in pod_specs(docs):
        if name != f"Deployment/{GATEWAY}":
            assert "gateway-tls" not in {v["name"] for v in other.get("volumes", [])}, name
    # By default none of it is rendered; serverName replaces the Service's name.
    default = one(manifests("defaults"), "Deployment", GATEWAY)["spec"]["template"]["spec"]
    assert "gateway-tls" not in {v["name"] for v in default["volumes"]}
    named = tuple(documents(render({"gateway": {"tls": {"enabled": True, "secretName": "cert",
                                                        "serverName": "mvgen.example.com"}}})))
    assert env_value(deployment_container(named, GATEWAY), "MVGEN_TLS_SERVER_NAME") == "mvgen.example.com"


def test_with_tls_the_gateway_probes_run_a_tls_health_check(server_certificate):
    """Each probe's command, run against a grpc.health.v1 server that serves TLS with a certificate like
    the Secret's: passes while SERVING, fails while NOT_SERVING, in plain text or for another name."""
    container = deployment_container(manifests("gateway-tls"), GATEWAY)
    commands = {probe: container[probe]["exec"]["command"] for probe in PROBES}
    for probe, command in commands.items():
        assert "grpc" not in container[probe], probe
        assert command[:2] == ["python", "-c"], probe
        assert "secure_channel('127.0.0.1:'" in command[2] and "insecure_channel" not in command[2], probe
        deadline = re.search(r"timeout=(\d+)", command[2])
        assert deadline and int(deadline[1]) < container[probe]["timeoutSeconds"], probe

    cert, key = server_certificate
    status = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(status, server)
    tls_port = server.add_secure_port("127.0.0.1:0",
                                      grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())]))
    plain_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def probe(command: list[str], port: int, server_name: str = env_value(container, "MVGEN_TLS_SERVER_NAME")) -> int:
        env = {**os.environ, "MVGEN_PORT": str(port), "MVGEN_TLS_CERT_FILE": str(cert),
               "MVGEN_TLS_SERVER_NAME": server_name}
        return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode

    try:
        status.set("", health_pb2.HealthCheckResponse.SERVING)
        for name, command in commands.items():
            assert probe(command, tls_port) == 0, name
        readiness = commands["readinessProbe"]
        assert probe(readiness, plain_port) != 0
        assert probe(readiness, tls_port, server_name="another.example.com") != 0
        status.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe(readiness, tls_port) != 0
    finally:
        server.stop(None)


@value_sets
def test_no_container_runs_as_root_or_keeps_privileges(value_set):
    for name, spec in pod_specs(manifests(value_set)):
        pod = spec["securityContext"]
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        # Service links would inject <RELEASE>_<SERVICE>_PORT variables: MVGEN_VIDEO_PORT for release mvgen.
        assert spec["enableServiceLinks"] is False, name
        for container in containers(spec):
            context = container["securityContext"]
            assert context.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert context.get("runAsUser", pod.get("runAsUser")) == 10001, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["readOnlyRootFilesystem"] is True, name
            assert not context.get("privileged"), name
            # A read-only root filesystem needs a writable /tmp (HOME points there).
            assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, name


@value_sets
def test_every_container_has_requests_and_limits(value_set):
    for name, spec in pod_specs(manifests(value_set)):
        for container in containers(spec):
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][kind].keys(), (name, container["name"], kind)


@value_sets
def test_no_secret_values_are_rendered(value_set):
    docs = manifests(value_set)
    assert not find(docs, "Secret")
    for name, spec in pod_specs(docs):
        for container in containers(spec):
            for variable in container.get("env", []):
                if SECRET_ENV.search(variable["name"]):
                    assert "value" not in variable, (name, variable["name"])
                    assert variable["valueFrom"]["secretKeyRef"]["name"], (name, variable["name"])
    gateway = one(docs, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]
    tokens = deployment_container(docs, f"{RELEASE}-gateway")
    secret_volume = {v["name"]: v for v in gateway["volumes"]}["gateway-tokens"]["secret"]
    assert secret_volume["secretName"] == f"{RELEASE}-gateway-tokens"
    assert env_value(tokens, "MVGEN_GATEWAY_TOKENS_FILE") == "/etc/mvgen/gateway-tokens/tokens-sha256"


@value_sets
def test_the_gateway_and_every_stage_share_the_stage_secret_from_a_secret(value_set):
    docs = manifests(value_set)
    deployments = [d for d in find(docs, "Deployment") if component(d) in MVGEN_COMPONENTS]
    assert {component(d) for d in deployments} == MVGEN_COMPONENTS
    for deployment in deployments:
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["MVGEN_STAGE_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-stage-secret",
                                                                          "key": "stage-secret"}
        assert "MVGEN_STAGE_AUTH" not in env, deployment["metadata"]["name"]


def test_stage_authentication_names_its_secret_or_is_turned_off_for_every_service():
    named = {"stageAuth": {"existingSecret": "stage-auth", "key": "shared"}}
    off = {"stageAuth": {"enabled": False}}
    for values in (named, off):
        docs = tuple(documents(render(values_for([values]))))
        for deployment in [d for d in find(docs, "Deployment") if component(d) in MVGEN_COMPONENTS]:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            if values is named:
                assert env_of(container)["MVGEN_STAGE_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "stage-auth",
                                                                                                "key": "shared"}
            else:
                assert "MVGEN_STAGE_SECRET" not in env_of(container)
                assert env_value(container, "MVGEN_STAGE_AUTH") == "none"


# ---------------------------------------------------------------------------- storage, prompts, models

def test_external_s3_replaces_minio():
    docs = manifests("external-s3")
    assert not [d for d in docs if component(d) in ("minio", "minio-setup")]
    video = deployment_container(docs, VIDEO)
    assert env_value(video, "MVGEN_S3_ENDPOINT") == "https://s3.eu-west-1.amazonaws.com"
    assert env_of(video)["MVGEN_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "mvgen-s3",
                                                                                 "key": "secret-key"}
    defaults = manifests("defaults")
    assert env_value(deployment_container(defaults, VIDEO), "MVGEN_S3_ENDPOINT") == f"http://{RELEASE}-minio:9000"
    minio = deployment_container(defaults, f"{RELEASE}-minio")
    assert minio["image"] == "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"


def test_prompts_and_label_sets_come_from_the_repository_as_config_maps():
    docs = manifests("defaults")
    labels = one(docs, "ConfigMap", f"{RELEASE}-labels")["data"]
    prompts = one(docs, "ConfigMap", f"{RELEASE}-prompts")["data"]
    assert labels == {p.name: p.read_text() for p in (REPO / "prompts" / "labels").glob("*.yaml")}
    assert prompts == {p.name: p.read_text() for p in (REPO / "prompts").iterdir() if p.is_file()}
    # The review judges scenes by prompts/scene_rules.yaml and reads prompts/review.yaml.
    for stage in ("analysis", "scripting", "review"):
        spec = one(docs, "Deployment", f"{RELEASE}-{stage}")["spec"]["template"]["spec"]
        container = spec["containers"][0]
        mount = {m["name"]: m for m in container["volumeMounts"]}["prompts"]
        assert env_value(container, "MVGEN_PROMPTS_DIR") == mount["mountPath"]
        sources = {v["name"]: v for v in spec["volumes"]}["prompts"]["projected"]["sources"]
        assert sources[0]["configMap"] == {"name": f"{RELEASE}-prompts"}
        assert {i["path"] for i in sources[1]["configMap"]["items"]} == {f"labels/{name}" for name in labels}
    # The gateway holds a revision's scene texts (ReviseJob) to prompts/scene_rules.yaml, the scripting stage's.
    spec = one(docs, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]
    mount = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}["prompts"]
    assert env_value(spec["containers"][0], "MVGEN_PROMPTS_DIR") == mount["mountPath"]
    sources = {v["name"]: v for v in spec["volumes"]}["prompts"]["projected"]["sources"]
    assert sources == [{"configMap": {"name": f"{RELEASE}-prompts"}}]


def test_an_edited_prompt_reaches_the_config_map_and_restarts_its_readers():
    before = manifests("defaults")
    after = tuple(documents(render({"prompts": {"labelSets": {"mood.yaml": "group: mood\n"}}})))
    assert one(after, "ConfigMap", f"{RELEASE}-labels")["data"]["mood.yaml"] == "group: mood\n"

    def checksum(docs, stage):
        return one(docs, "Deployment", f"{RELEASE}-{stage}")["spec"]["template"]["metadata"]["annotations"][
            "checksum/prompts"]

    for stage in ("analysis", "scripting", "review"):
        assert checksum(before, stage) != checksum(after, stage)
    rules = tuple(documents(render({"prompts": {"files": {"scene_rules.yaml": "rules: []\n"}}})))
    assert checksum(before, "gateway") != checksum(rules, "gateway")


def test_scripting_points_at_the_vllm_servers():
    docs = manifests("llm-scale-to-zero")
    scripting = deployment_container(docs, f"{RELEASE}-scripting")
    assert env_value(scripting, "MVGEN_LLM_URL") == f"http://{RELEASE}-llm:8000/v1"
    assert env_value(scripting, "MVGEN_LLM_MODEL") == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert env_of(scripting)["MVGEN_LLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "llm-api-key"
    assert env_value(scripting, "MVGEN_LALM_URL") == f"http://{RELEASE}-lalm:8000/v1"
    assert env_value(scripting, "MVGEN_LALM_MODEL") == "Qwen/Qwen2.5-Omni-7B"
    assert env_value(scripting, "MVGEN_BACKENDS") == "openai,openai-audio,template"
    gateway = deployment_container(docs, f"{RELEASE}-gateway")
    assert (env_value(gateway, "MVGEN_WRITERS"), env_value(gateway, "MVGEN_STORYTELLERS")) == (
        "openai,template", "openai-audio")
    for name in ("llm", "lalm"):
        server = deployment_container(docs, f"{RELEASE}-{name}")
        assert server["args"][0] == env_value(scripting, f"MVGEN_{name.upper()}_MODEL")
        assert server["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert one(docs, "Service", f"{RELEASE}-{name}")["spec"]["ports"][0]["port"] == 8000
    assert not [d for d in manifests("defaults") if component(d) in ("llm", "lalm")]
    assert "MVGEN_LLM_URL" not in env_of(deployment_container(manifests("defaults"), f"{RELEASE}-scripting"))


def test_each_llm_servers_context_is_told_to_the_scripting_service_and_holds_its_longest_reply():
    """Issue 18 item 2: the scripting service cuts each request's max_tokens to what the served context leaves
    after the prompt; the chart tells it the context it serves (--max-model-len) and a max_tokens that leaves
    room for the longest prompt (a section's ~3k tokens; a 300 s audio window's 7500 + its text)."""
    docs = manifests("llm-scale-to-zero")
    scripting = deployment_container(docs, f"{RELEASE}-scripting")
    for name, prompt in (("llm", 3000), ("lalm", 7500 + 1500)):
        server = deployment_container(docs, f"{RELEASE}-{name}")
        context = int(next(a for a in server["args"] if a.startswith("--max-model-len=")).split("=")[1])
        assert int(env_value(scripting, f"MVGEN_{name.upper()}_CONTEXT_TOKENS")) == context
        assert int(env_value(scripting, f"MVGEN_{name.upper()}_MAX_TOKENS")) + prompt <= context
    with pytest.raises(helm.HelmError, match=r"llm.maxTokens \(16384\) must be less than llm.maxModelLen"):
        render({"llm": {"enabled": True, "maxTokens": 16384}})


def test_deepseek_r1_is_served_with_its_reasoning_parser_and_the_audio_model_without():
    """Issue 18 item 3: without --reasoning-parser the JSON schema constrains DeepSeek-R1 from its first token,
    and the reasoning model answers without reasoning."""
    docs = manifests("llm-scale-to-zero")
    assert "--reasoning-parser=deepseek_r1" in deployment_container(docs, f"{RELEASE}-llm")["args"]
    assert not [a for a in deployment_container(docs, f"{RELEASE}-lalm")["args"] if a.startswith("--reasoning-parser")]
    plain = tuple(documents(render({"llm": {"enabled": True, "reasoningParser": ""}})))
    assert not [a for a in deployment_container(plain, f"{RELEASE}-llm")["args"] if a.startswith("--reasoning-parser")]


# ---------------------------------------------------------------------------- network policies

def test_only_the_gateway_is_reachable_from_outside():
    docs = manifests("llm-scale-to-zero")
    policies = {component(d): d["spec"] for d in find(docs, "NetworkPolicy")}
    protected = {component(d) for d in find(docs, "Deployment")}
    assert policies.keys() == protected
    gateway_pods = {"matchLabels": {k: v for k, v in spec_labels(docs, f"{RELEASE}-gateway").items()
                                    if k in policies["gateway"]["podSelector"]["matchLabels"]}}

    def sources(spec):
        return [peer for rule in spec["ingress"] for peer in rule["from"]]

    for stage in STAGE_PORTS:
        assert [p["podSelector"] for p in sources(policies[stage])] == [gateway_pods], stage
    for name in ("llm", "lalm"):
        [peer] = sources(policies[name])
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "scripting"
    [minio_peer] = sources(policies["minio"])
    assert minio_peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mvgen",
                                                        "app.kubernetes.io/instance": RELEASE}
    # The gateway's gRPC port is the one rule without a source restriction.
    open_rules = [rule for spec in policies.values() for rule in spec["ingress"] if "from" not in rule]
    assert open_rules == [{"ports": [{"port": "grpc", "protocol": "TCP"}]}]


# ---------------------------------------------------------------------------- values and validity

@pytest.mark.parametrize("values", [
    {"video": {"autoscaling": {"type": "both"}}},
    {"gateway": {"replicaCount": 2}},
    {"video": {"resources": {"limits": None}}},
    {"analysis": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}},
    {"scripting": {"backends": ["gpt"]}},
    {"video": {"containerSecurityContext": {"runAsUser": 0}}},
    {"containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}}},
    {"modelCache": {"type": "nfs"}},
    {"vidoe": {}},
    {"gateway": {"tls": {"enabled": True}}},
    {"gateway": {"tls": {"enabled": True, "secretName": ""}}},
    {"gateway": {"tls": {"enabled": "yes", "secretName": "cert"}}},
], ids=lambda v: str(v))
def test_the_values_schema_rejects_bad_values(values):
    with pytest.raises(helm.HelmValuesError):
        render(values)


@pytest.mark.parametrize(("values", "message"), [
    ({"minio": {"enabled": False}}, "set s3.endpoint"),
    ({"scripting": {"backends": ["openai"]}}, "set llm.enabled=true or llm.url"),
    ({"scripting": {"backends": ["openai-audio"]}, "lalm": {"enabled": True}}, "needs a script writer"),
    ({"scripting": {"backends": ["cascade"]}}, "needs a script writer besides the storytellers"),
    ({"analysis": {"backends": ["whisper"]}}, "needs an analyser besides whisper"),
    ({"video": {"autoscaling": {"type": "hpa", "scaleToZero": True}}}, "scaleToZero needs"),
    ({"video": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}, "minReplicas is above maxReplicas"),
])
def test_contradicting_values_stop_the_render_with_a_message(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_tls_without_a_certificate_stops_even_a_render_without_the_schema(tmp_path):
    # `helm install --skip-schema-validation`: the chart's own check still names what is missing.
    unchecked = tmp_path / "mvgen"
    shutil.copytree(CHART, unchecked, ignore=shutil.ignore_patterns("values.schema.json"))
    with (helm.Chart.load(unchecked) as chart,
          pytest.raises(helm.HelmError, match="gateway.tls.enabled needs gateway.tls.secretName")):
        chart.render({"gateway": {"tls": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def test_the_default_values_pass_the_schema():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values_for(VALUE_SETS["defaults"]))


@pytest.mark.parametrize("value_set", ["defaults", "llm-scale-to-zero", "gateway-tls"])
def test_rendered_manifests_validate_strictly(value_set):
    problems = [p for doc in manifests(value_set) for p in validation_problems(doc)]
    assert problems == [], f"kubernetes-validate --strict (k8s {', '.join(KUBE_VERSIONS)}) and CRD schemas"


@pytest.mark.slow
def test_k8s_check_passes_on_every_value_set(capsys):
    """What `make k8s-check` runs before these tests (helm lint --strict, kubernetes-validate --strict
    on every value set, yamllint), so that `make test` covers all of it."""
    from k8s.chart_check import main as k8s_check

    assert k8s_check() == 0, capsys.readouterr().out
