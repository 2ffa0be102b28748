#!/usr/bin/env python3
"""Lints, renders and validates the Helm chart without a helm binary or a cluster.

helm-python-sdk (PyPI) bundles the official Helm library; kubernetes-validate (PyPI) bundles the
Kubernetes API schemas. Both are installed by deploy/local/install.sh into .local/venv.

    chart.py lint                        helm lint --strict; exit 1 on any finding
    chart.py render [-f VALUES]... [--set-json PATH=JSON]... [--name N] [--namespace NS] [--json]
                                         the manifests, as YAML documents (or a JSON list)
    chart.py validate [-f VALUES]...     render, then check every manifest of a core kind against
                                         the Kubernetes schemas, strictly (unknown fields fail)
    chart.py check                       lint, then validate the default, production and monolith
                                         renders: what `make chart` runs
"""
import argparse
import json
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "one-agents"
KUBE_VERSION = "1.33.0"
# Kinds that Kubernetes does not define: their CRDs' schemas are not bundled; the object test
# (tests/chart.rs) checks what the chart puts in them.
CRD_KINDS = {"ScaledObject", "Certificate", "ServiceMonitor", "PrometheusRule"}


def fail(message):
    print(f"chart: {message}", file=sys.stderr)
    sys.exit(1)


def deep_merge(base, override):
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def set_path(values, path, value):
    keys = path.split(".")
    for key in keys[:-1]:
        values = values.setdefault(key, {})
    values[keys[-1]] = value


def load_values(files, sets):
    values = {}
    for file in files or []:
        deep_merge(values, yaml.safe_load(pathlib.Path(file).read_text()) or {})
    for assignment in sets or []:
        path, _, raw = assignment.partition("=")
        set_path(values, path, json.loads(raw))
    return values


def render(values, name="one-agents", namespace="default"):
    """Every manifest the chart renders with `values`, as (template, object) pairs. Values that
    break values.schema.json fail here, naming the field."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        try:
            chart.validate_schema(values)
            rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
        except helm.HelmError as error:
            fail(str(error))
    objects = []
    for template, text in sorted(rendered.items()):
        if not template.endswith((".yaml", ".yml")):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append((template, document))
    return objects


def validate(objects):
    import kubernetes_validate

    problems = []
    for template, obj in objects:
        kind = obj.get("kind", "?")
        if kind in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            where = ".".join(str(p) for p in error.path)
            problems.append(f"{template}: {kind} {obj['metadata'].get('name')}: {where}: {error.message}")
        except Exception as error:  # a kind with no schema is a problem too
            problems.append(f"{template}: {kind}: {error}")
    return problems


def lint(values=None):
    import helm_python as helm

    report = helm.lint(str(CHART), values or {}, strict=True)
    findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    findings += [{"severity": 3, "path": "", "error": e} for e in report.get("errors", []) or []]
    return findings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lint", "render", "validate", "check"])
    parser.add_argument("-f", "--values", action="append", help="a values file (repeatable)")
    parser.add_argument("--set-json", action="append", help="PATH=JSON (repeatable)")
    parser.add_argument("--name", default="one-agents")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--json", action="store_true", help="render as a JSON list of {template, object}")
    args = parser.parse_args()
    values = load_values(args.values, args.set_json)

    if args.command == "lint":
        findings = lint(values)
        for finding in findings:
            print(f"lint: [{finding.get('severity')}] {finding.get('path')}: {finding.get('error')}", file=sys.stderr)
        sys.exit(1 if findings else 0)
    if args.command == "render":
        objects = render(values, args.name, args.namespace)
        if args.json:
            json.dump([{"template": t, "object": o} for t, o in objects], sys.stdout)
        else:
            for template, obj in objects:
                print(f"---\n# Source: {template}")
                print(yaml.safe_dump(obj, sort_keys=False), end="")
        return
    if args.command == "validate":
        problems = validate(render(values, args.name, args.namespace))
        for problem in problems:
            print(f"invalid: {problem}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    if args.command == "check":
        findings = lint()
        for finding in findings:
            print(f"lint: [{finding.get('severity')}] {finding.get('path')}: {finding.get('error')}", file=sys.stderr)
        if findings:
            sys.exit(1)
        print("chart: helm lint --strict is clean")
        cases = {
            "default values": {},
            "values-production.yaml": load_values([CHART / "values-production.yaml"], []),
            "monolith mode": {"mode": "monolith"},
            "values-local.yaml": load_values([CHART / "values-local.yaml"], []),
        }
        failed = False
        for label, case in cases.items():
            objects = render(case)
            problems = validate(objects)
            for problem in problems:
                print(f"invalid ({label}): {problem}", file=sys.stderr)
            failed |= bool(problems)
            print(f"chart: {label}: {len(objects)} objects rendered and validated")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
