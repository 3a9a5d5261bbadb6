{{/* Labels of every object: those of manifests/base plus Helm's. */}}
{{- define "k8secrets.labels" -}}
app.kubernetes.io/name: k8secrets
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "k8secrets.tag" -}}
{{ .tag | default .root.Chart.AppVersion }}
{{- end }}

{{/*
k8secrets.namespaces: the Job's namespaces as a JSON list of
{name, secrets}: .Values.namespaces, or the release namespace alone, with
inject.secret added to the release namespace's Secrets. Fails where a Role
would read no Secret: an empty resourceNames grants every Secret.
*/}}
{{- define "k8secrets.namespaces" -}}
{{- $out := list -}}
{{- $list := .Values.namespaces -}}
{{- if not $list -}}
{{- $list = list (dict "name" .Release.Namespace "secrets" list) -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $list -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "namespaces: %q is listed twice; list its Secrets once" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- $secrets := .secrets | default list -}}
{{- if and $.Values.inject.enabled (eq .name $.Release.Namespace) $.Values.inject.secret -}}
{{- $secrets = append $secrets $.Values.inject.secret -}}
{{- end -}}
{{- if not $secrets -}}
{{- fail (printf "namespaces: %q lists no Secret: the Role reads Secrets by name only (an empty list would grant every Secret); set namespaces[].secrets, or inject.secret for the release namespace" .name) -}}
{{- end -}}
{{- $out = append $out (dict "name" .name "secrets" ($secrets | uniq)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end }}

{{/* k8secrets.clusterSecrets: the Secrets of the ClusterRole, as JSON. */}}
{{- define "k8secrets.clusterSecrets" -}}
{{- $secrets := .Values.clusterWide.secrets | default list -}}
{{- if and .Values.inject.enabled .Values.inject.secret -}}
{{- $secrets = append $secrets .Values.inject.secret -}}
{{- end -}}
{{- if not $secrets -}}
{{- fail "clusterWide.secrets is empty: the ClusterRole reads Secrets by name only (an empty list would grant every Secret); list them, or set inject.secret" -}}
{{- end -}}
{{- toJson ($secrets | uniq) -}}
{{- end }}

{{/*
k8secrets.jobRules: the rules of manifests/base/role.yaml, with the Secrets
of .secrets. chart_test.go compares them with that file.
*/}}
{{- define "k8secrets.jobRules" -}}
# Validate the Secret (type and key names; values are never logged).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
  resourceNames: {{ toJson .secrets }}
# Find the running pods that match the selector and watch replacements
# become Ready; create is for the server-side dry-run of a pod made from
# each new template (dryRun=All: nothing is created).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create]
# Roll OnDelete StatefulSets and DaemonSets through the Eviction API.
- apiGroups: [""]
  resources: [pods/eviction]
  verbs: [create]
# Resolve owners, follow rollouts, and apply the change and its rollback
# with server-side apply (patch); never update, never get.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [list, watch, patch]
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list, watch]
# One run at a time per Secret.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, delete]
# Injected, RolloutFailed and RolledBack Events on the workloads.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{- define "k8secrets.refreshRules" -}}
# Find the pods that mount the Secret, annotate them, and watch a pod whose
# app restarts become Ready again before the next.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
{{- end }}

{{/* k8secrets.check: the values that contradict each other. */}}
{{- define "k8secrets.check" -}}
{{- if and .Values.clusterWide.enabled .Values.namespaces -}}
{{- fail "namespaces and clusterWide.enabled exclude each other: the cluster-wide ServiceAccount lives in the release namespace and may work in any; drop one" -}}
{{- end -}}
{{- if .Values.inject.enabled -}}
{{- if not .Values.inject.selector -}}
{{- fail "inject.enabled needs inject.selector: the label selector of the running pods whose workloads get the Secret (an empty one would match every pod)" -}}
{{- end -}}
{{- if not .Values.inject.secret -}}
{{- fail "inject.enabled needs inject.secret: the name of the Secret to mount" -}}
{{- end -}}
{{- if not .Values.clusterWide.enabled -}}
{{- $found := false -}}
{{- range (include "k8secrets.namespaces" . | fromJsonArray) -}}
{{- if eq .name $.Release.Namespace }}{{ $found = true }}{{ end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "inject.enabled: the inject Job runs in the release namespace %q, which namespaces does not list: add it, or install into one of them" .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* k8secrets.seconds: a duration of the schema's form (90s, 5m, 1h) in seconds. */}}
{{- define "k8secrets.seconds" -}}
{{- $n := regexFind "^[0-9]+" . | atoi -}}
{{- $unit := regexFind "[smh]$" . -}}
{{- if eq $unit "h" }}{{ mul $n 3600 }}{{ else if eq $unit "m" }}{{ mul $n 60 }}{{ else }}{{ $n }}{{ end -}}
{{- end }}

{{/*
k8secrets.watchRules: the rules of manifests/watch/role.yaml (with
.leases, the Lease rule; without, those of
manifests/watch-cluster/clusterrole.yaml). chart_test.go compares them
with those files.
*/}}
{{- define "k8secrets.watchRules" -}}
# One informer per injected Secret, by name: its data tells a rotation
# from a metadata change.
- apiGroups: [""]
  resources: [secrets]
  verbs: [list, watch]
# The refresh: find the pods that mount the Secret, annotate them, and
# watch restarting pods, and the verification, until Ready.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# Informers on the injected workloads only; patch records on the
# workload's own metadata what it last rotated to.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [list, watch, patch]
{{- if .leases }}
# Leader election: one replica acts; on SIGTERM it releases the Lease.
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}
# Refreshed, Verified, Unverified, ReloadFailed and RotationSuspended Events.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end }}

{{/*
k8secrets.watchNamespaces: the namespaces the watch serves, as a JSON list:
watch.namespaces, or the release namespace alone. Empty when
clusterWide.enabled (it serves every namespace).
*/}}
{{- define "k8secrets.watchNamespaces" -}}
{{- if .Values.clusterWide.enabled -}}
{{- if .Values.watch.namespaces -}}
{{- fail "watch.namespaces and clusterWide.enabled exclude each other: cluster-wide, the watch serves every namespace (--all-namespaces); drop one" -}}
{{- end -}}
{{- toJson list -}}
{{- else -}}
{{- $list := .Values.watch.namespaces | default (list .Release.Namespace) -}}
{{- if ne (len $list) (len ($list | uniq)) -}}
{{- fail (printf "watch.namespaces lists a namespace twice: %v" $list) -}}
{{- end -}}
{{- toJson $list -}}
{{- end -}}
{{- end }}
