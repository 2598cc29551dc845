#!/usr/bin/env python3
"""Tests of check.py: it passes on the real tree, and fails on one seeded mistake of
each kind it exists to catch, each in a copy of the overlays (the real tree is never
touched). Plain unittest, run by `make k8s-check` after the check itself:

    python3 test_check.py
"""
import contextlib
import io
import pathlib
import shutil
import tempfile
import unittest

import yaml

import check

K8S = check.REPO / "k8s"


def run_check(**kwargs) -> tuple[int, str]:
    """check.main on the given paths; its exit code and what it printed."""
    argv = []
    for name, value in kwargs.items():
        argv += [f"--{name}", str(value)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = check.main(argv)
    return code, out.getvalue()


class Seeded(unittest.TestCase):
    def setUp(self):
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="k8s-check-"))
        self.addCleanup(shutil.rmtree, self.tmp)
        shutil.copytree(K8S, self.tmp / "k8s", ignore=shutil.ignore_patterns("check"))
        shutil.copytree(check.REPO / "deploy", self.tmp / "deploy")

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.tmp / relative
        text = path.read_text()
        self.assertIn(old, text, f"the seed must change {relative}")
        path.write_text(text.replace(old, new, 1))

    def edit_yaml(self, relative: str, change) -> None:
        """change(documents) edits the file's YAML documents in place."""
        path = self.tmp / relative
        docs = list(yaml.safe_load_all(path.read_text()))
        change(docs)
        path.write_text(yaml.safe_dump_all(docs))

    def check(self) -> tuple[int, str]:
        return run_check(
            overlays=self.tmp / "k8s" / "overlays",
            dockerfile=self.tmp / "deploy" / "Dockerfile",
            compose=self.tmp / "deploy" / "docker-compose.yml",
        )

    def assert_fails_with(self, *needles: str) -> None:
        code, output = self.check()
        self.assertEqual(code, 1, output)
        for needle in needles:
            self.assertIn(needle, output)

    def test_the_copy_passes_as_the_tree_does(self):
        code, output = self.check()
        self.assertEqual(code, 0, output)

    def test_a_misspelt_field_of_a_builtin_kind(self):
        self.edit("k8s/base/gateway.yaml", "livenessProbe:", "livenesProbe:")
        self.assert_fails_with("Deployment/gateway: schema:", "'livenesProbe' was unexpected")

    def test_a_misspelt_field_of_a_custom_resource(self):
        self.edit("k8s/postgres/cluster.yaml", "primaryUpdateStrategy:", "primaryUpdateStrategey:")
        self.assert_fails_with("Cluster/taskchat-db: schema:", "primaryUpdateStrategey")

    def test_a_wrong_enum_value_of_a_builtin_kind(self):
        self.edit("k8s/nats/nats.yaml", "podManagementPolicy: Parallel", "podManagementPolicy: parallel")
        self.assert_fails_with("StatefulSet/nats: schema: spec.podManagementPolicy", "'parallel'")

    def test_a_wrong_enum_value_of_a_custom_resource(self):
        self.edit("k8s/postgres/cluster.yaml", "method: any", "method: all")
        self.assert_fails_with("Cluster/taskchat-db: schema: spec.postgresql.synchronous.method")

    def test_a_numeric_lag_threshold(self):
        self.edit("k8s/overlays/production/worker-autoscaling.yaml",
                  'lagThreshold: "10"', "lagThreshold: 10")
        self.assert_fails_with("ScaledObject/agent-worker: schema: spec.triggers.0.metadata.lagThreshold",
                               "10 is not of type 'string'")

    def test_a_service_whose_selector_matches_nothing(self):
        self.edit("k8s/base/task-service.yaml",
                  "spec:\n  selector: { app.kubernetes.io/name: task-service }",
                  "spec:\n  selector: { app.kubernetes.io/name: task-servce }")
        self.assert_fails_with("Service/task-service: the selector", "matches no workload's pods")

    def test_a_container_without_probes(self):
        def drop_probes(docs):
            container = docs[0]["spec"]["template"]["spec"]["containers"][0]
            del container["livenessProbe"], container["readinessProbe"]

        self.edit_yaml("k8s/base/projection.yaml", drop_probes)
        self.assert_fails_with("container projection: no livenessProbe",
                               "container projection: no readinessProbe")

    def test_a_container_without_limits_or_running_as_root(self):
        self.edit("k8s/base/agent-worker.yaml", 'limits: { cpu: "2", memory: 256Mi }', "limits: {}")
        self.edit("k8s/nats/nats.yaml", "runAsNonRoot: true", "runAsNonRoot: false")
        self.assert_fails_with("container agent-worker: no limits.cpu",
                               "container nats: runAsNonRoot is not true")

    def test_a_port_opened_outside_the_namespace(self):
        def open_nats(docs):
            policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
            del policy["spec"]["ingress"][0]["from"]

        self.edit_yaml("k8s/nats/nats.yaml", open_nats)
        self.assert_fails_with("NetworkPolicy/nats: port 4222 of nats is open outside the namespace")

    def test_no_default_deny(self):
        def drop_default_deny(docs):
            docs[:] = [d for d in docs if d["metadata"]["name"] != "default-deny-ingress"]

        self.edit_yaml("k8s/base/network-policies.yaml", drop_default_deny)
        self.assert_fails_with("no default-deny ingress NetworkPolicy")

    def test_a_kind_without_a_schema(self):
        (self.tmp / "k8s/base/monitor.yaml").write_text(
            "apiVersion: monitoring.coreos.com/v1\nkind: PodMonitor\nmetadata: { name: nats }\n"
            "spec: { selector: { matchLabels: { app.kubernetes.io/name: nats } } }\n")
        self.edit("k8s/base/kustomization.yaml", "  - namespace.yaml\n",
                  "  - namespace.yaml\n  - monitor.yaml\n")
        self.assert_fails_with("no schema for monitoring.coreos.com/v1 PodMonitor")

    def test_a_literal_secret(self):
        self.edit("k8s/base/config.yaml", "  RUST_LOG: info,sqlx=warn\n",
                  "  RUST_LOG: info,sqlx=warn\n---\napiVersion: v1\nkind: Secret\n"
                  "metadata: { name: leaked }\nstringData: { AUTH_JWT_SECRET: change-me }\n")
        self.assert_fails_with("Secret/leaked: a Secret with values in the manifests")

    def test_a_dockerfile_mistake(self):
        self.edit("deploy/Dockerfile", "COPY --from=build /out/ /usr/local/bin/",
                  "ADD --from=build /out/ /usr/local/bin/\nRUN cd /tmp")
        self.assert_fails_with("hadolint:")

    def test_a_compose_mistake(self):
        self.edit("deploy/docker-compose.yml", "restart: unless-stopped", "restart: unless-stopped\n  replicaz: 2")
        self.assert_fails_with("compose schema: services.gateway: 'replicaz' does not match")


if __name__ == "__main__":
    unittest.main(verbosity=1)
