"""Typed settings for the broker, validated from broker.toml.

Paths that most sites never change are derived from `broker.state_dir`, so a
minimal file only says where the directory is and how to reach the nodes.
"""

from __future__ import annotations

import re
import socket
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from broker.config.fields import (
    AbsPath,
    Backoff,
    Duration,
    Section,
    Timeout,
    TrustedKeys,
    refuse_webhook_url,
)
from broker.config.forwarding import ForwardFields
from broker.config.notify import NotifySection
from broker.core.storeurl import StoreUrl, StoreUrlError, parse_store_url

_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PRINCIPAL = re.compile(r"^[A-Za-z0-9._/-]{1,200}@[A-Z0-9.-]{1,200}$")
_DN_COMPONENT = re.compile(r"^(?:DC|dc)=[A-Za-z0-9-]{1,63}$")
_BROKER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")


_Section = Section


class BrokerSection(_Section):
    """Where the broker keeps its state and whom it runs as."""

    state_dir: AbsPath = Path("/var/lib/broker")
    service_user: str = "broker"
    # This broker's name in the checkpoints it seals (docs/audit.md); default: the host's
    # name, cut at the first dot. Each broker of a pair needs its own.
    name: str | None = Field(default=None, pattern=_BROKER_NAME.pattern)

    @field_validator("service_user")
    @classmethod
    def _posix_name(cls, value: str) -> str:
        if not _POSIX_NAME.fullmatch(value):
            raise ValueError(
                "expected a POSIX user name ([a-z_][a-z0-9_-]*, at most 32 characters)"
            )
        return value


class StoreSection(_Section):
    """The database: the SQLite file (default) or PostgreSQL, named by `url` (docs/ha.md)."""

    path: AbsPath | None = None
    # sqlite:///PATH or a libpq URL / keywords, checked by broker.core.storeurl's allow-list;
    # never a password (a passfile holds it).
    url: str | None = None
    # How long a write waits for another writer before it is refused (exit 3, store busy).
    busy_timeout: Duration = timedelta(seconds=30)
    # Refuse writes once the database reaches this size (exit 3, store full), before its
    # file system fills; unset: only the file system's space limits it.
    max_size_mib: int | None = Field(default=None, ge=1, le=16 * 1024 * 1024)

    @field_validator("busy_timeout")
    @classmethod
    def _busy_timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(minutes=10):
            raise ValueError("expected a duration from 1s to 10m")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_store_url(value)
            except StoreUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_database(self) -> StoreSection:
        parsed = self.parsed_url()
        if parsed is not None and self.path is not None:
            raise ValueError("give store.url or store.path, not both")
        if parsed is not None and parsed.engine == "postgresql" and self.max_size_mib:
            raise ValueError(
                "store.max_size_mib caps a SQLite file only: on PostgreSQL use the"
                " database's own limits (a tablespace on its own file system)"
            )
        return self

    def parsed_url(self) -> StoreUrl | None:
        """The checked `url` (None when unset: the SQLite file under the state directory)."""
        return None if self.url is None else parse_store_url(self.url)


class AuditSection(_Section, ForwardFields):
    """The audit chain, where its signed checkpoints go, and live forwarding (forwarding.py)."""

    checkpoint_log: AbsPath | None = None
    checkpoint_copy: AbsPath | None = None
    signing_key: AbsPath | None = None
    # Other brokers' public audit keys (their audit-ed25519.pub): checkpoints they sealed
    # verify here too (docs/audit.md, "Checkpoints of several brokers").
    trusted_keys: TrustedKeys = Field(default_factory=list)
    checkpoint_interval: Duration = timedelta(0)
    syslog: bool = True
    syslog_socket: AbsPath = Path("/dev/log")


class KerberosSection(_Section):
    """Kerberos client settings for the broker process itself."""

    krb5_conf: AbsPath | None = None


# The period of deploy/systemd/broker-sync.timer: a snapshot may never be required to be
# younger than one sync.
SYNC_PERIOD = timedelta(minutes=1)


