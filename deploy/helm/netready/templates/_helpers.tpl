{{- define "netready.labels" -}}
app.kubernetes.io/name: netready
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "netready.confDir" -}}
{{- if .Values.cni.confDir -}}{{ .Values.cni.confDir }}
{{- else if eq .Values.cni.paths "k3s" -}}/var/lib/rancher/k3s/agent/etc/cni/net.d
{{- else if eq .Values.cni.paths "standard" -}}/etc/cni/net.d
{{- else -}}{{ fail (printf "cni.paths is %q: want k3s or standard (or set cni.confDir and cni.binDir)" .Values.cni.paths) }}
{{- end -}}
{{- end -}}

{{- define "netready.binDir" -}}
{{- if .Values.cni.binDir -}}{{ .Values.cni.binDir }}
{{- else if eq .Values.cni.paths "k3s" -}}/var/lib/rancher/k3s/data/cni
{{- else if eq .Values.cni.paths "standard" -}}/opt/cni/bin
{{- else -}}{{ fail (printf "cni.paths is %q: want k3s or standard (or set cni.confDir and cni.binDir)" .Values.cni.paths) }}
{{- end -}}
{{- end -}}

{{/* Whether the agent fills podWatch from K3s's kubelet credentials: "true" or "". */}}
{{- define "netready.k3sPodWatch" -}}
{{- if and .Values.k3s.podWatch (eq .Values.cni.paths "k3s") (not .Values.config.podWatch) -}}true{{- end -}}
{{- end -}}
