{{/*
The dtr-proxy container, shared by the gateway Deployment and the sidecar
snippet (ConfigMap <fullname>-sidecar). In the sidecar shape the ports carry
"dtr-" names so that they cannot collide with Keycloak's, and probes that name
the admin port are given its number instead.
*/}}
{{- define "dtr-proxy.container" -}}
{{- $secretName := include "dtr-proxy.secretName" . }}
{{- $keys := .Values.existingSecretKeys }}
{{- $inline := not .Values.existingSecret }}
{{- $sidecar := include "dtr-proxy.sidecar" . }}
{{- $adminPort := .Values.containerPorts.admin | int }}
{{- $secretDir := "/var/run/secrets/dtr-proxy" }}
name: {{ ternary .Values.sidecar.containerName "dtr-proxy" (eq $sidecar "true") }}
image: {{ include "dtr-proxy.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
ports:
  {{- if not $sidecar }}
  - name: http
    containerPort: {{ .Values.containerPorts.public }}
    protocol: TCP
  - name: admin
    containerPort: {{ .Values.containerPorts.admin }}
    protocol: TCP
  {{- else }}
  {{- with .Values.sidecar.publicPortName }}
  - name: {{ . }}
    containerPort: {{ $.Values.containerPorts.public }}
    protocol: TCP
  {{- end }}
  - name: dtr-admin
    containerPort: {{ .Values.containerPorts.admin }}
    protocol: TCP
  {{- end }}
env:
  - name: DTR_UPSTREAM_URL
    value: {{ include "dtr-proxy.upstreamUrl" . | quote }}
  - name: DTR_PUBLIC_URL
    value: {{ .Values.config.publicUrl | quote }}
  - name: DTR_LISTEN
    value: {{ printf "%s:%d" .Values.config.bindAddress (.Values.containerPorts.public | int) | quote }}
  - name: DTR_ADMIN_LISTEN
    value: {{ printf "%s:%d" .Values.config.bindAddress (.Values.containerPorts.admin | int) | quote }}
  - name: DTR_CONFIG
    value: {{ .Values.config.configPath | quote }}
  - name: DTR_ALLOW_INSECURE_HTTP
    value: {{ .Values.config.allowInsecureHttp | toString | quote }}
  - name: DTR_LOG
    value: {{ .Values.config.log | quote }}
  - name: DTR_LOG_FORMAT
    value: {{ .Values.config.logFormat | quote }}
  - name: DTR_SHUTDOWN_DELAY
    value: {{ .Values.shutdown.delaySeconds | int | toString | quote }}
  - name: DTR_SHUTDOWN_GRACE
    value: {{ .Values.shutdown.graceSeconds | int | toString | quote }}
  - name: DTR_ACCESS_LOG
    value: {{ .Values.config.accessLog | toString | quote }}
  - name: DTR_COMPLETION_HOLD
    value: {{ .Values.config.completionHoldSeconds | int | toString | quote }}
  {{- if .Values.tls.public.secretName }}
  - name: DTR_TLS_CERT_FILE
    value: {{ printf "%s/tls/tls.crt" $secretDir | quote }}
  - name: DTR_TLS_KEY_FILE
    value: {{ printf "%s/tls/tls.key" $secretDir | quote }}
  {{- end }}
  {{- if .Values.tls.public.clientCa.secretName }}
  - name: DTR_TLS_CLIENT_CA_FILE
    value: {{ printf "%s/client-ca/%s" $secretDir .Values.tls.public.clientCa.key | quote }}
  {{- end }}
  {{- if .Values.tls.admin.secretName }}
  - name: DTR_ADMIN_TLS_CERT_FILE
    value: {{ printf "%s/admin-tls/tls.crt" $secretDir | quote }}
  - name: DTR_ADMIN_TLS_KEY_FILE
    value: {{ printf "%s/admin-tls/tls.key" $secretDir | quote }}
  {{- end }}
  {{- if or .Values.tls.public.secretName .Values.tls.admin.secretName .Values.tls.upstreamCa.secretName .Values.tls.rpCa.secretName (and .Values.events.url .Values.events.ca.secretName) (and .Values.redis.enabled .Values.redis.tls.secretName) (and .Values.tracing.endpoint .Values.tracing.tls.secretName) }}
  - name: DTR_TLS_RELOAD_INTERVAL
    value: {{ .Values.tls.reloadIntervalSeconds | int | toString | quote }}
  {{- end }}
  {{- if .Values.tls.upstreamCa.secretName }}
  - name: DTR_UPSTREAM_CA_FILE
    value: {{ printf "%s/upstream-ca/%s" $secretDir .Values.tls.upstreamCa.key | quote }}
  - name: DTR_UPSTREAM_CA_ONLY
    value: {{ .Values.tls.upstreamCa.only | toString | quote }}
  {{- end }}
  {{- if .Values.tls.rpCa.secretName }}
  - name: DTR_RP_CA_FILE
    value: {{ printf "%s/rp-ca/%s" $secretDir .Values.tls.rpCa.key | quote }}
  {{- end }}
  {{- with .Values.tracing }}
  {{- if .endpoint }}
  - name: OTEL_EXPORTER_OTLP_ENDPOINT
    value: {{ .endpoint | quote }}
  - name: OTEL_SERVICE_NAME
    value: {{ .serviceName | quote }}
  - name: OTEL_TRACES_SAMPLER
    value: {{ .sampler | quote }}
  - name: OTEL_TRACES_SAMPLER_ARG
    value: {{ .samplerArg | toString | quote }}
  - name: K8S_POD_NAME
    valueFrom:
      fieldRef:
        fieldPath: metadata.name
  {{- $attributes := list "k8s.pod.name=$(K8S_POD_NAME)" (printf "k8s.namespace.name=%s" $.Release.Namespace) }}
  {{- range $key, $value := .resourceAttributes }}
  {{- $attributes = append $attributes (printf "%s=%v" $key $value) }}
  {{- end }}
  - name: OTEL_RESOURCE_ATTRIBUTES
    value: {{ join "," $attributes | quote }}
  {{- with .tls }}
  {{- if and .secretName .caKey }}
  - name: OTEL_EXPORTER_OTLP_CERTIFICATE
    value: {{ printf "%s/otlp-tls/%s" $secretDir .caKey | quote }}
  {{- end }}
  {{- if and .secretName .clientCertificate }}
  - name: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE
    value: {{ printf "%s/otlp-tls/tls.crt" $secretDir | quote }}
  - name: OTEL_EXPORTER_OTLP_CLIENT_KEY
    value: {{ printf "%s/otlp-tls/tls.key" $secretDir | quote }}
  {{- end }}
  {{- end }}
  {{- end }}
  {{- end }}
  {{- if .Values.events.url }}
  - name: DTR_EVENTS_URL
    value: {{ .Values.events.url | quote }}
  {{- with .Values.events.realms }}
  - name: DTR_EVENTS_REALMS
    value: {{ join "," . | quote }}
  {{- end }}
  - name: DTR_EVENTS_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "events-secret" $keys.eventsSecret $inline }}
  {{- if .Values.events.ca.secretName }}
  - name: DTR_EVENTS_CA_FILE
    value: {{ printf "%s/events-ca/%s" $secretDir .Values.events.ca.key | quote }}
  {{- end }}
  {{- end }}
  {{- if .Values.keycloakAdmin.clientId }}
  - name: DTR_KEYCLOAK_ADMIN_CLIENT_ID
    value: {{ .Values.keycloakAdmin.clientId | quote }}
  {{- with .Values.keycloakAdmin.realm }}
  - name: DTR_KEYCLOAK_ADMIN_REALM
    value: {{ . | quote }}
  {{- end }}
  - name: DTR_KEYCLOAK_ADMIN_CLIENT_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "keycloak-admin-secret" $keys.keycloakAdminSecret $inline }}
  {{- end }}
  {{- if .Values.operatorApi.enabled }}
  - name: DTR_OPERATOR_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "operator-token" $keys.operatorToken $inline }}
  - name: DTR_OPERATOR_MAX_LIFETIME
    value: {{ .Values.operatorApi.maxLifetimeSeconds | int | toString | quote }}
  {{- end }}
  {{- with .Values.federation }}
  {{- if or .trustRoots .reconcileWithoutTrustRoots }}
  {{- if .trustRoots }}
  - name: DTR_FEDERATION_TRUST_ROOTS
    value: {{ .trustRoots | toJson | quote }}
  {{- else }}
  - name: DTR_FEDERATION_PROVISIONING
    value: "keycloak"
  {{- end }}
  {{- with .providerStatements }}
  - name: DTR_FEDERATION_PROVIDER_STATEMENTS
    value: {{ . | toJson | quote }}
  {{- end }}
  - name: DTR_FEDERATION_CONNECT_TIMEOUT
    value: {{ .connectTimeoutSeconds | int | toString | quote }}
  - name: DTR_FEDERATION_FETCH_TIMEOUT
    value: {{ .fetchTimeoutSeconds | int | toString | quote }}
  - name: DTR_FEDERATION_MAX_BYTES
    value: {{ .maxBytes | int | toString | quote }}
  - name: DTR_FEDERATION_MAX_LINKS
    value: {{ .maxLinks | int | toString | quote }}
  - name: DTR_FEDERATION_HOST_RATE
    value: {{ .hostRate | int | toString | quote }}
  {{- with .realms }}
  - name: DTR_FEDERATION_REALMS
    value: {{ join "," . | quote }}
  {{- end }}
  - name: DTR_FEDERATION_RECONCILE_INTERVAL
    value: {{ .reconcileIntervalSeconds | int | toString | quote }}
  {{- end }}
  {{- end }}
  {{- with .Values.config.trustedProxies }}
  - name: DTR_TRUSTED_PROXIES
    value: {{ join "," . | quote }}
  {{- end }}
  {{- with .Values.config.clientCertHeader }}
  - name: DTR_CLIENT_CERT_HEADER
    value: {{ . | quote }}
  {{- end }}
  {{- with .Values.config.ietfRealms }}
  - name: DTR_IETF_REALMS
    value: {{ join "," . | quote }}
  {{- end }}
  - name: DTR_WEBHOOK_SECRET
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "webhook-secret" $keys.webhookSecret $inline }}
  - name: DTR_TOKEN_KEYS
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "token-keys" $keys.tokenKeys $inline }}
  {{- if or .Values.redis.enabled (not $inline) .Values.secrets.hashKey }}
  - name: DTR_HASH_KEY
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "hash-key" $keys.hashKey $inline }}
        {{- if not .Values.redis.enabled }}
        optional: true
        {{- end }}
  {{- end }}
  {{- if .Values.redis.enabled }}
  - name: DTR_REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ ternary "redis-url" $keys.redisUrl $inline }}
  - name: DTR_REDIS_CLUSTER
    value: {{ .Values.redis.cluster | toString | quote }}
  - name: DTR_REDIS_TIMEOUT
    value: {{ .Values.redis.timeout | toString | quote }}
  {{- if and (not $inline) $keys.redisPassword }}
  - name: DTR_REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ $keys.redisPassword }}
  {{- end }}
  {{- with .Values.redis.username }}
  - name: DTR_REDIS_USERNAME
    value: {{ . | quote }}
  {{- end }}
  {{- if .Values.redis.passwordSecret.name }}
  - name: DTR_REDIS_PASSWORD_FILE
    value: {{ printf "%s/redis-password/password" $secretDir | quote }}
  {{- end }}
  {{- if .Values.redis.tls.secretName }}
  - name: DTR_REDIS_CA_FILE
    value: {{ printf "%s/redis-tls/%s" $secretDir .Values.redis.tls.caKey | quote }}
  {{- if .Values.redis.tls.clientCertificate }}
  - name: DTR_REDIS_CLIENT_CERT_FILE
    value: {{ printf "%s/redis-tls/tls.crt" $secretDir | quote }}
  - name: DTR_REDIS_CLIENT_KEY_FILE
    value: {{ printf "%s/redis-tls/tls.key" $secretDir | quote }}
  {{- end }}
  {{- end }}
  {{- if and (not $inline) $keys.redisSentinelPassword }}
  - name: DTR_REDIS_SENTINEL_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ $secretName }}
        key: {{ $keys.redisSentinelPassword }}
  {{- end }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- tpl (toYaml .) $ | nindent 2 }}
  {{- end }}
{{- with .Values.extraEnvFrom }}
envFrom:
  {{- tpl (toYaml .) $ | nindent 2 }}
{{- end }}
{{- range $probe := list "livenessProbe" "readinessProbe" "startupProbe" }}
{{- with (index $.Values $probe) }}
{{- $p := deepCopy . }}
{{- $onAdmin := and $p.httpGet (or (eq (toString $p.httpGet.port) "admin") (eq (toString $p.httpGet.port) (toString $adminPort))) }}
{{- if and $sidecar $onAdmin }}
{{- $_ := set $p.httpGet "port" $adminPort }}
{{- end }}
{{- if and $onAdmin $.Values.tls.admin.secretName }}
{{- $_ := set $p.httpGet "scheme" "HTTPS" }}
{{- end }}
{{ $probe }}:
  {{- toYaml $p | nindent 2 }}
{{- end }}
{{- end }}
{{- if .Values.preStopSleepSeconds }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ .Values.preStopSleepSeconds | int }}
{{- end }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
volumeMounts:
  - name: {{ include "dtr-proxy.volumeName" (list . "config") }}
    mountPath: {{ dir .Values.config.configPath }}
    readOnly: true
  - name: {{ include "dtr-proxy.volumeName" (list . "tmp") }}
    mountPath: /tmp
  {{- range $volume := include "dtr-proxy.secretVolumes" . | fromYamlArray }}
  - name: {{ include "dtr-proxy.volumeName" (list $ $volume.name) }}
    mountPath: {{ printf "%s/%s" $secretDir $volume.name }}
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- tpl (toYaml .) $ | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Volume names: plain in the gateway pod, "dtr-proxy-" prefixed inside a
Keycloak pod (which has volumes of its own).
*/}}
{{- define "dtr-proxy.volumeName" -}}
{{- $ctx := index . 0 }}
{{- if include "dtr-proxy.sidecar" $ctx }}{{ printf "dtr-proxy-%s" (index . 1) }}{{ else }}{{ index . 1 }}{{ end }}
{{- end }}