class DirectorySection(_Section):
    """How to reach Active Directory. Plain LDAP without StartTLS is never allowed."""

    uris: list[str] = Field(min_length=1)
    base_dn: str
    ca_file: AbsPath
    auth: Literal["gssapi", "simple"] = "gssapi"
    starttls: bool = False
    principal: str | None = None
    keytab: AbsPath | None = None
    bind_dn: str | None = None
    password_file: AbsPath | None = None
    timeout: Duration = timedelta(seconds=10)
    page_size: int = Field(default=1000, ge=10, le=5000)
    search_connections: int = Field(default=2, ge=1, le=8)
    min_id: int = Field(default=1000, ge=1)
    full_sync_interval: Duration = timedelta(hours=24)
    # Elevation and approval stop when the last successful sync is older (docs/directory.md).
    max_snapshot_age: Duration = timedelta(minutes=15)
    # The NetBIOS domain a `DOMAIN\\user` spelling must name; default: the realm's first label.
    netbios_domain: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")
    stale_after: Duration = timedelta(days=90)
    idmap_range_min: int = Field(default=200_000, ge=1000)
    idmap_range_max: int = Field(default=2_000_200_000, le=4_294_967_294)
    idmap_range_size: int = Field(default=200_000, ge=1000)

    @field_validator("uris")
    @classmethod
    def _uris(cls, values: list[str]) -> list[str]:
        for value in values:
            parts = urlsplit(value)
            if parts.scheme not in ("ldaps", "ldap") or not parts.hostname:
                raise ValueError(
                    f"{value!r} is not an ldaps://HOST[:PORT] or ldap://HOST[:PORT] URI"
                )
            if parts.path not in ("", "/") or parts.query or parts.username:
                raise ValueError(f"{value!r}: give only scheme, host and port")
        # Lower-case the scheme, so that no later check can be fooled by LDAP:// or LDAPS://.
        return [f"{urlsplit(v).scheme}://{v.split('://', 1)[1]}" for v in values]

    @field_validator("base_dn")
    @classmethod
    def _base_dn(cls, value: str) -> str:
        if not all(_DN_COMPONENT.fullmatch(part.strip()) for part in value.split(",")):
            raise ValueError("expected a domain DN such as DC=hpc,DC=example,DC=org")
        return value

    @field_validator("principal")
    @classmethod
    def _principal(cls, value: str | None) -> str | None:
        if value is not None and not _PRINCIPAL.fullmatch(value):
            raise ValueError("expected a Kerberos principal such as svc-broker@HPC.EXAMPLE.ORG")
        return value

    @model_validator(mode="after")
    def _auth_needs(self) -> DirectorySection:
        plain = [u for u in self.uris if urlsplit(u).scheme == "ldap"]
        if plain and not self.starttls:
            raise ValueError(
                f"{plain[0]!r} is plain LDAP; use ldaps:// or set directory.starttls = true"
            )
        if self.auth == "gssapi" and (self.principal is None or self.keytab is None):
            raise ValueError("auth = 'gssapi' needs directory.principal and directory.keytab")
        if self.auth == "simple" and (self.bind_dn is None or self.password_file is None):
            raise ValueError("auth = 'simple' needs directory.bind_dn and directory.password_file")
        if self.idmap_range_max - self.idmap_range_min < self.idmap_range_size:
            raise ValueError(
                "idmap_range_max - idmap_range_min must hold at least one idmap_range_size"
            )
        if self.max_snapshot_age <= max(SYNC_PERIOD, self.timeout):
            raise ValueError(
                "max_snapshot_age must be longer than 1m (the sync timer's period) and than"
                " directory.timeout, or elevation is refused between two good syncs"
            )
        return self


class SshSection(_Section):
    """How the broker reaches nodes: its own key and pinned host keys, never auto-added."""

    key: AbsPath | None = None
    known_hosts: AbsPath | None = None
    user: str = "root"
    port: int = Field(default=22, ge=1, le=65535)
    connect_timeout: Duration = timedelta(seconds=10)
    # key: the broker's key file; gssapi: paramiko GSS-API with the broker's Kerberos
    # credentials (no delegation, no GSS key exchange).
    auth: Literal["key", "gssapi"] = "key"
    # A node whose clock is further off than this is reported (grants carry UTC times).
    max_skew: Duration = timedelta(seconds=60)
    # Pooled connections unused this long are closed.
    pool_idle: Duration = timedelta(seconds=300)
    # Parallel SSH sessions of one fan-out (bootstrap, status, grant pushes).
    workers: int = Field(default=32, ge=1, le=512)
    # The PAM service name of the job launcher on the nodes (Slurm: slurm).
    joblaunch_service: str = Field(
        default="slurm", min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$"
    )

    @field_validator("user")
    @classmethod
    def _posix_name(cls, value: str) -> str:
        if not _POSIX_NAME.fullmatch(value):
            raise ValueError("expected a POSIX user name")
        return value


