{{/*
Shared helpers of the capi-sidecar library chart.

Every named template takes the including chart's root context (`.`) and reads
the sidecar's values from `.Values "capi-sidecar"` — the key Helm merges this
chart's defaults under. Do not alias the dependency.
*/}}

{{- define "capi-sidecar.fullname" -}}
{{- printf "%s-capi-sidecar" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fixed paths inside the sidecar container. */}}
{{- define "capi-sidecar.configDir" -}}/etc/capi-sidecar/config{{- end -}}
{{- define "capi-sidecar.secretsDir" -}}/etc/capi-sidecar/secrets{{- end -}}

{{- define "capi-sidecar.labels" -}}
{{- $v := index .Values "capi-sidecar" -}}
app.kubernetes.io/name: capi-sidecar
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ $v.image.tag | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: analytics-sidecar
app.kubernetes.io/part-of: {{ .Chart.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end -}}

{{/*
Label for the pod template, so the metrics Service can find the pods. Add it
to the pod template's labels, not to the workload's selector.
*/}}
{{- define "capi-sidecar.podLabels" -}}
capi-sidecar/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "capi-sidecar.image" -}}
{{- $i := (index .Values "capi-sidecar").image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository $i.tag -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding credentials: created by the chart or existing. */}}
{{- define "capi-sidecar.secretName" -}}
{{- $s := (index .Values "capi-sidecar").secret -}}
{{- if $s.create -}}
{{- include "capi-sidecar.fullname" . -}}
{{- else -}}
{{- $s.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
The Secret keys the sidecar reads, one per line: each destination's access
token (and app secret, when named) and the write key.
*/}}
{{- define "capi-sidecar.secretKeys" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- $keys := list -}}
{{- range $d := $v.destinations -}}
{{- $keys = append $keys ($d.accessTokenKey | default (printf "%s.access-token" $d.name)) -}}
{{- with ($d.appSecretKey | default ($v.destinationDefaults).appSecretKey) -}}
{{- $keys = append $keys . -}}
{{- end -}}
{{- end -}}
{{- with $v.auth.writeKeySecretKey -}}
{{- $keys = append $keys . -}}
{{- end -}}
{{- $keys | uniq | join "\n" -}}
{{- end -}}

{{/*
"true" when the outbox lives on a claim: the workload must then run one pod
at a time (Deployment: replicas 1, strategy Recreate), since two processes
must never share one SQLite file.
*/}}
{{- define "capi-sidecar.usesClaim" -}}
{{- $t := (index .Values "capi-sidecar").outbox.type -}}
{{- if or (eq $t "persistentVolumeClaim") (eq $t "existingClaim") -}}true{{- end -}}
{{- end -}}

{{/*
Checks what a JSON schema cannot express. Called by the container template,
so any chart that includes the sidecar gets them.
*/}}
{{- define "capi-sidecar.validate" -}}
{{- $v := index .Values "capi-sidecar" | required "capi-sidecar: values under the key \"capi-sidecar\" are missing; declare the capi-sidecar chart as a dependency (without an alias)" -}}
{{- $names := list -}}
{{- range $d := $v.destinations -}}
{{- if has $d.name $names -}}
{{- fail (printf "capi-sidecar: destination name %q is used twice" $d.name) -}}
{{- end -}}
{{- $names = append $names $d.name -}}
{{- end -}}
{{- if and (not $v.destinations) (not $v.sandbox) -}}
{{- fail "capi-sidecar: no destinations configured; add capi-sidecar.destinations, or set capi-sidecar.sandbox=true to deliver to the in-process sandbox" -}}
{{- end -}}
{{- if and $v.destinations $v.sandbox -}}
{{- fail "capi-sidecar: sandbox=true and destinations are both set; keep one" -}}
{{- end -}}
{{- $keys := include "capi-sidecar.secretKeys" . | splitList "\n" | compact -}}
{{- if and $v.secret.create $v.secret.existingSecret -}}
{{- fail "capi-sidecar: secret.create and secret.existingSecret are both set; keep one" -}}
{{- end -}}
{{- if and $keys (not $v.secret.create) (not $v.secret.existingSecret) -}}
{{- fail (printf "capi-sidecar: the Secret keys %s are needed; set secret.existingSecret, or secret.create with secret.stringData" (join ", " $keys)) -}}
{{- end -}}
{{- if $v.secret.create -}}
{{- range $k := $keys -}}
{{- if not (index $v.secret.stringData $k) -}}
{{- fail (printf "capi-sidecar: secret.stringData has no value for the key %q" $k) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.outbox.type "existingClaim") (not $v.outbox.existingClaim) -}}
{{- fail "capi-sidecar: outbox.type=existingClaim needs outbox.existingClaim" -}}
{{- end -}}
{{- if $v.geoip.enabled -}}
{{- $need := dict "persistentVolumeClaim" $v.geoip.claimName "image" $v.geoip.image.reference "podVolume" $v.geoip.podVolume -}}
{{- if not (get $need $v.geoip.source) -}}
{{- fail (printf "capi-sidecar: geoip.source=%s needs geoip.%s" $v.geoip.source (get (dict "persistentVolumeClaim" "claimName" "image" "image.reference" "podVolume" "podVolume") $v.geoip.source)) -}}
{{- end -}}
{{- end -}}
{{- if eq ($v.ingest.port | int) ($v.ops.port | int) -}}
{{- fail "capi-sidecar: ingest.port and ops.port must differ" -}}
{{- end -}}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) -}}
{{- fail "capi-sidecar: metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- $_ := include "capi-sidecar.terminationGracePeriodSeconds" . -}}
{{- end -}}

{{/*
The pod's terminationGracePeriodSeconds. A native sidecar is stopped only
after the app containers have exited, and they all share this one budget, so
it must cover the app's shutdown, the sidecar's drain budget and a 5 s margin
for in-flight requests and the span flush; a shorter one fails the render.
*/}}
{{- define "capi-sidecar.terminationGracePeriodSeconds" -}}
{{- $v := index .Values "capi-sidecar" -}}
{{- $need := addf $v.shutdown.appStopSeconds $v.shutdown.drainBudgetSeconds 5 -}}
{{- if lt (float64 $v.terminationGracePeriodSeconds) $need -}}
{{- fail (printf "capi-sidecar: terminationGracePeriodSeconds=%v is too short; it must be at least shutdown.appStopSeconds + shutdown.drainBudgetSeconds + 5 = %v" $v.terminationGracePeriodSeconds $need) -}}
{{- end -}}
{{- $v.terminationGracePeriodSeconds | int -}}
{{- end -}}
