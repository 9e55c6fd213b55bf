{{/* The five cloud services, in the order they are rendered. */}}
{{- define "fieldgate.serviceNames" -}}
ingest inbound registration event-store api
{{- end -}}

{{- define "fieldgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fieldgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "fieldgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "fieldgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fieldgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one service's pods: call with (dict "root" $ "service" "ingest"). */}}
{{- define "fieldgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fieldgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "fieldgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fieldgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fieldgate.secretName" -}}
{{- default (printf "%s-auth" (include "fieldgate.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "fieldgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Where the pods find things. */}}
{{- define "fieldgate.configDir" -}}/etc/fieldgate{{- end -}}
{{- define "fieldgate.secretDir" -}}/var/run/secrets/fieldgate{{- end -}}
{{- define "fieldgate.dataDir" -}}/var/lib/fieldgate/cloud{{- end -}}

{{/* Seconds a service gets between the end of its preStop hook and SIGKILL, at least. */}}
{{- define "fieldgate.preStopSeconds" -}}
{{- if has .service (list "api" "ingest") -}}{{ int .root.Values.preStopSleepSeconds }}{{- else -}}0{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds of a service: preStop + drain timeout + 10 s, or the value
     given, which must be above preStop + drain timeout. */}}
{{- define "fieldgate.terminationGrace" -}}
{{- $v := index .root.Values.services .service -}}
{{- $preStop := include "fieldgate.preStopSeconds" . | int -}}
{{- $drain := .root.Values.config.drainTimeoutSeconds | float64 | ceil | int -}}
{{- $floor := add $preStop $drain -}}
{{- if kindIs "invalid" $v.terminationGracePeriodSeconds -}}
{{- add $floor 10 -}}
{{- else -}}
{{- $given := $v.terminationGracePeriodSeconds | int -}}
{{- if le $given $floor -}}
{{- fail (printf "services.%s.terminationGracePeriodSeconds (%d) must be above preStopSleepSeconds + config.drainTimeoutSeconds (%d s): otherwise the kubelet kills %s before it drained" .service $given $floor .service) -}}
{{- end -}}
{{- $given -}}
{{- end -}}
{{- end -}}

{{/* The cloud's configuration file (fieldgate.cloud.config.CloudConfig), as YAML. */}}
{{- define "fieldgate.cloudConfig" -}}
{{- $c := .Values.config -}}
{{- $conf := dict
  "data_dir" (include "fieldgate.dataDir" .)
  "grpc_host" "0.0.0.0"
  "grpc_port" (int .Values.ports.grpc)
  "rest_host" "0.0.0.0"
  "rest_port" (int .Values.ports.rest)
  "health" (dict "host" "0.0.0.0" "port" (int .Values.ports.health))
  "drain_timeout_s" $c.drainTimeoutSeconds
  "default_command_ttl_s" (int $c.defaultCommandTtlSeconds)
  "tenants" $c.tenants
  "auth" (dict
    "secret_file" (printf "%s/%s" (include "fieldgate.secretDir" .) .Values.auth.jwtSecretKey)
    "token_ttl_s" (int $c.tokenTtlSeconds))
  "bus" (dict
    "kind" "kafka"
    "bootstrap" $c.kafka.bootstrap
    "topic_prefix" $c.kafka.topicPrefix
    "partitions" (int $c.kafka.partitions)
    "replication" (int $c.kafka.replication))
  "store" (dict
    "kind" "cassandra"
    "hosts" $c.cassandra.hosts
    "port" (int $c.cassandra.port)
    "replication" (int $c.cassandra.replication)
    "keyspace_prefix" $c.cassandra.keyspacePrefix)
-}}
{{- if $c.zookeeper.enabled -}}
{{- $_ := set $conf "zookeeper" (dict "hosts" $c.zookeeper.hosts "instance" $c.zookeeper.instance) -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $dir := include "fieldgate.tlsDir" . -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) "require_client_cert" .Values.tls.requireClientCert -}}
{{- if .Values.tls.requireClientCert -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" $dir) -}}
{{- if .Values.tls.crl -}}
{{- $_ := set $tls "crl_file" (printf "%s/crl.pem" $dir) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $conf "tls" $tls -}}
{{- end -}}
{{- toYaml $conf -}}
{{- end -}}

{{/* Where the gRPC TLS material (tls.existingSecret) is mounted. */}}
{{- define "fieldgate.tlsDir" -}}/var/run/secrets/fieldgate-tls{{- end -}}