class PolicySection(_Section):
    """Where the policy file lives (what `broker policy check` reads when given no file)."""

    path: AbsPath = Path("/etc/broker/policy.toml")


_GROUP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_LISTEN = re.compile(
    r"^(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]{2,45}\]):(?P<port>[0-9]{1,5})$"
)
# A broker a client may ask: its Unix socket, or its TLS listener (no path, no user info).
_ENDPOINT = re.compile(
    r"^(unix:/[A-Za-z0-9._/-]{1,200}"
    r"|https://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:]{2,45}\])(:(?P<port>[0-9]{1,5}))?/?)$"
)


class DaemonSection(_Section):
    """The daemon: its Unix socket, who counts as an operator, the optional TLS listener."""

    socket: AbsPath = Path("/run/broker/broker.sock")
    # A local (NSS) group whose members may use admin commands without being in the
    # directory; root always may.
    operator_group: str | None = None
    max_body: int = Field(default=2_097_152, ge=1024, le=8_388_608)
    workers: int = Field(default=16, ge=2, le=256)
    request_timeout: Duration = timedelta(seconds=10)
    # Off unless set: host:port of a TLS listener where callers authenticate with
    # Kerberos (SPNEGO) using the broker's HTTP/ keytab.
    listen: str | None = None
    tls_cert: AbsPath | None = None
    tls_key: AbsPath | None = None
    http_keytab: AbsPath | None = None
    http_principal: str | None = None
    realm: str | None = None
    # Off unless set: host:port of a plain-HTTP Prometheus endpoint (/metrics), e.g.
    # 127.0.0.1:9464; counts only, no names. Keep it on loopback or a monitoring network.
    metrics_listen: str | None = None
    # Every broker a CLI on this host may ask, in order (`unix:/run/broker/broker.sock`,
    # `https://broker1.example.org:8443`); empty: daemon.socket. The next one is tried only
    # when no connection could be made to one, never after a request was sent.
    endpoints: tuple[str, ...] = Field(default=(), max_length=16)
    # Several brokers on one store: how long the scheduler lease lasts (docs/ha.md); a dead
    # leader's duties resume on another broker one to one and a third leases later.
    leader_lease: Duration = timedelta(seconds=6)

    @field_validator("operator_group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None and not _GROUP_NAME.fullmatch(value):
            raise ValueError("expected a group name (letters, digits, _ . -)")
        return value

    @field_validator("leader_lease")
    @classmethod
    def _leader_lease(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=3) <= value <= timedelta(minutes=1):
            raise ValueError("expected a duration from 3s to 1m")
        return value

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            match = _ENDPOINT.fullmatch(item)
            port = match["port"] if match is not None else None
            if match is None or "/../" in item + "/" or (port and not 1 <= int(port) <= 65535):
                raise ValueError(f"{item!r} is not unix:/absolute/path or https://HOST[:PORT]")
        if len(set(value)) != len(value):
            raise ValueError("an endpoint is listed twice")
        return value

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _LISTEN.fullmatch(value)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError("expected host:port, e.g. 0.0.0.0:8443 or [::1]:8443")
        return value

    @field_validator("http_principal")
    @classmethod
    def _http_principal(cls, value: str | None) -> str | None:
        if value is not None and not _PRINCIPAL.fullmatch(value):
            raise ValueError("expected a principal such as HTTP/broker.hpc.example.org@REALM")
        return value

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z0-9.-]{1,200}", value):
            raise ValueError("expected an upper-case Kerberos realm such as HPC.EXAMPLE.ORG")
        return value

    @model_validator(mode="after")
    def _tls_needs(self) -> DaemonSection:
        if self.listen is not None and None in (
            self.tls_cert,
            self.tls_key,
            self.http_keytab,
            self.http_principal,
            self.realm,
        ):
            raise ValueError(
                "daemon.listen needs daemon.tls_cert, daemon.tls_key, daemon.http_keytab, "
                "daemon.http_principal and daemon.realm"
            )
        return self


