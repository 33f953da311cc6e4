{{/*
The CPU stage services (segmentation, analysis, scripting, assembly, review) share one shape; each kind
has its own template file per stage (deployment-analysis.yaml, ...) that includes these with
(dict "root" $ "name" "analysis").
*/}}

{{/* prompts/ as the services read it: the chart's copy (files/prompts links to the repository's
prompts/) with prompts.files merged over it; labels/ likewise with prompts.labelSets. */}}
{{- define "mvgen.promptFiles" -}}
{{- $files := dict -}}
{{- range $path, $_ := .Files.Glob "files/prompts/*" -}}
{{- $_ := set $files (base $path) ($.Files.Get $path) -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.prompts.files) $files) -}}
{{- end -}}

{{- define "mvgen.labelSetFiles" -}}
{{- $files := dict -}}
{{- range $path, $_ := .Files.Glob "files/prompts/labels/*.yaml" -}}
{{- $_ := set $files (base $path) ($.Files.Get $path) -}}
{{- end -}}
{{- toYaml (merge (deepCopy .Values.prompts.labelSets) $files) -}}
{{- end -}}

{{- define "mvgen.stage.readsPrompts" -}}
{{- if has . (list "analysis" "scripting" "review") }}true{{ end -}}
{{- end -}}

{{- define "mvgen.stage.deployment" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $values := index $root.Values $name -}}
{{- $fullname := include "mvgen.fullname" $root -}}
{{- $prompts := include "mvgen.stage.readsPrompts" $name -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}-{{ $name }}
  labels:
    {{- include "mvgen.labels" (dict "root" $root "component" $name) | nindent 4 }}
spec:
  {{- if not $values.autoscaling.enabled }}
  replicas: {{ $values.replicaCount }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "mvgen.selectorLabels" (dict "root" $root "component" $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "mvgen.labels" (dict "root" $root "component" $name) | nindent 8 }}
      {{- if or $prompts $values.podAnnotations }}
      annotations:
        {{- if $prompts }}
        # The services read prompts and label sets when they load: a change restarts the pods.
        checksum/prompts: {{ print (include "mvgen.promptFiles" $root) (include "mvgen.labelSetFiles" $root) | sha256sum }}
        {{- end }}
        {{- with $values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
    spec:
      {{- include "mvgen.podCommon" (dict "root" $root "values" $values) | nindent 6 }}
      {{- include "mvgen.optional" (list "mvgen.cpuScheduling" (dict "values" $values) 6) }}
      terminationGracePeriodSeconds: {{ add $values.graceSeconds 15 }}
      containers:
        - name: {{ $name }}
          image: {{ include "mvgen.image" (dict "root" $root "image" $values.image) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          ports:
            - name: grpc
              containerPort: {{ $values.port }}
          env:
            {{- include "mvgen.serviceEnv" (dict "root" $root "values" $values) | nindent 12 }}
            {{- if $prompts }}
            - name: MVGEN_PROMPTS_DIR
              value: {{ $root.Values.prompts.mountPath | quote }}
            {{- end }}
            {{- if eq $name "scripting" }}
            {{- include "mvgen.optional" (list "mvgen.openaiEnv" (dict "root" $root "name" "llm" "prefix" "MVGEN_LLM") 12) }}
            {{- include "mvgen.optional" (list "mvgen.openaiEnv" (dict "root" $root "name" "lalm" "prefix" "MVGEN_LALM") 12) }}
            {{- end }}
            {{- include "mvgen.optional" (list "mvgen.envMap" $values.env 12) }}
          {{- include "mvgen.grpcProbes" (dict "port" $values.port "probes" $values.probes) | nindent 10 }}
          resources:
            {{- toYaml $values.resources | nindent 12 }}
          securityContext:
            {{- include "mvgen.containerSecurityContext" (dict "root" $root "values" $values) | nindent 12 }}
          volumeMounts:
            {{- include "mvgen.tmpMount" . | nindent 12 }}
            {{- if $prompts }}
            - name: prompts
              mountPath: {{ $root.Values.prompts.mountPath }}
              readOnly: true
            {{- end }}
            {{- with $values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "mvgen.tmpVolume" (dict "values" $values) | nindent 8 }}
        {{- if $prompts }}
        # One folder: prompts/ with the label sets in labels/, as in the repository.
        - name: prompts
          projected:
            sources:
              - configMap:
                  name: {{ $fullname }}-prompts
              - configMap:
                  name: {{ $fullname }}-labels
                  items:
                    {{- range $file, $_ := fromYaml (include "mvgen.labelSetFiles" $root) }}
                    - key: {{ $file }}
                      path: labels/{{ $file }}
                    {{- end }}
        {{- end }}
        {{- with $values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{- define "mvgen.stage.service" -}}
{{- $values := index .root.Values .name -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "mvgen.fullname" .root }}-{{ .name }}
  labels:
    {{- include "mvgen.labels" (dict "root" .root "component" .name) | nindent 4 }}
spec:
  # Headless: the gateway resolves every ready replica (dns:/// with round_robin); a virtual IP would
  # pin its one HTTP/2 connection, and so every call, to a single pod.
  clusterIP: None
  selector:
    {{- include "mvgen.selectorLabels" (dict "root" .root "component" .name) | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $values.port }}
      targetPort: grpc
      protocol: TCP
{{- end -}}

{{- define "mvgen.stage.hpa" -}}
{{- $values := index .root.Values .name -}}
{{- if $values.autoscaling.enabled -}}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "mvgen.fullname" .root }}-{{ .name }}
  labels:
    {{- include "mvgen.labels" (dict "root" .root "component" .name) | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "mvgen.fullname" .root }}-{{ .name }}
  minReplicas: {{ $values.autoscaling.minReplicas }}
  maxReplicas: {{ $values.autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ $values.autoscaling.targetCPUUtilizationPercentage }}
{{- end -}}
{{- end -}}

{{/* Stage services (video included) take calls from the gateway only. */}}
{{- define "mvgen.stage.networkPolicy" -}}
{{- if .root.Values.networkPolicy.enabled -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "mvgen.fullname" .root }}-{{ .name }}
  labels:
    {{- include "mvgen.labels" (dict "root" .root "component" .name) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "mvgen.selectorLabels" (dict "root" .root "component" .name) | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              {{- include "mvgen.selectorLabels" (dict "root" .root "component" "gateway") | nindent 14 }}
      ports:
        - port: grpc
          protocol: TCP
{{- end -}}
{{- end -}}
