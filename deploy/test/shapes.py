"""Deployment-shape checks for deploy/check.sh.

Imported by the Python part of deploy/check.sh, which hands over its helpers
(ok/bad/check, render, lint, validate_docs, expect_failure, ...). Covers:

  * the example values (deploy/helm/examples): the gateway shape with HTTPRoute,
    egress rules and drain settings, and the sidecar shape's supporting objects;
  * the sidecar shape on four platforms: each file in deploy/sidecar is merged
    into a representative manifest of its platform the way that platform does
    it (the keycloakx and Bitnami templates, the Keycloak Operator's pod-template
    merge, or nothing for the plain Deployment), then validated against the
    Kubernetes schemas and checked for what makes the sidecar work (ports,
    loopback, probes, drain budget, Redis with several pods), and its dtr-proxy
    container is compared with the chart's own snippet;
  * CRD kinds: HTTPRoute against the Gateway API CRD (fetched once from the Go
    module proxy, checksum pinned, cached in target/), the Keycloak CR against
    the operator's CRD when one is supplied (KEYCLOAK_OPERATOR_CRD=<file>),
    otherwise its pod template as a v1 PodTemplate plus its known top-level keys.
"""
import copy
import hashlib
import io
import json
import os
import re
import urllib.request
import zipfile

import jsonschema
import yaml

GATEWAY_API_VERSION = "v1.4.1"
GATEWAY_API_ZIP_SHA256 = "c20dca8192e9c4d3b5045da5df21123a3268910e982c5e056bd0878a06734bb1"
GATEWAY_API_CRD = "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml"

# Top-level spec keys of the Keycloak CR (k8s.keycloak.org/v2alpha1, operator 26.x),
# used when the CRD itself is not supplied.
KEYCLOAK_CR_SPEC_KEYS = {
    "additionalOptions", "bootstrapAdmin", "cache", "db", "env", "features", "hostname",
    "http", "httpManagement", "image", "imagePullSecrets", "ingress", "instances",
    "livenessProbe", "networkPolicy", "proxy", "readinessProbe", "resources", "scheduling",
    "serviceMonitor", "startOptimized", "startupProbe", "tracing", "transaction",
    "truststores", "unsupported", "update",
}

# How each platform's pods are selected, and how its snippet names the public port
# (must match the comments in deploy/helm/examples/sidecar-values.yaml and the files).
PLATFORMS = {
    "keycloak-operator": {
        "file": "keycloak-operator.yaml",
        "overlay": {"sidecar": {"keycloakPodSelector": {
            "app": "keycloak", "app.kubernetes.io/instance": "keycloak"}}},
    },
    "keycloakx": {
        "file": "keycloakx-values.yaml",
        "overlay": {"sidecar": {"keycloakPodSelector": {
            "app.kubernetes.io/name": "keycloakx", "app.kubernetes.io/instance": "keycloak"}}},
    },
    "bitnami": {
        "file": "bitnami-values.yaml",
        "overlay": {"sidecar": {"publicPortName": "dtr-http", "keycloakPodSelector": {
            "app.kubernetes.io/name": "keycloak", "app.kubernetes.io/instance": "keycloak",
            "app.kubernetes.io/component": "keycloak"}}},
    },
    "plain-deployment": {
        "file": "keycloak-deployment.yaml",
        "overlay": {"sidecar": {"publicPortName": "http", "keycloakPodSelector": {
            "app.kubernetes.io/name": "keycloak"}}},
    },
}


# ---------------------------------------------------------------------------
# CRD schemas as JSON Schema

def _structural_to_jsonschema(s):
    """OpenAPI v3 structural schema (as in a CRD) -> JSON Schema, strict like the
    API server's field validation: unknown fields are errors unless preserved."""
    if not isinstance(s, dict):
        return s
    out = {}
    for k, v in s.items():
        if k.startswith("x-kubernetes-") or k in ("nullable", "description"):
            continue
        if k == "properties":
            out[k] = {name: _structural_to_jsonschema(p) for name, p in v.items()}
        elif k in ("items", "additionalProperties", "not") and isinstance(v, dict):
            out[k] = _structural_to_jsonschema(v)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [_structural_to_jsonschema(x) for x in v]
        else:
            out[k] = v
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in s and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_validator(crd, version):
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = _structural_to_jsonschema(v["schema"]["openAPIV3Schema"])
            # apiVersion, kind and metadata are checked by the API server itself;
            # generated CRD schemas often leave them out.
            props = schema.setdefault("properties", {})
            props.setdefault("apiVersion", {"type": "string"})
            props.setdefault("kind", {"type": "string"})
            props["metadata"] = {"type": "object"}
            return jsonschema.Draft7Validator(schema)
    raise KeyError(f"{crd['metadata']['name']}: no version {version}")


