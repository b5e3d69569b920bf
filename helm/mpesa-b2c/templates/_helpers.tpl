{{/* Names, labels and the pieces every Deployment shares. */}}

{{- define "mpesa-b2c.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mpesa-b2c.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mpesa-b2c.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mpesa-b2c.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mpesa-b2c.labels" -}}
helm.sh/chart: {{ include "mpesa-b2c.chart" . }}
{{ include "mpesa-b2c.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mpesa-b2c
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of one component: call with (dict "ctx" $ "component" "worker"). */}}
{{- define "mpesa-b2c.componentLabels" -}}
{{ include "mpesa-b2c.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mpesa-b2c.componentSelectorLabels" -}}
{{ include "mpesa-b2c.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mpesa-b2c.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mpesa-b2c.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.secretName" -}}
{{- default (printf "%s-secrets" (include "mpesa-b2c.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "mpesa-b2c.configName" -}}
{{- printf "%s-config" (include "mpesa-b2c.fullname" .) }}
{{- end }}

{{- define "mpesa-b2c.callbacksBaseUrl" -}}
{{- if .Values.ingress.enabled }}
{{- printf "https://%s" (required "ingress.host is required when the ingress is enabled" .Values.ingress.host) }}
{{- else }}
{{- printf "http://%s-callbacks.%s.svc:%d" (include "mpesa-b2c.fullname" .) .Release.Namespace (int .Values.callbacks.port) }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.resultUrl" -}}
{{- default (printf "%s%s" (include "mpesa-b2c.callbacksBaseUrl" .) .Values.callbacks.resultPath) .Values.mpesa.resultUrl }}
{{- end }}

{{- define "mpesa-b2c.queueTimeoutUrl" -}}
{{- default (printf "%s%s" (include "mpesa-b2c.callbacksBaseUrl" .) .Values.callbacks.queueTimeoutPath) .Values.mpesa.queueTimeoutUrl }}
{{- end }}

{{/* Empty when neither mpesa.url nor the simulator is given: the worker then refuses to start. */}}
{{- define "mpesa-b2c.mpesaUrl" -}}
{{- if .Values.mpesa.url }}
{{- .Values.mpesa.url }}
{{- else if .Values.simulator.enabled }}
{{- printf "http://%s-simulator.%s.svc:%d/mminterface/request" (include "mpesa-b2c.fullname" .) .Release.Namespace (int .Values.simulator.port) }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.certificateSources" -}}
{{- $c := .Values.certificate }}
{{- $n := 0 }}
{{- if $c.pem }}{{ $n = add1 $n }}{{ end }}
{{- if $c.existingConfigMap }}{{ $n = add1 $n }}{{ end }}
{{- if $c.existingSecret }}{{ $n = add1 $n }}{{ end }}
{{- $n }}
{{- end }}

{{/* True when a certificate is mounted; fails on an ambiguous one. */}}
{{- define "mpesa-b2c.hasCertificate" -}}
{{- $n := include "mpesa-b2c.certificateSources" . | int }}
{{- if gt $n 1 }}
{{- fail "certificate: give only one of pem, existingConfigMap, existingSecret" }}
{{- end }}
{{- if eq $n 1 }}true{{ end }}
{{- end }}

{{/*
The values a release needs before its worker and receiver can start, one per line; empty when complete.
The chart renders without them (NOTES.txt lists them); the pods refuse to start, naming the variables.
*/}}
{{- define "mpesa-b2c.missingValues" -}}
{{- $missing := list }}
{{- if not (include "mpesa-b2c.mpesaUrl" .) }}
{{- $missing = append $missing "mpesa.url (or simulator.enabled)" }}
{{- end }}
{{- range list "spId" "serviceId" "shortcode" "initiatorName" }}
{{- if not (get $.Values.mpesa .) }}
{{- $missing = append $missing (printf "mpesa.%s" .) }}
{{- end }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- range list "spPassword" "initiatorPassword" "amqpUrl" "databaseUrl" "callbackToken" }}
{{- if not (get $.Values.secrets .) }}
{{- $missing = append $missing (printf "secrets.%s (or secrets.existingSecret)" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (include "mpesa-b2c.hasCertificate" .) }}
{{- $missing = append $missing "certificate (pem, existingConfigMap or existingSecret)" }}
{{- end }}
{{- join "\n" $missing }}
{{- end }}

{{- define "mpesa-b2c.validate" -}}
{{- if and .Values.worker.keda.enabled .Values.worker.autoscaling.enabled }}
{{- fail "worker.keda.enabled and worker.autoscaling.enabled are mutually exclusive: KEDA manages its own HPA" }}
{{- end }}
{{- if and .Values.simulator.enabled .Values.mpesa.url }}
{{- fail "simulator.enabled is for staging only: it cannot be combined with a real mpesa.url" }}
{{- end }}
{{- if and .Values.simulator.enabled (not .Values.simulator.privateKey.existingSecret) }}
{{- fail "simulator.privateKey.existingSecret is required with the simulator: the private key of the certificate.* certificate, so that it can read SecurityCredential" }}
{{- end }}
{{- if and .Values.simulator.enabled (not (include "mpesa-b2c.hasCertificate" .)) }}
{{- fail "certificate.* is required with the simulator: the certificate of simulator.privateKey, which the worker encrypts with" }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "mpesa-b2c.containerSecurityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end }}

{{/* envFrom and env shared by the worker and the receiver. */}}
{{- define "mpesa-b2c.appEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "mpesa-b2c.configName" . }}
  - secretRef:
      name: {{ include "mpesa-b2c.secretName" . }}
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.dataDir.path }}
- name: tmp
  mountPath: /tmp
{{- if include "mpesa-b2c.hasCertificate" . }}
- name: certificate
  mountPath: {{ .Values.certificate.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "mpesa-b2c.volumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDir.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "mpesa-b2c.hasCertificate" . }}
- name: certificate
  {{- if .Values.certificate.existingSecret }}
  secret:
    secretName: {{ .Values.certificate.existingSecret }}
    items:
      - key: {{ .Values.certificate.key }}
        path: {{ .Values.certificate.key }}
  {{- else }}
  configMap:
    name: {{ default (printf "%s-certificate" (include "mpesa-b2c.fullname" .)) .Values.certificate.existingConfigMap }}
    items:
      - key: {{ .Values.certificate.key }}
        path: {{ .Values.certificate.key }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "mpesa-b2c.podCommon" -}}
serviceAccountName: {{ include "mpesa-b2c.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- include "mpesa-b2c.podSecurityContext" . | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Scheduling fields of one component's values: call with the component's values map. */}}
{{- define "mpesa-b2c.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Egress when restricted: DNS, this release's own pods (worker -> simulator -> receiver), then the user's rules. */}}
{{- define "mpesa-b2c.egressRules" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- to:
    - podSelector:
        matchLabels:
          {{- include "mpesa-b2c.selectorLabels" . | nindent 10 }}
{{- with .Values.networkPolicy.egress.rules }}
{{ toYaml . }}
{{- end }}
{{- end }}
