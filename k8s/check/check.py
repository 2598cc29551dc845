#!/usr/bin/env python3
"""`make k8s-check`: validates the deployment files offline.

1. Renders every overlay under k8s/overlays/ with the pinned kubectl (kustomize).
2. Validates each rendered object against a schema, strictly (an unknown field is an
   error): built-in kinds against the Kubernetes JSON schemas of kubernetes-validate
   (KUBERNETES_VERSION), with the enums the API documents added to them; custom
   resources against the CRD schemas checked into schemas/ (see schemas/README.md).
   A kind with no schema is an error.
3. Runs policy checks across the objects of each overlay (POLICIES below): Services,
   disruption budgets and autoscalers point at workloads that exist; every
   long-running container has liveness and readiness probes; every container has
   requests and limits and runs non-root, read-only, without capabilities; images are
   pinned; no secret value is written into the manifests; ingress is denied by
   default and open to the world only on the gateway's and task-service's ports.
4. Lints deploy/Dockerfile with hadolint and validates deploy/docker-compose.yml
   against the Compose specification's JSON schema (schemas/compose-spec.json).

Exit 0 when everything passes, 1 with every problem listed otherwise. Run by
`make k8s-check` in the venv of k8s/check/install.sh; test_check.py seeds mistakes.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import pathlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import referencing
import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
SCHEMAS = HERE / "schemas"

# The Kubernetes version the manifests must be valid for: the oldest one we support.
KUBERNETES_VERSION = "1.32.0"

# Values of the built-in string fields that the Kubernetes API restricts to a set.
# kubernetes-validate's schemas come from the OpenAPI v2 document, which leaves them
# plain strings; the values are the ones each field's description (the Kubernetes
# 1.32 API reference) lists. Keyed by schema definition, then property; they are
# added to the schema, so they hold wherever the definition is used.
BUILTIN_ENUMS = {
    "io.k8s.api.core.v1.Container": {
        "imagePullPolicy": ["Always", "IfNotPresent", "Never"],
        "terminationMessagePolicy": ["File", "FallbackToLogsOnError"],
    },
    "io.k8s.api.core.v1.PodSpec": {
        "restartPolicy": ["Always", "OnFailure", "Never"],
        "dnsPolicy": ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        "preemptionPolicy": ["Never", "PreemptLowerPriority"],
    },
    "io.k8s.api.core.v1.ContainerPort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.ServicePort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.ServiceSpec": {
        "type": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        "sessionAffinity": ["ClientIP", "None"],
        "externalTrafficPolicy": ["Cluster", "Local"],
        "internalTrafficPolicy": ["Cluster", "Local"],
    },
    "io.k8s.api.core.v1.HTTPGetAction": {"scheme": ["HTTP", "HTTPS"]},
    "io.k8s.api.core.v1.SeccompProfile": {"type": ["Localhost", "RuntimeDefault", "Unconfined"]},
    "io.k8s.api.core.v1.TopologySpreadConstraint": {
        "whenUnsatisfiable": ["DoNotSchedule", "ScheduleAnyway"],
        "nodeAffinityPolicy": ["Honor", "Ignore"],
        "nodeTaintsPolicy": ["Honor", "Ignore"],
    },
    "io.k8s.api.core.v1.PersistentVolumeClaimSpec": {"volumeMode": ["Block", "Filesystem"]},
    "io.k8s.api.networking.v1.HTTPIngressPath": {
        "pathType": ["Exact", "Prefix", "ImplementationSpecific"],
    },
    "io.k8s.api.networking.v1.NetworkPolicyPort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.apps.v1.DeploymentStrategy": {"type": ["Recreate", "RollingUpdate"]},
    "io.k8s.api.apps.v1.StatefulSetSpec": {"podManagementPolicy": ["OrderedReady", "Parallel"]},
    "io.k8s.api.apps.v1.StatefulSetUpdateStrategy": {"type": ["OnDelete", "RollingUpdate"]},
    "io.k8s.api.batch.v1.CronJobSpec": {"concurrencyPolicy": ["Allow", "Forbid", "Replace"]},
    "io.k8s.api.batch.v1.JobSpec": {
        "completionMode": ["NonIndexed", "Indexed"],
        "podReplacementPolicy": ["TerminatingOrFailed", "Failed"],
    },
    "io.k8s.api.policy.v1.PodDisruptionBudgetSpec": {
        "unhealthyPodEvictionPolicy": ["IfHealthyBudget", "AlwaysAllow"],
    },
}
# Enums of list items: each item must be one of these.
BUILTIN_ITEM_ENUMS = {
    "io.k8s.api.networking.v1.NetworkPolicySpec": {"policyTypes": ["Ingress", "Egress"]},
    "io.k8s.api.core.v1.PersistentVolumeClaimSpec": {
        "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"],
    },
}

# Custom resources we have schemas for: (apiVersion, kind) -> file in schemas/.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-v1alpha1-ScaledObject.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io-v1-Cluster.json",
    ("postgresql.cnpg.io/v1", "ScheduledBackup"): "postgresql.cnpg.io-v1-ScheduledBackup.json",
}

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
# The only ports that pods outside the namespace may reach (pod name label -> port):
# the gateway's HTTP API and task-service's MCP endpoint. Operators' namespaces
# (KEDA reading NATS's monitoring port, CloudNativePG reaching its instances) are
# admitted by namespace name, which this allows too, as long as a rule names them.
PUBLIC_PORTS = {("gateway", 8080), ("task-service", 8001)}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
# Names of environment variables whose value must never be written in a manifest.
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")


def name_of(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name') or meta.get('generateName')}"


# ---------------------------------------------------------------- rendering

def render(kubectl: str, overlay: pathlib.Path) -> list[dict]:
    done = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"kubectl kustomize exited {done.returncode}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


# ---------------------------------------------------------------- schemas

@functools.lru_cache(maxsize=None)
def builtin_registry(version: str) -> tuple[str, referencing.Registry]:
    """The strict Kubernetes definitions of `version`, with BUILTIN_ENUMS added."""
    mm = kv_utils.major_minor(version)
    known = [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= mm]
    if not known:
        raise RuntimeError(f"kubernetes-validate has no schemas for Kubernetes {version}")
    schema_dir = f"kubernetes-json-schema/v{known[-1]}-local-strict"
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    defs = definitions["$defs"]
    for table, items in ((BUILTIN_ENUMS, False), (BUILTIN_ITEM_ENUMS, True)):
        for definition, props in table.items():
            for prop, values in props.items():
                # A typo in the tables must not silently check nothing.
                target = defs[definition]["properties"][prop]
                if items:
                    target = target["items"]
                target["enum"] = [*values, None]
    return schema_dir, referencing.Resource.from_contents(definitions) @ referencing.Registry()


def builtin_schema(obj: dict, version: str) -> dict | None:
    schema_dir, _ = builtin_registry(version)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", obj["apiVersion"])
    path = f"{schema_dir}/{obj['kind'].lower()}-{group_version}.json"
    try:
        return kv_utils.schema_contents(path, version)
    except FileNotFoundError:
        return None


def strict_crd_schema(node):
    """A CRD's openAPIV3Schema as a JSON Schema that refuses unknown fields, as the API
    server's structural pruning would drop them (silently: worse than an error)."""
    if isinstance(node, list):
        return [strict_crd_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: strict_crd_schema(value) for key, value in node.items()}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.pop("nullable", False) and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    preserve = node.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserve:
        node["additionalProperties"] = False
    return node


