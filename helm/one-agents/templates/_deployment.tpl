{{/*
One Deployment of the plane. Arguments (a dict):
  root       the chart's root context
  name       the Deployment's name suffix (a role, "monolith", or an additional worker's name)
  component  the app.kubernetes.io/component label (the role)
  services   what `one-agents serve --services` runs
  spec       the values block: replicas, resources, scheduling, annotations, autoscaling
  grpcPort   the gRPC port (health for the worker); httpPort the gateway's, when it runs one;
             metricsPort the admin port serving /metrics
  readiness  {kind, port, path} of the readiness probe; liveness the same
*/}}
{{- define "oneagents.deployment" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
{{- $values := $root.Values -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "oneagents.fullname" $root }}-{{ .name }}
  labels:
    {{- include "oneagents.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not (or $spec.autoscaling.enabled (and (hasKey $spec "keda") $spec.keda.enabled)) }}
  replicas: {{ $spec.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "oneagents.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
      one-agents/deployment: {{ .name }}
  template:
    metadata:
      labels:
        {{- include "oneagents.selectorLabels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .component }}
        app.kubernetes.io/part-of: one-agents
        one-agents/deployment: {{ .name }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
        {{- if $values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/port: {{ .metricsPort | quote }}
        prometheus.io/path: /metrics
        {{- end }}
        {{- with $spec.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "oneagents.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $values.network.hostNetwork }}
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      {{- end }}
      # The drain grace of the process, plus a margin for the kubelet.
      terminationGracePeriodSeconds: {{ add ($values.shutdown.graceSeconds | int) 5 }}
      securityContext:
        {{- toYaml $values.podSecurityContext | nindent 8 }}
      initContainers:
        # Waits until the schema is at this image's version: the migration job (or hook) runs it.
        - name: wait-for-schema
          image: {{ include "oneagents.image" $root }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: ["migrate", "--check", "--wait", {{ $values.migrations.waitSeconds | int | quote }}]
          env:
            {{- include "oneagents.env" (dict "root" $root "grpcPort" .grpcPort "httpPort" .httpPort "metricsPort" .metricsPort) | nindent 12 }}
          envFrom:
            - secretRef:
                name: {{ include "oneagents.secretName" $root }}
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $values.migrations.resources | nindent 12 }}
          volumeMounts:
            {{- include "oneagents.volumeMounts" $root | nindent 12 }}
      containers:
        - name: {{ .component }}
          image: {{ include "oneagents.image" $root }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: ["serve", "--services", {{ .services | quote }}]
          env:
            {{- include "oneagents.env" (dict "root" $root "grpcPort" .grpcPort "httpPort" .httpPort "metricsPort" .metricsPort) | nindent 12 }}
            {{- with $values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          envFrom:
            - secretRef:
                name: {{ include "oneagents.secretName" $root }}
          {{- if not $values.network.hostNetwork }}
          ports:
            {{- if .httpPort }}
            - name: http
              containerPort: {{ .httpPort }}
              protocol: TCP
            {{- end }}
            - name: grpc
              containerPort: {{ .grpcPort }}
              protocol: TCP
            - name: metrics
              containerPort: {{ .metricsPort }}
              protocol: TCP
          {{- end }}
          readinessProbe:
            {{- include "oneagents.probe" (merge (dict "root" $root) .readiness) | nindent 12 }}
            periodSeconds: 5
            timeoutSeconds: 4
            failureThreshold: 2
          livenessProbe:
            {{- include "oneagents.probe" (merge (dict "root" $root) .liveness) | nindent 12 }}
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 4
            failureThreshold: 6
          securityContext:
            {{- toYaml $values.securityContext | nindent 12 }}
          resources:
            {{- toYaml $spec.resources | nindent 12 }}
          volumeMounts:
            {{- include "oneagents.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "oneagents.volumes" $root | nindent 8 }}
      {{- with $spec.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $spec.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
