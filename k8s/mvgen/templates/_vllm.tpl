{{/*
The optional vLLM OpenAI-compatible servers, "llm" (writes scripts) and "lalm" (listens to the
song): one Deployment, Service and NetworkPolicy each, from (dict "root" $ "name" "llm").
*/}}

{{- define "mvgen.vllm.deployment" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $values := index $root.Values $name -}}
{{- if $values.enabled -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "mvgen.fullname" $root }}-{{ $name }}
  labels:
    {{- include "mvgen.labels" (dict "root" $root "component" $name) | nindent 4 }}
spec:
  replicas: 1
  # The new pod needs the old one's GPU.
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "mvgen.selectorLabels" (dict "root" $root "component" $name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "mvgen.labels" (dict "root" $root "component" $name) | nindent 8 }}
      {{- with $values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "mvgen.podCommon" (dict "root" $root "values" $values) | nindent 6 }}
      {{- include "mvgen.gpuScheduling" (dict "root" $root "values" $values) | trim | nindent 6 }}
      containers:
        - name: vllm
          {{- if $values.image.built }}
          {{- /* An image built from this repository (docker/lalm-vllm), pushed beside mvgen's own. */}}
          image: {{ include "mvgen.image" (dict "root" $root "image" $values.image) }}
          {{- else }}
          image: {{ printf "%s:%s" $values.image.repository $values.image.tag }}
          {{- end }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["vllm", "serve"]
          args:
            - {{ $values.model | quote }}
            - --host=0.0.0.0
            - --port={{ $values.port }}
            # The scripting service asks for the model by this name (MVGEN_{{ upper $name }}_MODEL).
            - --served-model-name={{ $values.model }}
            - --max-model-len={{ $values.maxModelLen }}
            - --gpu-memory-utilization={{ $values.gpuMemoryUtilization }}
            - --tensor-parallel-size={{ $values.gpuCount }}
            {{- with $values.reasoningParser }}
            # The thinking comes back apart (reasoning_content); structured output constrains the answer only.
            - --reasoning-parser={{ . }}
            {{- end }}
            {{- with $values.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $values.port }}
          env:
            {{- include "mvgen.homeEnv" . | nindent 12 }}
            # uid 10001 has no passwd entry in vLLM's image; torch names its caches after
            # getpass.getuser(), which reads $USER before failing on the missing entry.
            - name: USER
              value: vllm
            {{- include "mvgen.modelEnv" $root | nindent 12 }}
            - name: VLLM_NO_USAGE_STATS
              value: "1"
            {{- with $values.apiKey.existingSecret }}
            - name: VLLM_API_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $values.apiKey.key }}
            {{- end }}
            {{- include "mvgen.optional" (list "mvgen.envMap" $values.env 12) }}
          # /health answers 200 once the model is loaded; the API key guards /v1 only.
          startupProbe:
            httpGet:
              path: /health
              port: http
            {{- toYaml $values.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /health
              port: http
            {{- toYaml $values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /health
              port: http
            {{- toYaml $values.probes.readiness | nindent 12 }}
          resources:
            {{- include "mvgen.gpuResources" (dict "values" $values) | nindent 12 }}
          securityContext:
            {{- include "mvgen.containerSecurityContext" (dict "root" $root "values" $values) | nindent 12 }}
          volumeMounts:
            {{- include "mvgen.tmpMount" . | nindent 12 }}
            {{- include "mvgen.gpuMounts" $root | nindent 12 }}
      volumes:
        {{- include "mvgen.tmpVolume" (dict "values" $values) | nindent 8 }}
        {{- include "mvgen.gpuVolumes" (dict "root" $root "values" $values) | nindent 8 }}
{{- end -}}
{{- end -}}

{{- define "mvgen.vllm.service" -}}
{{- $values := index .root.Values .name -}}
{{- if $values.enabled -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "mvgen.fullname" .root }}-{{ .name }}
  labels:
    {{- include "mvgen.labels" (dict "root" .root "component" .name) | nindent 4 }}
spec:
  selector:
    {{- include "mvgen.selectorLabels" (dict "root" .root "component" .name) | nindent 4 }}
  ports:
    - name: http
      port: {{ $values.port }}
      targetPort: http
      protocol: TCP
{{- end -}}
{{- end -}}

{{/* Only the scripting service calls the language models. */}}
{{- define "mvgen.vllm.networkPolicy" -}}
{{- $values := index .root.Values .name -}}
{{- if and $values.enabled .root.Values.networkPolicy.enabled -}}
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
              {{- include "mvgen.selectorLabels" (dict "root" .root "component" "scripting") | nindent 14 }}
      ports:
        - port: http
          protocol: TCP
{{- end -}}
{{- end -}}