def crd_errors(validator, obj):
    errs = sorted(validator.iter_errors(obj), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}" for e in errs]


def gateway_api_crd(cache_dir):
    """The HTTPRoute CRD of Gateway API, from the sigs.k8s.io/gateway-api module zip on
    the Go module proxy (checksum pinned), cached under target/."""
    cached = os.path.join(cache_dir, f"gateway-api-{GATEWAY_API_VERSION}-httproutes.yaml")
    if not os.path.exists(cached):
        proxy = "https://proxy.golang.org"
        for entry in os.environ.get("GOPROXY", "").split(","):
            if entry.startswith("http"):
                proxy = entry.rstrip("/")
                break
        url = f"{proxy}/sigs.k8s.io/gateway-api/@v/{GATEWAY_API_VERSION}.zip"
        with urllib.request.urlopen(url, timeout=60) as r:
            data = r.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != GATEWAY_API_ZIP_SHA256:
            raise RuntimeError(f"{url}: sha256 {digest}, expected {GATEWAY_API_ZIP_SHA256}")
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            text = z.read(f"sigs.k8s.io/gateway-api@{GATEWAY_API_VERSION}/{GATEWAY_API_CRD}")
        os.makedirs(cache_dir, exist_ok=True)
        with open(cached + ".tmp", "wb") as f:
            f.write(text)
        os.replace(cached + ".tmp", cached)
    with open(cached) as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------------------
# Small helpers

def deep_merge(base, override):
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def strip_nulls(obj):
    """The API server treats a null field as absent (a template that renders `key:`
    with nothing under it); the schema check does not, so drop them first."""
    if isinstance(obj, dict):
        return {k: strip_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [strip_nulls(v) for v in obj]
    return obj


def env_of(container):
    return {e["name"]: e for e in container.get("env") or []}


def env_value(container, name, extra=None):
    e = env_of(container).get(name)
    if e is not None:
        return e.get("value")
    return (extra or {}).get(name)


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------------------
# Platform merges: what each platform does with the values in deploy/sidecar

def merge_keycloakx(fixture_docs, values):
    """The slots of the keycloakx StatefulSet template that deploy/sidecar/
    keycloakx-values.yaml uses (templates/statefulset.yaml of the chart)."""
    known = {"replicas", "args", "http", "proxy", "service", "terminationGracePeriodSeconds",
             "enableServiceLinks", "lifecycleHooks", "extraEnv", "extraContainers", "extraVolumes"}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"keycloakx merge does not model {sorted(unknown)}: extend shapes.py")
    docs = copy.deepcopy(fixture_docs)
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    kc = pod["containers"][0]
    if "replicas" in values:
        sts["spec"]["replicas"] = values["replicas"]
    if values.get("args"):
        kc["args"] = values["args"]
    if "terminationGracePeriodSeconds" in values:
        pod["terminationGracePeriodSeconds"] = values["terminationGracePeriodSeconds"]
    if "enableServiceLinks" in values:
        pod["enableServiceLinks"] = values["enableServiceLinks"]
    if values.get("lifecycleHooks"):
        kc["lifecycle"] = yaml.safe_load(values["lifecycleHooks"])
    rel = values.get("http", {}).get("relativePath")
    if rel is not None:
        for e in kc["env"]:
            if e["name"] == "KC_HTTP_RELATIVE_PATH":
                e["value"] = rel if rel == "/" else rel.rstrip("/")
        prefix = rel.rstrip("/")
        for probe, suffix in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready"),
                              ("startupProbe", "/health")):
            kc[probe]["httpGet"]["path"] = prefix + suffix
    service = values.get("service", {})
    if "httpsPort" in service and not service["httpsPort"]:
        # {{- if .Values.service.httpsPort }}: no https port on the container or the Service.
        kc["ports"] = [p for p in kc["ports"] if p["name"] != "https"]
        svc = next(d for d in docs if d["kind"] == "Service")
        svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["name"] != "https"]
    if values.get("proxy", {}).get("enabled") is False:
        kc["env"] = [e for e in kc["env"] if e["name"] != "KC_PROXY"]
    if values.get("extraEnv"):
        kc["env"] += yaml.safe_load(values["extraEnv"])
    if values.get("extraContainers"):
        pod["containers"] += yaml.safe_load(values["extraContainers"])
    if values.get("extraVolumes"):
        pod["volumes"] = yaml.safe_load(values["extraVolumes"])
    return [strip_nulls(d) for d in docs]


