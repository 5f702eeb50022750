{{/*
Names, labels and the guards every template shares.
*/}}

{{- define "agogd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "agogd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "agogd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component (engine or runner): ctx, component. */}}
{{- define "agogd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agogd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of one component's objects: ctx, component. */}}
{{- define "agogd.labels" -}}
helm.sh/chart: {{ include "agogd.chart" .ctx }}
{{ include "agogd.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: agogsaas
{{- end }}

{{/* The labels shared by the release's objects that are not one component's. */}}
{{- define "agogd.commonLabels" -}}
helm.sh/chart: {{ include "agogd.chart" . }}
app.kubernetes.io/name: {{ include "agogd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agogsaas
{{- end }}

{{- define "agogd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agogd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference: repository:tag, the tag defaulting to the chart's
appVersion. `latest` (or no tag at all) is refused: a rollout must name what
it runs, and `helm rollback` must bring back what ran. Args: image, ctx, what.
*/}}
{{- define "agogd.image" -}}
{{- $tag := toString (default .ctx.Chart.AppVersion .image.tag) }}
{{- if or (eq $tag "latest") (eq $tag "") }}
{{- fail (printf "%s.tag %q is refused: pin a version (unset, it is the chart's appVersion %s)" .what $tag .ctx.Chart.AppVersion) }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
agogd's secret settings (its SecretStr fields, tests/test_helm_chart.py keeps
this list equal to them). They come only from an existing Secret, never from
values: a ConfigMap, a `value:` or a rendered manifest would hold them in the
clear.
*/}}
{{- define "agogd.secretSettings" -}}
AGOG_API_TOKEN AGOG_BACKUP_VERIFY_DSN AGOG_BERRY_APP_DB_DSN AGOG_FORGE_TOKEN AGOG_NATS_PASSWORD AGOG_NATS_TOKEN AGOG_POSTGRES_DSN AGOG_POSTGRES_PASSWORD
{{- end }}

{{/* Settings the chart sets itself, from the values named here. */}}
{{- define "agogd.managedSettings" -}}
{{- $m := dict }}
{{- $_ := set $m "AGOG_NATS_URL" "nats.urls" }}
{{- $_ := set $m "AGOG_NATS_USER" "nats.user" }}
{{- $_ := set $m "AGOG_STREAM_REPLICAS" "nats.streamReplicas" }}
{{- $_ := set $m "AGOG_HTTP_HOST" "(0.0.0.0, for the probes and the Service)" }}
{{- $_ := set $m "AGOG_HTTP_PORT" "http.port" }}
{{- $_ := set $m "AGOG_HTTP_ALLOWED_HOSTS" "http.allowedHosts" }}
{{- $_ := set $m "AGOG_SHUTDOWN_GRACE" "shutdownGrace" }}
{{- $_ := set $m "AGOG_RUNNER_AGENTS" "runner.agents (the runner's own Deployment)" }}
{{- $_ := set $m "AGOG_RUNNER_WORKDIR" "runner.workdir" }}
{{- toJson $m }}
{{- end }}

{{/*
Refuse settings that must not be in a ConfigMap: a secret (a clear message,
never the value) or one the chart sets itself. Args: settings (a map), where.
*/}}
{{- define "agogd.checkSettings" -}}
{{- $secrets := splitList " " (include "agogd.secretSettings" .) }}
{{- $managed := include "agogd.managedSettings" . | fromJson }}
{{- range $key, $_ := .settings }}
{{- if has $key $secrets }}
{{- fail (printf "%s.%s is a secret: put it in the Secret named by secrets.existingSecret (or secrets.keyRefs), never in values" $.where $key) }}
{{- end }}
{{- if hasKey $managed $key }}
{{- fail (printf "%s.%s is set by the chart: use %s" $.where $key (get $managed $key)) }}
{{- end }}
{{- if not (hasPrefix "AGOG_" $key) }}
{{- fail (printf "%s.%s is not an agogd setting (they are AGOG_*): use extraEnv for other variables" $.where $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Refuse a secret setting given as a plain `value:` in extraEnv. Args: env, where. */}}
{{- define "agogd.checkExtraEnv" -}}
{{- $secrets := splitList " " (include "agogd.secretSettings" .) }}
{{- range .env }}
{{- if and (has .name $secrets) (hasKey . "value") }}
{{- fail (printf "%s: %s is a secret: use valueFrom.secretKeyRef (or secrets.keyRefs), never value" $.where .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The non-secret settings every agogd process of the release shares (the
ConfigMap). A password in a URL is refused: it goes in the Secret.
*/}}
{{- define "agogd.settings" -}}
{{- $v := .Values }}
{{- include "agogd.checkSettings" (dict "settings" $v.config "where" "config") }}
{{- range $i, $url := $v.nats.urls }}
{{- if not (regexMatch "^(nats|tls|ws|wss)://" $url) }}
{{- fail (printf "nats.urls[%d] is not a nats://, tls://, ws:// or wss:// URL" $i) }}
{{- end }}
{{- if contains "@" $url }}
{{- fail "nats.urls: a user, password or token in a NATS URL is refused: nats.user here, the password in the Secret (AGOG_NATS_PASSWORD)" }}
{{- end }}
{{- end }}
{{- $s := dict }}
{{- range $key, $value := $v.config }}
{{- $_ := set $s $key (toString $value) }}
{{- end }}
{{- $_ := set $s "AGOG_NATS_URL" (join "," $v.nats.urls) }}
{{- if $v.nats.user }}
{{- $_ := set $s "AGOG_NATS_USER" $v.nats.user }}
{{- end }}
{{- if $v.nats.streamReplicas }}
{{- $_ := set $s "AGOG_STREAM_REPLICAS" (toString $v.nats.streamReplicas) }}
{{- end }}
{{- if not $v.postgres.dsnFrom.name }}
{{- $dsn := required "postgres.dsn is required (or postgres.dsnFrom, a Secret's key)" $v.postgres.dsn }}
{{- if not (regexMatch "^postgres(ql)?://" $dsn) }}
{{- fail "postgres.dsn is not a postgresql:// URL" }}
{{- end }}
{{- if or (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@" $dsn) (contains "password=" (lower $dsn)) }}
{{- fail "postgres.dsn carries a password: leave it out (AGOG_POSTGRES_PASSWORD in the Secret), or take the whole DSN from a Secret with postgres.dsnFrom" }}
{{- end }}
{{- $_ := set $s "AGOG_POSTGRES_DSN" $dsn }}
{{- end }}
{{- $_ := set $s "AGOG_HTTP_HOST" "0.0.0.0" }}
{{- $_ := set $s "AGOG_HTTP_PORT" (toString $v.http.port) }}
{{- $_ := set $s "AGOG_SHUTDOWN_GRACE" (toString $v.shutdownGrace) }}
{{- $full := include "agogd.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := list $full (printf "%s.%s" $full $ns) (printf "%s.%s.svc" $full $ns) (printf "%s.%s.svc.%s" $full $ns $v.clusterDomain) }}
{{- $_ := set $s "AGOG_HTTP_ALLOWED_HOSTS" (join "," (concat $hosts $v.http.allowedHosts)) }}
{{- toYaml $s }}
{{- end }}

{{/*
The environment of every agogd container: the ConfigMap, the existing Secret
(its keys named as the AGOG_* variables) and single keys of other Secrets.
*/}}
{{- define "agogd.envFrom" -}}
- configMapRef:
    name: {{ include "agogd.fullname" . }}
{{- if .Values.secrets.existingSecret }}
- secretRef:
    name: {{ .Values.secrets.existingSecret }}
{{- end }}
{{- end }}

{{- define "agogd.secretEnv" -}}
{{- $secrets := splitList " " (include "agogd.secretSettings" .) }}
{{- range $name, $ref := .Values.secrets.keyRefs }}
{{- if not (has $name $secrets) }}
{{- fail (printf "secrets.keyRefs.%s is not one of agogd's secret settings (%s)" $name (join ", " $secrets)) }}
{{- end }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "secrets.keyRefs.%s.name is required" $name) $ref.name }}
      key: {{ required (printf "secrets.keyRefs.%s.key is required" $name) $ref.key }}
{{- end }}
{{- with .Values.postgres.dsnFrom }}
{{- if .name }}
- name: AGOG_POSTGRES_DSN
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ required "postgres.dsnFrom.key is required" .key }}
{{- end }}
{{- end }}
{{- end }}

{{/* The container securityContext: non-root, read-only root, no privilege, no capability. */}}
{{- define "agogd.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Soft or hard pod anti-affinity across nodes for one component: ctx, component, mode. */}}
{{- define "agogd.antiAffinity" -}}
{{- if eq .mode "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "agogd.selectorLabels" . | nindent 10 }}
{{- else if eq .mode "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "agogd.selectorLabels" . | nindent 12 }}
{{- end }}
{{- end }}
