"""The ``fieldgate`` command line.

fieldgate up                    cloud + edge agent + embedded broker + simulated devices
fieldgate cloud run [--config] [service]  the all-in-one cloud process, or one service on
                                Kafka (fieldgate.cloud.composition.SERVICES)
fieldgate cloud replay ...      move a consumer group's offsets on one tenant's stage topic
fieldgate cloud tenant show|set ...   a tenant's live settings in ZooKeeper (validated)
fieldgate cloud descriptors     write the protobuf FileDescriptorSet of the topics' payloads
fieldgate cloud decode ...      kcat -f '%S:%s' output of a stage topic → JSON lines
fieldgate edge run --config F   one edge agent (sd_notify under a Type=notify systemd unit)
fieldgate edge unit-devices --config F [--apply UNIT]   the device nodes the agent's unit may open
fieldgate sim mqtt ...          simulated MQTT devices
fieldgate mqtt credentials add|remove|list, mqtt mosquitto-files   MQTT device credentials
fieldgate config check edge|cloud F   validate a configuration file
fieldgate pki init-ca|issue-edge|issue-server|revoke|crl --dir D   the edge/cloud CA (docs/security.md)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fieldgate.errors import ConfigError, FieldgateError

if TYPE_CHECKING:
    from fieldgate.cloud.config import CloudConfig


async def _until_signalled(body: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await body(stop)


def _admin_password() -> str | None:
    """FIELDGATE_ADMIN_PASSWORD (None: not set), refused before anything starts if it is not a
    password the user store would take."""
    from fieldgate.cloud.domain.users import check_password
    from fieldgate.cloud.errors import InvalidRequest

    password = os.environ.get("FIELDGATE_ADMIN_PASSWORD") or None
    if password is not None:
        try:
            check_password(password)
        except InvalidRequest as err:
            raise ConfigError(f"FIELDGATE_ADMIN_PASSWORD: {err}") from err
    return password


def _cmd_up(ns: argparse.Namespace) -> int:
    from fieldgate.southbound_sims import parse_sims
    from fieldgate.suite import Suite, SuiteOptions

    sims = parse_sims(ns.sims)
    opts = SuiteOptions(
        data_dir=Path(ns.data_dir),
        rest_port=ns.rest_port,
        grpc_port=ns.grpc_port,
        mqtt_port=ns.mqtt_port,
        mqtt_mode=ns.mqtt,
        mqtt_host=ns.mqtt_host,
        sims=sims.get("mqtt", 0),
        southbound=tuple(k for k in sims if k != "mqtt"),
        sim_rate_hz=ns.sim_rate,
        admin_password=_admin_password(),
        edge_process=not ns.edge_in_process or ns.distributed,
        log_level=ns.log_level,
        distributed=ns.distributed,
        connector_networks=tuple(ns.allow_connector_network or ()),
    )

    async def body(stop: asyncio.Event) -> None:
        async with Suite(opts) as suite:
            print("fieldgate is up.", flush=True)
            for line in suite.describe():
                print("  " + line)
            if suite.admin_password and not os.environ.get("FIELDGATE_ADMIN_PASSWORD"):
                print(
                    f"  Admin login  user 'admin', password '{suite.admin_password}' (shown once; "
                    "set FIELDGATE_ADMIN_PASSWORD to choose it)"
                )
            elif os.environ.get("FIELDGATE_ADMIN_PASSWORD"):
                print("  Admin login  user 'admin', password from FIELDGATE_ADMIN_PASSWORD")
            if opts.sims:
                print(f"  Simulator    {opts.sims} MQTT devices sim-0001.. at {opts.sim_rate_hz} Hz")
            print("Press Ctrl-C to stop.", flush=True)
            await stop.wait()
            print("stopping...", flush=True)
        print("stopped.", flush=True)

    asyncio.run(_until_signalled(body))
    return 0


def _cmd_cloud_run(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.cloud.app import CloudApp
    from fieldgate.cloud.config import CloudConfig

    conf = cfg.load(CloudConfig, Path(ns.config) if ns.config else None, env_prefix="FIELDGATE_CLOUD")
    admin_password = _admin_password()
    services = [ns.service] if ns.service else None
    # refuses a single service on the embedded bus (ConfigError)
    app = CloudApp(conf, services, admin=True, admin_password=admin_password)

    async def body(stop: asyncio.Event) -> None:
        async with app:
            generated = app.generated_admin_password
            what = ", ".join(sorted(app.services)) if ns.service else "all services"
            addresses = []
            if "api" in app.services:
                addresses.append(f"REST http://{conf.rest_host}:{app.rest_port}")
            if app.ingest is not None:
                addresses.append(f"gRPC {conf.grpc_host}:{app.grpc_port}")
            if app.health_port:
                addresses.append(f"health http://{conf.health.host}:{app.health_port}")
            print(f"cloud up ({what}): {'  '.join(addresses) or 'no listeners'}", flush=True)
            if generated:
                print(f"admin password: {generated} (shown once)", flush=True)
            await stop.wait()
            # SIGTERM/SIGINT: not ready, ingest acks what it committed and ends its streams,
            # then every part stops (the consumer stages finish the batch in hand).
            await app.drain()

    asyncio.run(_until_signalled(body))
    return 0


async def replay(
    config: CloudConfig,
    *,
    stage: str,
    group: str,
    tenant: str,
    to_offset: int | None = None,
    to_time_ms: int | None = None,
) -> dict[int, int]:
    """Reset ``group``'s committed offsets of ``tenant``'s ``stage`` topic on the configured bus.

    This is how a stage is re-run (replayed) from an offset or a time: the stage's consumers,
    started again afterwards, read from there. Re-running is safe because every stage's effect
    is idempotent (events are keyed by their alternate id). The group's consumers must be
    stopped first: Kafka refuses to move the offsets of a group with live members, and the
    embedded bus is private to the one process that has it open. Returns
    ``{partition: new committed offset}``.
    """
    from fieldgate.cloud.bus import build_bus

    bus = build_bus(config, client_id="fieldgate-replay")
    await bus.start()
    try:
        return await bus.reset_offsets(group, stage, tenant, to_offset=to_offset, to_time_ms=to_time_ms)
    finally:
        await bus.stop()


def _cmd_cloud_replay(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.cloud.bus import topic_name
    from fieldgate.cloud.config import CloudConfig
    from fieldgate.timeutil import ms_to_iso, parse_time_ms

    conf = cfg.load(CloudConfig, Path(ns.config) if ns.config else None, env_prefix="FIELDGATE_CLOUD")
    to_time_ms: int | None = None
    if ns.since is not None:
        try:
            to_time_ms = parse_time_ms(ns.since)
        except ValueError as err:
            raise ConfigError(f"--since: {err}") from err
    if ns.offset is not None and ns.offset < 0:
        raise ConfigError("--offset must not be negative")
    targets = asyncio.run(
        replay(
            conf,
            stage=ns.stage,
            group=ns.group,
            tenant=ns.tenant,
            to_offset=ns.offset,
            to_time_ms=to_time_ms,
        )
    )
    topic = topic_name(ns.tenant, ns.stage, conf.bus.topic_prefix)
    how = f"offset {ns.offset}" if ns.offset is not None else f"time {ms_to_iso(to_time_ms or 0)}"
    if not targets:
        print(f"{topic}: no such topic (nothing to reset)")
        return 0
    print(f"reset group {ns.group!r} on {topic} ({conf.bus.kind} bus) to {how}:")
    for partition, offset in sorted(targets.items()):
        print(f"  partition {partition}: next offset {offset}")
    print("start the group's consumers again to re-run the stage from there.")
    return 0


async def _tenant_command(conf: CloudConfig, ns: argparse.Namespace) -> int:
    import json

    from fieldgate.cloud.zk.models import parse_tenant
    from fieldgate.cloud.zk.source import ZkConfigSource

    assert conf.zookeeper is not None
    new = None
    if ns.tenant_cmd == "set":  # validated before anything is written
        new = parse_tenant(ns.tenant, ns.settings.encode(), f"tenant {ns.tenant}")
    async with ZkConfigSource(conf.zookeeper.hosts, conf.zookeeper.instance) as zk:
        if new is not None:
            await zk.publish_tenant(ns.tenant, new)
            print(f"{zk.tenant_path(ns.tenant)}: written; running services apply it from the next batch")
        loaded = await zk.load()
    tenants = {t: s for t, s in loaded.tenants.items() if ns.tenant in (None, t)}
    if ns.tenant is not None and ns.tenant not in tenants:
        print(f"tenant {ns.tenant}: no znode in ZooKeeper (the services use the file's settings)")
        return 1
    for token, settings in sorted(tenants.items()):
        print(f"{token}: {json.dumps(settings.model_dump(mode='json'), sort_keys=True)}")
    return 0


def _cmd_cloud_tenant(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.cloud.config import CloudConfig

    conf = cfg.load(CloudConfig, Path(ns.config) if ns.config else None, env_prefix="FIELDGATE_CLOUD")
    if conf.zookeeper is None:
        raise ConfigError("zookeeper: not configured; tenant settings come from the file's tenants")
    return asyncio.run(_tenant_command(conf, ns))


def _cmd_cloud_descriptors(ns: argparse.Namespace) -> int:
    from fieldgate.cloud.bus.payloads import descriptor_set

    data = descriptor_set()
    if ns.out in (None, "-"):
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        Path(ns.out).write_bytes(data)
        print(f"wrote {len(data)} bytes to {ns.out} (protoc --descriptor_set_in={ns.out} --decode ...)")
    return 0


def _cmd_cloud_decode(ns: argparse.Namespace) -> int:
    from fieldgate.cloud.bus.payloads import decode_stream, stage_of_topic

    stage = ns.stage or stage_of_topic(ns.topic)
    try:
        decode_stream(stage, sys.stdin.buffer, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _cmd_sim_mqtt(ns: argparse.Namespace) -> int:
    from fieldgate.sims.mqtt import run_from_args

    return run_from_args(ns)


def _cmd_edge_run(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.edge.agent import EdgeAgent
    from fieldgate.edge.config import EdgeConfig
    from fieldgate.edge.systemd import Notifier

    conf = cfg.load(EdgeConfig, Path(ns.config) if ns.config else None, env_prefix="FIELDGATE_EDGE")
    notifier = Notifier.from_environ()

    async def body(stop: asyncio.Event) -> None:
        async with EdgeAgent(conf, notifier=notifier) as agent:
            adapters = ", ".join(a.name for a in agent.adapters) or "none"
            mqtt = f" (MQTT {conf.mqtt.host}:{conf.mqtt.port}, {conf.mqtt.mode})" if conf.mqtt.enabled else ""
            print(
                f"edge agent {conf.edge_id} up: adapters {adapters}{mqtt}, uplink {conf.uplink.target}",
                flush=True,
            )
            await stop.wait()

    try:
        asyncio.run(_until_signalled(body))
    finally:
        if notifier is not None:
            notifier.close()
    return 0


def _cmd_edge_unit_devices(ns: argparse.Namespace) -> int:
    """Print the unit's device drop-in, or apply it to a unit (its ExecStartPre=, as root)."""
    from fieldgate import config as cfg
    from fieldgate.edge.config import EdgeConfig
    from fieldgate.edge.systemd import UnitDevicesError, apply_unit_devices, unit_devices

    path = Path(ns.config)
    conf = cfg.load(EdgeConfig, path, env_prefix="FIELDGATE_EDGE")
    try:
        devices = unit_devices(conf)
        for port in devices.absent:
            print(
                f"fieldgate: {port} is not there now: not allowed until the agent's next start",
                file=sys.stderr,
            )
        if ns.apply:
            apply_unit_devices(devices, ns.apply)
            print(f"{ns.apply}: DevicePolicy=closed, devices: {' '.join(devices.devices) or 'none'}")
        else:
            sys.stdout.write(devices.dropin(str(path)))
    except UnitDevicesError as err:
        raise ConfigError(str(err)) from err
    return 0