class MfaSection(_Section):
    """TOTP second factor: where its encryption key lives, and the lockout rules."""

    key_file: AbsPath | None = None
    issuer: str = Field(
        default="HPC Broker", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 ._-]+$"
    )
    # Codes of this many 30 s steps before and after now are accepted.
    window_steps: int = Field(default=1, ge=0, le=2)
    max_failures: int = Field(default=5, ge=1, le=100)
    failure_window: Duration = timedelta(minutes=15)
    lockout: Duration = timedelta(minutes=15)


class GrantsSection(_Section):
    """Grants: the key that signs them, the keys nodes also trust, the reaper."""

    signing_key: AbsPath | None = None
    # Other brokers' public grant keys (their grant-ed25519.pub): bootstrap writes them after
    # this broker's own into every node's grant-key.pub, so either broker's grants verify.
    trusted_keys: TrustedKeys = Field(default_factory=list)
    # How often the daemon expires requests and grants and retries removals from nodes.
    reap_interval: Duration = timedelta(seconds=30)
    # A drop-in missing, changed or ignored by sudo (docs/grants.md): both alert and mark
    # the grant broken there; "repair" also pushes it again at the next scheduler tick.
    drop_in_integrity: Literal["repair", "alert"] = "repair"
    # How often the daemon asks nodes holding live grants for their drop-ins (>= 10 s).
    drop_in_check_interval: Duration = timedelta(minutes=5)

    @field_validator("drop_in_check_interval")
    @classmethod
    def _check_interval(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=10):
            raise ValueError("must be at least 10s (a check asks every node holding grants)")
        return value


class KeytabsSection(_Section):
    """Service-account keytab rotation (docs/keytabs.md)."""

    # The realm of the service principals; default: from directory.base_dn (DC=a,DC=b -> A.B).
    realm: str | None = None
    # Longest service-ticket lifetime the KDC issues (AD default 10 h): an old key version is
    # pruned from nodes only this long after AD stopped using it.
    max_ticket_lifetime: Duration = timedelta(hours=10)
    # Where `broker keytab create --create-account` creates accounts.
    accounts_ou: str | None = None
    # How often the daemon runs `rotate --due` itself; 0 leaves it to the systemd timer.
    schedule: Duration = timedelta(0)
    # Accounts rotated at once by `rotate --due`/`--all` and the schedule, each on its own
    # store connection; one account is only ever on one worker. At most 6: each worker holds
    # one SSH channel per node at a time, and the pool allows 8 per node, so grant pushes
    # always find one free (fleet/pool.py MAX_CHANNELS).
    rotate_workers: int = Field(default=4, ge=1, le=6)

    @field_validator("realm")
    @classmethod
    def _realm(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Z0-9][A-Z0-9.-]{0,254}", value):
            raise ValueError("expected an upper-case Kerberos realm such as HPC.EXAMPLE.ORG")
        return value

    @field_validator("max_ticket_lifetime")
    @classmethod
    def _lifetime(cls, value: timedelta) -> timedelta:
        if not timedelta(minutes=5) <= value <= timedelta(days=7):
            raise ValueError("expected a lifetime between 5m and 7d")
        return value


_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\d{1,3}(?:\.\d{1,3}){3})$"
)


def _is_ipv4(host: str) -> bool:
    return re.fullmatch(r"[\d.]+", host) is not None


def host_port(value: str, what: str) -> tuple[str, int]:
    """`host:port` with a DNS name or IPv4 address (the forms sudoers and stunnel take)."""
    host, sep, port = value.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be host:port, e.g. broker.example.org:30344")
    return host, int(port)


