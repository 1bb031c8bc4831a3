{{/* The release's base name. */}}
{{- define "confidant.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one service's objects: <fullname>-<service>. */}}
{{- define "confidant.serviceName" -}}
{{- printf "%s-%s" (include "confidant.fullname" .root) .service -}}
{{- end -}}

{{- define "confidant.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: confidant
{{- end -}}

{{/* Selector labels of one service (dict root, service). */}}
{{- define "confidant.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "confidant.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Pull policy: as set, else IfNotPresent for a digest (immutable) and
Always for a tag (which can move). */}}
{{- define "confidant.pullPolicy" -}}
{{- if .Values.image.pullPolicy -}}
{{- .Values.image.pullPolicy -}}
{{- else if .Values.image.digest -}}
IfNotPresent
{{- else -}}
Always
{{- end -}}
{{- end -}}

{{/* One service's settings: defaults merged under its own (dict root, service). */}}
{{- define "confidant.serviceValues" -}}
{{- $own := index .root.Values.services .service | default dict -}}
{{- toYaml (mustMergeOverwrite (deepCopy .root.Values.defaults) (deepCopy $own)) -}}
{{- end -}}

{{/* The TLS Secret of one service (dict root, service). */}}
{{- define "confidant.tlsSecret" -}}
{{- if eq .root.Values.tls.mode "existingSecrets" -}}
{{- required (printf "tls.existingSecrets.%s is required when tls.mode is existingSecrets" .service) (index .root.Values.tls.existingSecrets .service) -}}
{{- else -}}
{{- printf "%s-tls" (include "confidant.serviceName" .) -}}
{{- end -}}
{{- end -}}

{{/* The services a service calls (dict root, service). */}}
{{- define "confidant.calls" -}}
{{- $calls := dict "identity" (list "audit" "retention") "intake" (list "identity" "audit" "vault") "vault" (list "identity" "audit") "retention" (list "identity" "audit" "vault") "audit" (list "identity" "retention") -}}
{{- toYaml (index $calls .service) -}}
{{- end -}}

{{/* confidant.toml of one service (dict root, service). */}}
{{- define "confidant.config" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $s := $v.settings -}}
trust_domain = {{ $v.trustDomain | quote }}
ca_file = "/etc/confidant/ca/ca.crt"
reflection = false
shutdown_grace_seconds = {{ $s.shutdownGraceSeconds }}
tls_reload_seconds = {{ $s.tlsReloadSeconds }}
probe_listen = "0.0.0.0:{{ $v.ports.probe }}"
{{- with (include "confidant.serviceValues" (dict "root" $root "service" .service) | fromYaml).workerThreads }}
worker_threads = {{ . }}
{{- end }}

[services.{{ .service }}]
listen = "0.0.0.0:{{ index $v.ports .service }}"
cert_file = "/etc/confidant/tls/tls.crt"
key_file = "/etc/confidant/tls/tls.key"
max_in_flight = {{ (include "confidant.serviceValues" (dict "root" $root "service" .service) | fromYaml).maxInFlight | int64 }}

[peers]
{{- range $peer := list "identity" "intake" "vault" "retention" "audit" }}
{{- if ne $peer $.service }}
{{ $peer }} = "https://{{ include "confidant.serviceName" (dict "root" $root "service" $peer) }}:{{ index $v.ports $peer }}"
{{- end }}
{{- end }}

[redis]
key_prefix = {{ $v.redis.keyPrefix | quote }}

[telemetry]
log_format = "json"
log_level = {{ $v.telemetry.logLevel | quote }}
sampling_ratio = {{ $v.telemetry.samplingRatio }}
metrics_interval_seconds = {{ $v.telemetry.metricsIntervalSeconds }}
{{- with $v.telemetry.otlpEndpoint }}
otlp_endpoint = {{ . | quote }}
{{- end }}
{{- if $v.telemetry.otlpTls.secretName }}
otlp_ca_file = "/etc/confidant/otlp/ca.crt"
{{- if $v.telemetry.otlpTls.clientCertificate }}
otlp_cert_file = "/etc/confidant/otlp/tls.crt"
otlp_key_file = "/etc/confidant/otlp/tls.key"
{{- end }}
{{- end }}
{{- if has .service (list "vault" "identity" "intake") }}

[kms]
provider = "aws"
key_id = {{ required "kms.keyId is required" $v.kms.keyId | quote }}
region = {{ required "kms.region is required" $v.kms.region | quote }}
{{- with $v.kms.endpoint }}
endpoint = {{ . | quote }}
{{- end }}
{{- end }}
{{- if eq .service "vault" }}

[vault]
writers = {{ toJson $v.clients.vaultWriters }}
admins = {{ toJson $v.clients.admins }}
max_field_bytes = {{ int64 $s.vault.maxFieldBytes }}
max_document_bytes = {{ int64 $s.vault.maxDocumentBytes }}
destruction_window_seconds = {{ $s.vault.destructionWindowSeconds }}
key_cache_capacity = {{ $s.vault.keyCacheCapacity }}
key_cache_max_age_seconds = {{ $s.vault.keyCacheMaxAgeSeconds }}
key_cache_max_uses = {{ $s.vault.keyCacheMaxUses }}
{{- end }}
{{- if eq .service "identity" }}

[identity]
token_key_files = [{{ range $i, $k := $v.secrets.identity.tokenKeys }}{{ if $i }}, {{ end }}"/etc/confidant/identity/{{ $k }}"{{ end }}]
certificate_key_files = [{{ range $i, $k := $v.secrets.identity.certificateKeys }}{{ if $i }}, {{ end }}"/etc/confidant/identity/{{ $k }}"{{ end }}]
pepper_file = "/etc/confidant/identity/{{ $v.secrets.identity.pepperKey }}"
access_token_minutes = {{ $s.identity.accessTokenMinutes }}
session_hours = {{ $s.identity.sessionHours }}
attestation_reminder_days = {{ $s.identity.attestationReminderDays }}
review_reminder_hours = {{ $s.identity.reviewReminderHours }}
admins = {{ toJson $v.clients.admins }}
notification_webhook_url = {{ required "settings.identity.notificationWebhookUrl is required (the gateway that sends clients their one-time codes)" $s.identity.notificationWebhookUrl | quote }}
{{- end }}
{{- if and (eq .service "intake") $v.intakeWeb.enabled }}

[intake]
web_listen = "0.0.0.0:{{ $v.ports.intakeWeb }}"
web_requests_per_minute = {{ $v.intakeWeb.requestsPerMinute }}
{{- end }}
{{- if eq .service "retention" }}

[retention]
signing_key_file = "/etc/confidant/retention/{{ $v.secrets.retention.signingKey }}"
hold_release_approvers = {{ $s.retention.holdReleaseApprovers }}
batch_approvers = {{ $s.retention.batchApprovers }}
erasure_approvers = {{ $s.retention.erasureApprovers }}
sweep_interval_seconds = {{ $s.retention.sweepIntervalSeconds }}
destruction_reminder_seconds = {{ $s.retention.destructionReminderSeconds }}
sync_interval_seconds = {{ $s.retention.syncIntervalSeconds }}
{{- end }}
{{- if eq .service "audit" }}

[audit]
signing_key_file = "/etc/confidant/audit/{{ $v.secrets.audit.signingKey }}"
{{- with $v.secrets.audit.previousSigningKeys }}
previous_signing_key_files = [{{ range $i, $k := . }}{{ if $i }}, {{ end }}"/etc/confidant/audit/{{ $k }}"{{ end }}]
{{- end }}
checkpoint_interval_seconds = {{ $s.audit.checkpointIntervalSeconds }}
checkpoint_max_events = {{ $s.audit.checkpointMaxEvents }}
{{- with $s.audit.alertsWebhookUrl }}
alerts_webhook_url = {{ . | quote }}
{{- end }}
readers = {{ toJson $v.clients.auditReaders }}
{{- end }}
{{- end -}}

{{/* Hardened container security context. */}}
{{- define "confidant.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "confidant.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