def _cmd_pki(ns: argparse.Namespace) -> int:
    """``fieldgate pki ...``: bad input (names, unknown edge, no CA) is exit 2, nothing written."""
    from fieldgate.pki import CertificateAuthority, PkiError

    ca = CertificateAuthority(Path(ns.dir))
    try:
        if ns.pki_cmd == "init-ca":
            made = ca.init(days=ns.days, common_name=ns.name)
            print(f"CA created in {ca.directory}: {made.cert_path} (serial {made.serial}, until "
                  f"{made.not_after:%Y-%m-%d}); key {made.key_path} (0600, keep it safe)")  # fmt: skip
        elif ns.pki_cmd == "issue-edge":
            out = Path(ns.out) if ns.out else None
            made = ca.issue_edge(ns.edge_id, ns.tenant, days=ns.days, out=out)
            print(f"edge {ns.edge_id} (tenants {', '.join(dict.fromkeys(ns.tenant))}): certificate "
                  f"{made.cert_path}, key {made.key_path}, serial {made.serial}, until {made.not_after:%Y-%m-%d}")  # fmt: skip
            print(
                f"edge config: uplink: {{ca_file: {ca.cert_path}, cert_file: {made.cert_path}, key_file: {made.key_path}}}"
            )
        elif ns.pki_cmd == "issue-server":
            made = ca.issue_server(ns.host, days=ns.days, out=Path(ns.out) if ns.out else None)
            print(f"server certificate for {', '.join(ns.host)}: {made.cert_path}, key {made.key_path}, "
                  f"serial {made.serial}, until {made.not_after:%Y-%m-%d}")  # fmt: skip
            print(f"cloud config: tls: {{cert_file: {made.cert_path}, key_file: {made.key_path}, "
                  f"client_ca_file: {ca.cert_path}, crl_file: {ca.crl_path}}}")  # fmt: skip
        elif ns.pki_cmd == "revoke":
            serials = ca.revoke(serial=ns.serial, edge_id=ns.edge_id)
            print(f"revoked {', '.join(serials)}; CRL {ca.crl_path} rewritten (the cloud refuses "
                  "these certificates from their next connect)")  # fmt: skip
        else:
            path, count = ca.write_crl(days=ns.days, out=Path(ns.out) if ns.out else None)
            print(f"CRL {path}: {count} revoked certificate(s), valid {ns.days} days")
    except PkiError as err:
        print(f"fieldgate: pki: {err}", file=sys.stderr)
        return 2
    return 0


