{{/* Names and labels. */}}
{{- define "phonebooth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phonebooth.fullname" -}}
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

{{- define "phonebooth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phonebooth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "phonebooth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "phonebooth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "phonebooth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "phonebooth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the keys: the user's, or the chart's own. */}}
{{- define "phonebooth.secretName" -}}
{{- default (include "phonebooth.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "phonebooth.externalDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{ end }}
{{- end }}

{{- define "phonebooth.redisConfigured" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{/* /data on a persistent volume: only for SQLite (no external database). */}}
{{- define "phonebooth.persistent" -}}
{{- if and .Values.persistence.enabled (not (include "phonebooth.externalDatabase" .)) }}true{{ end }}
{{- end }}

{{/*
Seconds a pod needs to shut down cleanly: the preStop sleep, then the server's drain
(limits.drain_timeout_s for live calls, 10 s to end the rest politely, 5 s to close
connections).
*/}}
{{- define "phonebooth.drainBudgetSeconds" -}}
{{- $drain := 30.0 }}
{{- if hasKey .Values.config.limits "drain_timeout_s" }}
{{- $drain = .Values.config.limits.drain_timeout_s }}
{{- end }}
{{- int (ceil (addf $drain 10 5 .Values.preStopSleepSeconds)) }}
{{- end }}

{{- define "phonebooth.terminationGracePeriodSeconds" -}}
{{- $budget := int (include "phonebooth.drainBudgetSeconds" .) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $budget 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $budget }}
{{- fail (printf "phonebooth: terminationGracePeriodSeconds=%v is too short: the drain needs more than %d s (preStopSleepSeconds + config.limits.drain_timeout_s + 15); raise it or leave it empty to derive it" .Values.terminationGracePeriodSeconds $budget) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Guards: several replicas share calls only through the Redis bus and one Postgres database.
Included by every template, so `helm template` with any subset still fails.
*/}}
{{- define "phonebooth.validate" -}}
{{- $scaled := or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- if and $scaled (not (include "phonebooth.redisConfigured" .)) }}
{{- fail "phonebooth: replicaCount > 1 or autoscaling.enabled needs the Redis bus: set redis.url or redis.existingSecret. Without it live control (say, hangup), event streams and admission reach only the replica holding a call." }}
{{- end }}
{{- if and $scaled (not (include "phonebooth.externalDatabase" .)) }}
{{- fail "phonebooth: replicaCount > 1 or autoscaling.enabled needs a shared PostgreSQL database: set database.url or database.existingSecret (SQLite is one file on one pod)." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "phonebooth: autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- end }}
