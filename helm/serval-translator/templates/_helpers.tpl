{{/* Names and labels. */}}
{{- define "serval-translator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Leaves room for the longest suffix ("-client-admin", 13 characters) within 63. */}}
{{- define "serval-translator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "serval-translator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "serval-translator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one role; call with (dict "root" $ "role" "router"). */}}
{{- define "serval-translator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "serval-translator.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "serval-translator.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-keys" (include "serval-translator.fullname" .)) -}}
{{- end -}}

{{- define "serval-translator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
The router's state volume (roles.router.state): mounted at this folder, and
router.state_file names this file in it. The router writes the file atomically (a
temporary file beside it, renamed over), so the folder itself must be writable: a volume
of its own, not a file in the read-only root or the policy's ConfigMap folder.
*/}}
{{- define "serval-translator.routerStateDir" -}}/var/lib/serval{{- end -}}
{{- define "serval-translator.routerStateFile" -}}
{{- printf "%s/router-state.json" (include "serval-translator.routerStateDir" .) -}}
{{- end -}}

{{/*
The policy file of one role: the role's `policy` value plus the chart-managed fields
(serval.bind, admin.listen, drain.grace_period, for the router with state.enabled
router.state_file and, for a client with the DNS responder, client.dns.listen). Those must match the Service, probe and grace-period values, so the
policy may not set them: the template fails and names the value to use instead.
Call with (dict "root" $ "role" "router").
*/}}
{{- define "serval-translator.policy" -}}
{{- $v := .root.Values -}}
{{- $r := index $v.roles .role -}}
{{- $p := deepCopy ($r.policy | default dict) -}}
{{- $managed := list (list "serval" "bind" "serval.port") (list "admin" "listen" "admin.port") (list "drain" "grace_period" (printf "roles.%s.terminationGracePeriodSeconds and drain.marginSeconds" .role)) -}}
{{- range $managed -}}
{{- $section := index $p (index . 0) -}}
{{- if and (kindIs "map" $section) (hasKey $section (index . 1)) -}}
{{- fail (printf "roles.%s.policy.%s.%s is managed by the chart: set %s instead" $.role (index . 0) (index . 1) (index . 2)) -}}
{{- end -}}
{{- end -}}
{{- if not (hasKey $p .role) -}}
{{- fail (printf "roles.%s.policy needs a `%s:` section (the role this Deployment runs)" .role .role) -}}
{{- end -}}
{{- $tgps := int $r.terminationGracePeriodSeconds -}}
{{- $margin := int $v.drain.marginSeconds -}}
{{- if le $tgps $margin -}}
{{- fail (printf "roles.%s.terminationGracePeriodSeconds (%d) must exceed drain.marginSeconds (%d): the drain needs a grace period" .role $tgps $margin) -}}
{{- end -}}
{{- if eq .role "client" -}}
{{- /* The listener modes must agree with roles.client.interception, which decides the
capabilities: a tproxy listener without NET_ADMIN fails at startup. */ -}}
{{- $modes := dict -}}
{{- range ((index $p "client") | default dict).listeners | default list -}}
{{- $_ := set $modes (.mode | default "explicit") true -}}
{{- end -}}
{{- $mode := $r.interception -}}
{{- if and (hasKey $modes "tproxy") (ne $mode "tproxy") -}}
{{- fail (printf "roles.client.policy has a listener with mode: tproxy, but roles.client.interception is %s: set it to tproxy (IP_TRANSPARENT needs NET_ADMIN)" $mode) -}}
{{- end -}}
{{- if and (hasKey $modes "redirect") (eq $mode "none") -}}
{{- fail "roles.client.policy has a listener with mode: redirect, but roles.client.interception is none: set it to redirect" -}}
{{- end -}}
{{- if and (ne $mode "none") (not (hasKey $modes $mode)) -}}
{{- fail (printf "roles.client.interception is %s, but no listener in roles.client.policy has mode: %s" $mode $mode) -}}
{{- end -}}
{{- end -}}
{{- $chart := dict
  "version" 1
  "serval" (dict "bind" (printf "0.0.0.0:%d" (int $v.serval.port)))
  "admin" (dict "listen" (printf "0.0.0.0:%d" (int $v.admin.port)))
  "drain" (dict "grace_period" (printf "%ds" (sub $tgps $margin))) -}}
{{- if and (eq .role "client") $r.dns.enabled -}}
{{- $client := index $p "client" | default dict -}}
{{- $dns := index $client "dns" -}}
{{- if not (kindIs "map" $dns) -}}
{{- fail "roles.client.dns.enabled needs roles.client.policy.client.dns (names, pools, upstream)" -}}
{{- end -}}
{{- if hasKey $dns "listen" -}}
{{- fail "roles.client.policy.client.dns.listen is managed by the chart: set roles.client.dns.containerPort instead" -}}
{{- end -}}
{{- $_ := set $chart "client" (dict "dns" (dict "listen" (printf "0.0.0.0:%d" (int $r.dns.containerPort)))) -}}
{{- end -}}
{{- if and (eq .role "router") $r.state.enabled -}}
{{- $router := index $p "router" -}}
{{- if and (kindIs "map" $router) (hasKey $router "state_file") -}}
{{- fail "roles.router.policy.router.state_file is managed by the chart while roles.router.state.enabled is true: remove it (the chart sets /var/lib/serval/router-state.json on the state volume; roles.router.state.existingClaim keeps it on a PersistentVolumeClaim), or set roles.router.state.enabled=false to manage the state file yourself" -}}
{{- end -}}
{{- $_ := set $chart "router" (dict "state_file" (include "serval-translator.routerStateFile" .root)) -}}
{{- end -}}
{{- $out := mustMergeOverwrite $p $chart -}}
# Rendered by the serval-translator chart for the {{ .role }} role: roles.{{ .role }}.policy
# plus the chart-managed serval.bind, admin.listen
{{- if and (eq .role "router") $r.state.enabled }}, drain.grace_period and router.state_file.
{{- else }} and drain.grace_period.{{ end }}
{{ toYaml $out }}
{{- end -}}

{{/* Does this role's policy name its routers itself? */}}
{{- define "serval-translator.policyHasRouters" -}}
{{- $p := (index .root.Values.roles .role).policy | default dict -}}
{{- $s := index $p "serval" -}}
{{- if and (kindIs "map" $s) (hasKey $s "routers") }}true{{ end -}}
{{- end -}}

{{/*
The capabilities the translator container of a role needs (a JSON list):
tproxy listeners set IP_TRANSPARENT (CAP_NET_ADMIN; CAP_NET_RAW would also do, one is
enough); the DNS responder on a port below 1024 needs CAP_NET_BIND_SERVICE. REDIRECT needs
none: SO_ORIGINAL_DST is unprivileged.
*/}}
{{- define "serval-translator.capabilities" -}}
{{- $caps := list -}}
{{- if eq .role "client" -}}
{{- $c := .root.Values.roles.client -}}
{{- if eq $c.interception "tproxy" -}}
{{- $caps = append $caps "NET_ADMIN" -}}
{{- end -}}
{{- if and $c.dns.enabled (lt (int $c.dns.containerPort) 1024) -}}
{{- $caps = append $caps "NET_BIND_SERVICE" -}}
{{- end -}}
{{- end -}}
{{- toJson $caps -}}
{{- end -}}