def _cmd_config_check(ns: argparse.Namespace) -> int:
    from fieldgate import config as cfg
    from fieldgate.cloud.config import CloudConfig
    from fieldgate.edge.config import EdgeConfig

    model = EdgeConfig if ns.kind == "edge" else CloudConfig
    conf = cfg.load(model, Path(ns.file))
    print(f"{ns.file}: valid {ns.kind} configuration")
    print(conf.model_dump_json(indent=2))
    return 0


def _network(text: str) -> str:
    """An argparse type: a network in CIDR notation (host bits clear)."""
    import ipaddress

    try:
        return str(ipaddress.ip_network(text.strip(), strict=True))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a network in CIDR notation: {err}") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fieldgate", description="Edge-to-cloud device gateway suite.")
    p.add_argument("--log-level", default=os.environ.get("FIELDGATE_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run cloud + edge agent + embedded broker + simulated devices")
    up.add_argument("--data-dir", default=".fieldgate", help="where all state lives (default .fieldgate)")
    up.add_argument("--rest-port", type=int, default=8080)
    up.add_argument("--grpc-port", type=int, default=50051)
    up.add_argument("--mqtt-port", type=int, default=1883)
    up.add_argument(
        "--mqtt",
        choices=["embedded", "external"],
        default="embedded",
        help="embedded amqtt broker (default) or an external broker such as Mosquitto",
    )
    up.add_argument("--mqtt-host", default="127.0.0.1")
    up.add_argument(
        "--sims",
        default="mqtt:3",
        help="simulated devices: a number of MQTT devices, or kinds such as mqtt:3,serial,modbus,ble "
        "(default mqtt:3; 0 for none)",
    )
    up.add_argument(
        "--sim-rate", type=float, default=0.2, help="measurements per second per simulated device"
    )
    up.add_argument(
        "--edge-in-process",
        action="store_true",
        help="run the edge agent inside this process instead of as its own process",
    )
    up.add_argument(
        "--distributed",
        action="store_true",
        help="real ZooKeeper, Kafka and Cassandra (fetched with mvn, under DATA_DIR/servers) and one "
        "process per cloud service; implies the edge agent in its own process "
        "(docs/operations/distributed.md)",
    )
    up.add_argument(
        "--allow-connector-network",
        action="append",
        type=_network,
        metavar="CIDR",
        help="a network outbound connectors may reach although it is inside (loopback, private, "
        "...), e.g. 127.0.0.0/8 for a webhook receiver on this machine; repeatable; default none "
        "(connectors.allow_networks, docs/connectors.md)",
    )
    up.set_defaults(func=_cmd_up)

    cloud = sub.add_parser("cloud", help="cloud services").add_subparsers(dest="cloud_cmd", required=True)
    cr = cloud.add_parser("run", help="run the all-in-one cloud process, or one service of it")
    cr.add_argument("--config", help="YAML file (docs/configuration.md); FIELDGATE_CLOUD__* env overrides")
    from fieldgate.cloud.composition import SERVICE_ALIASES, SERVICES

    cr.add_argument(
        "service",
        nargs="?",
        choices=[*SERVICES, *SERVICE_ALIASES],
        help="run only this service (needs bus.kind: kafka; command-delivery runs within ingest, "
        "which hosts the edge streams it delivers to; docs/operations/distributed.md)",
    )
    cr.set_defaults(func=_cmd_cloud_run)

    from fieldgate.cloud.bus import STAGES

    rp = cloud.add_parser(
        "replay",
        help="re-run a stage for one tenant: move a consumer group's offsets to an offset or a time",
        description="Reset the committed offsets of consumer group GROUP on TENANT's topic of STAGE "
        "(fieldgate.tenant.<tenant>.<stage>) on the configured bus, so the stage re-reads from "
        "there when its consumers start again. STOP THE GROUP'S CONSUMERS FIRST: Kafka refuses "
        "to move the offsets of a group with live members (and the embedded bus is private to "
        "the one cloud process, so stop that too). Re-running a stage is safe: every stage is "
        "idempotent (the event store keys events on their alternate ids, so nothing is stored "
        "twice). Stage groups: inbound (stage decoded), registration (unregistered), "
        "persistence (enriched), command-delivery.<replica_id> (command-invocations; one group per "
        "ingest replica, docs/operations/distributed.md), connectors (persisted: re-sends the "
        "events to the tenant's outbound connectors, docs/connectors.md).",
    )
    rp.add_argument("--config", help="YAML file (docs/configuration.md); FIELDGATE_CLOUD__* env overrides")
    rp.add_argument("--stage", required=True, choices=list(STAGES), help="the topic's stage")
    rp.add_argument("--group", required=True, help="the consumer group (e.g. persistence)")
    rp.add_argument("--tenant", required=True, help="the tenant token")
    where = rp.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--offset", type=int, help="per partition, the offset to read next (0 = from the beginning)"
    )
    where.add_argument(
        "--since",
        help="ISO 8601 time or epoch ms: per partition, the first record stamped at or after it",
    )
    rp.set_defaults(func=_cmd_cloud_replay)

    tn = cloud.add_parser(
        "tenant", help="show or set a tenant's live settings in ZooKeeper (docs/operations/zookeeper.md)"
    ).add_subparsers(dest="tenant_cmd", required=True)
    ts = tn.add_parser("show", help="print the tenants' settings as ZooKeeper holds them")
    ts.add_argument("--config", help="YAML file with zookeeper: (hosts, instance)")
    ts.add_argument("tenant", nargs="?", help="only this tenant")
    ts.set_defaults(func=_cmd_cloud_tenant)
    tset = tn.add_parser(
        "set",
        help="validate and write a tenant's settings (the whole znode: missing keys take defaults)",
    )
    tset.add_argument("--config", help="YAML file with zookeeper: (hosts, instance)")
    tset.add_argument("tenant", help="the tenant token")
    tset.add_argument("settings", help='JSON object, e.g. \'{"auto_register": false, "retention_days": 30}\'')
    tset.set_defaults(func=_cmd_cloud_tenant)

    ds = cloud.add_parser(
        "descriptors",
        help="write the protobuf FileDescriptorSet of the topics' payloads (for protoc and other tools)",
    )
    ds.add_argument("-o", "--out", help="file to write (default: standard output)")
    ds.set_defaults(func=_cmd_cloud_descriptors)

    dc = cloud.add_parser(
        "decode",
        help="decode a stage topic's records read with kcat into JSON lines",
        description="Reads kcat's output in the format -f '%%S:%%s' (each record's size, a colon, "
        "its bytes) on standard input and prints one JSON object per record: "
        "kcat -b HOST:PORT -C -t fieldgate.tenant.default.persisted -o beginning -e -f '%%S:%%s' "
        "| fieldgate cloud decode --stage persisted (docs/operations/kafka.md).",
    )
    which = dc.add_mutually_exclusive_group(required=True)
    which.add_argument("--stage", choices=list(STAGES), help="the stage of the topic read")
    which.add_argument("--topic", help="the topic read (its stage is its last part)")
    dc.set_defaults(func=_cmd_cloud_decode)

    edge = sub.add_parser("edge", help="edge agent").add_subparsers(dest="edge_cmd", required=True)
    er = edge.add_parser("run", help="run an edge agent")
    er.add_argument("--config", help="YAML file (docs/configuration.md); FIELDGATE_EDGE__* env overrides")
    er.set_defaults(func=_cmd_edge_run)
    ud = edge.add_parser(
        "unit-devices",
        help="the device nodes the edge agent's systemd unit may open (docs/operations/gateways.md)",
        description="The serial and Modbus ports of the configuration, as DeviceAllow= lines of a "
        "systemd drop-in (printed), or applied to UNIT for this boot with systemctl set-property "
        "--runtime (the packaged unit does this in ExecStartPre=).",
    )
    ud.add_argument("--config", required=True, help="the edge agent's YAML file")
    ud.add_argument("--apply", metavar="UNIT", help="set DevicePolicy=closed and these devices on UNIT")
    ud.set_defaults(func=_cmd_edge_unit_devices)

    sim = sub.add_parser("sim", help="simulated devices").add_subparsers(dest="sim_cmd", required=True)
    sm = sim.add_parser("mqtt", help="simulated MQTT devices")
    from fieldgate.sims.mqtt_cli import add_cli_arguments

    add_cli_arguments(sm)
    sm.set_defaults(func=_cmd_sim_mqtt)

    mq = sub.add_parser("mqtt", help="MQTT device credentials and Mosquitto files (docs/security.md)")
    from fieldgate.edge.adapters.mqtt.credentials_cli import add_cli_arguments as add_mqtt_arguments

    add_mqtt_arguments(mq)

    conf = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_cmd", required=True
    )
    cc = conf.add_parser("check", help="validate a configuration file and print it with defaults")
    cc.add_argument("kind", choices=["edge", "cloud"])
    cc.add_argument("file")
    cc.set_defaults(func=_cmd_config_check)

    pki = sub.add_parser(
        "pki", help="the certificate authority of the edge/cloud link (docs/security.md)"
    ).add_subparsers(dest="pki_cmd", required=True)
    pi = pki.add_parser("init-ca", help="create the CA (EC P-256 key, self-signed certificate) in DIR")
    pi.add_argument("--dir", required=True, help="the CA's directory")
    pi.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    pi.add_argument("--name", default="fieldgate CA", help="the CA's common name")
    pe = pki.add_parser(
        "issue-edge", help="an edge's client certificate (SAN urn:fieldgate:edge:<tenant>:<edge_id>)"
    )
    pe.add_argument("--dir", required=True, help="the CA's directory")
    pe.add_argument("--edge-id", required=True, help="the edge's edge_id (its Hello must name it)")
    pe.add_argument(
        "--tenant", required=True, action="append", help="a tenant the edge may send events of (repeatable)"
    )
    pe.add_argument("--days", type=int, default=365, help="validity (default 365)")
    pe.add_argument("--out", help="directory for <edge_id>.pem/.key (default DIR/edges)")
    ps = pki.add_parser("issue-server", help="the cloud's server certificate (DNS/IP SANs)")
    ps.add_argument("--dir", required=True, help="the CA's directory")
    ps.add_argument("--host", required=True, nargs="+", help="names and addresses edges dial")
    ps.add_argument("--days", type=int, default=365, help="validity (default 365)")
    ps.add_argument("--out", help="directory for server.pem/.key (default DIR)")
    pr = pki.add_parser(
        "revoke", help="revoke a certificate, or every certificate of an edge; rewrites the CRL"
    )
    pr.add_argument("--dir", required=True, help="the CA's directory")
    which_cert = pr.add_mutually_exclusive_group(required=True)
    which_cert.add_argument("--serial", help="the certificate's serial (hex, as issue printed it)")
    which_cert.add_argument("--edge-id", help="every valid certificate of this edge")
    pc = pki.add_parser("crl", help="(re)write the CRL the cloud reads (tls.crl_file)")
    pc.add_argument("--dir", required=True, help="the CA's directory")
    pc.add_argument("--days", type=int, default=30, help="until next_update (default 30)")
    pc.add_argument("--out", help="file to write (default DIR/crl.pem)")
    for cmd in (pi, pe, ps, pr, pc):
        cmd.set_defaults(func=_cmd_pki)
    return p


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for noisy in ("amqtt", "transitions", "uvicorn.error", "kazoo.client"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # pymodbus logs every timeout with a frame dump; the Modbus adapter counts and reports them.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # bleak warns once that it cannot run bluetoothctl (absent with the simulated BlueZ).
    logging.getLogger("bleak.backends.bluezdbus.version").setLevel(logging.ERROR)
    try:
        return int(ns.func(ns))
    except ConfigError as err:
        print(f"fieldgate: configuration error: {err}", file=sys.stderr)
        return 2
    except FieldgateError as err:
        print(f"fieldgate: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
