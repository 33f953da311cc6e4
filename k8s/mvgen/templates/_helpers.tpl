{{/*
Shared pieces of the chart's templates. Objects are named <fullname>-<component>; fullname is
trimmed so that the longest suffix ("-video-headless") still fits a 63-character DNS label.
*/}}

{{- define "mvgen.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "mvgen.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "component" "video") */}}
{{- define "mvgen.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects: (dict "root" $ "component" "video") */}}
{{- define "mvgen.labels" -}}
{{ include "mvgen.selectorLabels" . }}
app.kubernetes.io/part-of: mvgen
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "mvgen.chart" .root }}
{{- end -}}

{{/* The pods of this release (all components), for NetworkPolicy peers. */}}
{{- define "mvgen.releasePods" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mvgen.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mvgen.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An mvgen image: (dict "root" $ "image" .Values.video.image) */}}
{{- define "mvgen.image" -}}
{{- $registry := .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* A container's security context: the chart's, with the component's merged over it. */}}
{{- define "mvgen.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.containerSecurityContext) (deepCopy (.values.containerSecurityContext | default dict))) -}}
{{- end -}}

{{/* What every pod of the release shares: (dict "root" $ "values" .Values.video) */}}
{{- define "mvgen.podCommon" -}}
serviceAccountName: {{ include "mvgen.serviceAccountName" .root }}
automountServiceAccountToken: false
# Service links would put <RELEASE>_<SERVICE>_PORT variables into every container; with a release
# named mvgen they would look like mvgen settings (MVGEN_VIDEO_PORT, ...).
enableServiceLinks: false
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Name -> value maps as env entries, sorted by name; appended last, so they win over the chart's. */}}
{{- define "mvgen.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Includes a template that may render nothing, indented, without leaving a blank line:
(list "template" $context indent) */}}
{{- define "mvgen.optional" -}}
{{- with include (index . 0) (index . 1) | trim }}{{ . | nindent (index $ 2) }}{{ end -}}
{{- end -}}

{{- define "mvgen.s3Endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else -}}
{{- printf "http://%s-minio:%d" (include "mvgen.fullname" .) (int .Values.minio.port) -}}
{{- end -}}
{{- end -}}

{{- define "mvgen.minioEnabled" -}}
{{- if and .Values.minio.enabled (not .Values.s3.endpoint) }}true{{ end -}}
{{- end -}}

{{- define "mvgen.s3SecretName" -}}
{{- .Values.s3.existingSecret | default (printf "%s-s3" (include "mvgen.fullname" .)) -}}
{{- end -}}

{{- define "mvgen.minioSecretName" -}}
{{- .Values.minio.existingSecret | default (printf "%s-minio-root" (include "mvgen.fullname" .)) -}}
{{- end -}}

{{- define "mvgen.stageSecretName" -}}
{{- .Values.stageAuth.existingSecret | default (printf "%s-stage-secret" (include "mvgen.fullname" .)) -}}
{{- end -}}

{{/* The stage secret, as the stage services require it and the gateway sends it (transport/auth.py). */}}
{{- define "mvgen.stageAuthEnv" -}}
{{- if .Values.stageAuth.enabled -}}
- name: MVGEN_STAGE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "mvgen.stageSecretName" . }}
      key: {{ .Values.stageAuth.key }}
{{- else -}}
- name: MVGEN_STAGE_AUTH
  value: none
{{- end -}}
{{- end -}}

{{- define "mvgen.gatewayTokensSecretName" -}}
{{- .Values.gateway.auth.existingSecret | default (printf "%s-gateway-tokens" (include "mvgen.fullname" .)) -}}
{{- end -}}

{{/* The object store, as every mvgen service reads it (services/common/settings.py). */}}
{{- define "mvgen.storeEnv" -}}
- name: MVGEN_STORE
  value: s3
- name: MVGEN_S3_ENDPOINT
  value: {{ include "mvgen.s3Endpoint" . | quote }}
- name: MVGEN_S3_PUBLIC_ENDPOINT
  value: {{ .Values.s3.publicEndpoint | default (include "mvgen.s3Endpoint" .) | quote }}
- name: MVGEN_S3_BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: MVGEN_S3_REGION
  value: {{ .Values.s3.region | quote }}
- name: MVGEN_S3_SECURE
  value: {{ .Values.s3.secure | toString | quote }}
- name: MVGEN_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mvgen.s3SecretName" . }}
      key: {{ .Values.s3.accessKeyKey }}
- name: MVGEN_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mvgen.s3SecretName" . }}
      key: {{ .Values.s3.secretKeyKey }}
{{- end -}}

{{/* What every stage service reads (ServiceSettings), then the component's own env:
(dict "root" $ "values" .Values.video) */}}
{{- define "mvgen.serviceEnv" -}}
- name: MVGEN_HOST
  value: 0.0.0.0
- name: MVGEN_PORT
  value: {{ .values.port | quote }}
- name: MVGEN_BACKENDS
  value: {{ join "," .values.backends | quote }}
- name: MVGEN_MAX_CONCURRENT
  value: {{ .values.maxConcurrent | quote }}
- name: MVGEN_GRACE_SECONDS
  value: {{ .values.graceSeconds | quote }}
{{ include "mvgen.homeEnv" . }}
{{ include "mvgen.storeEnv" .root }}
{{ include "mvgen.stageAuthEnv" .root }}
{{- end -}}

{{/* The root filesystem is read-only: caches that libraries keep under $HOME go to the /tmp emptyDir. */}}
{{- define "mvgen.homeEnv" -}}
- name: HOME
  value: /tmp
{{- end -}}

{{/* A writable /tmp: (dict "values" .Values.video) */}}
{{- define "mvgen.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .values.tmpSize }}
{{- end -}}

{{- define "mvgen.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Native gRPC probes against grpc.health.v1 (k8s >= 1.27). The services answer NOT_SERVING while
they load their backends, so the startup probe covers loading and readiness means "ready for calls":
(dict "port" 50054 "probes" .Values.video.probes) */}}
{{- define "mvgen.grpcProbes" -}}
startupProbe:
  grpc:
    port: {{ .port }}
  {{- toYaml .probes.startup | nindent 2 }}
livenessProbe:
  grpc:
    port: {{ .port }}
  {{- toYaml .probes.liveness | nindent 2 }}
readinessProbe:
  grpc:
    port: {{ .port }}
  {{- toYaml .probes.readiness | nindent 2 }}
{{- end -}}

{{/* The name the gateway's certificate must carry for its own probes (MVGEN_TLS_SERVER_NAME). */}}
{{- define "mvgen.gatewayTlsServerName" -}}
{{- $service := printf "%s-gateway.%s.svc" (include "mvgen.fullname" .) .Release.Namespace -}}
{{- .Values.gateway.tls.serverName | default $service -}}
{{- end -}}

{{/* grpc.health.v1 over TLS from inside the gateway's container, as docker-compose.yml's health check:
127.0.0.1, trusting the gateway's own certificate (tls.crt; a CA-issued one is trusted as it is), which
must carry MVGEN_TLS_SERVER_NAME; exit 0 only when SERVING. The call's deadline stays under the
probe's timeout, so a slow answer fails with its own message: (dict "probe" .Values.gateway.probes.startup) */}}
{{- define "mvgen.tlsHealthCommand" -}}
{{- $timeout := max 1 (sub (int (default 1 .probe.timeoutSeconds)) 1) -}}
- python
- -c
- >-
  import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as hg;
  c = grpc.secure_channel('127.0.0.1:' + os.environ['MVGEN_PORT'],
  grpc.ssl_channel_credentials(open(os.environ['MVGEN_TLS_CERT_FILE'], 'rb').read()),
  options=[('grpc.ssl_target_name_override', os.environ['MVGEN_TLS_SERVER_NAME'])]);
  r = hg.HealthStub(c).Check(h.HealthCheckRequest(), timeout={{ $timeout }});
  sys.exit(r.status != h.HealthCheckResponse.SERVING)
{{- end -}}

{{/* The gateway's probes: native gRPC in plain text; with gateway.tls.enabled an exec probe, since
Kubernetes' gRPC probes cannot speak TLS: (dict "port" 50050 "values" .Values.gateway) */}}
{{- define "mvgen.gatewayProbes" -}}
{{- if .values.tls.enabled -}}
{{- range $kind := list "startup" "liveness" "readiness" }}
{{ $kind }}Probe:
  exec:
    command:
      {{- include "mvgen.tlsHealthCommand" (dict "probe" (index $.values.probes $kind)) | nindent 6 }}
  {{- toYaml (index $.values.probes $kind) | nindent 2 }}
{{- end }}
{{- else -}}
{{- include "mvgen.grpcProbes" (dict "port" .port "probes" .values.probes) -}}
{{- end -}}
{{- end -}}

{{/* Requests and limits, with the component's GPUs added to both: (dict "values" .Values.video) */}}
{{- define "mvgen.gpuResources" -}}
{{- $gpus := int .values.gpuCount -}}
{{- $resources := deepCopy .values.resources -}}
{{- $_ := set $resources.requests "nvidia.com/gpu" $gpus -}}
{{- $_ = set $resources.limits "nvidia.com/gpu" $gpus -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Scheduling of a GPU pod: node affinity on the GPU model, the GPU tolerations, the runtime class:
(dict "root" $ "values" .Values.video) */}}
{{- define "mvgen.gpuScheduling" -}}
{{- $gpu := .root.Values.gpu -}}
{{- with $gpu.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
affinity:
{{- if .values.affinity }}
  {{- toYaml .values.affinity | nindent 2 }}
{{- else }}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: {{ $gpu.productLabel }}
              operator: In
              values:
                {{- toYaml (.values.products | default $gpu.products) | nindent 16 }}
{{- end }}
{{- $tolerations := concat $gpu.tolerations .values.tolerations }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scheduling of a CPU pod: (dict "values" .Values.gateway) */}}
{{- define "mvgen.cpuScheduling" -}}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The weights cache of the GPU pods, and /dev/shm in memory: (dict "root" $ "values" .Values.video) */}}
{{- define "mvgen.gpuVolumes" -}}
- name: model-cache
{{- if eq .root.Values.modelCache.type "hostPath" }}
  hostPath:
    path: {{ .root.Values.modelCache.hostPath.path }}
    type: DirectoryOrCreate
{{- else }}
  persistentVolumeClaim:
    claimName: {{ .root.Values.modelCache.pvc.existingClaim | default (printf "%s-model-cache" (include "mvgen.fullname" .root)) }}
{{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .values.shmSize }}
{{- end -}}

{{- define "mvgen.gpuMounts" -}}
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
- name: dshm
  mountPath: /dev/shm
{{- end -}}

{{/* Where downloaded weights go, and the optional Hugging Face token. */}}
{{- define "mvgen.modelEnv" -}}
- name: HF_HOME
  value: {{ printf "%s/huggingface" (trimSuffix "/" .Values.modelCache.mountPath) | quote }}
{{- with .Values.huggingface.existingSecret }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.huggingface.key }}
{{- end }}
{{- end -}}

{{/* Base URL of an OpenAI-compatible server for "llm" or "lalm", or "" when there is none:
(dict "root" $ "name" "llm") */}}
{{- define "mvgen.openaiUrl" -}}
{{- $values := index .root.Values .name -}}
{{- if $values.enabled -}}
{{- printf "http://%s-%s:%d/v1" (include "mvgen.fullname" .root) .name (int $values.port) -}}
{{- else -}}
{{- $values.url -}}
{{- end -}}
{{- end -}}

{{/* The scripting service's view of an LLM server: (dict "root" $ "name" "llm" "prefix" "MVGEN_LLM") */}}
{{- define "mvgen.openaiEnv" -}}
{{- $values := index .root.Values .name -}}
{{- $url := include "mvgen.openaiUrl" . -}}
{{- if $url }}
- name: {{ .prefix }}_URL
  value: {{ $url | quote }}
- name: {{ .prefix }}_MODEL
  value: {{ $values.model | quote }}
{{- with $values.maxTokens }}
{{- if and $values.enabled (ge (int .) (int $values.maxModelLen)) }}
{{- fail (printf "%s.maxTokens (%d) must be less than %s.maxModelLen (%d): the prompt needs room too" $.name (int .) $.name (int $values.maxModelLen)) }}
{{- end }}
- name: {{ $.prefix }}_MAX_TOKENS
  value: {{ . | quote }}
{{- end }}
{{- if $values.enabled }}
{{- /* The server's context, as served: each request's max_tokens is cut to what it leaves. */}}
- name: {{ .prefix }}_CONTEXT_TOKENS
  value: {{ $values.maxModelLen | quote }}
{{- end }}
{{- with $values.apiKey.existingSecret }}
- name: {{ $.prefix }}_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $values.apiKey.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The gateway's own pod labels and the video PromQL selector, so KEDA counts this release's clips
whether Prometheus found the gateway through the ServiceMonitor or through pod annotations (both
label series with namespace and pod). */}}
{{- define "mvgen.gatewaySelector" -}}
{{- printf "namespace=%q,pod=~%q" .Release.Namespace (printf "%s-gateway-.*" (include "mvgen.fullname" .)) -}}
{{- end -}}

{{/* The video replicas wanted: clips waiting for a replica plus clips being generated (scaling on the
waiting ones alone would remove busy replicas once the queue empties), and at least one while a job
runs, because a job starts only once a video replica serves (gateway/server/registry.py: wait_ready), so with
scale-to-zero nothing else would ever ask for the first replica. */}}
{{- define "mvgen.videoDemandQuery" -}}
{{- $s := include "mvgen.gatewaySelector" . -}}
clamp_min(
  (
    sum(mvgen_clips_pending{ {{- $s -}} })
    + sum(mvgen_clips_in_flight{ {{- $s -}} })
  ) or vector(0),
  scalar(clamp_max(sum(mvgen_jobs{ {{- $s -}} ,state="running"}) or vector(0), 1))
)
{{- end -}}

{{/* The scripting backends that tell the story (the LALM pipeline's storytellers: openai-audio hears
the song, cascade tells from what analysis heard); the others write scripts from labels. The gateway
offers them to jobs separately. */}}
{{- define "mvgen.storytellers" -}}
{{- $storytellers := list -}}
{{- range .Values.scripting.backends -}}
{{- if has . (list "openai-audio" "cascade") -}}
{{- $storytellers = append $storytellers . -}}
{{- end -}}
{{- end -}}
{{- join "," $storytellers -}}
{{- end -}}

{{- define "mvgen.writers" -}}
{{- $writers := list -}}
{{- range .Values.scripting.backends -}}
{{- if not (has . (list "openai-audio" "cascade")) -}}
{{- $writers = append $writers . -}}
{{- end -}}
{{- end -}}
{{- join "," $writers -}}
{{- end -}}

{{/* The analysis backends that transcribe lyrics; the others label the music. The gateway offers them
to jobs separately (MVGEN_TRANSCRIBERS, MVGEN_ANALYZERS). */}}
{{- define "mvgen.transcribers" -}}
{{- $transcribers := list -}}
{{- range .Values.analysis.backends -}}
{{- if has . (list "whisper") -}}
{{- $transcribers = append $transcribers . -}}
{{- end -}}
{{- end -}}
{{- join "," $transcribers -}}
{{- end -}}

{{- define "mvgen.analyzers" -}}
{{- $analyzers := list -}}
{{- range .Values.analysis.backends -}}
{{- if not (has . (list "whisper")) -}}
{{- $analyzers = append $analyzers . -}}
{{- end -}}
{{- end -}}
{{- join "," $analyzers -}}
{{- end -}}

{{/* Stops rendering with a message where values contradict each other (the schema checks each alone). */}}
{{- define "mvgen.validate" -}}
{{- if and (not .Values.s3.endpoint) (not .Values.minio.enabled) -}}
{{- fail "set s3.endpoint (an external S3 service) or minio.enabled=true" -}}
{{- end -}}
{{- if and (has "openai" .Values.scripting.backends) (not (include "mvgen.openaiUrl" (dict "root" . "name" "llm"))) -}}
{{- fail "scripting.backends has openai: set llm.enabled=true or llm.url" -}}
{{- end -}}
{{- if and (has "openai-audio" .Values.scripting.backends) (not (include "mvgen.openaiUrl" (dict "root" . "name" "lalm"))) -}}
{{- fail "scripting.backends has openai-audio: set lalm.enabled=true or lalm.url" -}}
{{- end -}}
{{- if not (include "mvgen.writers" .) -}}
{{- fail "scripting.backends needs a script writer besides the storytellers: template, openai, vllm or llamacpp" -}}
{{- end -}}
{{- if not (include "mvgen.analyzers" .) -}}
{{- fail "analysis.backends needs an analyser besides whisper: musicnn, descriptors or clap" -}}
{{- end -}}
{{- if and .Values.gateway.tls.enabled (not .Values.gateway.tls.secretName) -}}
{{- fail (print "gateway.tls.enabled needs gateway.tls.secretName: an existing kubernetes.io/tls Secret"
    " holding tls.crt and tls.key") -}}
{{- end -}}
{{- $scaling := .Values.video.autoscaling -}}
{{- if and $scaling.scaleToZero (ne $scaling.type "keda") -}}
{{- fail "video.autoscaling.scaleToZero needs video.autoscaling.type=keda (an HPA cannot scale to zero)" -}}
{{- end -}}
{{- if gt (int $scaling.minReplicas) (int $scaling.maxReplicas) -}}
{{- fail "video.autoscaling.minReplicas is above maxReplicas" -}}
{{- end -}}
{{- range $name := list "segmentation" "analysis" "scripting" "assembly" "review" -}}
{{- $a := (index $.Values $name).autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "%s.autoscaling.minReplicas is above maxReplicas" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
