#!/usr/bin/env python3
"""Checks the Helm chart the way a platform team's CI would.

For every value set in charts/confidant/ci/: helm lint (strict, against a
current Kubernetes version), render with the Helm v4 library, validate every
rendered manifest against the Kubernetes OpenAPI schemas
(kubernetes-validate --strict), run checkov's Kubernetes policies for the
hardening rules, and check that each service's rendered confidant.toml passes
the binary's own configuration check (`confidant serve --check-config`). yamllint
covers the chart's own YAML. Exits non-zero on the first failing set, naming
what failed.

The plain manifests in k8s/ (a kustomize base and overlays, for teams that
do not use Helm) are the chart rendered with k8s/values.yaml: this script
writes them (--sync-k8s) and checks that the committed ones still match, that
every overlay builds with `kubectl kustomize`, and that its output validates.

Usage: chart_check.py --confidant PATH_TO_BINARY [--keep DIR]
       chart_check.py --sync-k8s
"""

import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "confidant"
KUBE_VERSION = "1.37.0"
SERVICES = ["identity", "intake", "vault", "retention", "audit"]
BIN = pathlib.Path(sys.executable).parent

# checkov checks that do not apply, each with the reason.
CHECKOV_SKIPS = {
    # The image is pinned by tag by default and by digest when image.digest
    # is set (the cert-manager value set does); the default cannot know one.
    "CKV_K8S_43": "image digest is a value (image.digest)",
    # The services' secrets are mounted as files already; the only
    # environment secrets are the database and Redis URLs, which the
    # configuration loader reads from CONFIDANT_* variables by design.
    "CKV_K8S_35": "database and Redis URLs come from secretKeyRef env vars",
}


def fail(message):
    print(f"chart check FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def yamllint():
    config = "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}"
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]
    out = run([str(BIN / "yamllint"), "--strict", "-d", config, *map(str, files)])
    if out.returncode != 0:
        fail(f"yamllint:\n{out.stdout}{out.stderr}")


def lint(values, label):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or problems:
        fail(f"helm lint ({label}): {json.dumps(report, indent=2)}")


# Values the schema must refuse, each with what is wrong with it.
BAD_VALUES = [
    ({"ports": {"vault": "7103"}}, "a port given as a string"),
    ({"replica": 3}, "an unknown top-level key (a typo of defaults.replicas)"),
    ({"services": {"vault": {"replicaCount": 3}}}, "an unknown key in a service's settings"),
    ({"tls": {"mode": "selfSigned"}}, "a TLS mode that does not exist"),
    ({"image": {"digest": "latest"}}, "an image digest that is not sha256:<64 hex>"),
    ({"telemetry": {"samplingRatio": 2}}, "a sampling ratio above 1"),
    ({"services": {"vault": {"workerThreads": 0}}}, "a service with no worker threads"),
    ({"monitoring": {"prometheusRule": {"checkpointIntervals": 1}}},
     "a checkpoint alert that fires within one interval"),
]


def schema_rejects():
    """values.schema.json refuses wrong types and unknown keys."""
    chart = helm.Chart.load(str(CHART))
    base = yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text())
    chart.validate_schema(base)
    for bad, what in BAD_VALUES:
        values = json.loads(json.dumps(base))
        for key, value in bad.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        try:
            chart.validate_schema(values)
        except Exception:  # noqa: BLE001 - any refusal is the expected outcome
            continue
        fail(f"values.schema.json accepts {what}: {bad}")
    print(f"chart: values.schema.json refuses {len(BAD_VALUES)} kinds of wrong values")


def render(values, out_dir):
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    manifests = chart.render(values, name="confidant", namespace="legal", is_install=True)
    docs = []
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, doc in enumerate(docs):
        name = f"{i:03d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        (out_dir / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return docs


def validate(out_dir, label):
    files = sorted(str(p) for p in out_dir.glob("*.yaml"))
    out = run([str(BIN / "kubernetes-validate"), "--strict", "-k", KUBE_VERSION, *files])
    text = out.stdout + out.stderr
    # cert-manager's Certificate is a CRD without a schema in the Kubernetes
    # set; any other unknown kind is an error.
    # So is the Prometheus Operator's PrometheusRule, which prometheus_rules()
    # checks instead.
    unknown = [l for l in text.splitlines() if "Couldn't find schema" in l
               and "cert-manager.io" not in l and "monitoring.coreos.com" not in l]
    if out.returncode != 0 or unknown or "ERROR" in text:
        fail(f"kubernetes-validate ({label}):\n{text}")


