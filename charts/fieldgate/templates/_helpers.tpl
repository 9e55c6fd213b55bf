{{/* The cloud services, one Deployment each: the keys of .Values.services (values.yaml has one
     per service of `fieldgate cloud run`, fieldgate.cloud.app.SERVICES, and the schema requires
     exactly those), space-separated in alphabetical order. */}}
{{- define "fieldgate.serviceNames" -}}
{{- keys .Values.services | sortAlpha | join " " -}}
{{- end -}}

{{/* The consumer stages (Kafka consumer groups; no Service, nothing calls them): every service
     but ingest (the edges' gRPC uplink) and api (REST). */}}
{{- define "fieldgate.consumerStages" -}}
{{- without (keys .Values.services | sortAlpha) "ingest" "api" | join " " -}}
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

{{/* Where the gRPC TLS material is mounted. */}}
{{- define "fieldgate.tlsDir" -}}/var/run/secrets/fieldgate-tls{{- end -}}

{{/* The Secret with the gRPC TLS material: tls.existingSecret, or the chart's (tls-secret.yaml). */}}
{{- define "fieldgate.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "fieldgate.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* checksum/secret: the credentials' values, or the existing Secret's keys as the API server
     has them at install/upgrade (lookup; nothing in `helm template`, where it is constant). */}}
{{- define "fieldgate.authChecksum" -}}
{{- $a := .Values.auth -}}
{{- if $a.existingSecret -}}
{{- $data := (lookup "v1" "Secret" .Release.Namespace $a.existingSecret).data | default dict -}}
{{- pick $data $a.adminPasswordKey $a.jwtSecretKey | toJson | sha256sum -}}
{{- else -}}
{{- toJson $a | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* checksum/tls (ingest's pods): what ingest reads once, at start — certificate, key, client
     CA — from tls.pem, or from the existing Secret as the API server has it at install/upgrade
     (lookup). Not the CRL: ingest re-reads crl.pem while it runs, and a roll would end every
     edge stream for nothing. */}}
{{- define "fieldgate.tlsChecksum" -}}
{{- if .Values.tls.existingSecret -}}
{{- $data := (lookup "v1" "Secret" .Release.Namespace .Values.tls.existingSecret).data | default dict -}}
{{- pick $data "tls.crt" "tls.key" "ca.crt" | toJson | sha256sum -}}
{{- else -}}
{{- pick .Values.tls.pem "cert" "key" "ca" | toJson | sha256sum -}}
{{- end -}}
{{- end -}}

{{/* appProtocol of the gRPC port: HTTP/2 in the clear (kubernetes.io/h2c) without TLS. With
     TLS there is no standard value for "HTTP/2 inside TLS", and h2c would tell a proxy or a
     mesh to speak cleartext HTTP/2 to a TLS port: none is set. */}}
{{- define "fieldgate.grpcAppProtocol" -}}
{{- if not .Values.tls.enabled -}}
appProtocol: kubernetes.io/h2c
{{- end -}}
{{- end -}}
