{{/*
One Deployment for a component. Arguments (a dict):
  root       the top-level context
  component  worker | beat | flower | shipper | watcher
  values     the component's values (replicas, resources, grace period, ...)
  command    the container command (list)
  port       the port serving /healthz and /readyz (named "metrics")
  extraEnv   optional list of env entries
  probes     optional probe block overriding the /healthz + /readyz pair
  noReplicas true when an HPA owns the replica count
*/}}
{{- define "opsq.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "opsq.name" . }}
  labels:
    {{- include "opsq.labels" . | nindent 4 }}
spec:
  {{- if not .noReplicas }}
  replicas: {{ .values.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "opsq.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "opsq.labels" . | nindent 8 }}
      annotations:
        {{- include "opsq.podAnnotations" .root | nindent 8 }}
    spec:
      {{- include "opsq.podCommon" . | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "opsq.image" .root }}
          imagePullPolicy: {{ .root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            {{- include "opsq.env" .root | nindent 12 }}
            {{- with .extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: metrics
              containerPort: {{ .port }}
              protocol: TCP
          {{- if .probes }}
          {{- toYaml .probes | nindent 10 }}
          {{- else }}
          {{- include "opsq.probes" "metrics" | nindent 10 }}
          {{- end }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            {{- toYaml .root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "opsq.volumeMounts" .root | nindent 12 }}
      volumes:
        {{- include "opsq.volumes" .root | nindent 8 }}
{{- end -}}

{{/* ServiceAccount for a component (dict root, component). */}}
{{- define "opsq.serviceAccount" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "opsq.name" . }}
  labels:
    {{- include "opsq.labels" . | nindent 4 }}
automountServiceAccountToken: false
{{- end -}}

{{/* PodDisruptionBudget when values.pdb.enabled (dict root, component, values). */}}
{{- define "opsq.pdb" -}}
{{- if .values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "opsq.name" . }}
  labels:
    {{- include "opsq.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "opsq.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Headless Service exposing /metrics for the ServiceMonitor (dict root, component, port). */}}
{{- define "opsq.metricsService" -}}
{{- if .root.Values.serviceMonitor.enabled }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "opsq.name" . }}-metrics
  labels:
    {{- include "opsq.labels" . | nindent 4 }}
    opsq.io/metrics: "true"
spec:
  clusterIP: None
  selector:
    {{- include "opsq.selectorLabels" . | nindent 4 }}
  ports:
    - name: metrics
      port: {{ .port }}
      targetPort: metrics
{{- end }}
{{- end -}}