class SessionsSection(_Section):
    """Session recording: sudo streams every elevated session to sudo_logsrvd on the broker
    host, carried by stunnel (mutual TLS) because Debian's sudo has no TLS of its own."""

    # Where sudo_logsrvd stores recordings (its iolog_dir); the daemon indexes it.
    store_dir: AbsPath | None = None
    # Server configs, the session CA and the server certificate (`broker sessions setup`).
    conf_dir: AbsPath = Path("/etc/broker/sessions")
    # sudo_logsrvd listens here in plain text; only stunnel on this host connects to it.
    logsrvd_listen: str = "127.0.0.1:30343"
    # stunnel accepts the nodes' TLS connections here and hands them to sudo_logsrvd.
    tunnel_listen: str = "0.0.0.0:30344"
    # What nodes connect to (the name must be in the server certificate).
    tunnel_connect: str = "broker.example.org:30344"
    # Other brokers' tunnels (host:port), tried in this order when tunnel_connect cannot be
    # reached (stunnel's `failover = prio`); all names or all IPv4 addresses, like it.
    failover_connect: list[str] = Field(default_factory=list, max_length=7)
    # The node-side tunnel listens on 127.0.0.1:<node_port>, or on the node's inventory
    # address with node_listen = "node-address" (nodes sharing one network stack: the lab).
    node_listen: Literal["loopback", "node-address"] = "loopback"
    node_port: int = Field(default=30343, ge=1, le=65535)
    # Zones whose nodes send to a relay with store-and-forward instead of the broker:
    # zone name -> relay host:port (recordings from them are marked "relayed"). The relay
    # host is an enrolled node named by its inventory name or address; bootstrapping it
    # installs the relay (docs/sessions.md).
    relays: dict[str, str] = Field(default_factory=dict)
    # On a relay: sudo_logsrvd's plain port and the forwarding tunnel's port, both on the
    # relay's loopback (its address with node_listen = "node-address"); how often a
    # stored recording the broker host did not take is offered again.
    relay_logsrvd_port: int = Field(default=30345, ge=1, le=65535)
    relay_forward_port: int = Field(default=30346, ge=1, le=65535)
    relay_retry: Duration = timedelta(seconds=30)
    # Every node with a break-glass group runs its own store-and-forward sudo_logsrvd here
    # (its loopback, or its address with node_listen = "node-address"): break-glass sudo
    # records to it, and it delivers through the node's tunnel when it can.
    break_glass_port: int = Field(default=30347, ge=1, le=65535)
    index_interval: Duration = timedelta(seconds=2)
    retention_days: int = Field(default=365, ge=1, le=36500)
    # A recording never completed (log server restarted, node lost) is closed this long
    # after its grant ended.
    stale_after: Duration = timedelta(minutes=5)

    @field_validator("logsrvd_listen", "tunnel_listen", "tunnel_connect")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host_port(value, "this setting")
        return value

    @model_validator(mode="after")
    def _failover(self) -> SessionsSection:
        hosts = [host_port(v, "sessions.failover_connect")[0] for v in self.failover_connect]
        ordered = [self.tunnel_connect, *self.failover_connect]
        if len(set(ordered)) != len(ordered):
            raise ValueError("sessions.failover_connect repeats an endpoint (or tunnel_connect)")
        first = host_port(self.tunnel_connect, "sessions.tunnel_connect")[0]
        if len({_is_ipv4(h) for h in [first, *hosts]}) > 1:
            raise ValueError(
                "sessions.tunnel_connect and failover_connect must be all host names or all "
                "IPv4 addresses (stunnel checks a name or an address, not a mix)"
            )
        return self

    @field_validator("relays")
    @classmethod
    def _relays(cls, value: dict[str, str]) -> dict[str, str]:
        for zone, address in value.items():
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,62}", zone):
                raise ValueError(f"relay zone {zone[:64]!r} is not a zone name")
            host_port(address, f"sessions.relays.{zone}")
        ports: dict[str, int] = {}
        for zone, address in value.items():
            host, port = host_port(address, f"sessions.relays.{zone}")
            if ports.setdefault(host, port) != port:
                raise ValueError(f"relay {host} is given two ports; one relay listens on one")
        return value

    @field_validator("relay_retry")
    @classmethod
    def _retry(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=1) <= value <= timedelta(hours=1):
            raise ValueError("relay_retry must be between 1s and 1h")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> SessionsSection:
        own = {
            self.node_port, self.relay_logsrvd_port, self.relay_forward_port,
            self.break_glass_port,
        }  # fmt: skip
        relays = {host_port(a, "sessions.relays")[1] for a in self.relays.values()}
        if len(own) != 4 or own & relays:
            raise ValueError(
                "node_port, relay_logsrvd_port, relay_forward_port, break_glass_port and the "
                "relays' ports must all differ (a relay is also a node)"
            )
        return self


SyslogFacility = Literal[
    "auth",
    "authpriv",
    "daemon",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
]


