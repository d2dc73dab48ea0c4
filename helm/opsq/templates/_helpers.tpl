{{/* Shared names, labels and pod pieces for every opsq component. */}}

{{- define "opsq.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "opsq.name" -}}
{{- printf "%s-%s" (include "opsq.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "opsq.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "opsq.labels" -}}
{{ include "opsq.selectorLabels" . }}
app.kubernetes.io/part-of: opsq
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "opsq.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "opsq.redisSecretName" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "opsq.fullname" .)) -}}
{{- end -}}

{{- define "opsq.flowerSecretName" -}}
{{- .Values.flower.auth.existingSecret | default (printf "%s-flower" (include "opsq.fullname" .)) -}}
{{- end -}}

{{- define "opsq.webSecretName" -}}
{{- .Values.web.auth.existingSecret | default (printf "%s-web" (include "opsq.fullname" .)) -}}
{{- end -}}

{{/* "true" when the watcher and cleanup workers run: enabled and given rules. */}}
{{- define "opsq.cleanupEnabled" -}}
{{- and .Values.watcher.enabled (not (empty .Values.cleanup.rules)) -}}
{{- end -}}

{{/*
The opsq config file: values.config, plus the cleanup section when it has rules, plus
agent.config as logs.agent when the agent runs (keys under config.logs.agent win).
*/}}
{{- define "opsq.configFile" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.cleanup.rules -}}
{{- $_ := set $config "cleanup" (deepCopy .Values.cleanup) -}}
{{- end -}}
{{- if .Values.agent.enabled -}}
{{- $logs := deepCopy (default dict $config.logs) -}}
{{- $agent := mergeOverwrite (deepCopy .Values.agent.config) (deepCopy (default dict $logs.agent)) -}}
{{- $_ := set $logs "agent" $agent -}}
{{- $_ := set $config "logs" $logs -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* "true" when the agent reads pod metadata from the API (and so needs its ClusterRole):
decided from logs.agent as the config file has it (config.logs.agent over agent.config). */}}
{{- define "opsq.agentMetadata" -}}
{{- $mine := dig "logs" "agent" dict .Values.config -}}
{{- $agent := mergeOverwrite (deepCopy .Values.agent.config) (deepCopy $mine) -}}
{{- and .Values.agent.enabled (dig "kubernetes" "metadata" "enabled" false $agent) -}}
{{- end -}}

{{/*
Watcher RBAC rules from cleanup.rules: one rule per (apiGroup, resource), first
appearance first, verbs merged; "v1/pods" is the core group "". Owners the owner guard
looks up get "get"; PVC rules (when.unused) add list/watch on what may use a claim;
events: true or any notify_before adds events create. `opsq cleanup rbac` prints the same (tests/cleanup/test_rbac.py compares them).
*/}}
{{- define "opsq.watcherRules" -}}
{{- $verbs := dict -}}
{{- $order := list -}}
{{- $announce := .Values.cleanup.events -}}
{{- range .Values.cleanup.rules -}}
{{- $parts := splitList "/" .resource -}}
{{- $group := "" -}}
{{- $plural := "" -}}
{{- if eq (len $parts) 2 -}}
{{- $plural = index $parts 1 -}}
{{- else if eq (len $parts) 3 -}}
{{- $group = index $parts 0 -}}
{{- $plural = index $parts 2 -}}
{{- else -}}
{{- fail (printf "cleanup.rules[].resource %q must be \"group/version/plural\" or \"v1/plural\"" .resource) -}}
{{- end -}}
{{- if .notify_before -}}{{- $announce = true -}}{{- end -}}
{{- $grants := list (list $group $plural (list "get" "list" "watch" "delete")) -}}
{{- /* get on the owners the owner guard looks up (opsq/engines/cleanup/owners.py TYPICAL_OWNERS);
with delete_if_owner_exists only a Job is looked up. */ -}}
{{- $owners := dict "/pods" (list (list "batch" "jobs") (list "apps" "replicasets") (list "apps" "statefulsets") (list "apps" "daemonsets") (list "" "replicationcontrollers")) "batch/jobs" (list (list "batch" "cronjobs")) "apps/replicasets" (list (list "apps" "deployments")) "/persistentvolumeclaims" (list (list "apps" "statefulsets") (list "" "pods")) -}}
{{- $anyOwner := not .delete_if_owner_exists -}}
{{- range (default (list) (get $owners (printf "%s/%s" $group $plural))) -}}
{{- if or $anyOwner (and (eq (index . 0) "batch") (eq (index . 1) "jobs")) -}}
{{- $grants = append $grants (list (index . 0) (index . 1) (list "get")) -}}
{{- end -}}
{{- end -}}
{{- if and .when .when.unused -}}
{{- /* PVC rules read what may still use a claim (opsq/engines/cleanup/usage.py). */ -}}
{{- range list (list "" "pods") (list "apps" "statefulsets") (list "apps" "deployments") (list "apps" "daemonsets") (list "apps" "replicasets") (list "batch" "jobs") (list "batch" "cronjobs") -}}
{{- $grants = append $grants (list (index . 0) (index . 1) (list "list" "watch")) -}}
{{- end -}}
{{- end -}}
{{- range $grants -}}
{{- $key := printf "%s/%s" (index . 0) (index . 1) -}}
{{- if not (hasKey $verbs $key) -}}
{{- $order = append $order (list (index . 0) (index . 1) $key) -}}
{{- $_ := set $verbs $key list -}}
{{- end -}}
{{- range (index . 2) -}}
{{- if not (has . (get $verbs $key)) -}}
{{- $_ := set $verbs $key (append (get $verbs $key) .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $rules := list -}}
{{- range $order -}}
{{- $rules = append $rules (dict "apiGroups" (list (index . 0)) "resources" (list (index . 1)) "verbs" (get $verbs (index . 2))) -}}
{{- end -}}
{{- if $announce -}}
{{- $rules = append $rules (dict "apiGroups" (list "") "resources" (list "events") "verbs" (list "create")) -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* Environment shared by every container: Redis URL from the Secret, config path. */}}
{{- define "opsq.env" -}}
- name: OPSQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "opsq.redisSecretName" . }}
      key: {{ .Values.redis.existingSecretKey }}
- name: OPSQ_CONFIG
  value: /etc/opsq/config.yaml
- name: OPSQ_DATA_DIR
  value: /var/lib/opsq
- name: OPSQ_METRICS__PORT
  value: {{ .Values.metrics.port | quote }}
- name: OPSQ_METRICS__BIND
  value: "0.0.0.0"
- name: HOME
  value: /tmp
{{- end -}}

{{/* Writable scratch for a read-only root filesystem, and the config file. */}}
{{- define "opsq.volumeMounts" -}}
- name: config
  mountPath: /etc/opsq
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/opsq
{{- end -}}

{{- define "opsq.volumes" -}}
- name: config
  configMap:
    name: {{ include "opsq.fullname" . }}-config
- name: tmp
  emptyDir: {}
- name: data
  emptyDir: {}
{{- end -}}

{{/* Liveness /healthz (cheap) and readiness /readyz (Redis reachable) on a port name. */}}
{{- define "opsq.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ . }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}

{{/* Pod-level fields every component shares. */}}
{{- define "opsq.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "opsq.name" . }}
automountServiceAccountToken: {{ or (has .component (list "watcher" "cleanup-worker")) (eq (toString .token) "true") }}
{{- $podSecurity := deepCopy .root.Values.podSecurityContext }}
{{- with .values.supplementalGroups }}
{{- $_ := set $podSecurity "supplementalGroups" . }}
{{- end }}
securityContext:
  {{- toYaml $podSecurity | nindent 2 }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .values.terminationGracePeriodSeconds }}
{{- end -}}

{{/* Checksum so a config change rolls the pods. */}}
{{- define "opsq.podAnnotations" -}}
checksum/config: {{ include "opsq.configFile" . | sha256sum }}
{{- end -}}
