{{/*
Objects the sidecar needs beside the pod. Each template renders one manifest
(or nothing when it does not apply); "capi-sidecar.manifests" renders them
all, so an app chart needs a single template file:

    # templates/capi-sidecar.yaml
    {{ include "capi-sidecar.manifests" . }}
*/}}

{{- define "capi-sidecar.manifests" -}}
{{- $docs := list -}}
{{- range $t := list "configMap" "secret" "pvc" "serviceMonitor" -}}
{{- with include (printf "capi-sidecar.%s" $t) $ | trim -}}
{{- $docs = append $docs . -}}
{{- end -}}
{{- end -}}
{{- join "\n---\n" $docs -}}
{{- end -}}

{{/*
The sidecar's YAML config file: `config` plus the destinations, each merged
over `destinationDefaults` and given the paths of its secret files.
*/}}
{{- define "capi-sidecar.configYaml" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- $secrets := include "capi-sidecar.secretsDir" . -}}
{{- $cfg := deepCopy ($v.config | default dict) -}}
{{- $defaults := $v.destinationDefaults | default dict -}}
{{- $dests := list -}}
{{- range $d := $v.destinations -}}
{{- $m := deepCopy $d -}}
{{- range $k, $val := $defaults -}}
{{- if not (hasKey $m $k) -}}
{{- $_ := set $m $k (deepCopy $val) -}}
{{- else if and (kindIs "map" $val) (kindIs "map" (get $m $k)) -}}
{{- $_ := set $m $k (merge (deepCopy (get $m $k)) (deepCopy $val)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $m "access_token_file" (printf "%s/%s" $secrets ($m.accessTokenKey | default (printf "%s.access-token" $m.name))) -}}
{{- with $m.appSecretKey -}}
{{- $_ := set $m "app_secret_file" (printf "%s/%s" $secrets .) -}}
{{- end -}}
{{- $dests = append $dests (omit $m "accessTokenKey" "appSecretKey") -}}
{{- end -}}
{{- if $dests -}}
{{- $_ := set $cfg "destinations" $dests -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{- define "capi-sidecar.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "capi-sidecar.fullname" . }}
  labels:
    {{- include "capi-sidecar.labels" . | nindent 4 }}
data:
  config.yaml: |
    {{- include "capi-sidecar.configYaml" . | nindent 4 }}
{{- end -}}

{{- define "capi-sidecar.secret" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- if $v.secret.create -}}
apiVersion: v1
kind: Secret
metadata:
  name: {{ include "capi-sidecar.fullname" . }}
  labels:
    {{- include "capi-sidecar.labels" . | nindent 4 }}
type: Opaque
stringData:
  {{- range $k, $val := $v.secret.stringData }}
  {{ $k | toJson }}: {{ $val | toJson }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/* The outbox claim for outbox.type persistentVolumeClaim. */}}
{{- define "capi-sidecar.pvc" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- if eq $v.outbox.type "persistentVolumeClaim" -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "capi-sidecar.fullname" . }}
  labels:
    {{- include "capi-sidecar.labels" . | nindent 4 }}
  annotations:
    # Undelivered events live here: keep the claim when the release goes.
    helm.sh/resource-policy: keep
spec:
  {{- include "capi-sidecar.claimSpec" . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
A headless Service over the pods' ops port, for the ServiceMonitor. It finds
the pods by the label of "capi-sidecar.podLabels".
*/}}
{{- define "capi-sidecar.metricsService" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- if and $v.metrics.enabled $v.metrics.serviceMonitor.enabled -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-metrics" (include "capi-sidecar.fullname" .) | trunc 63 | trimSuffix "-" }}
  labels:
    {{- include "capi-sidecar.labels" . | nindent 4 }}
spec:
  clusterIP: None
  selector:
    {{- include "capi-sidecar.podLabels" . | nindent 4 }}
  ports:
    - name: capi-ops
      port: {{ $v.ops.port | int }}
      targetPort: capi-ops
      protocol: TCP
{{- end -}}
{{- end -}}

{{/*
A monitoring.coreos.com/v1 ServiceMonitor, preceded by the metrics Service it
scrapes through (two documents).
*/}}
{{- define "capi-sidecar.serviceMonitor" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- $m := $v.metrics.serviceMonitor -}}
{{- if and $v.metrics.enabled $m.enabled -}}
{{ include "capi-sidecar.metricsService" . }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "capi-sidecar.fullname" . }}
  labels:
    {{- include "capi-sidecar.labels" . | nindent 4 }}
    {{- with $m.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: capi-sidecar
      app.kubernetes.io/instance: {{ .Release.Name | quote }}
  endpoints:
    - port: capi-ops
      path: /metrics
      interval: {{ $m.interval | quote }}
      scrapeTimeout: {{ $m.scrapeTimeout | quote }}
{{- end -}}
{{- end -}}
