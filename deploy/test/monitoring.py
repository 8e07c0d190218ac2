"""Monitoring checks for deploy/check.sh: the chart's PrometheusRule, ServiceMonitor and
Grafana dashboard.

Imported by the Python part of deploy/check.sh, which hands over its helpers. Covers:

  * the PrometheusRule and the ServiceMonitor against the Prometheus Operator's CRDs
    (from the prometheus-operator module zip on the Go module proxy, checksum pinned,
    cached in target/);
  * the rules with `promtool check rules` (PromQL and annotation templates) and
    `promtool test rules` against deploy/test/alerts-test.yaml (when each alert fires);
  * the dashboard: well-formed, panels on the 24-column grid without overlap, unique ids,
    every query parsed by promtool, every variable defined, and the dashboard the chart
    ships byte for byte the file in the chart.

That every dtr_* series the rules and the dashboard use is one dtr-proxy exports is checked
by a unit test of the proxy itself (src/metrics.rs), against what it really renders.
"""
import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
import urllib.request
import zipfile

import yaml

from shapes import crd_errors, crd_validator, deep_merge

PROMETHEUS_OPERATOR_VERSION = "v0.85.0"
PROMETHEUS_OPERATOR_ZIP_SHA256 = "0bdb88ed823d0f2e86cf909638439b6ad1da744a228172c7411d9987527dc5d1"
CRDS = {
    "PrometheusRule": "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    "ServiceMonitor": "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
}


def _go_proxy():
    for entry in os.environ.get("GOPROXY", "").split(","):
        if entry.startswith("http"):
            return entry.rstrip("/")
    return "https://proxy.golang.org"


