{{/*
Shared names and labels of the speedrun-operator chart (the standard helper set).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "speedrun-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects, truncated to 63 characters (DNS label limit);
the release name alone when it already contains the chart name.
*/}}
{{- define "speedrun-operator.fullname" -}}
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

{{/* The metrics Service: a DNS label, so the suffix must fit in 63 characters too. */}}
{{- define "speedrun-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "speedrun-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "speedrun-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "speedrun-operator.labels" -}}
helm.sh/chart: {{ include "speedrun-operator.chart" . }}
{{ include "speedrun-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: speedrun-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The stable subset that selects the operator pod. */}}
{{- define "speedrun-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "speedrun-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "speedrun-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "speedrun-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
repository:tag, the tag defaulting to the chart's appVersion, and @digest when one is given
(the tag then only documents; the runtime pulls by digest). Call with (dict "image" X "ctx" $).
*/}}
{{- define "speedrun-operator.image" -}}
{{- $ref := printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- if .image.digest }}
{{- $ref = printf "%s@%s" $ref .image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/*
Relabelings, metricRelabelings and honorLabels of one scrape endpoint, from a monitor's values.
Call with (dict "monitor" .Values.monitoring.X "relabelings" LIST-OF-THE-CHART'S-OWN).
*/}}
{{- define "speedrun-operator.scrapeOptions" -}}
{{- if .monitor.honorLabels }}
honorLabels: true
{{- end }}
{{- $relabelings := concat (.relabelings | default list) (.monitor.relabelings | default list) }}
{{- with $relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .monitor.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator serves, as a JSON list (empty: all, with rbac.clusterWide).
Helm templates return strings, hence JSON; read back with fromJsonArray.
*/}}
{{- define "speedrun-operator.watchNamespaces" -}}
{{- if .Values.rbac.clusterWide }}
{{- if .Values.operator.watchNamespaces }}
{{- fail "operator.watchNamespaces: leave it empty with rbac.clusterWide=true (the operator then serves every namespace)" }}
{{- end }}
{{- list | toJson }}
{{- else if .Values.operator.watchNamespaces }}
{{- .Values.operator.watchNamespaces | uniq | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}