def merge_bitnami(fixture_docs, values):
    """The slots of the Bitnami keycloak templates (statefulset.yaml, service.yaml,
    configmap-env-vars.yaml) that deploy/sidecar/bitnami-values.yaml uses."""
    known = {"replicaCount", "containerPorts", "terminationGracePeriodSeconds", "enableServiceLinks",
             "lifecycleHooks", "extraEnvVars",
             "service", "customStartupProbe", "customLivenessProbe", "customReadinessProbe",
             "sidecars", "extraVolumes"}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"Bitnami merge does not model {sorted(unknown)}: extend shapes.py")
    docs = copy.deepcopy(fixture_docs)
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    svc = next(d for d in docs if d["kind"] == "Service")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    pod = sts["spec"]["template"]["spec"]
    kc = pod["containers"][0]
    if "replicaCount" in values:
        sts["spec"]["replicas"] = values["replicaCount"]
    http_port = values.get("containerPorts", {}).get("http")
    if http_port is not None:
        next(p for p in kc["ports"] if p["name"] == "http")["containerPort"] = http_port
        cm["data"]["KEYCLOAK_HTTP_PORT"] = str(http_port)
    if "terminationGracePeriodSeconds" in values:
        pod["terminationGracePeriodSeconds"] = values["terminationGracePeriodSeconds"]
    if "enableServiceLinks" in values:
        pod["enableServiceLinks"] = values["enableServiceLinks"]
    if values.get("lifecycleHooks"):
        kc["lifecycle"] = copy.deepcopy(values["lifecycleHooks"])
    kc["env"] += values.get("extraEnvVars", [])
    for key, probe in (("customStartupProbe", "startupProbe"), ("customLivenessProbe", "livenessProbe"),
                       ("customReadinessProbe", "readinessProbe")):
        if values.get(key):
            kc[probe] = copy.deepcopy(values[key])
    pod["containers"] += values.get("sidecars", [])
    pod["volumes"] += values.get("extraVolumes", [])
    service = values.get("service", {})
    if service.get("http", {}).get("enabled") is False:
        svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["name"] != "http"]
    svc["spec"]["ports"] += service.get("extraPorts", [])
    return [strip_nulls(d) for d in docs]


def operator_manifests(cr):
    """The StatefulSet and Service the Keycloak Operator (26.x) makes from a Keycloak CR,
    as its KeycloakDeploymentDependentResource and KeycloakServiceDependentResource do:
    the pod template is the basis, the first container becomes "keycloak" (image, args
    and probes only when the template has none), ports are appended, and environment
    variables are merged with the template's first: template, first-class options,
    additional options. The Service targets spec.http.httpPort by number."""
    spec = cr["spec"]
    name = cr["metadata"]["name"]
    ns = cr["metadata"].get("namespace", "keycloak")
    http = spec.get("http", {})
    http_port = http.get("httpPort", 8080)
    https_port = http.get("httpsPort", 8443)
    mgmt_port = spec.get("httpManagement", {}).get("port", 9000)
    tls = bool(http.get("tlsSecret"))
    labels = {"app": "keycloak", "app.kubernetes.io/managed-by": "keycloak-operator",
              "app.kubernetes.io/instance": name}
    tmpl = copy.deepcopy(spec.get("unsupported", {}).get("podTemplate") or {})
    tmpl.setdefault("metadata", {}).setdefault("labels", {}).update(
        labels | {"app.kubernetes.io/component": "server"})
    pspec = tmpl.setdefault("spec", {})
    pspec.setdefault("restartPolicy", "Always")
    pspec.setdefault("terminationGracePeriodSeconds", 30)
    pspec.setdefault("dnsPolicy", "ClusterFirst")
    containers = pspec.setdefault("containers", [])
    if not containers:
        containers.append({})
    kc = containers[0]
    kc["name"] = "keycloak"
    kc["image"] = spec.get("image", "quay.io/keycloak/keycloak:26.4.5")
    kc.setdefault("imagePullPolicy", "IfNotPresent")
    if not kc.get("args"):
        kc["args"] = ["--verbose", "start"]
    kc["args"] = ["-Djgroups.bind.address=$(POD_IP)"] + kc["args"]
    scheme = "HTTPS" if tls else "HTTP"
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live"),
                        ("startupProbe", "/health/started")):
        kc.setdefault(probe, {"httpGet": {"scheme": scheme, "port": mgmt_port, "path": path},
                              "periodSeconds": 10, "failureThreshold": 3})
    kc.setdefault("ports", [])
    kc["ports"] += [{"name": "https", "containerPort": 8443, "protocol": "TCP"},
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "management", "containerPort": 9000, "protocol": "TCP"}]
    first_class = []
    if spec.get("hostname", {}).get("hostname"):
        first_class.append({"name": "KC_HOSTNAME", "value": spec["hostname"]["hostname"]})
    if spec.get("proxy", {}).get("headers"):
        first_class.append({"name": "KC_PROXY_HEADERS", "value": spec["proxy"]["headers"]})
    if "httpEnabled" in http:
        first_class.append({"name": "KC_HTTP_ENABLED", "value": str(http["httpEnabled"]).lower()})
    first_class += [{"name": "KC_HTTP_PORT", "value": str(http_port)},
                    {"name": "KC_HTTPS_PORT", "value": str(https_port)},
                    {"name": "KC_HTTP_MANAGEMENT_PORT", "value": str(mgmt_port)},
                    {"name": "KC_HEALTH_ENABLED", "value": "true"},
                    {"name": "KC_CACHE", "value": "ispn"},
                    {"name": "KC_CACHE_STACK", "value": "kubernetes"}]
    db = spec.get("db", {})
    if db.get("vendor"):
        first_class.append({"name": "KC_DB", "value": db["vendor"]})
    if db.get("host"):
        first_class.append({"name": "KC_DB_URL_HOST", "value": db["host"]})
    for key, env in (("usernameSecret", "KC_DB_USERNAME"), ("passwordSecret", "KC_DB_PASSWORD")):
        if db.get(key):
            first_class.append({"name": env, "valueFrom": {"secretKeyRef": db[key]}})
    additional = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}]
    merged = {}
    for e in (kc.get("env") or []) + first_class + additional:
        merged.setdefault(e["name"], e)
    kc["env"] = list(merged.values())
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"replicas": spec.get("instances", 1), "serviceName": f"{name}-discovery",
                    "selector": {"matchLabels": labels}, "template": tmpl}}
    ports = []
    if not tls or http.get("httpEnabled"):
        ports.append({"name": "http", "port": http_port, "targetPort": http_port, "protocol": "TCP"})
    if tls:
        ports.append({"name": "https", "port": https_port, "targetPort": https_port, "protocol": "TCP"})
    ports.append({"name": "management", "port": mgmt_port, "protocol": "TCP"})
    svc = {"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": f"{name}-service", "namespace": ns, "labels": labels},
           "spec": {"selector": labels, "ports": ports}}
    return [sts, svc]


