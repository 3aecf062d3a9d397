{{/*
Pod-level pieces: volumes, annotations, the StatefulSet claim template and
the Deployment strategy hint.
*/}}

{{/*
Volumes of the sidecar, as entries of the pod's `volumes` list:

    volumes:
      {{- include "capi-sidecar.volumes" . | nindent 8 }}
*/}}
{{- define "capi-sidecar.volumes" -}}
{{- include "capi-sidecar.volumeList" . | trim -}}
{{- end -}}

{{- define "capi-sidecar.volumeList" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- $o := $v.outbox -}}
{{- if eq $o.type "emptyDir" }}
- name: capi-sidecar-outbox
  {{- /* Never medium: Memory: tmpfs counts against the memory limit and
         is gone on a node reboot. */}}
  emptyDir:
    {{- with $o.emptyDir.sizeLimit }}
    sizeLimit: {{ . | quote }}
    {{- else }} {}
    {{- end }}
{{- else if eq $o.type "persistentVolumeClaim" }}
- name: capi-sidecar-outbox
  persistentVolumeClaim:
    claimName: {{ include "capi-sidecar.fullname" . }}
{{- else if eq $o.type "existingClaim" }}
- name: capi-sidecar-outbox
  persistentVolumeClaim:
    claimName: {{ $o.existingClaim | quote }}
{{- end }}
{{- /* volumeClaimTemplate: the StatefulSet provides the volume. */}}
- name: capi-sidecar-config
  configMap:
    name: {{ include "capi-sidecar.fullname" . }}
{{- $keys := include "capi-sidecar.secretKeys" . | splitList "\n" | compact }}
{{- if $keys }}
- name: capi-sidecar-secrets
  secret:
    secretName: {{ include "capi-sidecar.secretName" . | quote }}
    # Readable by the sidecar's uid without an fsGroup on the pod; only the
    # sidecar container mounts this volume.
    defaultMode: 0444
    items:
      {{- range $k := $keys }}
      - key: {{ $k | quote }}
        path: {{ $k | quote }}
      {{- end }}
{{- end }}
- name: capi-sidecar-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if $v.geoip.enabled }}
{{- if eq $v.geoip.source "persistentVolumeClaim" }}
- name: capi-sidecar-geoip
  persistentVolumeClaim:
    claimName: {{ $v.geoip.claimName | quote }}
    readOnly: true
{{- else if eq $v.geoip.source "image" }}
- name: capi-sidecar-geoip
  image:
    reference: {{ $v.geoip.image.reference | quote }}
    pullPolicy: {{ $v.geoip.image.pullPolicy }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Pod template annotations: checksums of the config (and of the Secret, when
the chart creates it) so a change rolls the pods, and Prometheus' scrape
annotations.

    metadata:
      annotations:
        {{- include "capi-sidecar.podAnnotations" . | nindent 8 }}
*/}}
{{- define "capi-sidecar.podAnnotations" -}}
{{- $v := index .Values "capi-sidecar" -}}
checksum/capi-sidecar-config: {{ include "capi-sidecar.configMap" . | sha256sum }}
{{- if $v.secret.create }}
checksum/capi-sidecar-secret: {{ include "capi-sidecar.secret" . | sha256sum }}
{{- end }}
{{- if and $v.metrics.enabled $v.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $v.ops.port | int | toString | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/*
One entry of a StatefulSet's `volumeClaimTemplates`, for outbox.type
volumeClaimTemplate: each pod then keeps its own outbox across restarts and
rollouts.
*/}}
{{- define "capi-sidecar.volumeClaimTemplate" -}}
{{- $v := index .Values "capi-sidecar" -}}
- metadata:
    name: capi-sidecar-outbox
    labels:
      {{- include "capi-sidecar.labels" . | nindent 6 }}
  spec:
    {{- include "capi-sidecar.claimSpec" . | nindent 4 }}
{{- end -}}

{{- define "capi-sidecar.claimSpec" -}}
{{- $p := (index .Values "capi-sidecar").outbox.persistentVolumeClaim -}}
{{- /* ReadWriteOnce block storage: SQLite's WAL needs a local filesystem. */ -}}
accessModes: ["ReadWriteOnce"]
{{- with $p.storageClassName }}
storageClassName: {{ . | quote }}
{{- end }}
resources:
  requests:
    storage: {{ $p.size | quote }}
{{- end -}}
