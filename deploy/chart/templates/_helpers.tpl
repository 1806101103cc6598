{{/* The chart's name, and the full name every object is named after. */}}
{{- define "image-catalog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-catalog.fullname" -}}
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

{{/* Labels that pick this release's pods. */}}
{{- define "image-catalog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-catalog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object; Helm's own only when Helm manages the objects. */}}
{{- define "image-catalog.labels" -}}
{{ include "image-catalog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- if not .Values.kubectlManifests }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The label the leader puts on its own pod; leader-only Services select it. */}}
{{- define "image-catalog.leaderLabel" -}}
imagecatalog.dev/leader: "true"
{{- end }}

{{/* Selector of the Services that must reach the replica doing the work. */}}
{{- define "image-catalog.leaderSelector" -}}
{{ include "image-catalog.selectorLabels" . }}
{{- if .Values.leaderElection.enabled }}
{{ include "image-catalog.leaderLabel" . }}
{{- end }}
{{- end }}

{{- define "image-catalog.serviceAccountName" -}}
{{- default (include "image-catalog.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "image-catalog.leaseName" -}}
{{- default (include "image-catalog.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "image-catalog.uploadServiceName" -}}
{{- printf "%s-upload" (include "image-catalog.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-catalog.webhooksServiceName" -}}
{{- printf "%s-webhooks" (include "image-catalog.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "image-catalog.metricsServiceName" -}}
{{- printf "%s-metrics" (include "image-catalog.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "image-catalog.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The DVCR credentials Secret the daemon reads, or nothing. */}}
{{- define "image-catalog.dvcrAuthSecret" -}}
{{- if .Values.dvcr.auth.username }}
{{- printf "%s-dvcr-auth" (include "image-catalog.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.dvcr.auth.existingSecret }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding DVCR's CA under ca.crt, or nothing. */}}
{{- define "image-catalog.dvcrCAConfigMap" -}}
{{- if and .Values.dvcr.ca .Values.dvcr.caConfigMap }}
{{- fail "set dvcr.ca (the PEM) or dvcr.caConfigMap (an existing ConfigMap), not both" }}
{{- end }}
{{- if .Values.dvcr.ca }}
{{- printf "%s-dvcr-ca" (include "image-catalog.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.dvcr.caConfigMap }}
{{- end }}
{{- end }}

{{/* The upload base URL users see: upload.externalURL, else the Ingress's, else none. */}}
{{- define "image-catalog.uploadExternalURL" -}}
{{- if .Values.upload.externalURL }}
{{- .Values.upload.externalURL }}
{{- else if and .Values.upload.ingress.enabled .Values.upload.ingress.host }}
{{- printf "%s://%s" (ternary "https" "http" (not (empty .Values.upload.ingress.tls))) .Values.upload.ingress.host }}
{{- end }}
{{- end }}

{{/* Checks of combinations the schema cannot express. */}}
{{- define "image-catalog.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without it every replica would import and write" }}
{{- end }}
{{- if and .Values.dvcr.auth.username (not .Values.dvcr.auth.password) }}
{{- fail "dvcr.auth.username is set but dvcr.auth.password is empty" }}
{{- end }}
{{- end }}
