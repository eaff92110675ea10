{{/* Names: "<release>-<chart>" unless the release name already holds the chart name. */}}
{{- define "kubeloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeloop.fullname" -}}
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

{{/* Component names are "<fullname>-<component>", cut so that they stay DNS labels. */}}
{{- define "kubeloop.componentName" -}}
{{- printf "%s-%s" (include "kubeloop.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeloop.operatorName" -}}
{{- include "kubeloop.componentName" (dict "root" . "component" "operator") }}
{{- end }}

{{- define "kubeloop.apiName" -}}
{{- include "kubeloop.componentName" (dict "root" . "component" "api") }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*) of a component: call with (dict "root" $ "component" "x"). */}}
{{- define "kubeloop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kubeloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kubeloop
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kubeloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeloop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* "repository:tag", the tag defaulting to the chart's appVersion: call with (dict "root" $ "image" x). */}}
{{- define "kubeloop.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* The Secret with accessKey/secretKey: an existing one, or the chart's. */}}
{{- define "kubeloop.credentialsSecret" -}}
{{- default .Values.objectStore.credentials.secretName .Values.objectStore.credentials.existingSecret }}
{{- end }}

{{- define "kubeloop.minioName" -}}
{{- include "kubeloop.componentName" (dict "root" . "component" "minio") }}
{{- end }}

{{- define "kubeloop.mlflowName" -}}
{{- include "kubeloop.componentName" (dict "root" . "component" "mlflow") }}
{{- end }}

{{/* Where everything reaches the object store: the value, else the bundled MinIO's Service. */}}
{{- define "kubeloop.s3Endpoint" -}}
{{- if .Values.objectStore.endpoint }}
{{- .Values.objectStore.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "%s.%s:9000" (include "kubeloop.minioName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "kubeloop.mlflowUri" -}}
{{- if .Values.mlflow.trackingUri }}
{{- .Values.mlflow.trackingUri }}
{{- else if .Values.mlflowServer.enabled }}
{{- printf "http://%s.%s:5000" (include "kubeloop.mlflowName" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{- define "kubeloop.peeringName" -}}
{{- default (include "kubeloop.operatorName" .) .Values.operator.peeringName }}
{{- end }}

{{/* Object-store credentials as env vars named <prefix>S3_ACCESS_KEY / <prefix>S3_SECRET_KEY. */}}
{{- define "kubeloop.s3CredentialsEnv" -}}
- name: {{ .prefix }}S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kubeloop.credentialsSecret" .root }}
      key: accessKey
- name: {{ .prefix }}S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kubeloop.credentialsSecret" .root }}
      key: secretKey
{{- end }}

{{/* Pod-level settings shared by the components: call with (dict "root" $ "values" .Values.x). */}}
{{- define "kubeloop.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Cross-field rules the schema cannot state; each message names the value to set. */}}
{{- define "kubeloop.validate" -}}
{{- $c := .Values.objectStore.credentials }}
{{- if and (include "kubeloop.s3Endpoint" .) (not $c.existingSecret) (not .Values.minio.enabled) (or (not $c.accessKey) (not $c.secretKey)) }}
{{- fail "objectStore.credentials.accessKey and objectStore.credentials.secretKey: required when objectStore.endpoint is set (or name an objectStore.credentials.existingSecret)" }}
{{- end }}
{{- end }}

{{/* Non-empty when a credentials Secret exists for the components to read (existing, or the chart's). */}}
{{- define "kubeloop.hasCredentials" -}}
{{- $c := .Values.objectStore.credentials }}
{{- if or $c.existingSecret .Values.minio.enabled (and $c.accessKey $c.secretKey) }}true{{ end }}
{{- end }}
