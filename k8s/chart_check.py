"""The Helm chart's offline checks (`make k8s-check`, `python -m k8s.chart_check`); no cluster needed.

For each value set in VALUE_SETS (the defaults, each video autoscaler, the example presets, gateway TLS):
1. lint: Helm v4's own linter, strict, through helm-python-sdk (values.schema.json included), for the
   oldest Kubernetes the chart supports and the newest whose schemas kubernetes-validate bundles;
2. render: `helm template` through helm-python-sdk, written to build/k8s/<set>.yaml;
3. validate every manifest with kubernetes-validate in strict mode (unknown fields fail), for the same
   two Kubernetes versions. It bundles the built-in kinds only: the two CRD kinds the chart writes
   (KEDA's ScaledObject, the Prometheus operator's ServiceMonitor) are validated against
   k8s/schemas/*.json, written from their API references; any other kind without a schema fails;
4. yamllint (.yamllint) Chart.yaml, values.yaml, the examples and every rendered file. The templates
   themselves are Go templates, not YAML: their output is what gets linted.

The tests (tests/test_k8s_chart.py) render the same value sets through `render()` below.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import yaml
from yamllint import config as yamllint_config
from yamllint import linter as yamllint_linter

K8S = Path(__file__).resolve().parent
REPO = K8S.parent
CHART = K8S / "mvgen"
EXAMPLES = CHART / "examples"
OUT = REPO / "build" / "k8s"
RELEASE = "mv"
NAMESPACE = "media"
# The chart's kubeVersion floor (native gRPC probes) and the newest the bundled schemas cover.
KUBE_VERSIONS = ("1.27.0", kv.latest_version())
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "scaledobject-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): K8S / "schemas" / "servicemonitor-monitoring-v1.json",
}

# name -> values layered in order, as `helm install -f a.yaml -f b.yaml --set ...` would.
VALUE_SETS: dict[str, list[Path | dict[str, Any]]] = {
    "defaults": [],
    "video-hpa": [{"video": {"autoscaling": {"type": "hpa"}}}],
    "video-manual": [{"video": {"autoscaling": {"type": "none"}, "replicaCount": 3},
                      "segmentation": {"autoscaling": {"enabled": False}}, "networkPolicy": {"enabled": False}}],
    "external-s3": [EXAMPLES / "values-external-s3.yaml"],
    "wan14b": [EXAMPLES / "values-wan14b.yaml"],
    "llm-scale-to-zero": [EXAMPLES / "values-llm.yaml",
                          {"video": {"autoscaling": {"scaleToZero": True}},
                           "metrics": {"serviceMonitor": {"enabled": True}},
                           "modelCache": {"type": "hostPath"},
                           "huggingface": {"existingSecret": "hf-token"},
                           "llm": {"apiKey": {"existingSecret": "llm-api-key"}},
                           "gpu": {"runtimeClassName": "nvidia"}}],
    "gateway-tls": [{"gateway": {"tls": {"enabled": True, "secretName": "mvgen-gateway-tls"},
                                 "service": {"type": "LoadBalancer"}}}],
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def values_for(layers: list[Path | dict[str, Any]]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for layer in layers:
        # Helm's own YAML reader: the same parse `-f file` gets.
        override = helm.values_from_yaml(layer.read_text()) if isinstance(layer, Path) else layer
        values = deep_merge(values, override)
    return values


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text (NOTES.txt included), for RELEASE in NAMESPACE."""
    return chart().render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests_text(rendered: dict[str, str]) -> str:
    """One multi-document YAML file, as `helm template` prints it."""
    parts = [f"---\n# Source: {path}\n{text.strip()}\n" for path, text in sorted(rendered.items())
             if not path.endswith("NOTES.txt") and text.strip()]
    return "".join(parts)


def documents(rendered: dict[str, str]) -> Iterator[dict[str, Any]]:
    for path, text in sorted(rendered.items()):
        if not path.endswith("NOTES.txt"):
            yield from (doc for doc in yaml.safe_load_all(text) if doc)


def lint_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    for version in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{version}")
        # Severity 1 is information (e.g. "icon is recommended"); strict lint fails on warnings too.
        # "errors" repeats the messages' errors, and may hold others (a chart that does not load).
        messages = {m["error"].strip(): m["path"] for m in report["messages"] if m["severity"] >= 2}
        messages.update({e.strip(): "chart" for e in report["errors"] if e.strip() not in messages})
        problems += [f"helm lint (k8s {version}): {path}: {error}" for error, path in messages.items()]
    return problems


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads(CRD_SCHEMAS[(api_version, kind)].read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validation_problems(doc: dict[str, Any]) -> list[str]:
    """kubernetes-validate --strict for each of KUBE_VERSIONS; the chart's schemas for CRD kinds."""
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        return [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd_validator(*key).iter_errors(doc)]
    problems = []
    for version in KUBE_VERSIONS:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            problems.append(f"{name} (k8s {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {key[0]} {key[1]} in Kubernetes {version}")
    return problems


def yamllint_problems(path: Path, text: str | None = None) -> list[str]:
    conf = yamllint_config.YamlLintConfig(file=str(REPO / ".yamllint"))
    text = path.read_text() if text is None else text
    return [f"{path.relative_to(REPO)}:{p.line}:{p.column}: {p.desc} ({p.rule})"
            for p in yamllint_linter.run(text, conf, str(path.relative_to(REPO)))]


def main() -> int:
    started = time.monotonic()
    OUT.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for path in [CHART / "Chart.yaml", CHART / "values.yaml", *sorted(EXAMPLES.glob("*.yaml"))]:
        failures += yamllint_problems(path)
    for name, layers in VALUE_SETS.items():
        values = values_for(layers)
        problems = lint_problems(values)
        try:
            rendered = render(values)
        except helm.HelmError as exc:
            failures += problems + [f"{name}: render failed: {exc}"]
            continue
        out = OUT / f"{name}.yaml"
        out.write_text(manifests_text(rendered))
        docs = list(documents(rendered))
        for doc in docs:
            problems += validation_problems(doc)
        problems += yamllint_problems(out)
        kinds = sorted({d["kind"] for d in docs})
        print(f"{'FAIL' if problems else 'ok  '} {name}: {len(docs)} objects ({', '.join(kinds)}) -> "
              f"{out.relative_to(REPO)}")
        failures += [f"{name}: {p}" for p in problems]
    for failure in failures:
        print("  " + failure)
    print(f"k8s-check: {'FAILED' if failures else 'passed'}: helm lint --strict, render, kubernetes-validate "
          f"--strict (k8s {' and '.join(KUBE_VERSIONS)}), CRD schemas, yamllint; "
          f"{len(VALUE_SETS)} value sets in {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