@functools.lru_cache(maxsize=None)
def crd_validator(file: str) -> jsonschema.protocols.Validator:
    schema = strict_crd_schema(json.loads((SCHEMAS / file).read_text()))
    return jsonschema.Draft7Validator(schema)


def validate_object(obj: dict, version: str, where: str, report: Report) -> None:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        validator = crd_validator(CRD_SCHEMAS[key])
    else:
        schema = builtin_schema(obj, version) if all(key) else None
        if schema is None:
            report.fail(where, f"no schema for {key[0]} {key[1]}: add its CRD's schema to "
                               "k8s/check/schemas and CRD_SCHEMAS")
            return
        _, registry = builtin_registry(version)
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in error.absolute_path) or "(top)"
        report.fail(where, f"schema: {path}: {error.message}")


# ---------------------------------------------------------------- policy

def pod_spec(obj: dict) -> dict | None:
    spec = obj.get("spec") or {}
    if obj["kind"] in WORKLOAD_KINDS or obj["kind"] == "Job":
        return (spec.get("template") or {}).get("spec")
    if obj["kind"] == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    if obj["kind"] == "Pod":
        return spec
    return None


def pod_labels(obj: dict) -> dict | None:
    """Labels of the pods an object runs, for the selectors that must find them."""
    if obj["kind"] in WORKLOAD_KINDS:
        return ((obj["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    if obj["kind"] == "Cluster" and obj["apiVersion"].startswith("postgresql.cnpg.io/"):
        # CloudNativePG labels the pods of a Cluster with its name.
        return {"cnpg.io/cluster": obj["metadata"]["name"]}
    return None


def selects(selector: dict, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) matches labels."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def check_references(objs: list[dict], overlay: str, report: Report) -> None:
    pods = [(obj, pod_labels(obj)) for obj in objs if pod_labels(obj) is not None]
    by_kind_name = {(obj["kind"], obj["metadata"]["name"]) for obj in objs}

    def matching(selector):
        return [obj for obj, labels in pods if selects(selector, labels)]

    for obj in objs:
        where = f"{overlay} {name_of(obj)}"
        kind, spec = obj["kind"], obj.get("spec") or {}
        if kind == "Service":
            selector = spec.get("selector")
            if not selector:
                report.fail(where, "the Service has no selector")
                continue
            targets = matching({"matchLabels": selector})
            if not targets:
                report.fail(where, f"the selector {selector} matches no workload's pods")
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                if isinstance(target, str):
                    for workload in targets:
                        named = {p.get("name") for c in pod_spec(workload)["containers"]
                                 for p in c.get("ports") or []}
                        if target not in named:
                            report.fail(where, f"targetPort {target!r} is not a port of "
                                               f"{name_of(workload)}")
        elif kind == "PodDisruptionBudget":
            if not matching(spec.get("selector") or {}):
                report.fail(where, "the selector matches no workload's pods")
        elif kind == "NetworkPolicy":
            selector = spec.get("podSelector") or {}
            # An empty podSelector (every pod) is the default-deny policy.
            if selector and not matching(selector):
                report.fail(where, "the podSelector matches no workload's pods")
        elif kind == "ScaledObject":
            target = spec.get("scaleTargetRef") or {}
            if (target.get("kind", "Deployment"), target.get("name")) not in by_kind_name:
                report.fail(where, f"scaleTargetRef {target} names no workload here")
        elif kind == "ScheduledBackup":
            cluster = (spec.get("cluster") or {}).get("name")
            if ("Cluster", cluster) not in by_kind_name:
                report.fail(where, f"cluster {cluster!r} is not a Cluster here")

    budgets = [obj for obj in objs if obj["kind"] == "PodDisruptionBudget"]
    for obj, labels in pods:
        if obj["kind"] in WORKLOAD_KINDS and not any(
            selects(b["spec"].get("selector") or {}, labels) for b in budgets
        ):
            report.fail(f"{overlay} {name_of(obj)}", "no PodDisruptionBudget covers its pods")


def check_network(objs: list[dict], overlay: str, report: Report) -> None:
    """Ingress is denied by default, and opened to every source only on PUBLIC_PORTS."""
    policies = [obj for obj in objs if obj["kind"] == "NetworkPolicy"]
    if not any(not (p["spec"].get("podSelector") or {}) and "Ingress" in
               (p["spec"].get("policyTypes") or []) and not p["spec"].get("ingress")
               for p in policies):
        report.fail(overlay, "no default-deny ingress NetworkPolicy (podSelector {}, no rules)")
    for policy in policies:
        where = f"{overlay} {name_of(policy)}"
        target = ((policy["spec"].get("podSelector") or {}).get("matchLabels") or {}).get(
            "app.kubernetes.io/name")
        for rule in policy["spec"].get("ingress") or []:
            sources = rule.get("from") or []
            open_to_all = not sources or any(
                "ipBlock" in source or source.get("namespaceSelector") == {} for source in sources)
            if not open_to_all:
                continue
            ports = [p.get("port") for p in rule.get("ports") or []]
            if not ports:
                report.fail(where, "a rule admits every source on every port")
            for port in ports:
                if (target, port) not in PUBLIC_PORTS:
                    report.fail(where, f"port {port} of {target} is open outside the namespace")


def check_pods(objs: list[dict], overlay: str, report: Report) -> None:
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = f"{overlay} {name_of(obj)}"
        long_running = obj["kind"] in WORKLOAD_KINDS
        pod_security = spec.get("securityContext") or {}
        if pod_security.get("runAsUser") == 0:
            report.fail(where, "the pod runs as root (runAsUser 0)")
        containers = [("container", c) for c in spec.get("containers") or []]
        containers += [("init container", c) for c in spec.get("initContainers") or []]
        for role, container in containers:
            cwhere = f"{where} {role} {container.get('name')}"
            security = container.get("securityContext") or {}
            merged = {**pod_security, **security}
            if merged.get("runAsNonRoot") is not True:
                report.fail(cwhere, "runAsNonRoot is not true")
            if merged.get("runAsUser") == 0:
                report.fail(cwhere, "runs as root (runAsUser 0)")
            if security.get("allowPrivilegeEscalation") is not False:
                report.fail(cwhere, "allowPrivilegeEscalation is not false")
            if security.get("readOnlyRootFilesystem") is not True:
                report.fail(cwhere, "readOnlyRootFilesystem is not true")
            if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                report.fail(cwhere, "capabilities do not drop ALL")
            if (merged.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                report.fail(cwhere, "seccompProfile is not RuntimeDefault")
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(bound) or {}):
                        report.fail(cwhere, f"no {bound}.{resource}")
            image = container.get("image") or ""
            if not re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image.split("/")[-1]):
                report.fail(cwhere, f"image {image!r} has no tag or digest (set `images:`)")
            elif image.endswith(":latest"):
                report.fail(cwhere, f"image {image!r} is not pinned (:latest)")
            for env in container.get("env") or []:
                if "value" in env and SECRET_NAME.search(env["name"]):
                    report.fail(cwhere, f"env {env['name']} has a literal value: reference a Secret")
            if long_running and role == "container":
                named = {p.get("name") for p in container.get("ports") or []}
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        report.fail(cwhere, f"no {probe}")
                        continue
                    port = ((container[probe].get("httpGet") or container[probe].get("tcpSocket")
                             or {}).get("port"))
                    if isinstance(port, str) and port not in named:
                        report.fail(cwhere, f"{probe} port {port!r} is not a port of the container")
                grace = spec.get("terminationGracePeriodSeconds", 30)
                for env in container.get("env") or []:
                    if env["name"] == "SHUTDOWN_GRACE_SECS" and int(env.get("value", 25)) >= grace:
                        report.fail(cwhere, f"SHUTDOWN_GRACE_SECS {env['value']} is not under "
                                            f"terminationGracePeriodSeconds {grace}")


def check_objects(objs: list[dict], overlay: str, report: Report) -> None:
    for obj in objs:
        where = f"{overlay} {name_of(obj)}"
        if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
            report.fail(where, "a Secret with values in the manifests: create it out of band "
                               "(README, Deploying) and only reference it")
        if obj.get("kind") not in CLUSTER_SCOPED_KINDS and not (obj.get("metadata") or {}).get("namespace"):
            report.fail(where, "no namespace (is it outside the overlay's kustomization?)")


POLICIES = (check_objects, check_references, check_network, check_pods)


# ---------------------------------------------------------------- the rest

def check_overlay(kubectl: str, overlay: pathlib.Path, version: str, report: Report) -> int:
    label = f"{overlay.parent.name}/{overlay.name}"
    try:
        objs = render(kubectl, overlay)
    except RuntimeError as error:
        report.fail(label, f"render failed: {error}")
        return 0
    for obj in objs:
        validate_object(obj, version, f"{label} {name_of(obj)}", report)
    if all(isinstance(obj.get("metadata"), dict) and obj.get("kind") for obj in objs):
        for policy in POLICIES:
            policy(objs, label, report)
    return len(objs)


def check_dockerfile(hadolint: str, dockerfile: pathlib.Path, report: Report) -> None:
    done = subprocess.run([hadolint, "--no-color", str(dockerfile)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        for line in (done.stdout + done.stderr).strip().splitlines() or ["hadolint failed"]:
            report.fail(str(dockerfile.relative_to(REPO)) if dockerfile.is_relative_to(REPO)
                        else str(dockerfile), f"hadolint: {line}")


def check_compose(compose: pathlib.Path, report: Report) -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    document = yaml.safe_load(compose.read_text())
    validator = jsonschema.Draft7Validator(schema)
    for error in validator.iter_errors(document):
        path = ".".join(str(p) for p in error.absolute_path) or "(top)"
        report.fail(compose.name, f"compose schema: {path}: {error.message}")


def tool(name: str) -> str:
    """The pinned binary in this venv (install.sh) before any other on PATH."""
    pinned = pathlib.Path(sys.executable).parent / name
    return str(pinned) if pinned.is_file() else (shutil.which(name) or name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlays", type=pathlib.Path, default=REPO / "k8s" / "overlays",
                        help="directory whose subdirectories are the overlays to check")
    parser.add_argument("--dockerfile", type=pathlib.Path, default=REPO / "deploy" / "Dockerfile")
    parser.add_argument("--compose", type=pathlib.Path,
                        default=REPO / "deploy" / "docker-compose.yml")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION)
    parser.add_argument("--kubectl", default=tool("kubectl"))
    parser.add_argument("--hadolint", default=tool("hadolint"))
    args = parser.parse_args(argv)

    report = Report()
    overlays = sorted(p for p in args.overlays.iterdir() if (p / "kustomization.yaml").is_file())
    if not overlays:
        report.fail(str(args.overlays), "no overlays to check")
    total = 0
    for overlay in overlays:
        total += check_overlay(args.kubectl, overlay, args.kubernetes_version, report)
    check_dockerfile(args.hadolint, args.dockerfile, report)
    check_compose(args.compose, report)

    for problem in report.problems:
        print(f"k8s-check: {problem}", file=sys.stderr)
    if report.problems:
        print(f"k8s-check: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"k8s-check: {len(overlays)} overlays, {total} objects valid against Kubernetes "
          f"{args.kubernetes_version} and the CRD schemas, policies hold; Dockerfile and "
          "compose file pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