def operator_crds(cache_dir):
    """The PrometheusRule and ServiceMonitor CRDs of the Prometheus Operator, cached."""
    out = {}
    missing = [k for k in CRDS if not os.path.exists(
        os.path.join(cache_dir, f"prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}-{k}.yaml"))]
    if missing:
        url = (f"{_go_proxy()}/github.com/prometheus-operator/prometheus-operator/@v/"
               f"{PROMETHEUS_OPERATOR_VERSION}.zip")
        with urllib.request.urlopen(url, timeout=120) as r:
            data = r.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != PROMETHEUS_OPERATOR_ZIP_SHA256:
            raise RuntimeError(f"{url}: sha256 {digest}, expected {PROMETHEUS_OPERATOR_ZIP_SHA256}")
        prefix = f"github.com/prometheus-operator/prometheus-operator@{PROMETHEUS_OPERATOR_VERSION}/"
        os.makedirs(cache_dir, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for kind, member in CRDS.items():
                target = os.path.join(cache_dir,
                                      f"prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}-{kind}.yaml")
                with open(target + ".tmp", "wb") as f:
                    f.write(z.read(prefix + member))
                os.replace(target + ".tmp", target)
    for kind in CRDS:
        with open(os.path.join(cache_dir,
                               f"prometheus-operator-{PROMETHEUS_OPERATOR_VERSION}-{kind}.yaml")) as f:
            out[kind] = yaml.safe_load(f)
    return out


def promtool(args, cwd):
    exe = os.environ.get("PROMTOOL", "promtool")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return r.returncode, (r.stdout + r.stderr).strip()


# Grafana's built-in variables, replaced by a representative value before parsing.
GRAFANA_BUILTINS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_queries(dash):
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            yield panel["title"], t["expr"]


def run(g):
    ok, bad, check = g["ok"], g["bad"], g["check"]
    render, lint, validate_docs = g["render"], g["lint"], g["validate_docs"]
    load_docs, find = g["load_docs"], g["find"]
    root, REQUIRED = g["root"], g["REQUIRED"]
    chart_dir = os.path.join(root, "deploy", "helm", "dtr-proxy")
    cache_dir = os.path.join(root, "target", "deploy-check")

    print("--- monitoring: PrometheusRule, ServiceMonitor, Grafana dashboard")
    values = deep_merge(REQUIRED, {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                           "ruleLabels": {"team": "identity"}},
        "grafanaDashboard": {"enabled": True, "folder": "Identity"},
    })
    label = "monitoring"
    lint(label, values)
    docs = load_docs(render(values))
    validate_docs(label, docs)

    crds = operator_crds(cache_dir)
    for kind, crd in crds.items():
        objs = find(docs, kind)
        if not check(len(objs) == 1, f"{label}: one {kind}"):
            continue
        errs = crd_errors(crd_validator(crd, "v1"), objs[0])
        check(not errs, f"{label}: {kind} valid against the Prometheus Operator "
                        f"{PROMETHEUS_OPERATOR_VERSION} CRD" + (f": {errs}" if errs else ""))

    rules = find(docs, "PrometheusRule")
    if rules:
        rule = rules[0]
        check(rule["metadata"]["labels"].get("release") == "kube-prometheus-stack",
              f"{label}: PrometheusRule carries the labels a ruleSelector matches")
        alerts = [r for grp in rule["spec"]["groups"] for r in grp["rules"]]
        names = {r["alert"] for r in alerts}
        for wanted in ("DtrProxyStoreErrors", "DtrProxyOpErrors", "DtrProxyPingDeadLetters",
                       "DtrProxyPendingGrowth"):
            check(wanted in names, f"{label}: PrometheusRule has {wanted}")
        check(all(r["labels"].get("team") == "identity" and r["labels"].get("severity")
                  for r in alerts),
              f"{label}: every alert has a severity and the configured rule labels")
        check(all('job="dtr-proxy-admin"' in r["expr"] and 'namespace="keycloak"' in r["expr"]
                  for r in alerts),
              f"{label}: every alert selects this release's series (admin job, namespace)")

        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "rules.yaml"), "w") as f:
                yaml.safe_dump({"groups": rule["spec"]["groups"]}, f, sort_keys=False)
            code, out = promtool(["check", "rules", "rules.yaml"], tmp)
            check(code == 0, f"{label}: promtool check rules: {out.splitlines()[-1] if out else code}"
                  if code == 0 else f"{label}: promtool check rules failed:\n{out}")
            # Alert timing and labels; annotations are covered by `check rules` above.
            bare = [{**grp, "rules": [{k: v for k, v in r.items() if k != "annotations"}
                                      for r in grp["rules"]]}
                    for grp in rule["spec"]["groups"]]
            for grp in bare:
                for r in grp["rules"]:
                    r["labels"] = {k: v for k, v in r["labels"].items() if k != "team"}
            with open(os.path.join(tmp, "rules.yaml"), "w") as f:
                yaml.safe_dump({"groups": bare}, f, sort_keys=False)
            with open(os.path.join(root, "deploy", "test", "alerts-test.yaml")) as src, \
                    open(os.path.join(tmp, "alerts-test.yaml"), "w") as dst:
                dst.write(src.read())
            code, out = promtool(["test", "rules", "alerts-test.yaml"], tmp)
            cases = len(yaml.safe_load(open(os.path.join(tmp, "alerts-test.yaml")))["tests"])
            check(code == 0, f"{label}: promtool test rules: {cases} alert scenarios pass"
                  if code == 0 else f"{label}: promtool test rules failed:\n{out}")

    # The dashboard.
    path = os.path.join(chart_dir, "dashboards", "dtr-proxy.json")
    with open(path) as f:
        text = f.read()
    dash = json.loads(text)
    cms = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    if check(len(cms) == 1, f"{label}: the dashboard ConfigMap is rendered"):
        cm = cms[0]
        check(cm["metadata"]["labels"].get("grafana_dashboard") == "1"
              and cm["metadata"].get("annotations", {}).get("grafana_folder") == "Identity",
              f"{label}: dashboard ConfigMap has the sidecar label and folder annotation")
        check(cm["data"].get("dtr-proxy.json") == text.rstrip("\n"),
              f"{label}: the ConfigMap carries deploy/helm/dtr-proxy/dashboards/dtr-proxy.json as is")
    check(dash.get("uid") == "dtr-proxy" and isinstance(dash.get("schemaVersion"), int),
          f"{label}: dashboard has a fixed uid and a schemaVersion")
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), f"{label}: dashboard panel ids are unique ({len(ids)} panels)")
    cells, overlap, outside = set(), [], []
    for p in dash["panels"]:
        gp = p["gridPos"]
        if gp["x"] < 0 or gp["w"] <= 0 or gp["x"] + gp["w"] > 24:
            outside.append(p["title"])
        for x in range(gp["x"], gp["x"] + gp["w"]):
            for y in range(gp["y"], gp["y"] + gp["h"]):
                if (x, y) in cells:
                    overlap.append(p["title"])
                cells.add((x, y))
    check(not outside and not overlap,
          f"{label}: dashboard panels sit on the 24-column grid without overlap"
          + (f": outside {outside}, overlapping {sorted(set(overlap))}" if outside or overlap else ""))
    variables = {v["name"] for v in dash["templating"]["list"]}
    used = set()
    queries = list(dashboard_queries(dash))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            used |= set(re.findall(r"\$(\w+)", q["query"]))
    for title, expr in queries:
        used |= {u for u in re.findall(r"\$(\w+)", expr) if not u.startswith("__")}
    used |= {u for p in dash["panels"] for u in
             re.findall(r"\$\{(\w+)\}", json.dumps(p.get("datasource", {})))}
    check(used <= variables, f"{label}: dashboard uses only its own variables "
                             f"({', '.join(sorted(variables))})" + (f": unknown {used - variables}"
                                                                    if used - variables else ""))
    # Every query parses: promtool checks them as recording rules.
    recorded = []
    for i, (title, expr) in enumerate(queries):
        e = expr
        for k, v in GRAFANA_BUILTINS.items():
            e = e.replace(k, v)
        e = e.replace("$namespace", ".*").replace("$job", ".*")
        recorded.append({"record": f"dashboard:query_{i}", "expr": e})
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "dashboard.yaml"), "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}, f)
        code, out = promtool(["check", "rules", "dashboard.yaml"], tmp)
        check(code == 0, f"{label}: all {len(queries)} dashboard queries parse (promtool)"
              if code == 0 else f"{label}: dashboard queries do not parse:\n{out}")

    # Off by default.
    docs = load_docs(render(REQUIRED))
    check(not find(docs, "PrometheusRule") and not [
        d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")],
        f"{label}: no PrometheusRule and no dashboard unless enabled")