def checkov(out_dir, label):
    out = run(
        [
            str(BIN / "checkov"),
            "--framework", "kubernetes",
            "-d", str(out_dir),
            "--compact",
            "--skip-check", ",".join(CHECKOV_SKIPS),
            "--output", "json",
        ],
        # Offline: no download of guideline mappings.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    try:
        report = json.loads(out.stdout)
    except json.JSONDecodeError:
        fail(f"checkov ({label}) did not report:\n{out.stdout}{out.stderr}")
    reports = report if isinstance(report, list) else [report]
    failed = []
    passed = 0
    for r in reports:
        results = r.get("results", {})
        passed += r.get("summary", {}).get("passed", 0)
        for c in results.get("failed_checks", []):
            failed.append(f"{c['check_id']} {c['check_name']} ({c['file_path']})")
    if failed:
        fail(f"checkov ({label}):\n" + "\n".join(failed))
    if passed == 0:
        fail(f"checkov ({label}) checked nothing")
    return passed


def prometheus_rules(docs, label, values):
    """Each alert of a PrometheusRule is whole: a name, an expression with
    every template value filled in and its brackets balanced, a duration, a
    severity and a summary; with the rule enabled, every alert is there."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    enabled = values.get("monitoring", {}).get("prometheusRule", {}).get("enabled", False)
    if bool(rules) != enabled:
        fail(f"PrometheusRule rendered: {bool(rules)}, enabled: {enabled} ({label})")
    names = []
    for doc in rules:
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                where = f"PrometheusRule alert {rule.get('alert')} ({label})"
                names.append(rule.get("alert"))
                expr = rule.get("expr")
                if not isinstance(expr, str) or not re.fullmatch(r"Confidant[A-Za-z]+", rule.get("alert", "")):
                    fail(f"{where}: no alert name or expression")
                if "<no value>" in expr or "{{" in expr or not re.search(r"confidant_[a-z_]+", expr):
                    fail(f"{where}: expression not filled in: {expr}")
                for a, b in ("()", "{}", "[]"):
                    depth = 0
                    for ch in expr:
                        depth += (ch == a) - (ch == b)
                        if depth < 0:
                            break
                    if depth != 0:
                        fail(f"{where}: unbalanced {a}{b} in {expr}")
                threshold = re.search(r"[<>]\s*([0-9.]+)\s*$", expr)
                if not threshold:
                    fail(f"{where}: no numeric threshold at the end of {expr}")
                if "for" in rule and not re.fullmatch(r"[0-9]+[smh]", rule["for"]):
                    fail(f"{where}: bad duration {rule['for']}")
                if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
                    fail(f"{where}: no severity")
                if not rule.get("annotations", {}).get("summary"):
                    fail(f"{where}: no summary")
    if rules and len(set(names)) != 9:
        fail(f"PrometheusRule: expected 9 distinct alerts, got {names} ({label})")
    if rules:
        labels = rules[0]["metadata"].get("labels", {})
        for key, value in values["monitoring"]["prometheusRule"].get("labels", {}).items():
            if labels.get(key) != value:
                fail(f"PrometheusRule: label {key}={value} missing ({label})")


def hardening(docs, label):
    """The chart's own promises, asserted on every pod template."""
    for doc in docs:
        spec = None
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Job":
            spec = doc["spec"]["template"]["spec"]
        if spec is None:
            continue
        where = f"{doc['kind']}/{doc['metadata']['name']} ({label})"
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{where}: service account token mounted")
        if spec["securityContext"].get("runAsNonRoot") is not True:
            fail(f"{where}: runAsNonRoot not set")
        for c in spec["containers"]:
            sc = c["securityContext"]
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]
                    and sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
                fail(f"{where}: container {c['name']} is not hardened: {sc}")
            if doc["kind"] == "Deployment":
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    if "grpc" not in c.get(probe, {}):
                        fail(f"{where}: {probe} is not a gRPC probe")
                if "resources" not in c or "limits" not in c["resources"]:
                    fail(f"{where}: no resource limits")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if policies and not any(p["spec"]["podSelector"] and not p["spec"].get("ingress") and
                            not p["spec"].get("egress") for p in policies):
        fail(f"no default-deny NetworkPolicy ({label})")