# ---------------------------------------------------------------------------

def run(g):
    ok, bad, check = g["ok"], g["bad"], g["check"]
    render, lint, validate_docs = g["render"], g["lint"], g["validate_docs"]
    load_docs, find, expect_failure = g["load_docs"], g["find"], g["expect_failure"]
    kv, KUBE_VERSIONS = g["kv"], g["KUBE_VERSIONS"]
    root, REQUIRED = g["root"], g["REQUIRED"]
    examples_dir = os.path.join(root, "deploy", "helm", "examples")
    sidecar_dir = os.path.join(root, "deploy", "sidecar")
    platform_dir = os.path.join(root, "deploy", "test", "platforms")

    def kube_validate(label, obj):
        ident = f"{obj['kind']}/{obj['metadata']['name']}"
        valid = True
        for version in KUBE_VERSIONS:
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                bad(f"{label}: {ident} invalid for Kubernetes {version}: {where}: {e.message}")
                valid = False
        if valid:
            ok(f"{label}: {ident} valid (strict) for Kubernetes {', '.join(KUBE_VERSIONS)}")
        return valid

    # -- every value has a schema ---------------------------------------------
    chart_dir = os.path.join(root, "deploy", "helm", "dtr-proxy")
    with open(os.path.join(chart_dir, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    with open(os.path.join(chart_dir, "values.schema.json")) as f:
        schema = json.load(f)
    undeclared = []

    def walk(values, sch, path):
        props = sch.get("properties")
        if props is None:
            return
        for k, v in values.items():
            if k not in props:
                undeclared.append(".".join(path + [k]))
            elif isinstance(v, dict):
                walk(v, props[k], path + [k])

    walk(defaults, schema, [])
    check(not undeclared, "values.schema.json declares every key of values.yaml"
          + (f" (missing: {', '.join(undeclared)})" if undeclared else ""))

    # -- example values -----------------------------------------------------
    def example(name):
        with open(os.path.join(examples_dir, name)) as f:
            return yaml.safe_load(f)

    print("--- examples/gateway-values.yaml")
    gw_values = example("gateway-values.yaml")
    label = "examples/gateway-values.yaml"
    lint(label, gw_values)
    docs = load_docs(render(gw_values))
    ok(f"{label}: rendered {len(docs)} objects: "
       + ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)))
    validate_docs(label, docs)
    dep = find(docs, "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check(dep["spec"]["replicas"] == 3 and "DTR_REDIS_URL" in env_of(c),
          f"{label}: 3 replicas on Redis")
    check(env_value(c, "DTR_SHUTDOWN_DELAY") == "3" and env_value(c, "DTR_SHUTDOWN_GRACE") == "25"
          and c["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
          and pod["terminationGracePeriodSeconds"] == 40,
          f"{label}: drain 5 s preStop + DTR_SHUTDOWN_DELAY 3 + DTR_SHUTDOWN_GRACE 25 within a 40 s grace period")
    routes = find(docs, "HTTPRoute")
    if check(len(routes) == 1, f"{label}: one HTTPRoute"):
        r = routes[0]["spec"]
        check(r["hostnames"] == ["id.example.com"]
              and r["parentRefs"][0]["name"] == "public-gateway"
              and r["rules"][0]["backendRefs"] == [{"name": "dtr-proxy", "port": 8080}],
              f"{label}: HTTPRoute sends id.example.com from public-gateway to Service dtr-proxy:8080")
    check(not find(docs, "Ingress"), f"{label}: no Ingress (the HTTPRoute replaces it)")
    np = find(docs, "NetworkPolicy")
    if check(len(np) == 1 and "Egress" in np[0]["spec"]["policyTypes"], f"{label}: NetworkPolicy restricts egress"):
        eg = np[0]["spec"]["egress"]
        ports = [sorted((p["port"], p.get("protocol", "TCP")) for p in rule["ports"]) for rule in eg]
        check(ports == [[(53, "TCP"), (53, "UDP")], [(8080, "TCP")], [(6379, "TCP")], [(443, "TCP")]],
              f"{label}: egress to DNS 53, Keycloak's pods 8080, Redis 6379, RP pings 443 and nothing else")
        check(all(rule.get("to") for rule in eg), f"{label}: every egress rule names its peers")

    print("--- examples/sidecar-values.yaml")
    sc_values = example("sidecar-values.yaml")
    label = "examples/sidecar-values.yaml"
    lint(label, sc_values)
    manifests = render(sc_values)
    docs = load_docs(manifests)
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
    ok(f"{label}: rendered {len(docs)} objects: {', '.join(kinds)}")
    validate_docs(label, docs)
    check(kinds == ["ConfigMap/dtr-proxy", "ConfigMap/dtr-proxy-sidecar", "Service/dtr-proxy-admin",
                    "ServiceMonitor/dtr-proxy"],
          f"{label}: only the supporting objects (no Deployment, public Service, ServiceAccount, HPA, PDB)")
    adm = find(docs, "Service", "dtr-proxy-admin")[0]
    check(adm["spec"]["selector"] == sc_values["sidecar"]["keycloakPodSelector"]
          and adm["spec"]["ports"][0]["targetPort"] == 9090,
          f"{label}: admin Service selects the Keycloak pods, targets 9090")
    notes = "".join(v for k, v in manifests.items() if k.endswith("NOTES.txt"))
    check("KC_HTTP_MANAGEMENT_HOST=0.0.0.0" in notes and "dtr-proxy-sidecar" in notes,
          f"{label}: NOTES.txt says how Keycloak moves and where the snippet is")

    def chart_snippet(overlay):
        out = load_docs(render(deep_merge(sc_values, overlay)))
        cm = find(out, "ConfigMap", "dtr-proxy-sidecar")[0]["data"]
        return yaml.safe_load(cm["container.yaml"]), yaml.safe_load(cm["volumes.yaml"])

    containers, volumes = chart_snippet({})
    if check(len(containers) == 1 and len(volumes) == 2, f"{label}: snippet has one container and two volumes"):
        kube_validate(label + " snippet", {
            "apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "snippet"},
            "template": {"spec": {"containers": containers, "volumes": volumes}}})

    # -- CRDs ---------------------------------------------------------------
    cache_dir = os.path.join(root, "target", "deploy-crds")
    try:
        httproute_crd = crd_validator(gateway_api_crd(cache_dir), "v1")
        ok(f"Gateway API {GATEWAY_API_VERSION} HTTPRoute CRD loaded (Go module proxy, sha256 pinned)")
    except Exception as e:  # noqa: BLE001 - reported as a failure
        httproute_crd = None
        bad(f"Gateway API HTTPRoute CRD unavailable: {e}")

    for label, values in (("ci-values.yaml", g["CI_VALUES"]), ("examples/gateway-values.yaml", gw_values)):
        for _, d in load_docs(render(values)):
            if d["kind"] == "HTTPRoute" and httproute_crd is not None:
                errs = crd_errors(httproute_crd, d)
                check(not errs, f"{label}: HTTPRoute/{d['metadata']['name']} valid against the "
                      f"Gateway API {GATEWAY_API_VERSION} CRD schema (CEL rules not evaluated)"
                      + (f": {errs[:3]}" if errs else ""))

    kc_crd_file = os.environ.get("KEYCLOAK_OPERATOR_CRD", "")
    keycloak_crd = None
    if kc_crd_file:
        with open(kc_crd_file) as f:
            keycloak_crd = crd_validator(yaml.safe_load(f), "v2alpha1")

    # -- sidecar platforms --------------------------------------------------
    def sidecar_checks(label, pod_spec, service, replicas, kc_name, kc_extra_env=None):
        containers = pod_spec["containers"]
        kc = next((c for c in containers if c["name"] == kc_name), None)
        dtrs = [c for c in containers if "DTR_LISTEN" in env_of(c)]
        if not check(kc is not None and len(dtrs) == 1,
                     f"{label}: Keycloak container and exactly one dtr-proxy container in the pod"):
            return None
        dtr = dtrs[0]
        public = port_of(env_value(dtr, "DTR_LISTEN"))
        admin = port_of(env_value(dtr, "DTR_ADMIN_LISTEN"))
        kc_port = int(env_value(kc, "KC_HTTP_PORT", kc_extra_env) or 8080)
        mgmt = int(env_value(kc, "KC_HTTP_MANAGEMENT_PORT", kc_extra_env) or 9000)

        def resolve(target):
            if isinstance(target, int):
                return target
            for c in containers:
                for p in c.get("ports") or []:
                    if p.get("name") == target:
                        return p["containerPort"]
            return None

        http_ports = [p for p in service["spec"]["ports"] if p["name"] in ("http", "https")]
        check(http_ports and all(resolve(p.get("targetPort", p["port"])) == public for p in http_ports),
              f"{label}: Service {service['metadata']['name']} ("
              + ", ".join(f"{p['port']}->{p.get('targetPort', p['port'])}" for p in http_ports)
              + f") reaches dtr-proxy's DTR_LISTEN port {public}")
        check(env_value(kc, "KC_HTTP_HOST", kc_extra_env) == "127.0.0.1" and kc_port != public,
              f"{label}: Keycloak moved to loopback 127.0.0.1:{kc_port}, off dtr-proxy's {public}")
        check(env_value(dtr, "DTR_UPSTREAM_URL") == f"http://127.0.0.1:{kc_port}",
              f"{label}: DTR_UPSTREAM_URL is Keycloak's loopback listener http://127.0.0.1:{kc_port}")
        check(env_value(kc, "KC_HTTP_MANAGEMENT_HOST", kc_extra_env) == "0.0.0.0",
              f"{label}: Keycloak's management interface stays on the pod address (probes)")
        probe_ports = []
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            p = kc.get(probe)
            if p:
                action = p.get("httpGet") or p.get("tcpSocket") or {}
                probe_ports.append(resolve(action.get("port")))
        check(probe_ports and all(p == mgmt for p in probe_ports),
              f"{label}: Keycloak's probes ask its management port {mgmt}, not the moved or proxied port")
        listening = [public, admin, kc_port, mgmt]
        check(len(set(listening)) == len(listening),
              f"{label}: listeners distinct: dtr-proxy {public}/{admin}, Keycloak {kc_port}, management {mgmt}")
        names, numbers = [], []
        for c in containers:
            for p in c.get("ports") or []:
                if p.get("name"):
                    names.append(p["name"])
                numbers.append((p["containerPort"], p.get("protocol", "TCP")))
        check(len(names) == len(set(names)) and len(numbers) == len(set(numbers)),
              f"{label}: no container port declared twice in the pod (names {sorted(names)})")
        vols = [v["name"] for v in pod_spec.get("volumes") or []]
        mounts = [m["name"] for c in containers for m in c.get("volumeMounts") or []]
        check(len(vols) == len(set(vols)) and set(mounts) <= set(vols),
              f"{label}: volume names unique and every mount has its volume")
        cm_vols = [v for v in pod_spec.get("volumes") or [] if v.get("configMap", {}).get("name") == "dtr-proxy"]
        check(len(cm_vols) == 1, f"{label}: the clients ConfigMap dtr-proxy is mounted")
        tgps = pod_spec.get("terminationGracePeriodSeconds", 30)
        sleep = (dtr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))
        drain = sleep + int(env_value(dtr, "DTR_SHUTDOWN_DELAY") or 3) + int(env_value(dtr, "DTR_SHUTDOWN_GRACE") or 25)
        check(tgps >= drain, f"{label}: terminationGracePeriodSeconds {tgps} >= dtr-proxy's drain {drain}")
        kc_sleep = kc.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        delay = int(env_value(dtr, "DTR_SHUTDOWN_DELAY") or 3)
        check(delay <= kc_sleep < tgps,
              f"{label}: Keycloak's preStop sleep {kc_sleep} s covers DTR_SHUTDOWN_DELAY {delay} s, within the grace period")
        check(pod_spec.get("enableServiceLinks", True) is False,
              f"{label}: enableServiceLinks false (no DTR_PROXY_ADMIN_* variables from the admin Service)")
        if replicas > 1:
            check("DTR_REDIS_URL" in env_of(dtr), f"{label}: {replicas} Keycloak pods share Redis (DTR_REDIS_URL)")
        check(env_value(kc, "KC_HOSTNAME", kc_extra_env) == env_value(dtr, "DTR_PUBLIC_URL")
              and env_value(kc, "KC_PROXY_HEADERS", kc_extra_env) == "xforwarded",
              f"{label}: KC_HOSTNAME = DTR_PUBLIC_URL, KC_PROXY_HEADERS=xforwarded")
        return dtr

    def same_as_chart(label, name, dtr, pod_volumes):
        containers, volumes = chart_snippet(PLATFORMS[name]["overlay"])
        check(dtr == containers[0], f"{label}: the dtr-proxy container is the chart's snippet "
              "(mode: sidecar, examples/sidecar-values.yaml)")
        mine = [v for v in pod_volumes if v["name"].startswith("dtr-proxy-")]
        check(mine == volumes, f"{label}: its volumes are the chart's snippet volumes")

    for name, platform in PLATFORMS.items():
        label = f"sidecar/{platform['file']}"
        print(f"--- {label} ({name})")
        path = os.path.join(sidecar_dir, platform["file"])
        try:
            if name == "keycloak-operator":
                cr = load_yaml_docs(path)[0]
                tmpl = cr["spec"]["unsupported"]["podTemplate"]
                if keycloak_crd is not None:
                    errs = crd_errors(keycloak_crd, cr)
                    check(not errs, f"{label}: Keycloak CR valid against the CRD schema in "
                          f"KEYCLOAK_OPERATOR_CRD ({os.path.basename(kc_crd_file)})"
                          + (f": {errs[:3]}" if errs else ""))
                else:
                    ok(f"{label}: Keycloak CRD not supplied (KEYCLOAK_OPERATOR_CRD unset): "
                       "structure checked instead")
                extra = set(cr["spec"]) - KEYCLOAK_CR_SPEC_KEYS
                check(cr["apiVersion"] == "k8s.keycloak.org/v2alpha1" and cr["kind"] == "Keycloak"
                      and not extra, f"{label}: k8s.keycloak.org/v2alpha1 Keycloak with known spec keys"
                      + (f" (unknown: {sorted(extra)})" if extra else ""))
                kube_validate(label + " spec.unsupported.podTemplate", {
                    "apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "podTemplate"},
                    "template": tmpl})
                docs = operator_manifests(cr)
                kc_extra = None
            elif name == "keycloakx":
                with open(path) as f:
                    values = yaml.safe_load(f)
                docs = merge_keycloakx(load_yaml_docs(os.path.join(platform_dir, "keycloakx.yaml")), values)
                kc_extra = None
            elif name == "bitnami":
                with open(path) as f:
                    values = yaml.safe_load(f)
                docs = merge_bitnami(load_yaml_docs(os.path.join(platform_dir, "bitnami.yaml")), values)
                # The chart passes the port as KEYCLOAK_HTTP_PORT through its env ConfigMap.
                cm = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
                kc_extra = {"KC_HTTP_PORT": cm["KEYCLOAK_HTTP_PORT"]}
            else:
                docs = load_yaml_docs(path)
                kc_extra = None
        except Exception as e:  # noqa: BLE001 - reported as a failure
            bad(f"{label}: cannot be merged into its platform's manifest: {e}")
            continue
        ok(f"{label}: merged into {name} manifests: "
           + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
        for d in docs:
            kube_validate(label, d)
        workload = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))
        service = next(d for d in docs if d["kind"] == "Service"
                       and any(p["name"] in ("http", "https") for p in d["spec"]["ports"]))
        pod_spec = workload["spec"]["template"]["spec"]
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = PLATFORMS[name]["overlay"]["sidecar"]["keycloakPodSelector"]
        check(all(pod_labels.get(k) == v for k, v in selector.items())
              and all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items()),
              f"{label}: the Keycloak Service and the chart's admin Service (keycloakPodSelector) select these pods")
        dtr = sidecar_checks(label, pod_spec, service, workload["spec"].get("replicas", 1), "keycloak", kc_extra)
        if dtr is not None:
            same_as_chart(label, name, dtr, pod_spec.get("volumes") or [])

    sidecar_min = deep_merge(REQUIRED, {"mode": "sidecar", "config": {"upstreamUrl": ""},
                                        "sidecar": {"keycloakPodSelector": {"app": "keycloak"}}})
    print("--- sidecar, embedded store, one Keycloak pod, inline secrets")
    label = "sidecar-minimal"
    lint(label, sidecar_min)
    manifests = render(sidecar_min)
    docs = load_docs(manifests)
    validate_docs(label, docs)
    notes = "".join(v for k, v in manifests.items() if k.endswith("NOTES.txt"))
    check(sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in docs)
          == ["ConfigMap/dtr-proxy", "ConfigMap/dtr-proxy-sidecar", "Secret/dtr-proxy", "Service/dtr-proxy-admin"]
          and "exactly one Keycloak pod" in notes,
          f"{label}: ConfigMaps, Secret and admin Service only; NOTES.txt warns about the single pod")
    snippet = yaml.safe_load(find(docs, "ConfigMap", "dtr-proxy-sidecar")[0]["data"]["container.yaml"])[0]
    check(env_value(snippet, "DTR_UPSTREAM_URL") == "http://127.0.0.1:8081"
          and "DTR_REDIS_URL" not in env_of(snippet)
          and env_of(snippet)["DTR_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "dtr-proxy",
          f"{label}: snippet upstream on loopback 8081, no Redis, secrets from the chart's Secret")

    # -- refused combinations -----------------------------------------------
    print("--- shapes the chart must refuse")
    expect_failure("embedded store with replicaCount 2",
                   deep_merge(REQUIRED, {"replicaCount": 2}), "replicaCount is 2 but redis.enabled is false")
    expect_failure("embedded store with autoscaling",
                   deep_merge(REQUIRED, {"autoscaling": {"enabled": True}}),
                   "autoscaling.enabled requires redis.enabled")
    expect_failure("sidecar on the embedded store with 3 Keycloak pods",
                   deep_merge(sidecar_min, {"sidecar": {"keycloakReplicas": 3}}),
                   "sidecar.keycloakReplicas is 3 but redis.enabled is false")
    expect_failure("sidecar example with Redis switched off",
                   deep_merge(sc_values, {"redis": {"enabled": False}}),
                   "sidecar.keycloakReplicas is 3 but redis.enabled is false")
    no_selector = copy.deepcopy(sidecar_min)
    del no_selector["sidecar"]["keycloakPodSelector"]
    expect_failure("sidecar without keycloakPodSelector", no_selector, "requires sidecar.keycloakPodSelector")
    expect_failure("sidecar with ingress.enabled",
                   deep_merge(sidecar_min, {"ingress": {"enabled": True}}), "ingress.enabled applies to the gateway")
    expect_failure("sidecar with networkPolicy.enabled",
                   deep_merge(sidecar_min, {"networkPolicy": {"enabled": True}}),
                   "networkPolicy.enabled applies to the gateway")
    expect_failure("sidecar with extraContainers",
                   deep_merge(sidecar_min, {"extraContainers": [{"name": "x", "image": "x"}]}),
                   "extraContainers and initContainers apply to the gateway")
    expect_failure("sidecar where dtr-proxy and Keycloak share port 8080",
                   deep_merge(sidecar_min, {"sidecar": {"keycloakHttpPort": 8080}}),
                   "containerPorts.public and sidecar.keycloakHttpPort must differ")
    expect_failure("sidecar with the admin port on Keycloak's management port 9000",
                   deep_merge(sidecar_min, {"containerPorts": {"admin": 9000}}),
                   "clashes with Keycloak's management port")
    expect_failure("grace period shorter than preStop sleep + drain",
                   deep_merge(REQUIRED, {"preStopSleepSeconds": 5}),
                   "terminationGracePeriodSeconds (30) is shorter than preStopSleepSeconds (5) "
                   "+ shutdown.delaySeconds (3) + shutdown.graceSeconds (25) = 33")
    expect_failure("grace period shorter than the drain alone",
                   deep_merge(REQUIRED, {"terminationGracePeriodSeconds": 20}), "Raise terminationGracePeriodSeconds to at least 28")
    expect_failure("sidecar: Keycloak pod grace period shorter than the drain",
                   deep_merge(sidecar_min, {"shutdown": {"graceSeconds": 60}}),
                   "In the sidecar shape this is the Keycloak pod's terminationGracePeriodSeconds")
    expect_failure("httpRoute without parentRefs",
                   deep_merge(REQUIRED, {"httpRoute": {"enabled": True}}), "httpRoute.enabled requires httpRoute.parentRefs")
    expect_failure("mode daemonset", deep_merge(REQUIRED, {"mode": "daemonset"}), "mode", schema_only=True)
    expect_failure("an unknown httpRoute key (typo)",
                   deep_merge(REQUIRED, {"httpRoute": {"parentRef": []}}), "parentRef", schema_only=True)
    expect_failure("an unknown egress key (typo)",
                   deep_merge(REQUIRED, {"networkPolicy": {"egress": {"upsteam": {}}}}), "upsteam", schema_only=True)
