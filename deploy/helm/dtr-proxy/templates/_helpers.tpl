{{/*
Chart name.
*/}}
{{- define "dtr-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name (63 characters at most: DNS label limit). The admin
Service appends "-admin", so the base name is cut to 57 characters.
*/}}
{{- define "dtr-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dtr-proxy.adminServiceName" -}}
{{- printf "%s-admin" (include "dtr-proxy.fullname" .) }}
{{- end }}

{{- define "dtr-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "dtr-proxy.labels" -}}
helm.sh/chart: {{ include "dtr-proxy.chart" . }}
{{ include "dtr-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ tpl (toYaml .) $ }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable on a Deployment: never add to these).
*/}}
{{- define "dtr-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dtr-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dtr-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dtr-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference: repository[:tag][@digest].
*/}}
{{- define "dtr-proxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the secret settings.
*/}}
{{- define "dtr-proxy.secretName" -}}
{{- if .Values.existingSecret }}
{{- tpl .Values.existingSecret . }}
{{- else }}
{{- include "dtr-proxy.fullname" . }}
{{- end }}
{{- end }}

{{/*
Effective replica count: replicaCount when set; otherwise 2 with Redis and 1
with the embedded store (more than one replica on the embedded store is
refused by dtr-proxy.validate).
*/}}
{{- define "dtr-proxy.replicas" -}}
{{- if not (kindIs "invalid" .Values.replicaCount) }}
{{- .Values.replicaCount | int }}
{{- else if .Values.redis.enabled }}
{{- 2 }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}

{{/*
"true" in the sidecar shape (dtr-proxy runs inside the Keycloak pods).
*/}}
{{- define "dtr-proxy.sidecar" -}}
{{- if eq .Values.mode "sidecar" }}true{{- end }}
{{- end }}

{{/*
DTR_UPSTREAM_URL: config.upstreamUrl, or in the sidecar shape Keycloak's
loopback listener when it is left empty.
*/}}
{{- define "dtr-proxy.upstreamUrl" -}}
{{- if .Values.config.upstreamUrl }}
{{- .Values.config.upstreamUrl }}
{{- else if include "dtr-proxy.sidecar" . }}
{{- printf "http://127.0.0.1:%d" (.Values.sidecar.keycloakHttpPort | int) }}
{{- end }}
{{- end }}

{{/*
Port of the upstream URL (explicit, or 80/443 by scheme), for egress rules.
*/}}
{{- define "dtr-proxy.upstreamPort" -}}
{{- $u := urlParse (include "dtr-proxy.upstreamUrl" .) }}
{{- $m := regexFind ":[0-9]+$" $u.host }}
{{- if $m }}{{ trimPrefix ":" $m }}{{ else if eq $u.scheme "https" }}443{{ else }}80{{ end }}
{{- end }}

{{/*
"true" when a HorizontalPodAutoscaler is rendered (never with the embedded store).
*/}}
{{- define "dtr-proxy.hpaEnabled" -}}
{{- if and .Values.autoscaling.enabled .Values.redis.enabled (not (include "dtr-proxy.sidecar" .)) }}true{{- end }}
{{- end }}

{{/*
"true" when a PodDisruptionBudget is rendered: only when more than one replica
can run (a budget for a single replica would block node drains).
*/}}
{{- define "dtr-proxy.pdbEnabled" -}}
{{- if and .Values.podDisruptionBudget.enabled .Values.redis.enabled (not (include "dtr-proxy.sidecar" .)) }}
{{- if include "dtr-proxy.hpaEnabled" . }}
{{- if gt (.Values.autoscaling.minReplicas | int) 1 }}true{{- end }}
{{- else if gt (include "dtr-proxy.replicas" . | int) 1 }}true
{{- end }}
{{- end }}
{{- end }}

{{/*
Configuration checks, rendered from the Deployment so that every install,
upgrade and template run fails early with a clear message.
*/}}
{{- define "dtr-proxy.validate" -}}
{{- $c := .Values.config }}
{{- $sidecar := include "dtr-proxy.sidecar" . }}
{{- if not (has .Values.mode (list "gateway" "sidecar")) }}
{{- fail (printf "mode must be \"gateway\" or \"sidecar\", got %q" (toString .Values.mode)) }}
{{- end }}
{{- if and (not $c.upstreamUrl) (not $sidecar) }}
{{- fail "config.upstreamUrl is required: where Keycloak listens inside the cluster, e.g. http://keycloak-http.keycloak.svc:8080" }}
{{- end }}
{{- $upstream := include "dtr-proxy.upstreamUrl" . }}
{{- if not (regexMatch "^https?://[^/]+" $upstream) }}
{{- fail (printf "config.upstreamUrl must be an http:// or https:// URL, got %q" $upstream) }}
{{- end }}
{{- if not $c.publicUrl }}
{{- fail "config.publicUrl is required: the public origin of Keycloak (its KC_HOSTNAME), e.g. https://id.example.com" }}
{{- end }}
{{- if not (regexMatch "^https?://[^/]+" $c.publicUrl) }}
{{- fail (printf "config.publicUrl must be an http:// or https:// URL, got %q" $c.publicUrl) }}
{{- end }}
{{- if not (has $c.logFormat (list "json" "text")) }}
{{- fail (printf "config.logFormat must be \"json\" or \"text\", got %q" (toString $c.logFormat)) }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- $s := .Values.secrets }}
{{- if not $s.webhookSecret }}
{{- fail "set existingSecret (recommended) or secrets.webhookSecret (\"whsec_<base64>\", testing only)" }}
{{- end }}
{{- if not $s.tokenKeys }}
{{- fail "set existingSecret (recommended) or secrets.tokenKeys (\"kid:<base64 32-byte key>\", testing only)" }}
{{- end }}
{{- if not (regexMatch "^whsec_[A-Za-z0-9+/]+={0,2}$" $s.webhookSecret) }}
{{- fail "secrets.webhookSecret must look like \"whsec_<base64>\"" }}
{{- end }}
{{- if not (regexMatch "^[^:,[:space:]]+:[A-Za-z0-9+/_-]{43}=?(,[^:,[:space:]]+:[A-Za-z0-9+/_-]{43}=?)*$" $s.tokenKeys) }}
{{- fail "secrets.tokenKeys must be a comma-separated list of \"kid:<base64 of 32 bytes>\"" }}
{{- end }}
{{- if and $s.hashKey (not (regexMatch "^[A-Za-z0-9+/_-]{43,}={0,2}$" $s.hashKey)) }}
{{- fail "secrets.hashKey must be base64 of 32 bytes or more" }}
{{- end }}
{{- if and .Values.operatorApi.enabled (not (regexMatch "^[A-Za-z0-9._~+/-]{32,}=*(,[A-Za-z0-9._~+/-]{32,}=*)*$" (toString $s.operatorToken))) }}
{{- fail "operatorApi.enabled needs its token: set existingSecret (recommended) or secrets.operatorToken (comma-separated tokens of at least 32 characters, testing only)" }}
{{- end }}
{{- if and .Values.redis.enabled (not $s.hashKey) }}
{{- fail "redis.enabled requires a hash key shared by all replicas: set existingSecret (recommended) or secrets.hashKey (testing only)" }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.url) }}
{{- fail "redis.enabled requires redis.url (or existingSecret with the redis URL under existingSecretKeys.redisUrl)" }}
{{- end }}
{{- end }}
{{- if and .Values.existingSecret .Values.redis.url }}
{{- fail "redis.url is ignored when existingSecret is set: store the Redis URL in the existing Secret under existingSecretKeys.redisUrl and unset redis.url" }}
{{- end }}
{{- if and .Values.redis.url (not .Values.redis.enabled) }}
{{- fail "redis.url is set but redis.enabled is false: set redis.enabled=true to use Redis" }}
{{- end }}
{{- if .Values.redis.url }}
{{- if not (regexMatch "^(redis|rediss)(\\+sentinel)?://" .Values.redis.url) }}
{{- fail "redis.url must start with redis://, rediss://, redis+sentinel:// or rediss+sentinel://" }}
{{- end }}
{{- if and .Values.redis.cluster (regexMatch "^(redis|rediss)\\+sentinel://" .Values.redis.url) }}
{{- fail "redis.cluster cannot be combined with a Sentinel URL (redis+sentinel://)" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.passwordSecret.name .Values.existingSecret .Values.existingSecretKeys.redisPassword }}
{{- fail "redis.passwordSecret and existingSecretKeys.redisPassword both give the Redis password: keep one" }}
{{- end }}
{{- if and .Values.config.clientCertHeader (not .Values.config.trustedProxies) }}
{{- fail "config.clientCertHeader needs config.trustedProxies: the header is believed only from the ingress" }}
{{- end }}
{{- if and .Values.tls.public.clientCa.secretName (not .Values.tls.public.secretName) }}
{{- fail "tls.public.clientCa needs tls.public.secretName: client certificates come with TLS on the public port" }}
{{- end }}
{{- if and .Values.tls.upstreamCa.secretName (not (hasPrefix "https://" (include "dtr-proxy.upstreamUrl" .))) }}
{{- fail "tls.upstreamCa is only for an https:// config.upstreamUrl" }}
{{- end }}
{{- if and .Values.events.url .Values.events.ca.secretName (not (hasPrefix "https://" .Values.events.url)) }}
{{- fail "events.ca is only for an https:// events.url" }}
{{- end }}
{{- if and .Values.tracing.endpoint .Values.tracing.tls.secretName (not (hasPrefix "https://" .Values.tracing.endpoint)) }}
{{- fail "tracing.tls is only for an https:// tracing.endpoint" }}
{{- end }}
{{- if and .Values.tracing.tls.secretName (not .Values.tracing.tls.caKey) (not .Values.tracing.tls.clientCertificate) }}
{{- fail "tracing.tls.secretName needs tracing.tls.caKey or tracing.tls.clientCertificate" }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.redis.enabled }}
{{- if gt (.Values.autoscaling.minReplicas | int) (.Values.autoscaling.maxReplicas | int) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- /* Drain budget: the kubelet counts the preStop sleep against the grace
     period, then dtr-proxy stays unready for shutdown.delaySeconds and lets
     requests finish for shutdown.graceSeconds before it exits. */}}
{{- $tgps := .Values.terminationGracePeriodSeconds | int }}
{{- $preStop := .Values.preStopSleepSeconds | int }}
{{- $delay := .Values.shutdown.delaySeconds | int }}
{{- $grace := .Values.shutdown.graceSeconds | int }}
{{- $need := add $preStop $delay $grace }}
{{- if lt $tgps $need }}
{{- fail (printf "terminationGracePeriodSeconds (%d) is shorter than preStopSleepSeconds (%d) + shutdown.delaySeconds (%d) + shutdown.graceSeconds (%d) = %d: the kubelet would kill dtr-proxy before it has drained. Raise terminationGracePeriodSeconds to at least %d or shorten the drain.%s" $tgps $preStop $delay $grace $need $need (ternary " In the sidecar shape this is the Keycloak pod's terminationGracePeriodSeconds." "" (eq $sidecar "true"))) }}
{{- end }}
{{- /* The embedded store lives in one process: several replicas would each
     hold a different part of the state. */}}
{{- if not .Values.redis.enabled }}
{{- if $sidecar }}
{{- if gt (.Values.sidecar.keycloakReplicas | int) 1 }}
{{- fail (printf "sidecar.keycloakReplicas is %d but redis.enabled is false: every Keycloak pod would run its own embedded store and a deferred process started on one pod would be unknown to the others. Enable Redis (redis.enabled=true) or run one Keycloak pod." (.Values.sidecar.keycloakReplicas | int)) }}
{{- end }}
{{- else }}
{{- if gt (include "dtr-proxy.replicas" . | int) 1 }}
{{- fail (printf "replicaCount is %d but redis.enabled is false: the embedded store lives in one pod, so more than one replica would lose deferred processes. Enable Redis (redis.enabled=true) or set replicaCount to 1." (include "dtr-proxy.replicas" . | int)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "autoscaling.enabled requires redis.enabled: the embedded store cannot be shared by several replicas" }}
{{- end }}
{{- end }}
{{- end }}
{{- if $sidecar }}
{{- if not .Values.sidecar.keycloakPodSelector }}
{{- fail "mode=sidecar requires sidecar.keycloakPodSelector: the labels of the Keycloak pods (the admin Service selects them)" }}
{{- end }}
{{- range $key := list "ingress" "httpRoute" "networkPolicy" "autoscaling" }}
{{- if (index $.Values $key).enabled }}
{{- fail (printf "%s.enabled applies to the gateway Deployment; with mode=sidecar traffic reaches dtr-proxy through Keycloak's own Service, Ingress and NetworkPolicy: configure those on the Keycloak side" $key) }}
{{- end }}
{{- end }}
{{- if or .Values.extraContainers .Values.initContainers }}
{{- fail "extraContainers and initContainers apply to the gateway Deployment; with mode=sidecar add containers through the Keycloak platform's own values" }}
{{- end }}
{{- if eq (.Values.containerPorts.public | int) (.Values.sidecar.keycloakHttpPort | int) }}
{{- fail "containerPorts.public and sidecar.keycloakHttpPort must differ: dtr-proxy takes the port Keycloak's Service targets and Keycloak moves to another one" }}
{{- end }}
{{- range $p := list (.Values.containerPorts.public | int) (.Values.containerPorts.admin | int) }}
{{- if eq $p ($.Values.sidecar.keycloakManagementPort | int) }}
{{- fail (printf "dtr-proxy port %d clashes with Keycloak's management port (sidecar.keycloakManagementPort)" $p) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.httpRoute.enabled }}
{{- if not .Values.httpRoute.parentRefs }}
{{- fail "httpRoute.enabled requires httpRoute.parentRefs: the Gateway (and listener) the route attaches to" }}
{{- end }}
{{- end }}
{{- range $i, $client := .Values.clients }}
{{- if not (kindIs "map" $client) }}
{{- fail (printf "clients[%d] must be a map" $i) }}
{{- end }}
{{- if not $client.client_id }}
{{- fail (printf "clients[%d].client_id is required" $i) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
TOML rendering of values.

dtr-proxy.toml.key: a bare key when possible, a quoted key otherwise.
dtr-proxy.toml.value: strings become basic strings (a JSON string is a valid
TOML basic string), numbers and booleans stay as they are, lists become arrays
and maps become inline tables. null is not representable in TOML and fails.
*/}}
{{- define "dtr-proxy.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "dtr-proxy.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}
{{- toJson $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}
{{- $items = append $items (include "dtr-proxy.toml.value" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" $v }}
{{- $items := list }}
{{- range $k, $item := $v }}
{{- if not (kindIs "invalid" $item) }}
{{- $items = append $items (printf "%s = %s" (include "dtr-proxy.toml.key" $k) (include "dtr-proxy.toml.value" $item)) }}
{{- end }}
{{- end }}
{{- if $items }}{{ printf "{ %s }" (join ", " $items) }}{{ else }}{}{{ end }}
{{- else }}
{{- fail (printf "cannot render a %s value as TOML in clients" (kindOf $v)) }}
{{- end }}
{{- end }}

{{/*
The TOML file mounted at config.configPath.
*/}}
{{- define "dtr-proxy.configToml" -}}
# Generated by the dtr-proxy Helm chart from .Values.clients.
{{- range .Values.clients }}

[[clients]]
{{- $client := . }}
{{- if hasKey $client "client_id" }}
client_id = {{ include "dtr-proxy.toml.value" (toString $client.client_id) }}
{{- end }}
{{- range $k, $v := $client }}
{{- if and (ne $k "client_id") (not (kindIs "invalid" $v)) }}
{{ include "dtr-proxy.toml.key" $k }} = {{ include "dtr-proxy.toml.value" $v }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}
