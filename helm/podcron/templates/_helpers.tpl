{{/* The chart's name, or nameOverride. */}}
{{- define "podcron.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object the chart makes. */}}
{{- define "podcron.fullname" -}}
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

{{/*
The name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): with the namespace, so
that releases of the same name in two namespaces do not take each other's.
*/}}
{{- define "podcron.clusterName" -}}
{{- printf "%s-%s" (include "podcron.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "podcron.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "podcron.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "podcron.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podcron.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "podcron.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "podcron.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podcron.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Where the ConfigMap's config.yaml is mounted: PODCRON_CONFIG_DIR. */}}
{{- define "podcron.configDir" -}}/etc/podcron{{- end }}

{{/* Where the jobs' ConfigMap (jobConfig) and Secret (jobSecrets) are mounted, operator only. */}}
{{- define "podcron.jobConfigDir" -}}/etc/podcron-jobs/config{{- end }}
{{- define "podcron.jobSecretsDir" -}}/etc/podcron-jobs/secrets{{- end }}

{{/* The ConfigMap of jobConfig. */}}
{{- define "podcron.jobConfigName" -}}
{{- printf "%s-job-config" (include "podcron.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Role and RoleBinding of the replicas' Leases, in the release's namespace. */}}
{{- define "podcron.leasesName" -}}
{{- printf "%s-leases" (include "podcron.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The directory of the control socket, an emptyDir shared by the two containers. */}}
{{- define "podcron.socketDir" -}}/var/run/podcron{{- end }}

{{/* The ScheduledJob rules, for a ClusterRole or for the Role of each watched namespace. */}}
{{- define "podcron.jobRules" -}}
# kopf lists and watches ScheduledJobs (it never reads a single one: no get). It keeps what
# it handled in the process, and patches its own annotations onto an object only while it
# retries a handler that raised.
- apiGroups: [podcron.dev]
  resources: [scheduledjobs]
  verbs: [list, watch, patch]
# The status writer patches on the version it last saw, and when another writer moved it
# (409), reads the status again to merge its counters with what is there.
- apiGroups: [podcron.dev]
  resources: [scheduledjobs/status]
  verbs: [get, patch]
# Ready changes and failed runs are posted as core/v1 Events; a repeat patches the
# earlier Event's count and time instead of creating another.
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/*
The environment of both containers: where the settings are, the pod's name, namespace and
address (a replica's identity, where the Leases are, where other replicas redirect a manual
run to; the settings need the namespace in both), and
OpenTelemetry's own.
*/}}
{{- define "podcron.env" -}}
- name: PODCRON_CONFIG_DIR
  value: {{ include "podcron.configDir" . }}
- name: POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: POD_IP
  valueFrom:
    fieldRef: {fieldPath: status.podIP}
{{- with .Values.otlp.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $.Values.otlp.protocol | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .Values.otlp.serviceName | quote }}
{{- end }}

{{- define "podcron.volumeMounts" -}}
- name: config
  mountPath: {{ include "podcron.configDir" . }}
  readOnly: true
- name: control
  mountPath: {{ include "podcron.socketDir" . }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* A network of allowedCIDRs or trustedProxies as a CIDR: a bare address becomes /32 or /128. */}}
{{- define "podcron.cidr" -}}
{{- if contains "/" . }}{{ . }}{{ else if contains ":" . }}{{ . }}/128{{ else }}{{ . }}/32{{ end }}
{{- end }}
