"""Configuration text for the recording carrier: sudo_logsrvd, and stunnel at both ends.

sudo (on the node) -> stunnel client on the node's loopback -> mutual TLS ->
stunnel server on the broker host -> sudo_logsrvd on the broker host's
loopback -> the store the daemon indexes. Every value written here comes from
validated settings or a checked node name; nothing else reaches these files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.config.settings import Settings, host_port

NODE_DIR = "/etc/broker/logsrv"
NODE_CONF = f"{NODE_DIR}/tunnel.conf"
NODE_CERT = f"{NODE_DIR}/node.pem"
NODE_KEY = f"{NODE_DIR}/node.key"
NODE_CA = f"{NODE_DIR}/ca.pem"
NODE_UNIT = "/etc/systemd/system/broker-logsrv-tunnel.service"
# A relay (a node named in sessions.relays) also runs a store-and-forward sudo_logsrvd.
RELAY_CERT = f"{NODE_DIR}/relay.pem"
RELAY_KEY = f"{NODE_DIR}/relay.key"
RELAY_LOGSRVD_CONF = f"{NODE_DIR}/relay-logsrvd.conf"
RELAY_TUNNEL_CONF = f"{NODE_DIR}/relay-tunnel.conf"
RELAY_SPOOL = "/var/lib/broker/relay"
RELAY_FLUSH_CONF = f"{NODE_DIR}/relay-flush.conf"
RELAY_LOGSRVD_UNIT = "/etc/systemd/system/broker-logsrv-relay.service"
RELAY_FLUSH_UNIT = "/etc/systemd/system/broker-logsrv-relay-flush.service"
RELAY_FLUSH_TIMER = "/etc/systemd/system/broker-logsrv-relay-flush.timer"
RELAY_TUNNEL_UNIT = "/etc/systemd/system/broker-logsrv-relay-tunnel.service"
# Every node with a break-glass group: its own store-and-forward sudo_logsrvd, which the
# broker-managed drop-in points the group's sudo at (docs/sessions.md, "Break-glass").
BREAK_GLASS_LOGSRVD_CONF = f"{NODE_DIR}/break-glass-logsrvd.conf"
BREAK_GLASS_FLUSH_CONF = f"{NODE_DIR}/break-glass-flush.conf"
BREAK_GLASS_SPOOL = "/var/lib/broker/break-glass"
BREAK_GLASS_UNIT = "/etc/systemd/system/broker-logsrv-break-glass.service"
BREAK_GLASS_FLUSH_UNIT = "/etc/systemd/system/broker-logsrv-break-glass-flush.service"
BREAK_GLASS_FLUSH_TIMER = "/etc/systemd/system/broker-logsrv-break-glass-flush.timer"
# `-`, not `_`: sorts before every grant's `broker_g...`, so a member's own grant drop-in
# (strict, later) decides for that member's granted sudo; sudo reads names without a dot.
BREAK_GLASS_DROP_IN = "/etc/sudoers.d/broker-break-glass"
_GROUP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,255}$")


def _path(path: Path | str) -> str:
    text = str(path)
    if not _SAFE_PATH.fullmatch(text) or "/../" in text + "/":
        raise ValueError(f"{text[:80]!r} cannot be written into a carrier configuration")
    return text


@dataclass(frozen=True)
class ServerPaths:
    conf_dir: Path

    @property
    def ca(self) -> Path:
        return self.conf_dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.conf_dir / "server.pem"

    @property
    def key(self) -> Path:
        return self.conf_dir / "server.key"

    @property
    def logsrvd_conf(self) -> Path:
        return self.conf_dir / "sudo_logsrvd.conf"

    @property
    def stunnel_conf(self) -> Path:
        return self.conf_dir / "stunnel.conf"


def logsrvd_conf(settings: Settings, iolog_user: str, events_log: Path) -> str:
    """sudo_logsrvd.conf: plain text on loopback only, one flat directory per session.

    `iolog_file = %{seq}` keeps every name node-supplied data could influence (host,
    user, command) out of the store's paths; the indexer reads them from log.json.
    """
    host, port = host_port(settings.sessions.logsrvd_listen, "sessions.logsrvd_listen")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", iolog_user):
        raise ValueError("iolog_user must be a POSIX user name")
    return (
        "# Written by `broker sessions setup`; changes are overwritten.\n"
        "[server]\n"
        f"listen_address = {host}:{port}\n"
        "server_log = syslog\n"
        "pid_file =\n"
        "tcp_keepalive = true\n"
        "timeout = 30\n"
        "[iolog]\n"
        f"iolog_dir = {_path(settings.session_store)}\n"
        "iolog_file = %{seq}\n"
        "iolog_compress = false\n"
        "iolog_flush = true\n"
        f"iolog_user = {iolog_user}\n"
        "iolog_mode = 0600\n"
        # Typed passwords (after a password prompt) are masked in the recording.
        "log_passwords = false\n"
        "[eventlog]\n"
        "log_type = logfile\n"
        "log_exit = true\n"
        "log_format = json\n"
        "[logfile]\n"
        f"path = {_path(events_log)}\n"
    )


_TLS = "sslVersionMin = TLSv1.2\nciphers = HIGH:!aNULL:!MD5:!RC4:!3DES\n"


def stunnel_server_conf(settings: Settings, paths: ServerPaths, crl: Path) -> str:
    """The broker host's stunnel: only clients with a certificate from the session CA that
    its CRL does not list (a removed node's); SIGHUP makes it read the CRL again."""
    listen = host_port(settings.sessions.tunnel_listen, "sessions.tunnel_listen")
    target = host_port(settings.sessions.logsrvd_listen, "sessions.logsrvd_listen")
    return (
        "; Written by `broker sessions setup`; changes are overwritten.\n"
        "foreground = yes\n"
        "pid =\n"
        "syslog = yes\n"
        "[broker-logsrv]\n"
        f"accept = {listen[0]}:{listen[1]}\n"
        f"connect = {target[0]}:{target[1]}\n"
        f"cert = {_path(paths.cert)}\n"
        f"key = {_path(paths.key)}\n"
        f"CAfile = {_path(paths.ca)}\n"
        f"CRLfile = {_path(crl)}\n"
        "requireCert = yes\n"
        "verifyChain = yes\n" + _TLS
    )


def node_listen(settings: Settings, node_address: str) -> tuple[str, int]:
    """Where the node's tunnel listens (and so what the grant's `log_servers` names)."""
    if settings.sessions.node_listen == "node-address":
        host_port(f"{node_address}:1", "the node's address")
        return node_address, settings.sessions.node_port
    return "127.0.0.1", settings.sessions.node_port


def central_connects(settings: Settings) -> list[tuple[str, int]]:
    """Every broker's tunnel in the order tried: this broker's, then sessions.failover_connect."""
    first = host_port(settings.sessions.tunnel_connect, "sessions.tunnel_connect")
    more = [host_port(v, "sessions.failover_connect") for v in settings.sessions.failover_connect]
    return [first, *more]


def node_connects(settings: Settings, zone: str | None) -> list[tuple[str, int]]:
    """The brokers' tunnels in order, or the zone's relay when the zone opted into
    store-and-forward (the relay itself fails over between the brokers)."""
    relay = settings.sessions.relays.get(zone) if zone else None
    if relay:
        return [host_port(relay, "sessions.relays")]
    return central_connects(settings)


def _targets(connects: Sequence[tuple[str, int]]) -> tuple[str, str]:
    """(connect lines, name-check lines) for a client service. More than one target adds
    `failover = prio`: stunnel tries them in the order written and takes the first that
    answers, so recordings reach whichever broker is up. The server's certificate must
    name one of them: all are host names (checkHost) or all IPv4 addresses (checkIP)."""
    if not connects:
        raise ValueError("a tunnel needs at least one log server to connect to")
    kinds = {bool(re.fullmatch(r"[\d.]+", host)) for host, _port in connects}
    if len(kinds) != 1:
        raise ValueError("log servers must be all host names or all IPv4 addresses")
    check = "checkIP" if kinds.pop() else "checkHost"
    lines = "".join(f"connect = {host}:{port}\n" for host, port in connects)
    if len(connects) > 1:
        lines += "failover = prio\n"
    names = "".join(f"{check} = {host}\n" for host in dict.fromkeys(h for h, _ in connects))
    return lines, names


def stunnel_node_conf(listen: tuple[str, int], connects: Sequence[tuple[str, int]]) -> str:
    """A node's stunnel client: it checks the server's name against the session CA. One
    log server gives the same text as before the failover list existed."""
    lines, names = _targets(connects)
    return (
        "; Written by `broker node bootstrap`; changes are overwritten.\n"
        "foreground = yes\n"
        "pid =\n"
        "syslog = yes\n"
        "[broker-logsrv]\n"
        "client = yes\n"
        f"accept = {listen[0]}:{listen[1]}\n"
        f"{lines}"
        f"cert = {NODE_CERT}\n"
        f"key = {NODE_KEY}\n"
        f"CAfile = {NODE_CA}\n"
        "verifyChain = yes\n"
        f"{names}" + _TLS
    )


def relay_of(settings: Settings, name: str, address: str) -> tuple[str, int] | None:
    """(host, port) the zones' nodes use to reach this node as their relay, or None.

    A relay is named in `sessions.relays` by its inventory name or address; all zones
    naming one host give it one port (the settings check that)."""
    for value in settings.sessions.relays.values():
        host, port = host_port(value, "sessions.relays")
        if host in (name, address):
            return host, port
    return None


def _inner(settings: Settings, address: str) -> str:
    return node_listen(settings, address)[0]


def relay_logsrvd_conf(settings: Settings, address: str, *, flush: bool = False) -> str:
    """The relay's sudo_logsrvd: every recording is stored first (relay_dir), then offered
    to the broker host through the forwarding tunnel until it takes it.

    `flush`: the same on an ephemeral port, for broker-relay-flush (pam/), whose start-up
    scan offers again what the running one forgot."""
    inner = _inner(settings, address)
    port = 0 if flush else settings.sessions.relay_logsrvd_port
    forward = (inner, settings.sessions.relay_forward_port)
    return _store_and_forward(settings, "relay", (inner, port), forward, RELAY_SPOOL)


def break_glass_listen(settings: Settings, address: str) -> tuple[str, int]:
    """Where a node's break-glass sudo_logsrvd listens (what the drop-in's log_servers names)."""
    return _inner(settings, address), settings.sessions.break_glass_port


def break_glass_logsrvd_conf(settings: Settings, address: str, *, flush: bool = False) -> str:
    """The node's own store-and-forward sudo_logsrvd for break-glass sudo: the whole session
    is stored on the node first, then relayed through the node's tunnel (to the broker host,
    or to the zone's relay) whenever it is up. `flush`: the same on an ephemeral port."""
    host, port = break_glass_listen(settings, address)
    listen = (host, 0 if flush else port)
    tunnel = node_listen(settings, address)
    return _store_and_forward(settings, "break-glass", listen, tunnel, BREAK_GLASS_SPOOL)


def _store_and_forward(
    settings: Settings, what: str, listen: tuple[str, int], to: tuple[str, int], spool: str
) -> str:
    """sudo_logsrvd with `store_first`: a recording is kept in `spool` until `to` took it."""
    retry = max(1, int(settings.sessions.relay_retry.total_seconds()))
    return (
        f"# Written by `broker node bootstrap` ({what}); changes are overwritten.\n"
        "[server]\n"
        f"listen_address = {listen[0]}:{listen[1]}\n"
        "server_log = syslog\n"
        "pid_file =\n"
        "tcp_keepalive = true\n"
        "timeout = 30\n"
        "[relay]\n"
        f"relay_host = {to[0]}:{to[1]}\n"
        f"relay_dir = {_path(spool)}\n"
        "store_first = true\n"
        f"retry_interval = {retry}\n"
        "connect_timeout = 10\n"
        "timeout = 30\n"
        "tcp_keepalive = true\n"
    )


def break_glass_drop_in(group: str, listen: tuple[str, int]) -> str:
    """/etc/sudoers.d/broker-break-glass: the group's sudo (the site's own rules) is recorded
    to the node's break-glass sudo_logsrvd. `ignore_iolog_errors`: break-glass exists for
    when things are broken, so a recorder that is down never stops it (sudo says so)."""
    if not _GROUP.fullmatch(group):
        raise ValueError(f"break_glass_group {group[:80]!r} cannot be written into sudoers")
    host_port(f"{listen[0]}:{listen[1]}", "the break-glass log server")
    return (
        "# Managed by the broker (`broker node bootstrap`); changes are overwritten.\n"
        f"# Break-glass sudo of %{group} is recorded: stored on this node first, delivered\n"
        "# to the broker's log server when it can be reached (docs/sessions.md).\n"
        f"Defaults:%{group} log_input, log_output, ignore_iolog_errors\n"
        f"Defaults:%{group} log_servers={listen[0]}:{listen[1]}, log_server_timeout=5\n"
    )


def relay_tunnel_conf(settings: Settings, address: str, listen: tuple[str, int]) -> str:
    """The relay's stunnel: nodes in (mutual TLS, session CA) to the local sudo_logsrvd,
    and that sudo_logsrvd out to the broker host (mutual TLS, the relay's certificate)."""
    inner = _inner(settings, address)
    host_port(f"{address}:{listen[1]}", "the relay's address")
    lines, names = _targets(central_connects(settings))
    keys = f"cert = {RELAY_CERT}\nkey = {RELAY_KEY}\nCAfile = {NODE_CA}\nverifyChain = yes\n"
    return (
        "; Written by `broker node bootstrap` (relay); changes are overwritten.\n"
        "foreground = yes\n"
        "pid =\n"
        "syslog = yes\n"
        "[relay-in]\n"
        f"accept = {address}:{listen[1]}\n"
        f"connect = {inner}:{settings.sessions.relay_logsrvd_port}\n"
        f"{keys}requireCert = yes\n" + _TLS + "[relay-out]\n"
        "client = yes\n"
        f"accept = {inner}:{settings.sessions.relay_forward_port}\n"
        f"{lines}{keys}{names}" + _TLS
    )


def _unit(description: str, command: str, extra: str = "", before: str = "") -> str:
    """A hardened unit for a carrier process that systemd keeps running."""
    order = f"Before={before}\n" if before else ""
    return f"""\
# Written by `broker node bootstrap`.
[Unit]
Description={description}
After=network-online.target
Wants=network-online.target
{order}
[Service]
ExecStart={command}
Restart=always
RestartSec=2
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
MemoryDenyWriteExecute=yes
LockPersonality=yes
{extra}
[Install]
WantedBy=multi-user.target
"""


RELAY_LOGSRVD_UNIT_TEXT = _unit(
    "Broker session recording relay (sudo_logsrvd, store and forward)",
    f"/usr/sbin/sudo_logsrvd -n -f {RELAY_LOGSRVD_CONF}",
    f"ReadWritePaths={RELAY_SPOOL}\n",
)
RELAY_TUNNEL_UNIT_TEXT = _unit(
    "Broker session recording relay tunnel (stunnel)",
    f"/usr/bin/stunnel4 {RELAY_TUNNEL_CONF}",
)
FLUSH_PROGRAM = "/usr/libexec/broker/broker-relay-flush"
BREAK_GLASS_UNIT_TEXT = _unit(
    "Broker break-glass session recorder (sudo_logsrvd, store and forward)",
    f"/usr/sbin/sudo_logsrvd -n -f {BREAK_GLASS_LOGSRVD_CONF}",
    f"ReadWritePaths={BREAK_GLASS_SPOOL}\n",
)


def relay_flush_unit_text(settings: Settings, *, break_glass: bool = False) -> str:
    """A oneshot that offers stranded recordings again; a journal counts as stranded after
    two retry intervals (before that the running sudo_logsrvd may still be on it).
    `break_glass`: the same for the node's break-glass recorder."""
    age = 2 * max(1, int(settings.sessions.relay_retry.total_seconds()))
    if break_glass:
        spool, after = BREAK_GLASS_SPOOL, "broker-logsrv-break-glass.service"
        args = f" --spool {BREAK_GLASS_SPOOL}/outgoing --conf {BREAK_GLASS_FLUSH_CONF}"
    else:
        spool, args = RELAY_SPOOL, ""
        after = "broker-logsrv-relay.service broker-logsrv-relay-tunnel.service"
    return f"""\
# Written by `broker node bootstrap`.
[Unit]
Description=Broker session recording {"break-glass recorder" if break_glass else "relay"}: \
offer stranded recordings again
After={after}

[Service]
Type=oneshot
ExecStart=/usr/bin/python3 -I -S {FLUSH_PROGRAM} --min-age {age}{args}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={spool}
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
"""


def relay_flush_timer_text(settings: Settings) -> str:
    every = max(10, 2 * int(settings.sessions.relay_retry.total_seconds()))
    return f"""\
# Written by `broker node bootstrap`.
[Unit]
Description=Broker session recording relay: offer stranded recordings again

[Timer]
OnBootSec=1min
OnUnitInactiveSec={every}s
AccuracySec=1s

[Install]
WantedBy=timers.target
"""


NODE_UNIT_TEXT = _unit(
    "Broker session recording tunnel (stunnel to sudo_logsrvd)",
    f"/usr/bin/stunnel4 {NODE_CONF}",
    before="sshd.service",
)
