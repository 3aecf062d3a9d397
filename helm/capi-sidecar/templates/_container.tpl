{{/*
The sidecar container, as one `initContainers` entry with
`restartPolicy: Always`: a Kubernetes native sidecar (on by default since
1.29). The kubelet starts the app containers only after its startupProbe
passes, and stops it only after they have exited, so the app's last events
still reach the outbox.

    initContainers:
      {{- include "capi-sidecar.initContainer" . | nindent 8 }}
*/}}
{{- define "capi-sidecar.initContainer" -}}
{{- include "capi-sidecar.validate" . -}}
{{- $v := index .Values "capi-sidecar" -}}
- name: {{ $v.containerName }}
  image: {{ include "capi-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  restartPolicy: Always
  args: ["serve"]
  ports:
    - name: capi-ops
      containerPort: {{ $v.ops.port | int }}
      protocol: TCP
  env:
    {{- include "capi-sidecar.env" . | nindent 4 }}
  volumeMounts:
    {{- include "capi-sidecar.volumeMounts" . | nindent 4 }}
  {{- /* /healthz, not /readyz: the ops listener opens only once the outbox
         is open and migrated and ingest listens, and a restart with an
         outbox over its cap must not fail start-up (it drains meanwhile). */}}
  startupProbe:
    httpGet:
      path: /healthz
      port: capi-ops
    periodSeconds: {{ $v.probes.startup.periodSeconds | int }}
    timeoutSeconds: {{ $v.probes.startup.timeoutSeconds | int }}
    failureThreshold: {{ $v.probes.startup.failureThreshold | int }}
  {{- if $v.probes.readiness.enabled }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: capi-ops
    periodSeconds: {{ $v.probes.readiness.periodSeconds | int }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds | int }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold | int }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: capi-ops
    periodSeconds: {{ $v.probes.liveness.periodSeconds | int }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds | int }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold | int }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    privileged: false
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
{{- end -}}

{{/*
Environment of the sidecar. Only what the chart owns is set here (listeners,
paths, drain budget, OpenTelemetry); everything else is in the YAML config
named by CAPI_CONFIG.
*/}}
{{- define "capi-sidecar.env" -}}
{{- $v := index .Values "capi-sidecar" -}}
- name: CAPI_CONFIG
  value: {{ printf "%s/config.yaml" (include "capi-sidecar.configDir" .) | quote }}
- name: CAPI_DB_PATH
  value: {{ printf "%s/outbox.db" ($v.outbox.mountPath | trimSuffix "/") | quote }}
- name: CAPI_LISTEN
  value: {{ printf "127.0.0.1:%d" ($v.ingest.port | int) | quote }}
{{- if eq $v.ops.bind "podIP" }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: CAPI_OPS_LISTEN
  value: {{ printf "[$(POD_IP)]:%d" ($v.ops.port | int) | quote }}
{{- else }}
- name: CAPI_OPS_LISTEN
  value: {{ printf "0.0.0.0:%d" ($v.ops.port | int) | quote }}
{{- end }}
- name: CAPI_DRAIN_BUDGET_SECONDS
  value: {{ $v.shutdown.drainBudgetSeconds | toString | quote }}
{{- with $v.auth.writeKeySecretKey }}
- name: CAPI_WRITE_KEY_FILE
  value: {{ printf "%s/%s" (include "capi-sidecar.secretsDir" $) . | quote }}
{{- end }}
{{- if $v.geoip.enabled }}
- name: CAPI_GEOIP_DB
  value: {{ printf "%s/%s" ($v.geoip.mountPath | trimSuffix "/") $v.geoip.file | quote }}
{{- end }}
{{- if $v.otel.enabled }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: OTEL_SERVICE_NAME
  value: {{ $v.otel.serviceName | quote }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_METRICS_EXPORTER
  value: none
- name: OTEL_LOGS_EXPORTER
  value: none
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: http/protobuf
{{- with $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.otel.sampler | quote }}
{{- with $v.otel.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- $attrs := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.namespace.name=$(K8S_NAMESPACE)" (printf "k8s.container.name=%s" $v.containerName) -}}
{{- range $k, $val := $v.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $val) -}}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: none
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "capi-sidecar.volumeMounts" -}}
{{- $v := index .Values "capi-sidecar" -}}
- name: capi-sidecar-outbox
  mountPath: {{ $v.outbox.mountPath | quote }}
- name: capi-sidecar-config
  mountPath: {{ include "capi-sidecar.configDir" . | quote }}
  readOnly: true
{{- if include "capi-sidecar.secretKeys" . }}
- name: capi-sidecar-secrets
  mountPath: {{ include "capi-sidecar.secretsDir" . | quote }}
  readOnly: true
{{- end }}
- name: capi-sidecar-tmp
  mountPath: /tmp
{{- if $v.geoip.enabled }}
- name: {{ eq $v.geoip.source "podVolume" | ternary $v.geoip.podVolume "capi-sidecar-geoip" }}
  mountPath: {{ $v.geoip.mountPath | quote }}
  readOnly: true
{{- end }}
{{- end -}}
