{{- define "storefront.fullname" -}}
{{- printf "%s-storefront" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "storefront.selectorLabels" -}}
app.kubernetes.io/name: storefront
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end -}}

{{- define "storefront.labels" -}}
{{ include "storefront.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}
