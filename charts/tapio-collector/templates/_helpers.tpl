{{/* Names, labels and the pieces several templates share. */}}

{{- define "tapio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tapio.fullname" -}}
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

{{- define "tapio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tapio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tapio.selector" -}}
app.kubernetes.io/name: {{ include "tapio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tapio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tapio.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Where the collector sends: the configured address, the in-chart server, or none. */}}
{{- define "tapio.serverAddress" -}}
{{- if .Values.server.address -}}
{{- .Values.server.address -}}
{{- else if .Values.tapioServer.enabled -}}
{{- printf "%s-server.%s.svc:%v" (include "tapio.fullname" .) .Release.Namespace .Values.tapioServer.port -}}
{{- else -}}
none
{{- end -}}
{{- end -}}
