{{/* Names, labels and the shared pieces of the pod specs. */}}

{{- define "shardmerge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shardmerge.fullname" -}}
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

{{/* Resource names (kept under 63 characters with their suffix). */}}
{{- define "shardmerge.coordinatorName" -}}
{{- printf "%s-coordinator" (include "shardmerge.fullname" . | trunc 51 | trimSuffix "-") -}}
{{- end -}}
{{- define "shardmerge.workerName" -}}
{{- printf "%s-worker" (include "shardmerge.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}

{{- define "shardmerge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shardmerge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardmerge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shardmerge.labels" -}}
helm.sh/chart: {{ include "shardmerge.chart" . }}
{{ include "shardmerge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shardmerge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "worker"). */}}
{{- define "shardmerge.componentSelectorLabels" -}}
{{ include "shardmerge.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shardmerge.componentLabels" -}}
{{ include "shardmerge.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shardmerge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "shardmerge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "shardmerge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Secrets: chart-created unless an existing one is named. */}}
{{- define "shardmerge.tokenSecretName" -}}
{{- default (printf "%s-token" (include "shardmerge.fullname" .)) .Values.token.existingSecret -}}
{{- end -}}

{{- define "shardmerge.workerTokenSecretName" -}}
{{- default (printf "%s-worker-token" (include "shardmerge.fullname" .)) .Values.workerToken.existingSecret -}}
{{- end -}}

{{- define "shardmerge.s3SecretName" -}}
{{- default (printf "%s-s3" (include "shardmerge.fullname" .)) .Values.s3.existingSecret -}}
{{- end -}}

{{/* True when S3 credentials come from a Secret (existing or chart-created). */}}
{{- define "shardmerge.s3HasSecret" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId -}}true{{- end -}}
{{- end -}}

{{/* TLS is on with tls.enabled, or as soon as a certificate source is named (one value away). */}}
{{- define "shardmerge.tlsEnabled" -}}
{{- if or .Values.tls.enabled .Values.tls.existingSecret .Values.tls.certManager.issuerName -}}true{{- end -}}
{{- end -}}

{{/* The server certificate's Secret: the existing one, or the one the chart's cert-manager Certificate fills. */}}
{{- define "shardmerge.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "shardmerge.coordinatorName" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "shardmerge.tlsCaSecretName" -}}
{{- default (include "shardmerge.tlsSecretName" .) .Values.tls.caSecret -}}
{{- end -}}

{{- define "shardmerge.coordinatorURL" -}}
{{- if .Values.coordinator.url -}}
{{- .Values.coordinator.url -}}
{{- else -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" (eq (include "shardmerge.tlsEnabled" .) "true")) (include "shardmerge.coordinatorName" .) .Release.Namespace (int .Values.coordinator.port) -}}
{{- end -}}
{{- end -}}

{{/* Checks run by every render: fail early with a message that names the value. */}}
{{- define "shardmerge.validate" -}}
{{- if and .Values.tls.enabled (not (or .Values.tls.existingSecret .Values.tls.certManager.issuerName)) -}}
{{- fail "shardmerge: tls.enabled needs tls.existingSecret (a Secret with the certificate and key) or tls.certManager.issuerName (a cert-manager issuer)" -}}
{{- end -}}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.issuerName -}}
{{- fail "shardmerge: set either tls.existingSecret or tls.certManager.issuerName, not both" -}}
{{- end -}}
{{- if and .Values.workerToken.existingSecret .Values.workerToken.value -}}
{{- fail "shardmerge: set either workerToken.existingSecret or workerToken.value, not both" -}}
{{- end -}}
{{- if and .Values.token.value (eq (toString .Values.token.value) (toString .Values.workerToken.value)) -}}
{{- fail "shardmerge: token.value and workerToken.value must differ (a client could otherwise act as a worker)" -}}
{{- end -}}
{{- if and .Values.token.existingSecret (eq .Values.token.existingSecret .Values.workerToken.existingSecret) (eq .Values.token.secretKey .Values.workerToken.secretKey) -}}
{{- fail "shardmerge: token and workerToken name the same Secret key; the cluster and worker tokens must differ" -}}
{{- end -}}
{{- range .Values.allowLocations -}}
{{- if contains "," . -}}
{{- fail (printf "shardmerge: allowLocations entry %q contains a comma (SHARDMERGE_ALLOW_LOCATION is comma-separated)" .) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.job.enabled (not .Values.job.output) -}}
{{- fail "shardmerge: job.enabled needs job.output (e.g. s3://bucket/merged)" -}}
{{- end -}}
{{- if ge (float64 .Values.worker.drainSecs) (float64 .Values.worker.terminationGracePeriodSeconds) -}}
{{- fail "shardmerge: worker.drainSecs must be below worker.terminationGracePeriodSeconds (a worker must finish draining before it is killed)" -}}
{{- end -}}
{{- if le (float64 .Values.coordinator.terminationGracePeriodSeconds) 20.0 -}}
{{- fail "shardmerge: coordinator.terminationGracePeriodSeconds must be above 20 (on SIGTERM the coordinator waits up to 20 s for running commits, then syncs its journal)" -}}
{{- end -}}
{{- if and .Values.s3.accessKeyId (not .Values.s3.secretAccessKey) -}}
{{- fail "shardmerge: s3.accessKeyId needs s3.secretAccessKey" -}}
{{- end -}}
{{- if and .Values.s3.existingSecret .Values.s3.accessKeyId -}}
{{- fail "shardmerge: set either s3.existingSecret or s3.accessKeyId/secretAccessKey, not both" -}}
{{- end -}}
{{- if and .Values.token.existingSecret .Values.token.value -}}
{{- fail "shardmerge: set either token.existingSecret or token.value, not both" -}}
{{- end -}}
{{- if not (has .Values.coordinator.probes.kind (list "auto" "grpc" "tcp")) -}}
{{- fail "shardmerge: coordinator.probes.kind must be auto, grpc or tcp" -}}
{{- end -}}
{{- $a := .Values.worker.autoscaling -}}
{{- if and $a.enabled (not (or (gt (int $a.targetCPUUtilizationPercentage) 0) (gt (int $a.targetMemoryUtilizationPercentage) 0))) -}}
{{- fail "shardmerge: worker.autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage above 0" -}}
{{- end -}}
{{- if not (has .Values.log.format (list "json" "text")) -}}
{{- fail "shardmerge: log.format must be json or text" -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every container: logging. */}}
{{- define "shardmerge.commonEnv" -}}
- name: SHARDMERGE_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: SHARDMERGE_LOG
  value: {{ .Values.log.level | quote }}
{{- end -}}

{{/* Credentials and allowlist of one component: (dict "ctx" $ "component" "coordinator|worker|submit").
The coordinator gets both tokens, workers only the worker token, the Job only the cluster token. */}}
{{- define "shardmerge.authEnv" -}}
{{- $ := .ctx -}}
{{- if $.Values.token.enabled }}
{{- if has .component (list "coordinator" "submit") }}
- name: SHARDMERGE_TOKEN_FILE
  value: /etc/shardmerge/token/token
{{- end }}
{{- if has .component (list "coordinator" "worker") }}
- name: SHARDMERGE_WORKER_TOKEN_FILE
  value: /etc/shardmerge/worker-token/token
{{- end }}
{{- else if eq .component "coordinator" }}
- name: SHARDMERGE_ALLOW_UNAUTHENTICATED
  value: "true"
{{- end }}
{{- if and $.Values.allowLocations (has .component (list "coordinator" "worker")) }}
- name: SHARDMERGE_ALLOW_LOCATION
  value: {{ join "," $.Values.allowLocations | quote }}
{{- end }}
{{- end -}}

{{/* S3 settings for the coordinator and workers. */}}
{{- define "shardmerge.s3Env" -}}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
- name: AWS_ALLOW_HTTP
  value: {{ .Values.s3.allowHttp | quote }}
{{- if include "shardmerge.s3HasSecret" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "shardmerge.s3SecretName" . }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "shardmerge.s3SecretName" . }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end }}
{{- with .Values.s3.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Client side of TLS (workers, the Job). */}}
{{- define "shardmerge.clientTlsEnv" -}}
{{- if include "shardmerge.tlsEnabled" . }}
- name: SHARDMERGE_TLS_CA
  value: /etc/shardmerge/tls-ca/ca.crt
{{- end }}
{{- end -}}

{{/* Volumes: tokens, TLS (server or CA), /tmp. (dict "ctx" $ "component" "coordinator|worker|submit") */}}
{{- define "shardmerge.commonVolumes" -}}
{{- $ := .ctx -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $.Values.tmpSizeLimit }}
{{- if and $.Values.token.enabled (has .component (list "coordinator" "submit")) }}
- name: token
  secret:
    secretName: {{ include "shardmerge.tokenSecretName" $ }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.token.secretKey }}
        path: token
{{- end }}
{{- if and $.Values.token.enabled (has .component (list "coordinator" "worker")) }}
- name: worker-token
  secret:
    secretName: {{ include "shardmerge.workerTokenSecretName" $ }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.workerToken.secretKey }}
        path: token
{{- end }}
{{- if include "shardmerge.tlsEnabled" $ }}
{{- if eq .component "coordinator" }}
- name: tls
  secret:
    secretName: {{ include "shardmerge.tlsSecretName" $ }}
    defaultMode: 0440
    items:
      - key: {{ $.Values.tls.certKey }}
        path: tls.crt
      - key: {{ $.Values.tls.keyKey }}
        path: tls.key
{{- else }}
- name: tls-ca
  secret:
    secretName: {{ include "shardmerge.tlsCaSecretName" $ }}
    defaultMode: 0444
    items:
      - key: {{ $.Values.tls.caKey }}
        path: ca.crt
{{- end }}
{{- end }}
{{- end -}}

{{- define "shardmerge.commonVolumeMounts" -}}
{{- $ := .ctx -}}
- name: tmp
  mountPath: /tmp
{{- if and $.Values.token.enabled (has .component (list "coordinator" "submit")) }}
- name: token
  mountPath: /etc/shardmerge/token
  readOnly: true
{{- end }}
{{- if and $.Values.token.enabled (has .component (list "coordinator" "worker")) }}
- name: worker-token
  mountPath: /etc/shardmerge/worker-token
  readOnly: true
{{- end }}
{{- if include "shardmerge.tlsEnabled" $ }}
{{- if eq .component "coordinator" }}
- name: tls
  mountPath: /etc/shardmerge/tls
  readOnly: true
{{- else }}
- name: tls-ca
  mountPath: /etc/shardmerge/tls-ca
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every pod. */}}
{{- define "shardmerge.podCommon" -}}
serviceAccountName: {{ include "shardmerge.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountServiceAccountToken }}
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Pod annotation that restarts pods when a chart-managed Secret's inputs change. */}}
{{- define "shardmerge.secretChecksum" -}}
{{- $in := dict "token" .Values.token "workerToken" .Values.workerToken "s3" (omit .Values.s3 "extraEnv") "tls" .Values.tls -}}
{{- toJson $in | sha256sum -}}
{{- end -}}