class AlertsSection(_Section):
    """Where detection alerts go: syslog, and optionally a webhook signed with HMAC-SHA256
    (retried with backoff, never blocking the broker)."""

    syslog: bool = True
    syslog_socket: AbsPath = Path("/dev/log")
    syslog_facility: SyslogFacility = "authpriv"
    webhook_url: str | None = None
    webhook_secret_file: AbsPath | None = None
    # Extra CA bundle for an https webhook, on top of the system's CAs.
    webhook_ca_file: AbsPath | None = None
    webhook_timeout: Timeout = timedelta(seconds=5)
    webhook_attempts: int = Field(default=12, ge=1, le=1000)
    # The wait before the first retry; it doubles with every attempt, up to 15 minutes.
    webhook_backoff: Backoff = timedelta(seconds=5)

    @model_validator(mode="before")
    @classmethod
    def _url(cls, data: object) -> object:
        return refuse_webhook_url(data)

    @model_validator(mode="after")
    def _secret_needed(self) -> AlertsSection:
        if self.webhook_url is not None and self.webhook_secret_file is None:
            raise ValueError(
                "alerts.webhook_url needs alerts.webhook_secret_file "
                "(the HMAC key that signs every alert, mode 0600)"
            )
        return self


class Settings(_Section):
    """The whole configuration, with derived paths resolved."""

    broker: BrokerSection = BrokerSection()
    store: StoreSection = StoreSection()
    audit: AuditSection = AuditSection()
    kerberos: KerberosSection = KerberosSection()
    directory: DirectorySection | None = None
    ssh: SshSection = SshSection()
    policy: PolicySection = PolicySection()
    daemon: DaemonSection = DaemonSection()
    mfa: MfaSection = MfaSection()
    grants: GrantsSection = GrantsSection()
    keytabs: KeytabsSection = KeytabsSection()
    sessions: SessionsSection = SessionsSection()
    alerts: AlertsSection = AlertsSection()
    notify: NotifySection = NotifySection()

    @property
    def db_path(self) -> Path:
        """The SQLite file (also the name PostgreSQL's messages are not about: see store_url)."""
        parsed = self.store.parsed_url()
        if parsed is not None and parsed.path is not None:
            return Path(parsed.path)
        return self.store.path or self.broker.state_dir / "broker.db"

    @property
    def store_url(self) -> StoreUrl:
        """Which database the store opens: PostgreSQL's keywords, or the SQLite file."""
        parsed = self.store.parsed_url()
        if parsed is not None and parsed.engine == "postgresql":
            return parsed
        return StoreUrl("sqlite", path=PurePosixPath(self.db_path))

    @property
    def checkpoint_log(self) -> Path:
        return self.audit.checkpoint_log or self.broker.state_dir / "audit" / "checkpoints.jsonl"

    @property
    def checkpoint_paths(self) -> list[Path]:
        """Every checkpoint log verification reads: the primary and the optional copy."""
        copy = self.audit.checkpoint_copy
        return [self.checkpoint_log] if copy is None else [self.checkpoint_log, copy]

    @property
    def signing_key(self) -> Path:
        return self.audit.signing_key or self.broker.state_dir / "keys" / "audit-ed25519.pem"

    @property
    def ssh_key(self) -> Path:
        return self.ssh.key or self.broker.state_dir / "keys" / "ssh_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh.known_hosts or self.broker.state_dir / "known_hosts"

    @property
    def grant_key(self) -> Path:
        return self.grants.signing_key or self.broker.state_dir / "keys" / "grant-ed25519.pem"

    @property
    def session_store(self) -> Path:
        return self.sessions.store_dir or self.broker.state_dir / "sessions" / "iolog"

    @property
    def broker_name(self) -> str:
        """What checkpoints this broker seals say sealed them: broker.name, or the host name
        up to its first dot with anything but letters, digits and `-` made `-` (a host name
        must never stop the sealer: it runs after every commit)."""
        if self.broker.name:
            return self.broker.name
        host = socket.gethostname().split(".")[0]
        return re.sub(r"[^A-Za-z0-9-]", "-", host)[:63].strip("-") or "broker"

    @property
    def mfa_key(self) -> Path:
        return self.mfa.key_file or self.broker.state_dir / "keys" / "mfa.key"
