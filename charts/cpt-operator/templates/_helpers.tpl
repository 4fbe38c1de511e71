{{/*
Names. Kubernetes names (and label values) are at most 63 characters: every name is truncated
to 63 and loses a trailing "-" the cut may leave.
*/}}
{{- define "cpt-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cpt-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A name for one part of the release: "<fullname>-<suffix>", still at most 63 characters. */}}
{{- define "cpt-operator.componentName" -}}
{{- printf "%s-%s" (include "cpt-operator.fullname" .root) .suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cpt-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cpt-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cpt-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "cpt-operator.labels" -}}
helm.sh/chart: {{ include "cpt-operator.chart" . }}
{{ include "cpt-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cpt-operator
{{- end }}

{{- define "cpt-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cpt-operator.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The peering object the operator uses (cpt_operator.handlers.context.Tuning.peering_name). */}}
{{- define "cpt-operator.peeringName" -}}
cpt-operator
{{- end }}

{{- define "cpt-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "cpt-operator.clusterWide" -}}
{{- if eq .Values.rbac.scope "cluster" }}true{{ end }}
{{- end }}

{{/*
Values the schema cannot express: cross-field rules. Every template includes this, so an
invalid combination fails the install with one clear line instead of a broken operator.
*/}}
{{- define "cpt-operator.validate" -}}
{{- $scope := .Values.rbac.scope }}
{{- if not (has $scope (list "cluster" "namespaces")) }}
{{- fail (printf "rbac.scope must be \"cluster\" or \"namespaces\", not %q" (toString $scope)) }}
{{- end }}
{{- $namespaces := .Values.rbac.watchNamespaces | default list }}
{{- if and (eq $scope "namespaces") (empty $namespaces) }}
{{- fail "rbac.scope \"namespaces\" needs at least one namespace in rbac.watchNamespaces" }}
{{- end }}
{{- if and (eq $scope "cluster") (not (empty $namespaces)) }}
{{- fail "rbac.watchNamespaces must be empty when rbac.scope is \"cluster\" (set rbac.scope: namespaces to restrict the operator)" }}
{{- end }}
{{- range $namespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .)) }}
{{- fail (printf "rbac.watchNamespaces: %q is not a namespace name (DNS-1123 label)" (toString .)) }}
{{- end }}
{{- if gt (len (toString .)) 63 }}
{{- fail (printf "rbac.watchNamespaces: %q is longer than 63 characters" (toString .)) }}
{{- end }}
{{- end }}
{{- if ne (len $namespaces) (len (uniq $namespaces)) }}
{{- fail "rbac.watchNamespaces lists a namespace twice" }}
{{- end }}
{{- $tenants := .Values.rbac.tenantNamespaces | default list }}
{{- if and (eq $scope "namespaces") (not (empty $tenants)) }}
{{- fail "rbac.tenantNamespaces must be empty when rbac.scope is \"namespaces\" (its watched namespaces are the tenant namespaces)" }}
{{- end }}
{{- if and (has "*" $tenants) (gt (len $tenants) 1) }}
{{- fail "rbac.tenantNamespaces: \"*\" already means every namespace; list nothing else with it" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled: without Kopf peering every replica would reconcile the same runs" }}
{{- end }}
{{- $pools := .Values.settings.nodePools | default list }}
{{- if empty $pools }}
{{- fail "settings.nodePools needs at least one GPU node pool" }}
{{- end }}
{{- $poolNames := list }}
{{- range $pools }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .name)) }}
{{- fail (printf "settings.nodePools: %q is not a valid pool name (DNS-1123 label)" (toString .name)) }}
{{- end }}
{{- $poolNames = append $poolNames .name }}
{{- end }}
{{- if ne (len $poolNames) (len (uniq $poolNames)) }}
{{- fail "settings.nodePools: two pools have the same name" }}
{{- end }}
{{- $prom := .Values.settings.prometheus }}
{{- if and (or $prom.bearerTokenSecret $prom.caConfigMap) (not $prom.url) }}
{{- fail "settings.prometheus.bearerTokenSecret/caConfigMap need settings.prometheus.url" }}
{{- end }}
{{- with $prom.bearerTokenSecret }}
{{- if not (and .name .key) }}
{{- fail "settings.prometheus.bearerTokenSecret needs both name and key" }}
{{- end }}
{{- end }}
{{- with $prom.caConfigMap }}
{{- if not (and .name .key) }}
{{- fail "settings.prometheus.caConfigMap needs both name and key" }}
{{- end }}
{{- end }}
{{- $near := .Values.monitoring.prometheusRule.forgettingNearFraction | float64 }}
{{- if or (le $near 0.0) (gt $near 1.0) }}
{{- fail "monitoring.prometheusRule.forgettingNearFraction must be in (0, 1]" }}
{{- end }}
{{- end }}

{{/* RBAC rules (files/rbac-rules.yaml, generated from cpt_operator.rbac.RULES), by scope. */}}
{{- define "cpt-operator.rbacRules" -}}
{{- .Files.Get "files/rbac-rules.yaml" | fromYaml | toJson }}
{{- end }}

{{/* Mount paths of what the settings file points at. */}}
{{- define "cpt-operator.prometheusTokenDir" -}}/var/run/secrets/cpt-operator/prometheus-token{{- end }}
{{- define "cpt-operator.prometheusCADir" -}}/etc/cpt-operator/prometheus-ca{{- end }}

{{/*
The operator's settings file: OperatorSettings (cpt_operator/settings.py) field names, from the
chart's camelCase values. tests/chart validates the result against OperatorSettings itself.
*/}}
{{- define "cpt-operator.settingsFile" -}}
{{- $s := .Values.settings }}
{{- $poolKeys := dict "nodeSelector" "node_selector" "tolerations" "tolerations" "gpuResource" "gpu_resource" "gpusPerNode" "gpus_per_node" "gpuMemoryGiB" "gpu_memory_gib" "gpuPeakTflops" "gpu_peak_tflops" "cpu" "cpu" "memory" "memory" "allowedNamespaces" "allowed_namespaces" "allowedPriorityClasses" "allowed_priority_classes" "allowedTolerationKeys" "allowed_toleration_keys" }}
{{- $pools := list }}
{{- range $pool := $s.nodePools }}
{{- $p := dict "name" $pool.name }}
{{- range $camel, $snake := $poolKeys }}
{{- if hasKey $pool $camel }}
{{- $value := get $pool $camel }}
{{- if has $camel (list "cpu" "memory") }}{{ $value = toString $value }}{{ end }}
{{- $_ := set $p $snake $value }}
{{- end }}
{{- end }}
{{- $pools = append $pools $p }}
{{- end }}
{{- $out := dict
  "trainer_image" $s.trainerImage
  "allowed_trainer_images" ($s.allowedTrainerImages | default list)
  "allowed_local_roots" ($s.allowedLocalRoots | default list)
  "node_pools" $pools
  "control_interval_seconds" $s.controlIntervalSeconds
  "metrics_stale_seconds" $s.metricsStaleSeconds
  "achieved_tflops_per_gpu" $s.achievedTflopsPerGpu
  "price_per_gpu_hour" $s.pricePerGpuHour
  "backoff_limit" $s.backoffLimit
  "termination_grace_period_seconds" $s.terminationGracePeriodSeconds
  "max_termination_grace_period_seconds" $s.maxTerminationGracePeriodSeconds
  "checkpoint_save_share" $s.checkpointSaveShare
  "pvc_mount_root" $s.pvcMountRoot
  "storage_grants" ($s.storageGrants | default list)
  "allowed_s3_endpoints" ($s.allowedS3Endpoints | default list)
  "control_run_deadline_seconds" $s.controlRunDeadlineSeconds
  "control_concurrency" $s.controlConcurrency
  "cleanup_image" (include "cpt-operator.image" .)
  "operator_metrics_port" .Values.metrics.port
  "watch_namespaces" (ternary (list) (.Values.rbac.watchNamespaces | default list) (eq .Values.rbac.scope "cluster"))
  "kueue" (dict "manage_jobs_without_queue_name" $s.kueue.manageJobsWithoutQueueName "workload_api_version" $s.kueue.workloadApiVersion)
}}
{{- with $s.curation }}
{{- $cur := dict "allowed_namespaces" (.allowedNamespaces | default list) "max_parallelism" .maxParallelism "max_gpus_per_pod" .maxGpusPerPod }}
{{- with .gpuNodePool }}{{ $_ := set $cur "gpu_node_pool" . }}{{ end }}
{{- with .queueName }}{{ $_ := set $cur "queue_name" . }}{{ end }}
{{- $_ := set $out "curation" $cur }}
{{- end }}
{{- with $s.prometheus.url }}
{{- $_ := set $out "prometheus_url" . }}
{{- end }}
{{- with $s.prometheus.bearerTokenSecret }}
{{- $_ := set $out "prometheus_bearer_token_file" (printf "%s/%s" (include "cpt-operator.prometheusTokenDir" $) .key) }}
{{- end }}
{{- with $s.prometheus.caConfigMap }}
{{- $_ := set $out "prometheus_ca_file" (printf "%s/%s" (include "cpt-operator.prometheusCADir" $) .key) }}
{{- end }}
{{- toYaml $out }}
{{- end }}