{{/*
The volumes the dtr-proxy container mounts.
*/}}
{{- define "dtr-proxy.volumes" -}}
- name: {{ include "dtr-proxy.volumeName" (list . "config") }}
  configMap:
    name: {{ include "dtr-proxy.fullname" . }}
    items:
      - key: config.toml
        path: {{ base .Values.config.configPath }}
- name: {{ include "dtr-proxy.volumeName" (list . "tmp") }}
  emptyDir:
    sizeLimit: 16Mi
{{- range $volume := include "dtr-proxy.secretVolumes" . | fromYamlArray }}
- name: {{ include "dtr-proxy.volumeName" (list $ $volume.name) }}
  secret:
    secretName: {{ $volume.secret }}
    {{- with $volume.items }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ tpl (toYaml .) $ }}
{{- end }}
{{- end }}

{{/*
The Secrets mounted for TLS and the Redis password: a list of {name, secret, items}. Whole
volumes, never subPath: a renewed Secret reaches the pod (the proxy reloads certificates).
*/}}
{{- define "dtr-proxy.secretVolumes" -}}
{{- $volumes := list }}
{{- with .Values.tls.public.secretName }}
{{- $volumes = append $volumes (dict "name" "tls" "secret" .) }}
{{- end }}
{{- with .Values.tls.public.clientCa.secretName }}
{{- $volumes = append $volumes (dict "name" "client-ca" "secret" .) }}
{{- end }}
{{- with .Values.tls.admin.secretName }}
{{- $volumes = append $volumes (dict "name" "admin-tls" "secret" .) }}
{{- end }}
{{- with .Values.tls.upstreamCa.secretName }}
{{- $volumes = append $volumes (dict "name" "upstream-ca" "secret" .) }}
{{- end }}
{{- with .Values.tls.rpCa.secretName }}
{{- $volumes = append $volumes (dict "name" "rp-ca" "secret" .) }}
{{- end }}
{{- if .Values.events.url }}
{{- with .Values.events.ca.secretName }}
{{- $volumes = append $volumes (dict "name" "events-ca" "secret" .) }}
{{- end }}
{{- end }}
{{- if .Values.tracing.endpoint }}
{{- with .Values.tracing.tls.secretName }}
{{- $volumes = append $volumes (dict "name" "otlp-tls" "secret" .) }}
{{- end }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- with .Values.redis.tls.secretName }}
{{- $volumes = append $volumes (dict "name" "redis-tls" "secret" .) }}
{{- end }}
{{- with .Values.redis.passwordSecret.name }}
{{- $volumes = append $volumes (dict "name" "redis-password" "secret" . "items" (list (dict "key" $.Values.redis.passwordSecret.key "path" "password"))) }}
{{- end }}
{{- end }}
{{- toYaml $volumes }}
{{- end }}