def config_check(docs, binary, label, values):
    """Each service's rendered configuration passes `confidant serve
    --check-config` (exit 64 would name every problem) with a real
    certificate of the service where the pod mounts it, names only files
    that a volume mounts, and carries the service's worker threads when its
    values set them."""
    for doc in docs:
        if doc["kind"] != "ConfigMap" or "confidant.toml" not in doc.get("data", {}):
            continue
        service = doc["metadata"]["labels"].get("app.kubernetes.io/component")
        if service not in SERVICES:
            continue
        workers = ((values.get("services") or {}).get(service) or {}).get(
            "workerThreads", (values.get("defaults") or {}).get("workerThreads"))
        rendered = re.findall(r"^worker_threads = (\d+)$", doc["data"]["confidant.toml"], re.M)
        if rendered != ([str(workers)] if workers else []):
            fail(f"{service} ({label}): worker_threads rendered as {rendered}, values ask for {workers}")
        # Every file the configuration names is mounted into the pod.
        mounts = [m["mountPath"] for d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["labels"].get("app.kubernetes.io/component") == service
                  for c in d["spec"]["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])]
        for path in set(re.findall(r'"(/etc/confidant/[^"]+)"', doc["data"]["confidant.toml"])):
            if not any(path.startswith(m.rstrip("/") + "/") for m in mounts):
                fail(f"{service} ({label}): the configuration names {path}, which no volume mounts")
        with tempfile.TemporaryDirectory() as tmp:
            root = pathlib.Path(tmp)
            toml = doc["data"]["confidant.toml"].replace("/etc/confidant/", f"{root}/")
            for path in set(re.findall(re.escape(str(root)) + r"/[^\"]+", toml)):
                p = pathlib.Path(path)
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("placeholder\n")
            # The service's certificate must be its own (its SPIFFE id in the
            # rendered trust domain) and match its key, and the collector's
            # files must parse: issue real ones where the pod mounts them.
            domain = re.search(r'^trust_domain = "([^"]+)"$', toml, re.M)
            pki = root / "pki"
            for args in (["certs", "init", "--dir", str(pki)],
                         ["certs", "issue", "--dir", str(pki), "--name", service,
                          "--host", f"confidant-{service}",
                          "--trust-domain", domain.group(1) if domain else "confidant.local"]):
                out = run([binary, *args], timeout=60)
                if out.returncode != 0:
                    fail(f"{service} ({label}): confidant {' '.join(args[:2])} failed:\n{out.stdout}{out.stderr}")
            out = run([binary, "certs", "issue", "--dir", str(pki), "--name", "otel-client"], timeout=60)
            if out.returncode != 0:
                fail(f"{service} ({label}): confidant certs issue failed:\n{out.stdout}{out.stderr}")
            for source, target in ((pki / "ca.pem", root / "ca" / "ca.crt"),
                                   (pki / f"{service}.pem", root / "tls" / "tls.crt"),
                                   (pki / f"{service}-key.pem", root / "tls" / "tls.key"),
                                   (pki / "ca.pem", root / "otlp" / "ca.crt"),
                                   (pki / "otel-client.pem", root / "otlp" / "tls.crt"),
                                   (pki / "otel-client-key.pem", root / "otlp" / "tls.key")):
                if target.exists() or target.parent.name != "otlp":
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
            config = root / "confidant.toml"
            config.write_text(toml)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONFIDANT_")}
            env[f"CONFIDANT_SERVICES__{service.upper()}__DATABASE_URL"] = "postgres://check@127.0.0.1:1/none"
            env["CONFIDANT_REDIS__URL"] = "redis://127.0.0.1:1"
            try:
                out = run([binary, "serve", "--services", service, "--config", str(config), "--check-config"],
                          env=env, timeout=60)
            except subprocess.TimeoutExpired:
                fail(f"{service} ({label}): confidant serve --check-config did not finish")
            if out.returncode != 0:
                fail(f"{service} ({label}): the rendered configuration is refused:\n{out.stdout}{out.stderr}")
            if service == "audit":
                # What NOTES.txt tells operators to run in the audit pod names
                # the log's verifier key after the release's trust domain.
                key = re.search(r'^signing_key_file = "([^"]+)"$', toml, re.M)
                fresh = root / "fresh.key"
                out = run([binary, "keys", "signing", "--out", str(fresh)], timeout=60)
                if not key or out.returncode != 0:
                    fail(f"audit ({label}): no signing key file, or keys signing failed: {out.stderr}")
                shutil.copyfile(fresh, key.group(1))
                out = run([binary, "keys", "public", "--key", key.group(1), "--config", str(config)],
                          env=env, timeout=60)
                published = json.loads(out.stdout) if out.returncode == 0 else {}
                origin = f"{domain.group(1) if domain else 'confidant.local'}/audit+"
                if not published.get("audit_verifier_key", "").startswith(origin):
                    fail(f"audit ({label}): keys public on the rendered configuration: {out.stdout}{out.stderr}")


K8S = ROOT / "k8s"
K8S_HEADER = "# Generated from charts/confidant with k8s/values.yaml by scripts/chart_check.py --sync-k8s; do not edit.\n"


def k8s_render():
    """The plain manifests: {relative path: text}."""
    values = yaml.safe_load((K8S / "values.yaml").read_text()) or {}
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values, name="confidant", namespace="confidant", is_install=True)
    base, migrate = [], []
    for source, text in sorted(manifests.items()):
        if source.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            doc["metadata"].pop("namespace", None)
            annotations = doc["metadata"].get("annotations", {})
            hook = any(k.startswith("helm.sh/hook") for k in annotations)
            for key in [k for k in annotations if k.startswith("helm.sh/")]:
                del annotations[key]
            if not annotations:
                doc["metadata"].pop("annotations", None)
            for key in ("helm.sh/chart", "app.kubernetes.io/managed-by"):
                doc["metadata"].get("labels", {}).pop(key, None)
                tmpl = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
                tmpl.pop(key, None)
            (migrate if hook else base).append(doc)
    files = {}
    for folder, docs in (("base", base), ("migrate", migrate)):
        names = []
        for doc in docs:
            name = f"{doc['kind'].lower()}-{doc['metadata']['name']}.yaml"
            names.append(name)
            files[f"{folder}/{name}"] = K8S_HEADER + yaml.safe_dump(doc, sort_keys=False)
        files[f"{folder}/kustomization.yaml"] = K8S_HEADER + yaml.safe_dump(
            {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": sorted(names)},
            sort_keys=False,
        )
    return files


def k8s_sync():
    files = k8s_render()
    for folder in ("base", "migrate"):
        shutil.rmtree(K8S / folder, ignore_errors=True)
    for rel, text in files.items():
        path = K8S / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"k8s: wrote {len(files)} files")


def k8s_check(work):
    expected = k8s_render()
    actual = {}
    for folder in ("base", "migrate"):
        for path in (K8S / folder).glob("*.yaml"):
            actual[f"{folder}/{path.name}"] = path.read_text()
    if expected != actual:
        differ = sorted(set(expected) ^ set(actual) | {k for k in expected if actual.get(k) != expected[k]})
        fail("k8s/ is out of date with the chart (run scripts/chart_check.py --sync-k8s): " + ", ".join(differ))
    overlays = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    for overlay in [K8S / "migrate", *overlays]:
        out = run(["kubectl", "kustomize", str(overlay)])
        if out.returncode != 0:
            fail(f"kubectl kustomize {overlay.relative_to(ROOT)}:\n{out.stderr}")
        out_dir = work / f"k8s-{overlay.name}"
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
        for i, doc in enumerate(docs):
            (out_dir / f"{i:03d}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        label = str(overlay.relative_to(ROOT))
        validate(out_dir, label)
        hardening(docs, label)
        print(f"k8s: {label}: {len(docs)} manifests build with kubectl kustomize and validate")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--confidant", help="the confidant binary")
    parser.add_argument("--keep", help="write rendered manifests here")
    parser.add_argument("--sync-k8s", action="store_true", help="regenerate k8s/ from the chart")
    args = parser.parse_args()
    if args.sync_k8s:
        k8s_sync()
        return
    if not args.confidant:
        parser.error("--confidant is required")
    yamllint()
    schema_rejects()
    sets = sorted((CHART / "ci").glob("*-values.yaml"))
    if not sets:
        fail("no value sets in charts/confidant/ci")
    base = pathlib.Path(args.keep) if args.keep else pathlib.Path(tempfile.mkdtemp(prefix="chart-"))
    for values_file in sets:
        label = values_file.name
        values = yaml.safe_load(values_file.read_text()) or {}
        out_dir = base / values_file.stem
        shutil.rmtree(out_dir, ignore_errors=True)
        lint(values, label)
        docs = render(values, out_dir)
        validate(out_dir, label)
        passed = checkov(out_dir, label)
        hardening(docs, label)
        prometheus_rules(docs, label, values)
        config_check(docs, args.confidant, label, values)
        kinds = sorted({d["kind"] for d in docs})
        print(f"chart: {label}: {len(docs)} manifests ({', '.join(kinds)}) valid for Kubernetes "
              f"{KUBE_VERSION}; checkov {passed} checks passed; service configurations accepted")
    k8s_check(base)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
