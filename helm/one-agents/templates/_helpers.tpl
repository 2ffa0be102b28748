{{/* Names and labels. */}}
{{- define "oneagents.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "oneagents.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "oneagents.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "oneagents.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: one-agents
{{- end -}}

{{- define "oneagents.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oneagents.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "oneagents.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "oneagents.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "oneagents.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "oneagents.secretName" -}}
{{- default (printf "%s-secrets" (include "oneagents.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The gRPC roles, in the order the config names them. */}}
{{- define "oneagents.grpcRoles" -}}agents catalog executions approvals credits{{- end -}}

{{/* The address a role's gRPC server is reached at: its Service, or endpointHost:port (hostNetwork). */}}
{{- define "oneagents.endpoint" -}}
{{- $root := index . 0 -}}{{- $role := index . 1 -}}
{{- $scheme := ternary "https" "http" $root.Values.grpcTls.enabled -}}
{{- $port := index $root.Values.roles $role "grpcPort" -}}
{{- if eq $root.Values.mode "monolith" -}}
{{- printf "%s://127.0.0.1:%v" $scheme $root.Values.monolith.grpcPort -}}
{{- else if $root.Values.network.endpointHost -}}
{{- printf "%s://%s:%v" $scheme $root.Values.network.endpointHost $port -}}
{{- else -}}
{{- printf "%s://%s-%s:%v" $scheme (include "oneagents.fullname" $root) $role $port -}}
{{- end -}}
{{- end -}}

{{/*
The config's secret settings, as the environment variables that carry them (figment nests on
`__`). They never go in the ConfigMap: `config` may not set them (the ConfigMap template fails),
and they come from the Secret through envFrom. `*` stands for a map key (a provider or product).
*/}}
{{- define "oneagents.secretSettings" -}}
database.url database.admin_url redis.url nats.password nats.token grpc.service_token approvals.link_secret channels.sms_api_key actions.signing_secret actions.signing_secrets.* llm.providers.*.api_key
{{- end -}}

{{/* The environment every container of the plane gets; `.role` names its role(s). */}}
{{- define "oneagents.env" -}}
{{- $root := .root -}}
- name: ONE_AGENTS_CONFIG
  value: /etc/one-agents/one-agents.toml
- name: ONE_AGENTS_GRPC__LISTEN
  value: {{ printf "%s:%v" $root.Values.network.listenHost .grpcPort | quote }}
{{- if .httpPort }}
- name: ONE_AGENTS_GATEWAY__LISTEN
  value: {{ printf "%s:%v" $root.Values.network.listenHost .httpPort | quote }}
{{- end }}
{{- if .metricsPort }}
- name: ONE_AGENTS_TELEMETRY__METRICS_ADDR
  value: {{ printf "%s:%v" $root.Values.network.listenHost .metricsPort | quote }}
{{- end }}
{{- range $role := splitList " " (include "oneagents.grpcRoles" $root) }}
- name: ONE_AGENTS_GRPC__ENDPOINTS__{{ upper $role }}
  value: {{ include "oneagents.endpoint" (list $root $role) | quote }}
{{- end }}
- name: ONE_AGENTS_SHUTDOWN__GRACE_SECONDS
  value: {{ $root.Values.shutdown.graceSeconds | int | quote }}
- name: ONE_AGENTS_SHUTDOWN__UNREADY_DELAY_MS
  value: {{ $root.Values.shutdown.unreadyDelayMs | int | quote }}
{{- if $root.Values.grpcTls.enabled }}
- name: ONE_AGENTS_GRPC__TLS__CERT_FILE
  value: /etc/one-agents/tls/tls.crt
- name: ONE_AGENTS_GRPC__TLS__KEY_FILE
  value: /etc/one-agents/tls/tls.key
- name: ONE_AGENTS_GRPC__TLS__CA_FILE
  value: /etc/one-agents/tls/ca.crt
{{- end }}
{{- end -}}

{{- define "oneagents.tlsSecretName" -}}
{{- default (printf "%s-grpc-tls" (include "oneagents.fullname" .)) .Values.grpcTls.existingSecret -}}
{{- end -}}

{{/* Volumes every pod of the plane mounts: the config, a writable /tmp, and the gRPC certificates. */}}
{{- define "oneagents.volumes" -}}
- name: config
  configMap:
    name: {{ include "oneagents.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.grpcTls.enabled }}
- name: grpc-tls
  secret:
    secretName: {{ include "oneagents.tlsSecretName" . }}
{{- end }}
{{- end -}}

{{- define "oneagents.volumeMounts" -}}
- name: config
  mountPath: /etc/one-agents
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.grpcTls.enabled }}
- name: grpc-tls
  mountPath: /etc/one-agents/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* The probe command of a role: the binary checks itself, so no curl is needed in the image. */}}
{{- define "oneagents.probe" -}}
{{- $root := .root -}}
{{- $tls := list -}}
{{- if $root.Values.grpcTls.enabled }}{{ $tls = list "--tls-ca" "/etc/one-agents/tls/ca.crt" }}{{ end -}}
{{- if eq .kind "http" -}}
exec:
  command: ["one-agents", "probe", "http", {{ printf "127.0.0.1:%v" .port | quote }}, "--path", {{ .path | quote }}]
{{- else -}}
exec:
  command: {{ concat (list "one-agents" "probe" "grpc" (printf "127.0.0.1:%v" .port)) $tls (ternary (list "--live") (list) (eq .path "live")) | toJson }}
{{- end }}
{{- end -}}
