"""The lab: a throwaway Samba AD DC and namespaced nodes, on loopback, for tests and demos.

`up` builds everything under ROOT (default /var/lib/broker-lab), `down`
removes it and leaves the host as it found it, `status` says what runs.
Standard library only, so it works before the project is installed.
Host changes, all undone by `down`: a marked block in /etc/hosts, the DC's
address 127.0.0.10/32 on lo (Samba binds only to interface addresses), and
empty mount points for the node directories that the host lacks.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_ROOT = Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))
DEFAULT_NODES = "gpu[01-02],stor01,login01"
REALM, DOMAIN, BASE_DN = "HPC.TEST", "HPC", "DC=hpc,DC=test"
DC_HOST, DC_ADDR = "dc1.hpc.test", "127.0.0.10"
BROKER_HOST, BROKER_ADDR, BROKER_PORT = "broker.hpc.test", "127.0.0.11", 8443
METRICS_PORT = 9464  # the daemon's Prometheus endpoint (daemon.metrics_listen)
LOGSRVD_PORT, TUNNEL_PORT = 30343, 30344  # sudo_logsrvd (plain, broker host), its stunnel (TLS)
# The storage zone opts into a store-and-forward relay, run by login01 (docs/sessions.md).
RELAY_NODE, RELAY_ZONE, RELAY_PORT, RELAY_LOGSRVD_PORT = "login01", "storage", 30344, 30345
BREAK_GLASS_PORT = 30347  # sessions.break_glass_port: each node's break-glass recorder
HOSTS_BEGIN, HOSTS_END = "# broker-lab begin", "# broker-lab end"
NODE_MOUNTS = (
    "/etc/sudoers.d",
    "/etc/systemd/system",  # bootstrap writes the node's units here: never the host's
    "/etc/pam.d",
    "/etc/broker",
    "/var/lib/broker",
    "/var/spool/broker",
    "/var/log/broker-io",
    "/usr/libexec/broker",
    "/usr/lib/broker",
    "/root",
)

PEOPLE = [
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "wendy",
]
SPECIAL = {"dora": "disabled", "evan": "expired", "lena": "locked", "nomad": "enabled"}
GROUPS = {  # name: (gid, direct members)
    "hpc-users": (10000, []),
    "gpu-admins": (10010, ["alice", "carol", "dora", "evan"]),
    "storage-admins": (10011, ["dave", "erin", "rupert"]),
    "hpc-admins": (10012, ["gpu-admins", "storage-admins"]),
    "hpc-approvers": (10013, ["frank", "grace"]),
    "break-glass": (10014, ["heidi"]),
    "incident-response": (10015, ["ivan"]),
    "svc-owners": (10016, ["judy"]),
    "retired-admins": (10017, []),
}
SERVICE_ACCOUNTS = {
    "svc-slurm": ["slurm/mgmt01.hpc.test"],
    "svc-nfs": ["nfs/stor01.hpc.test"],
    "svc-broker": ["HTTP/broker.hpc.test"],
}


class LabError(Exception):
    """A lab step failed; the message names the step and the cause."""


# Long-running children (samba, the nodes) started by this process. Holding them keeps
# Popen from warning that they outlive it, and lets `down` reap them instead of leaving zombies.
_CHILDREN: list[subprocess.Popen[bytes]] = []


# ---------------------------------------------------------------- small helpers


def expand_hostlist(expression: str) -> list[str]:
    """`gpu[01-03,07],stor01` -> names, keeping zero padding (a subset of ClusterShell's syntax)."""
    names: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", expression):
        match = re.fullmatch(r"([a-z0-9-]*)\[([0-9,-]+)\]([a-z0-9-]*)", part)
        if not match:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", part):
                raise LabError(f"bad node name {part!r}")
            names.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.append(f"{prefix}{number:0{width}d}{suffix}")
    if not names or len(set(names)) != len(names):
        raise LabError(f"bad or repeated node list {expression!r}")
    return names


def node_address(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def run(
    argv: list[str],
    *,
    step: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> str:
    try:
        result = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{step}: {argv[0]} timed out after {timeout:.0f}s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise LabError(
            f"{step}: {' '.join(argv[:3])} exited {result.returncode}: {' | '.join(tail)}"
        )
    return result.stdout


def say(message: str) -> None:
    print(f"lab: {message}", flush=True)


def wait_port(address: str, port: int, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    tail = ""
    if log is not None and log.exists():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    raise LabError(f"{what} did not listen on {address}:{port} within {timeout:.0f}s. {tail}")


def port_open(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.lab-tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def secret_password() -> str:
    """AD complexity: upper, lower, digit, symbol; 24+ random characters."""
    return "Lab-" + secrets.token_urlsafe(18) + "a9Z!"


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[-1][:1] != "Z"


# ---------------------------------------------------------------- /etc/hosts


def hosts_without_block(text: str) -> str:
    out, inside = [], False
    for line in text.splitlines():
        if line.strip() == HOSTS_BEGIN:
            inside = True
        elif line.strip() == HOSTS_END:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out) + "\n"


def set_hosts_block(lines: list[str] | None) -> None:
    hosts = Path("/etc/hosts")
    text = hosts_without_block(hosts.read_text())
    if lines:
        text += "\n".join([HOSTS_BEGIN, *lines, HOSTS_END]) + "\n"
    if text != hosts.read_text():
        write_atomic(hosts, text, 0o644)


# ---------------------------------------------------------------- the DC


def make_tls(root: Path) -> None:
    ca = root / "ca"
    ca.mkdir(mode=0o755)
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=broker lab CA",
            "-keyout",
            str(ca / "ca.key"),
            "-out",
            str(ca / "ca.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        step="make the lab CA",
    )
    server_cert(ca, "dc", DC_HOST, DC_ADDR)
    server_cert(ca, "broker", BROKER_HOST, BROKER_ADDR)
    for key in ("ca.key", "dc.key", "broker.key"):
        (ca / key).chmod(0o600)
    (ca / "ca.pem").chmod(0o644)


def server_cert(ca: Path, stem: str, host: str, address: str) -> None:
    """A TLS server certificate for HOST and ADDRESS, signed by the lab CA."""
    ext = ca / f"{stem}.ext"
    ext.write_text(
        f"subjectAltName=DNS:{host},IP:{address}\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    run(
        [
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={host}",
            "-keyout",
            str(ca / f"{stem}.key"),
            "-out",
            str(ca / f"{stem}.csr"),
        ],
        step=f"make the {stem} key",
    )
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(ca / f"{stem}.csr"),
            "-CA",
            str(ca / "ca.pem"),
            "-CAkey",
            str(ca / "ca.key"),
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            str(ext),
            "-out",
            str(ca / f"{stem}.pem"),
        ],
        step=f"sign the {stem} certificate",
    )


def krb5_conf(root: Path) -> Path:
    path = root / "krb5.conf"
    path.write_text(
        "[libdefaults]\n"
        f"  default_realm = {REALM}\n  dns_lookup_kdc = false\n  dns_lookup_realm = false\n"
        "  rdns = false\n  dns_canonicalize_hostname = false\n  udp_preference_limit = 1\n\n"
        f"[realms]\n  {REALM} = {{\n    kdc = {DC_ADDR}\n    admin_server = {DC_ADDR}\n"
        f"    kpasswd_server = {DC_ADDR}\n  }}\n\n"
        f"[domain_realm]\n  .hpc.test = {REALM}\n  hpc.test = {REALM}\n"
    )
    path.chmod(0o644)
    return path


def provision_dc(root: Path) -> dict[str, Any]:
    dc = root / "dc"
    dc.mkdir(mode=0o700)
    (dc / "run").mkdir(mode=0o755)
    admin = secret_password()
    (dc / "admin.pass").write_text(admin + "\n")
    (dc / "admin.pass").chmod(0o600)
    ca = root / "ca"
    options = {
        "interfaces": DC_ADDR,
        "bind interfaces only": "yes",
        "ldap server require strong auth": "allow_sasl_over_tls",
        "tls enabled": "yes",
        "tls keyfile": str(ca / "dc.key"),
        "tls certfile": str(ca / "dc.pem"),
        "tls cafile": str(ca / "ca.pem"),
        "server services": "ldap kdc",
        "dns proxy": "no",
        "netbios name": "DC1",
        "pid directory": str(dc / "run"),
    }
    # The admin password is on samba-tool's argv for the second it runs: a throwaway lab DC
    # on loopback, whose password is also kept in admin.pass (0600) for tests.
    argv = [
        "samba-tool",
        "domain",
        "provision",
        f"--targetdir={dc}",
        f"--realm={REALM}",
        f"--domain={DOMAIN}",
        "--server-role=dc",
        "--dns-backend=NONE",
        "--use-rfc2307",
        f"--adminpass={admin}",
        f"--host-name={DC_HOST.split('.')[0]}",
    ]
    argv += [f"--option={key}={value}" for key, value in options.items()]
    run(argv, step="provision the DC", timeout=300)
    return {"admin_password_file": str(dc / "admin.pass")}


# The default extra population: one group past AD's 1,500-value range (ranged retrieval).
DEFAULT_BULK = {"users": 1600, "groups": 0, "depth": 1, "big_group": True}
STALE_USER, STALE_DAYS = "rupert", 200
HOSTILE = {
    "users": ["o'brien(ops)", "zoë"],
    "group": "ops (night) 'shift'",
    "nested_in": "gpu-admins",
}


def seed_dc(root: Path, bulk: dict[str, Any]) -> dict[str, Any]:
    """Users, nested groups, special accounts and service accounts; returns what lab.json records."""
    users, uid = [], 10001
    for name in PEOPLE:
        users.append(
            {
                "name": name,
                "uid": uid,
                "gid": 10000,
                "state": "enabled",
                "password": secret_password(),
            }
        )
        uid += 1
    for name, state in SPECIAL.items():
        users.append(
            {"name": name, "uid": uid, "gid": 10000, "state": state, "password": secret_password()}
        )
        uid += 1
    users.append(
        {
            "name": "xavier",
            "uid": None,
            "gid": None,
            "state": "enabled",
            "password": secret_password(),
        }
    )
    everyone = [u["name"] for u in users if u["name"] != "nomad"]
    groups = [
        {"name": g, "gid": gid, "members": (everyone if g == "hpc-users" else members)}
        for g, (gid, members) in GROUPS.items()
    ]
    services = [
        {"name": n, "spns": spns, "password": secret_password()}
        for n, spns in SERVICE_ACCOUNTS.items()
    ]
    spec = {
        "smb_conf": str(root / "dc" / "etc" / "smb.conf"),
        "sam_ldb": str(root / "dc" / "private" / "sam.ldb"),
        "nis_domain": "hpc",
        "dc_account": "DC1$",
        "dc_spns": [
            f"ldap/{DC_HOST}",
            "ldap/DC1",
            f"ldap/{DC_HOST}/hpc.test",
            f"ldap/{DC_HOST}/{DOMAIN}",
        ],
        "users": users,
        "groups": groups,
        "service_accounts": services,
        "last_logon_days_ago": {STALE_USER: STALE_DAYS},
        "hostile_nested_in": HOSTILE["nested_in"],
        "bulk": {**bulk, "realm": REALM},
    }
    run(
        ["/usr/bin/python3", str(HERE / "seed_dc.py")],
        stdin=json.dumps(spec),
        step="seed the directory",
        timeout=120 + bulk.get("users", 0) / 20 + bulk.get("groups", 0) / 5,
    )
    passwords = {u["name"]: u["password"] for u in users}
    secrets_file = root / "dc" / "users.json"
    secrets_file.write_text(json.dumps(passwords, indent=1))
    secrets_file.chmod(0o600)
    member_of: dict[str, list[str]] = {u["name"]: [] for u in users}
    for group in groups:
        for member in group["members"]:
            if member in member_of:
                member_of[member].append(group["name"])
    return {
        "users": {
            u["name"]: {
                "uid": u["uid"],
                "gid": u["gid"],
                "state": u["state"],
                "groups": sorted(member_of[u["name"]]),
            }
            for u in users
        },
        "groups": {g["name"]: {"gid": g["gid"], "members": sorted(g["members"])} for g in groups},
        "service_accounts": {s["name"]: {"spns": s["spns"]} for s in services},
    }


def export_keytab(root: Path, principal: str, name: str) -> Path:
    """The keys of one principal, from the DC's database, into a 0600 keytab under broker/."""
    keytab = root / "broker" / name
    run(
        [
            "samba-tool",
            "domain",
            "exportkeytab",
            str(keytab),
            f"--principal={principal}",
            "-s",
            str(root / "dc" / "etc" / "smb.conf"),
        ],
        step=f"export the keytab of {principal}",
    )
    keytab.chmod(0o600)
    return keytab


def export_broker_keytab(root: Path) -> Path:
    """svc-broker's own keys: how the broker binds to AD (SASL GSSAPI)."""
    return export_keytab(root, f"svc-broker@{REALM}", "broker.keytab")


def export_http_keytab(root: Path) -> Path:
    """The keys of svc-broker's HTTP/ SPN: what the daemon's TLS listener accepts with."""
    return export_keytab(root, f"HTTP/{BROKER_HOST}@{REALM}", "http.keytab")


def dc_address(present: bool) -> None:
    """Samba listens only on addresses an interface carries, so the DC's lives on lo."""
    shown = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=False
    ).stdout
    there = f" {DC_ADDR}/32 " in shown
    if present and not there:
        run(["ip", "addr", "add", f"{DC_ADDR}/32", "dev", "lo"], step="add the DC address to lo")
    elif not present and there:
        run(
            ["ip", "addr", "del", f"{DC_ADDR}/32", "dev", "lo"],
            step="remove the DC address from lo",
        )


def start_dc(root: Path, info: dict[str, Any]) -> int:
    """Start samba in its own session; its pid is saved at once so `down` can kill the group."""
    dc_address(True)
    log = root / "dc" / "samba.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                "samba",
                "--foreground",
                "--no-process-group",
                "--debug-stdout",
                "-s",
                str(root / "dc" / "etc" / "smb.conf"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _CHILDREN.append(proc)
    info["dc_pid"] = proc.pid
    save_info(root, info)
    for port in (636, 88, 389):
        wait_port(DC_ADDR, port, 40, f"the DC (port {port})", log)
    return proc.pid


def check_broker_kerberos(root: Path, keytab: Path) -> None:
    ccache = root / "broker" / "check.ccache"
    env = {"KRB5_CONFIG": str(root / "krb5.conf"), "KRB5CCNAME": f"FILE:{ccache}"}
    run(
        ["kinit", "-k", "-t", str(keytab), f"svc-broker@{REALM}"],
        env=env,
        step="kinit with the broker keytab",
    )
    run(["kdestroy"], env=env, step="kdestroy")


# ---------------------------------------------------------------- nodes


def passwd_files(root: Path, users: dict[str, Any]) -> Path:
    files = root / "nodefiles"
    files.mkdir(mode=0o755)
    passwd = Path("/etc/passwd").read_text().rstrip("\n").splitlines()
    group = Path("/etc/group").read_text().rstrip("\n").splitlines()
    shadow = Path("/etc/shadow").read_text().rstrip("\n").splitlines()
    taken = {line.split(":")[0] for line in passwd}
    home = root / "home"
    home.mkdir(mode=0o755)
    members: dict[str, list[str]] = {name: [] for name in GROUPS}
    for name, info in users.items():
        if info["uid"] is None or name in taken:
            continue
        passwd.append(f"{name}:x:{info['uid']}:{info['gid']}:{name}:/home/{name}:/bin/bash")
        shadow.append(f"{name}:!:19000:0:99999:7:::")
        for group_name in info["groups"]:
            if group_name in members:
                members[group_name].append(name)
        user_home = home / name
        user_home.mkdir(mode=0o700)
        os.chown(user_home, info["uid"], info["gid"])
    for name, (gid, _direct) in GROUPS.items():
        group.append(f"{name}:x:{gid}:{','.join(sorted(members[name]))}")
    (files / "passwd").write_text("\n".join(passwd) + "\n")
    (files / "group").write_text("\n".join(group) + "\n")
    (files / "shadow").write_text("\n".join(shadow) + "\n")
    (files / "passwd").chmod(0o644)
    (files / "group").chmod(0o644)
    (files / "shadow").chmod(0o640)
    return files


def ssh_keys(root: Path, users: dict[str, Any]) -> dict[str, str]:
    """The broker's key (root on every node) and one key per lab person; returns authorized_keys."""
    keys: dict[str, str] = {}
    broker_key = root / "broker" / "ssh_ed25519"
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "broker", "-f", str(broker_key)],
        step="broker SSH key",
    )
    keys["root"] = Path(f"{broker_key}.pub").read_text()
    for name, info in users.items():
        if info["uid"] is None:
            continue
        directory = root / "users" / name
        directory.mkdir(parents=True, mode=0o700)
        key = directory / "id_ed25519"
        run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
            step=f"SSH key of {name}",
        )
        keys[name] = Path(f"{key}.pub").read_text()
    return keys


SSHD_CONFIG = """\
ListenAddress {address}:22
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
StrictModes yes
X11Forwarding no
PrintMotd no
UseDNS no
MaxStartups 200:30:400
MaxSessions 50
AcceptEnv LANG LC_* TZ
Subsystem sftp internal-sftp
"""

BOOT = """\
set -e
hostname {name}
mount -t tmpfs -o mode=0755,size=16m tmpfs /run
mkdir -p /run/sshd /run/sudo
mount --bind {dir}/etc/ssh /etc/ssh
{binds}
mount --bind {files}/passwd /etc/passwd
mount --bind {files}/group /etc/group
mount --bind {files}/shadow /etc/shadow
mount --bind {root}/home /home
exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
"""


def prepare_node(root: Path, name: str, address: str, authorized: dict[str, str]) -> dict[str, Any]:
    node_dir = root / "nodes" / name
    ssh = node_dir / "etc" / "ssh"
    (ssh / "authorized_keys").mkdir(parents=True, mode=0o755)
    for user, key in authorized.items():
        (ssh / "authorized_keys" / user).write_text(key)
        (ssh / "authorized_keys" / user).chmod(0o644)
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            name,
            "-f",
            str(ssh / "ssh_host_ed25519_key"),
        ],
        step=f"host key of {name}",
    )
    (ssh / "sshd_config").write_text(SSHD_CONFIG.format(address=address))
    shutil.copytree("/etc/pam.d", node_dir / "etc" / "pam.d", symlinks=True)
    modes = {
        "/etc/sudoers.d": 0o750,
        "/etc/systemd/system": 0o755,
        "/etc/broker": 0o755,
        "/var/lib/broker": 0o700,
        "/var/spool/broker": 0o700,
        "/var/log/broker-io": 0o700,
        "/usr/libexec/broker": 0o755,
        "/usr/lib/broker": 0o755,
        "/root": 0o700,
    }
    for mount, mode in modes.items():
        path = node_dir / mount.lstrip("/")
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        path.chmod(mode)
    (node_dir / "var" / "lib" / "broker" / "grants").mkdir(mode=0o700)
    binds = "\n".join(f"mount --bind {node_dir}{m} {m}" for m in NODE_MOUNTS)
    boot = node_dir / "boot.sh"
    boot.write_text(
        BOOT.format(name=name, dir=node_dir, binds=binds, files=root / "nodefiles", root=root)
    )
    fingerprint = run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(ssh / "ssh_host_ed25519_key.pub")],
        step="fingerprint",
    ).split()[1]
    return {
        "name": name,
        "fqdn": f"{name}.hpc.test",
        "address": address,
        "port": 22,
        "dir": str(node_dir),
        "pid": None,
        "host_key_fingerprint": fingerprint,
    }


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a lab process in its own session, output appended to LOG; `down` reaps it."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _CHILDREN.append(proc)
    return proc


UNSHARE = ["unshare", "--mount", "--uts", "--propagation", "private", "--fork", "--"]


def start_node(node: dict[str, Any]) -> int:
    node_dir = Path(node["dir"])
    proc = spawn([*UNSHARE, "/bin/sh", str(node_dir / "boot.sh")], node_dir / "sshd.log")
    wait_port(node["address"], 22, 30, f"sshd of {node['name']}", node_dir / "sshd.log")
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    if not children:
        raise LabError(f"node {node['name']}: no process inside the namespace")
    return int(children[0])


def known_hosts(root: Path, nodes: list[dict[str, Any]]) -> Path:
    lines = []
    for node in nodes:
        key = (
            (Path(node["dir"]) / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        )
        lines.append(f"{node['name']},{node['fqdn']},{node['address']} {key[0]} {key[1]}")
    path = root / "broker" / "known_hosts"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def created_mount_points() -> list[str]:
    created = []
    for mount in NODE_MOUNTS:
        if not Path(mount).exists():
            Path(mount).mkdir(parents=True, mode=0o755)
            created.append(mount)
    return created


# ---------------------------------------------------------------- the broker daemon

BROKER_BOOT = """\
set -e
hostname broker
mount -t tmpfs -o mode=0755,size=16m tmpfs /run
mount --bind {files}/passwd /etc/passwd
mount --bind {files}/group /etc/group
exec {broker} --config {config} serve
"""


def broker_command() -> str:
    """The `broker` console script beside this Python (the project's venv), or on PATH."""
    beside = Path(sys.executable).parent / "broker"
    found = str(beside) if beside.exists() else shutil.which("broker")
    if found is None:
        raise LabError("no `broker` command: install the project (deploy/install-deps.sh) first")
    return found


def start_broker(
    root: Path, config: Path, directory: str = "broker", *, init: bool = True, tls: bool = True
) -> int:
    """`broker init`, then the daemon in its own mount+UTS namespace whose /etc/passwd holds
    the lab's directory users, as a cluster host's would: callers are known by uid. The HA
    lab's second daemon (`directory` broker2) shares the first one's state and store, so it
    is not initialised again, and has no TLS listener (the address and port are the first's)."""
    broker = broker_command()
    if init:
        run([broker, "--config", str(config), "init"], step="broker init")
    rundir = root / directory / "run"  # what systemd's RuntimeDirectory= makes: 0755
    rundir.mkdir(exist_ok=True)
    rundir.chmod(0o755)
    boot = root / directory / "boot.sh"
    boot.write_text(BROKER_BOOT.format(files=root / "nodefiles", broker=broker, config=config))
    log = root / directory / "daemon.log"
    sock = rundir / "broker.sock"
    sock.unlink(missing_ok=True)  # a daemon killed with -9 leaves its socket behind
    proc = spawn([*UNSHARE, "/bin/sh", str(boot)], log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"the broker daemon exited: {log.read_text()[-1500:]}")
        if sock.exists() and (not tls or port_open(BROKER_ADDR, BROKER_PORT)):
            return proc.pid
        time.sleep(0.1)
    raise LabError(f"the broker daemon did not come up: {log.read_text()[-1500:]}")


def daemon_pid(launcher: int | None) -> int | None:
    """The `broker serve` process a lab launcher (`unshare --fork`) runs, or None: what a
    test kills with -9 to kill a daemon (the launcher itself is not the daemon)."""
    if not pid_alive(launcher):
        return None
    try:
        children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


# ---------------------------------------------------------------- HA: PostgreSQL, broker2

PG_BIN = Path("/usr/lib/postgresql/15/bin")
LEADER_LEASE = "3s"  # the shortest lease the daemon takes: failover measured at its fastest


def as_postgres(argv: list[str], step: str) -> None:
    run(["runuser", "-u", "postgres", "--", *argv], step=step)


def start_postgres(root: Path) -> dict[str, Any]:
    """A throwaway PostgreSQL 15 cluster owned by the lab (Debian's initdb and pg_ctl as the
    `postgres` user): data and Unix socket under ROOT/pg, no TCP at all, a `broker` role
    owning a `broker` database. The host's own clusters are never touched; `down` stops it."""
    if not (PG_BIN / "initdb").exists():
        raise LabError(f"{PG_BIN}/initdb is missing: run deploy/install-deps.sh (postgresql-15)")
    pg = root / "pg"
    pg.mkdir(mode=0o700)
    shutil.chown(pg, "postgres", "postgres")
    data, sock = pg / "data", pg / "sock"
    initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-A", "peer", "-U", "postgres"]
    as_postgres([*initdb, "-E", "UTF8", "--locale=C.UTF-8"], "initdb (lab PostgreSQL)")
    as_postgres(["mkdir", "-m", "0700", str(sock)], "PostgreSQL socket directory")
    # Peer authentication: the daemons run as root, mapped to the `broker` role only.
    (data / "pg_ident.conf").write_text("lab root broker\n")
    (data / "pg_hba.conf").write_text("local all postgres peer\nlocal broker broker peer map=lab\n")
    options = f"-c listen_addresses='' -c unix_socket_directories={sock}"
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-s", "-l", str(pg / "log")]
    as_postgres([*pg_ctl, "-o", options, "start"], "pg_ctl start (lab PostgreSQL)")
    psql = [str(PG_BIN / "psql"), "-X", "-q", "-h", str(sock), "-d", "postgres", "-c"]
    as_postgres([*psql, "CREATE ROLE broker LOGIN"], "create role broker")
    as_postgres(
        [*psql, "CREATE DATABASE broker OWNER broker TEMPLATE template0 LOCALE 'C'"],
        "create database broker",
    )
    return {
        "data": str(data),
        "socket_dir": str(sock),
        "url": f"postgresql:///broker?host={sock}&user=broker",
    }


def stop_postgres(root: Path) -> None:
    """Stop the lab's cluster at once (its files are removed with ROOT); nothing if none."""
    data = root / "pg" / "data"
    if (data / "postmaster.pid").exists():
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-s", "-m", "immediate", "stop"]
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *pg_ctl], capture_output=True, timeout=60
        )


def ha_config(first: Path, sock: Path) -> str:
    """The second daemon's broker.toml: the first's, with its own name and socket and no
    TLS listener or metrics endpoint (those addresses are the first daemon's)."""
    text = first.read_text().replace('name = "broker1"', 'name = "broker2"')
    head, rest = text.split("\n[daemon]\n", 1)
    tail = rest[rest.index("\n[") :]
    return f'{head}\n[daemon]\nsocket = "{sock}"\nleader_lease = "{LEADER_LEASE}"\n{tail}'


def start_second_broker(root: Path, info: dict[str, Any]) -> None:
    """broker2: the same state directory (keys) and PostgreSQL store as the first, its own
    socket and namespace; both serve the API, the scheduler lease picks one leader."""
    (root / "broker2").mkdir(mode=0o755, exist_ok=True)
    sock = root / "broker2" / "run" / "broker.sock"
    config = root / "broker2" / "broker.toml"
    write_atomic(config, ha_config(Path(info["broker"]["config"]), sock), 0o644)
    info["broker2"] = {"config": str(config), "socket": str(sock)}
    info["broker2"]["pid"] = start_broker(root, config, "broker2", init=False, tls=False)


def restart_ha_daemon(root: Path, which: str) -> None:
    """Start a lab daemon ("broker" or "broker2") again after it was killed, keeping the
    store: it joins as a standby while the other holds the scheduler lease."""
    info = load_info(root)
    stop_process(info[which].get("pid"))
    info[which]["pid"] = start_broker(
        root, Path(info[which]["config"]), which, init=False, tls=which == "broker"
    )
    save_info(root, info)


def start_logserver(root: Path, config: Path) -> dict[str, int]:
    """`broker sessions setup`, then sudo_logsrvd and the stunnel that fronts it, as the
    units in deploy/systemd/ would; each its own session so tests can stop and start it."""
    run([broker_command(), "--config", str(config), "sessions", "setup"], step="sessions setup")
    conf = root / "broker" / "sessions"
    pids = {}
    for name, argv in (
        ("logsrvd", ["/usr/sbin/sudo_logsrvd", "-n", "-f", str(conf / "sudo_logsrvd.conf")]),
        ("stunnel", ["/usr/bin/stunnel4", str(conf / "stunnel.conf")]),
    ):
        pids[name] = spawn(argv, root / "broker" / f"{name}.log").pid
    wait_port(BROKER_ADDR, LOGSRVD_PORT, 15, "sudo_logsrvd", root / "broker" / "logsrvd.log")
    wait_port(BROKER_ADDR, TUNNEL_PORT, 15, "stunnel (log server)", root / "broker" / "stunnel.log")
    crl = root / "broker" / "state" / "keys" / "session-ca.crl"
    pids["crl-reload"] = spawn(
        [sys.executable, "-I", "-c", CRL_RELOAD, str(crl), str(pids["stunnel"])],
        root / "broker" / "crl-reload.log",
    ).pid
    return pids


# What deploy/systemd/broker-logsrv-crl.path does on a real host: the daemon rewrites the
# CRL (`broker node remove`, daily), the log server's stunnel is sent SIGHUP to read it.
CRL_RELOAD = """
import os, signal, sys, time
path, pid = sys.argv[1], int(sys.argv[2])
def seen():
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)
last = seen()
while True:
    time.sleep(0.2)
    now = seen()
    if now != last:
        last = now
        os.kill(pid, signal.SIGHUP)
        print("reloaded stunnel for", path, flush=True)
"""


def stop_logserver(root: Path = DEFAULT_ROOT, which: str = "logsrvd") -> None:
    """Stop the lab's sudo_logsrvd (or its stunnel), to show what sudo does without it."""
    info = load_info(root)
    stop_process(info.get("logsrv", {}).get(which))


def restart_logserver(root: Path = DEFAULT_ROOT) -> None:
    info = load_info(root)
    for which in ("crl-reload", "stunnel", "logsrvd"):
        stop_logserver(root, which)
    info["logsrv"] = start_logserver(root, Path(info["broker"]["config"]))
    save_info(root, info)


def stop_relay(root: Path = DEFAULT_ROOT) -> None:
    """Stop the relay's sudo_logsrvd and stunnel (the storage zone loses its log server)."""
    info = load_info(root)
    for node in info["nodes"]:
        for pid in node.pop("relay_pids", []):
            stop_process(pid)
    save_info(root, info)


def restart_relay(root: Path = DEFAULT_ROOT) -> None:
    stop_relay(root)
    info = load_info(root)
    for node in info["nodes"]:
        if (Path(node["dir"]) / "etc" / "broker" / "logsrv" / "relay-logsrvd.conf").exists():
            start_relay(node)
    save_info(root, info)


def start_tunnels(info: dict[str, Any]) -> None:
    """Each node's stunnel client, and the relay's sudo_logsrvd and stunnel, inside their
    nodes (bootstrap wrote their files; systemd would start them on a real node). Their
    command lines name the lab root, so `down` finds them."""
    for node in info["nodes"]:
        conf = Path(node["dir"]) / "etc" / "broker" / "logsrv"
        node["tunnel_pid"] = spawn(
            [*in_node(node), "/usr/bin/stunnel4", str(conf / "tunnel.conf")],
            Path(node["dir"]) / "tunnel.log",
        ).pid
        if (conf / "relay-logsrvd.conf").exists():
            start_relay(node)
        if (conf / "break-glass-logsrvd.conf").exists():
            start_break_glass(node)
    for node in info["nodes"]:
        wait_port(
            node["address"],
            LOGSRVD_PORT,
            15,
            f"tunnel of {node['name']}",
            Path(node["dir"]) / "tunnel.log",
        )


def restart_tunnel(root: Path, name: str) -> None:
    """Restart one node's stunnel client (bootstrap gave it a new certificate; systemd would
    restart broker-logsrv-tunnel.service on a real node)."""
    info = load_info(root)
    node = next(n for n in info["nodes"] if n["name"] == name)
    stop_process(node.get("tunnel_pid"))
    conf = Path(node["dir"]) / "etc" / "broker" / "logsrv"
    log = Path(node["dir"]) / "tunnel.log"
    node["tunnel_pid"] = spawn(
        [*in_node(node), "/usr/bin/stunnel4", str(conf / "tunnel.conf")], log
    ).pid
    wait_port(node["address"], LOGSRVD_PORT, 15, f"tunnel of {name}", log)
    save_info(root, info)


WATCH_INTERVAL = 2  # seconds; 5 on a real node


def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted on this host (/sys/fs/cgroup, or .../unified if hybrid)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if " - cgroup2 " in line and len(fields) > 4:
            return Path(fields[4])
    return None


def lab_cgroup(root: Path) -> Path | None:
    """The lab's own cgroup subtree (one per lab root), as systemd would delegate one per
    node with broker-node-watch.service's Delegate=yes."""
    mount = cgroup2_mount()
    if mount is None or not (mount / "cgroup.procs").exists():
        return None
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    return mount / f"broker-lab-{tag}"


def start_watchers(info: dict[str, Any]) -> None:
    """Each node's `broker-node watch`, started in `<lab cgroup>/<node>` the way systemd
    starts broker-node-watch.service in its delegated cgroup."""
    base = lab_cgroup(Path(info["root"]))
    if base is not None:
        base.mkdir(mode=0o755, exist_ok=True)
        info["cgroup"] = str(base)
    for node in info["nodes"]:
        start_watcher(info, node, delegated=base is not None)


def start_watcher(info: dict[str, Any], node: dict[str, Any], *, delegated: bool = True) -> int:
    """(Re)start one node's watcher; `delegated=False` starts it in the host's own cgroup,
    as on a node where systemd delegated nothing: it runs without containment."""
    stop_process(node.get("watch_pid"))
    sessions = Path(f"/proc/{node['pid']}/root/run/broker-sessions")
    with contextlib.suppress(FileNotFoundError):
        (sessions / ".watch").unlink()
    enter = ""
    if delegated and info.get("cgroup"):
        group = Path(info["cgroup"]) / node["name"]
        group.mkdir(mode=0o755, exist_ok=True)
        enter = f"echo $$ > {group}/cgroup.procs && "
    node["watch_pid"] = spawn(
        [*in_node(node), "sh", "-c",
         f"{enter}exec /usr/bin/python3 -I -S /usr/libexec/broker/broker-node watch"
         f" --interval {WATCH_INTERVAL}"],
        Path(node["dir"]) / "watch.log",
    ).pid  # fmt: skip
    deadline = time.monotonic() + 15
    while not (sessions / ".watch").exists():
        if time.monotonic() > deadline:
            raise LabError(f"broker-node watch of {node['name']} did not start")
        time.sleep(0.1)
    return int(node["watch_pid"])


def remove_lab_cgroup(path: str | None) -> None:
    """Kill whatever is left in the lab's cgroup subtree and remove it, deepest first."""
    if not path or not Path(path).is_dir():
        return
    group = Path(path)
    with contextlib.suppress(OSError):
        (group / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "populated 1" in (group / "cgroup.events").read_text():
        time.sleep(0.05)
    for top, dirs, _files in os.walk(group, topdown=False):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(top, name))
    with contextlib.suppress(OSError):
        group.rmdir()


def in_node(node: dict[str, Any]) -> list[str]:
    return ["nsenter", "--target", str(node["pid"]), "--mount", "--uts", "--"]


def start_relay(node: dict[str, Any]) -> None:
    """The relay's store-and-forward sudo_logsrvd and its two-way stunnel, in the node."""
    conf = Path(node["dir"]) / "etc" / "broker" / "logsrv"
    logsrvd = [*in_node(node), "/usr/sbin/sudo_logsrvd", "-n", "-f"]
    node["relay_pids"] = [
        spawn([*logsrvd, str(conf / "relay-logsrvd.conf")], Path(node["dir"]) / "relay.log").pid,
        spawn(
            [*in_node(node), "/usr/bin/stunnel4", str(conf / "relay-tunnel.conf")],
            Path(node["dir"]) / "relay-tunnel.log",
        ).pid,
        # The flush timer's job (broker-logsrv-relay-flush.timer on a real relay).
        spawn(
            [*in_node(node), "sh", "-c",
             "while sleep 2; do /usr/bin/python3 -I -S /usr/libexec/broker/broker-relay-flush"
             f" --min-age 2; done # {conf}"],
            Path(node["dir"]) / "relay-flush.log",
        ).pid,
    ]  # fmt: skip
    for port, what in ((RELAY_LOGSRVD_PORT, "sudo_logsrvd"), (RELAY_PORT, "stunnel")):
        wait_port(
            node["address"],
            port,
            15,
            f"relay {what} of {node['name']}",
            Path(node["dir"]) / "relay.log",
        )


def start_break_glass(node: dict[str, Any]) -> None:
    """The node's break-glass recorder (store-and-forward sudo_logsrvd out through the
    node's own tunnel) and its flush timer's job, in the node."""
    conf = Path(node["dir"]) / "etc" / "broker" / "logsrv"
    node["break_glass_pids"] = [
        spawn(
            [*in_node(node), "/usr/sbin/sudo_logsrvd", "-n", "-f",
             str(conf / "break-glass-logsrvd.conf")],
            Path(node["dir"]) / "break-glass.log",
        ).pid,
        spawn(
            [*in_node(node), "sh", "-c",
             "while sleep 2; do /usr/bin/python3 -I -S /usr/libexec/broker/broker-relay-flush"
             " --min-age 2 --spool /var/lib/broker/break-glass/outgoing"
             f" --conf /etc/broker/logsrv/break-glass-flush.conf; done # {conf}"],
            Path(node["dir"]) / "break-glass-flush.log",
        ).pid,
    ]  # fmt: skip
    wait_port(
        node["address"],
        BREAK_GLASS_PORT,
        15,
        f"break-glass recorder of {node['name']}",
        Path(node["dir"]) / "break-glass.log",
    )


def broker_api(
    socket_path: Path, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One call to the lab daemon's API as root (an operator), standard library only."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(300)
            sock.connect(str(socket_path))
            self.sock = sock

    conn = UnixConnection("localhost", timeout=300)
    try:
        data = json.dumps(body or {}).encode() if method == "POST" else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        reply = conn.getresponse()
        payload = json.loads(reply.read() or b"null")
    finally:
        conn.close()
    if reply.status >= 400:
        raise LabError(f"{method} {path}: {reply.status} {payload}")
    return payload


def enroll_nodes(info: dict[str, Any]) -> None:
    """What an administrator does first: sync the directory, apply the lab policy, and for
    each node add it, pin its host key (the fingerprint read off the node's own key file, as
    one would from the console) and bootstrap it (hook, pam.d blocks, verification key)."""
    sock = Path(info["broker"]["socket"])
    broker_api(sock, "POST", "/v1/directory/sync", {"full": True})
    policy = HERE / "policy.toml"
    broker_api(
        sock, "POST", "/v1/policy/apply", {"text": policy.read_text(), "source": str(policy)}
    )
    for node in info["nodes"]:
        broker_api(
            sock,
            "POST",
            "/v1/nodes",
            {"name": node["name"], "address": node["address"], "port": 22},
        )
        broker_api(
            sock,
            "POST",
            "/v1/nodes/enroll",
            {
                "name": node["name"],
                "expected": [{"fingerprint": node["host_key_fingerprint"]}],
                "confirm": True,
            },
        )
    names = ",".join(n["name"] for n in info["nodes"])
    results = broker_api(sock, "POST", "/v1/nodes/bootstrap", {"nodes": names})
    failed = [r for r in results if not r.get("ok")]
    if failed:
        raise LabError(f"bootstrap failed: {failed[:3]}")


# ---------------------------------------------------------------- broker config and lab.json


LAB_SNAPSHOT_AGE = "12h"


def broker_config(
    root: Path, keytab: Path, state_dir: Path, names: list[str], store_url: str | None = None
) -> Path:
    """The lab broker's broker.toml; with STORE_URL (the HA lab) it names itself broker1,
    keeps its store in PostgreSQL, lists both daemons' sockets as the CLI's endpoints and
    takes the shortest scheduler lease."""
    path = root / "broker" / "broker.toml"
    sock1, sock2 = root / "broker" / "run" / "broker.sock", root / "broker2" / "run" / "broker.sock"
    ha_broker = 'name = "broker1"\n' if store_url else ""
    ha_store = f'[store]\nurl = "{store_url}"\n\n' if store_url else ""
    ha_daemon = (
        f'endpoints = ["unix:{sock1}", "unix:{sock2}"]\nleader_lease = "{LEADER_LEASE}"\n'
        if store_url
        else ""
    )
    path.write_text(
        f'[broker]\nstate_dir = "{state_dir}"\nservice_user = "root"\n{ha_broker}\n'
        + ha_store
        + "[audit]\nsyslog = false\n\n"
        f'[kerberos]\nkrb5_conf = "{root / "krb5.conf"}"\n\n'
        f'[directory]\nuris = ["ldaps://{DC_HOST}:636"]\nbase_dn = "{BASE_DN}"\n'
        f'ca_file = "{root / "ca" / "ca.pem"}"\nauth = "gssapi"\nprincipal = "svc-broker@{REALM}"\n'
        f'keytab = "{keytab}"\n'
        # The lab syncs when a test asks, not every minute as broker-sync.timer does on a
        # broker host: a limit of hours keeps a long test run from aging out of its snapshot.
        # tests/unit/test_directory_freshness.py shows what a stale snapshot refuses.
        f'max_snapshot_age = "{LAB_SNAPSHOT_AGE}"\n\n'
        f'[ssh]\nkey = "{root / "broker" / "ssh_ed25519"}"\nknown_hosts = "{root / "broker" / "known_hosts"}"\n'
        'user = "root"\n\n'
        f'[daemon]\nsocket = "{root / "broker" / "run" / "broker.sock"}"\n'
        f'listen = "{BROKER_ADDR}:{BROKER_PORT}"\n'
        f'tls_cert = "{root / "ca" / "broker.pem"}"\ntls_key = "{root / "ca" / "broker.key"}"\n'
        f'http_keytab = "{root / "broker" / "http.keytab"}"\n'
        f'http_principal = "HTTP/{BROKER_HOST}@{REALM}"\nrealm = "{REALM}"\n'
        f'metrics_listen = "{BROKER_ADDR}:{METRICS_PORT}"\n{ha_daemon}\n'
        # Tests prove that expiry needs no action of the broker, and run the scheduler's
        # tick themselves (`broker grants reap`) where they want it.
        '[grants]\nreap_interval = "1h"\n\n'
        # Nodes share the host's network stack here, so each node's recording tunnel
        # listens on the node's own address rather than 127.0.0.1.
        f'[sessions]\nconf_dir = "{root / "broker" / "sessions"}"\n'
        f'logsrvd_listen = "{BROKER_ADDR}:{LOGSRVD_PORT}"\n'
        f'tunnel_listen = "{BROKER_ADDR}:{TUNNEL_PORT}"\n'
        f'tunnel_connect = "{BROKER_HOST}:{TUNNEL_PORT}"\n'
        'node_listen = "node-address"\nindex_interval = "1s"\nrelay_retry = "2s"\n'
        + (
            f'\n[sessions.relays]\n{RELAY_ZONE} = "{RELAY_NODE}:{RELAY_PORT}"\n'
            if RELAY_NODE in names and "stor01" in names
            else ""
        )
    )
    path.chmod(0o644)
    return path


def save_info(root: Path, info: dict[str, Any]) -> None:
    write_atomic(root / "lab.json", json.dumps(info, indent=2, sort_keys=True) + "\n", 0o644)


def load_info(root: Path = DEFAULT_ROOT) -> dict[str, Any]:
    return dict(json.loads((root / "lab.json").read_text()))


# ---------------------------------------------------------------- up / down / status


def up(
    nodes: str = DEFAULT_NODES,
    root: Path = DEFAULT_ROOT,
    bulk: dict[str, Any] | None = None,
    ha: bool = False,
) -> dict[str, Any]:
    """Build the whole lab; on any failure tear down what was started and raise LabError.
    HA (`up --ha`): the store in a lab-owned PostgreSQL cluster and a second daemon on it."""
    names = expand_hostlist(nodes)
    down(root, quiet=True)
    started = time.monotonic()
    root.mkdir(parents=True, mode=0o755)
    (root / "broker").mkdir(mode=0o755)
    info: dict[str, Any] = {
        "root": str(root),
        "realm": REALM,
        "domain": DOMAIN,
        "base_dn": BASE_DN,
        "krb5_conf": str(root / "krb5.conf"),
        "created_paths": [],
        "nodes": [],
        "started": datetime.now(UTC).isoformat(),
    }
    try:
        info["created_paths"] = created_mount_points()
        save_info(root, info)
        addresses = {name: node_address(i) for i, name in enumerate(names)}
        set_hosts_block(
            [f"{DC_ADDR} {DC_HOST} dc1", f"{BROKER_ADDR} {BROKER_HOST} broker"]
            + [f"{a} {n}.hpc.test {n}" for n, a in addresses.items()]
        )
        say("CA and DC certificate")
        make_tls(root)
        krb5_conf(root)
        say("provisioning the Samba AD DC (realm HPC.TEST)")
        dc = provision_dc(root)
        say("seeding users, nested groups, service accounts")
        bulk = dict(DEFAULT_BULK if bulk is None else bulk)
        info.update(seed_dc(root, bulk))
        info["bulk"] = bulk
        info["stale_user"] = {"name": STALE_USER, "days": STALE_DAYS}
        info["hostile"] = HOSTILE
        keytab = export_broker_keytab(root)
        export_http_keytab(root)
        say("starting the DC on 127.0.0.10")
        info["dc"] = {
            "host": DC_HOST,
            "address": DC_ADDR,
            "ldaps_uri": f"ldaps://{DC_HOST}:636",
            "ldap_uri": f"ldap://{DC_HOST}:389",
            "pid": start_dc(root, info),
            "ca_file": str(root / "ca" / "ca.pem"),
            **dc,
        }
        save_info(root, info)
        check_broker_kerberos(root, keytab)
        # Keytab rotation: OU=Keytab Services and svc-broker's delegated rights there.
        run(
            ["/usr/bin/python3", str(HERE / "keytab_ad.py"), str(root)],
            step="delegate keytab rotation to svc-broker",
        )
        state_dir = root / "broker" / "state"
        if ha:
            say("starting the lab's PostgreSQL 15 cluster (HA)")
            info["pg"] = start_postgres(root)
            save_info(root, info)
        info["broker"] = {
            "principal": f"svc-broker@{REALM}",
            "keytab": str(keytab),
            "ssh_key": str(root / "broker" / "ssh_ed25519"),
            "known_hosts": str(root / "broker" / "known_hosts"),
            "config": str(
                broker_config(root, keytab, state_dir, names, info.get("pg", {}).get("url"))
            ),
            "state_dir": str(state_dir),
        }
        say(f"starting {len(names)} nodes")
        files_dir = passwd_files(root, info["users"])
        del files_dir
        authorized = ssh_keys(root, info["users"])
        for name, user in info["users"].items():
            if user["uid"] is not None:
                user["ssh_key"] = str(root / "users" / name / "id_ed25519")
        with ThreadPoolExecutor(max_workers=8) as pool:
            prepared = list(
                pool.map(lambda n: prepare_node(root, n, addresses[n], authorized), names)
            )
        info["nodes"] = prepared
        save_info(root, info)
        with ThreadPoolExecutor(max_workers=16) as pool:
            pids = list(pool.map(start_node, prepared))
        for node, pid in zip(prepared, pids, strict=True):
            node["pid"] = pid
        known_hosts(root, prepared)
        save_info(root, info)
        say("starting the broker daemon")
        info["broker"]["socket"] = str(root / "broker" / "run" / "broker.sock")
        info["broker"]["url"] = f"https://{BROKER_HOST}:{BROKER_PORT}"
        info["broker"]["pid"] = start_broker(root, Path(info["broker"]["config"]))
        save_info(root, info)
        if ha:
            say("starting the second broker daemon on the same store (HA)")
            start_second_broker(root, info)
            save_info(root, info)
        say("starting the log server (sudo_logsrvd behind stunnel)")
        info["logsrv"] = start_logserver(root, Path(info["broker"]["config"]))
        save_info(root, info)
        say("enrolling and bootstrapping the nodes")
        enroll_nodes(info)
        start_tunnels(info)
        save_info(root, info)
        say("starting each node's broker-node watch (its own cgroup subtree)")
        start_watchers(info)
        save_info(root, info)
    except (LabError, OSError, subprocess.SubprocessError) as exc:
        save_info(root, info)
        daemon_log = root / "broker" / "daemon.log"
        if daemon_log.is_file():  # `down` removes it: what the daemon said is the diagnosis
            tail = daemon_log.read_text(errors="replace").splitlines()[-40:]
            print("\n".join(f"lab: daemon.log: {line}" for line in tail), file=sys.stderr)
        down(root, quiet=True)
        raise LabError(str(exc)) from None
    say(
        f"up in {time.monotonic() - started:.0f}s: DC {DC_HOST} ({DC_ADDR}), realm {REALM}, "
        f"nodes {', '.join(n['name'] + '=' + n['address'] for n in info['nodes'][:6])}"
        f"{' ...' if len(names) > 6 else ''}"
    )
    return info


def reap_children(wait_s: float = 5.0) -> None:
    """Collect the exit status of children this process started and `down` has stopped,
    waiting at most `wait_s` in all (not per child: restarting one daemon of a lab brought
    up in this process must not wait on every node that is still running)."""
    deadline = time.monotonic() + wait_s
    for proc in list(_CHILDREN):
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            continue
        _CHILDREN.remove(proc)


def lab_processes(root: Path) -> list[int]:
    """Every process whose command line or working directory mentions ROOT."""
    found = []
    needle = str(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if needle in cmdline or cwd.startswith(needle):
            found.append(int(entry.name))
    return found


def down(root: Path = DEFAULT_ROOT, quiet: bool = False) -> None:
    """Stop everything the lab started, remove its files and host changes; idempotent."""
    info: dict[str, Any] = {}
    if (root / "lab.json").exists():
        try:
            info = load_info(root)
        except (OSError, ValueError):
            info = {}
    pids = [n.get("pid") for n in info.get("nodes", [])]
    pids += [n.get("tunnel_pid") for n in info.get("nodes", [])]
    pids += [n.get("watch_pid") for n in info.get("nodes", [])]
    pids += [p for n in info.get("nodes", []) for p in n.get("relay_pids", [])]
    pids += [p for n in info.get("nodes", []) for p in n.get("break_glass_pids", [])]
    pids += list(info.get("logsrv", {}).values())
    pids += [info.get("dc", {}).get("pid"), info.get("dc_pid"), info.get("broker", {}).get("pid")]
    pids += [info.get("broker2", {}).get("pid")]
    pids += lab_processes(root)
    stop_postgres(root)
    targets = sorted({p for p in pids if p and pid_alive(p)})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in targets:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, sig)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(pid_alive(p) for p in targets):
            time.sleep(0.1)
        targets = [p for p in targets + lab_processes(root) if pid_alive(p)]
        if not targets:
            break
    remove_lab_cgroup(info.get("cgroup"))
    reap_children()
    set_hosts_block(None)
    dc_address(False)
    for path in info.get("created_paths", []):
        with contextlib.suppress(OSError):
            Path(path).rmdir()
    if root.exists():
        shutil.rmtree(root)
        if not quiet:
            say(f"down: removed {root}")


def status(root: Path = DEFAULT_ROOT) -> dict[str, Any]:
    if not (root / "lab.json").exists():
        return {"up": False, "exists": False, "dc": None, "nodes": []}
    info = load_info(root)
    dc = info.get("dc", {})
    dc_up = pid_alive(dc.get("pid")) and port_open(DC_ADDR, 636) and port_open(DC_ADDR, 88)
    nodes = [
        {
            "name": n["name"],
            "address": n["address"],
            "up": pid_alive(n.get("pid")) and port_open(n["address"], 22),
        }
        for n in info.get("nodes", [])
    ]
    broker = info.get("broker", {})
    broker_up = pid_alive(broker.get("pid")) and Path(broker.get("socket", "/nonexistent")).exists()
    if "broker2" in info:  # the HA lab is up only with both daemons
        second = info["broker2"]
        broker_up = broker_up and pid_alive(second.get("pid")) and Path(second["socket"]).exists()
    return {
        "ha": "pg" in info,
        "up": bool(dc_up and broker_up and nodes and all(n["up"] for n in nodes)),
        "exists": True,
        "dc": {"address": DC_ADDR, "up": dc_up},
        "broker": {"address": BROKER_ADDR, "up": broker_up},
        "nodes": nodes,
    }


def stop_process(pid: int | None) -> None:
    """SIGTERM a lab process's session, wait up to 10 s for it, reap it."""
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
    reap_children(wait_s=1.0)


def restart_broker(root: Path = DEFAULT_ROOT) -> None:
    """Stop the lab's daemon and start it again (after a code change), keeping its state."""
    info = load_info(root)
    stop_process(info.get("broker", {}).get("pid"))
    info["broker"]["pid"] = start_broker(root, Path(info["broker"]["config"]))
    save_info(root, info)


def assert_host_clean(root: Path = DEFAULT_ROOT) -> None:
    """What `down` promises: nothing of the lab left on the host."""
    problems = []
    if root.exists():
        problems.append(f"{root} still exists")
    if HOSTS_BEGIN in Path("/etc/hosts").read_text():
        problems.append("/etc/hosts still has the lab block")
    leftover = lab_processes(root)
    if leftover:
        problems.append(f"processes still running: {leftover}")
    if (
        f" {DC_ADDR}/32 "
        in subprocess.run(
            ["ip", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=False
        ).stdout
    ):
        problems.append(f"{DC_ADDR} is still on lo")
    if problems:
        raise AssertionError("; ".join(problems))


def exec_in_node(root: Path, name: str, argv: list[str]) -> int:
    node = next((n for n in load_info(root)["nodes"] if n["name"] == name), None)
    if node is None or not pid_alive(node.get("pid")):
        raise LabError(f"node {name} is not up")
    return subprocess.call(
        ["nsenter", "--target", str(node["pid"]), "--mount", "--uts", "--", *argv]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="deploy/lab/lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="build the lab (a previous one is removed first)")
    up_p.add_argument("--nodes", default=DEFAULT_NODES, help=f"hostlist (default {DEFAULT_NODES})")
    up_p.add_argument(
        "--bulk-users", type=int, default=DEFAULT_BULK["users"], help="extra users bulkNNNNN"
    )
    up_p.add_argument("--bulk-groups", type=int, default=0, help="extra nested groups")
    up_p.add_argument(
        "--ha", action="store_true", help="store in PostgreSQL, a second daemon on it (docs/ha.md)"
    )
    up_p.add_argument("--bulk-depth", type=int, default=1, help="nesting depth of bulk groups")
    sub.add_parser("down", help="remove the lab and its host changes")
    sub.add_parser("restart-broker", help="restart the lab's broker daemon (after a code change)")
    sub.add_parser("stop-logsrvd", help="stop the lab's sudo_logsrvd (sudo then refuses)")
    sub.add_parser("restart-logsrvd", help="start the lab's sudo_logsrvd and its stunnel again")
    sub.add_parser("stop-relay", help="stop the storage zone's relay on login01")
    sub.add_parser("restart-relay", help="start the storage zone's relay again")
    st = sub.add_parser("status", help="what is up (exit 0 all, 1 partly, 3 not up)")
    st.add_argument("--json", action="store_true")
    ex = sub.add_parser("exec", help="run a command inside a node: exec NODE -- CMD...")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("lab: run as root")
    try:
        if args.command == "up":
            bulk = {
                "users": args.bulk_users,
                "groups": args.bulk_groups,
                "depth": args.bulk_depth,
                "big_group": args.bulk_users > 1500,
            }
            up(args.nodes, DEFAULT_ROOT, bulk, ha=args.ha)
        elif args.command == "down":
            down(DEFAULT_ROOT)
        elif args.command == "restart-broker":
            restart_broker(DEFAULT_ROOT)
        elif args.command == "stop-logsrvd":
            stop_logserver(DEFAULT_ROOT)
        elif args.command == "restart-logsrvd":
            restart_logserver(DEFAULT_ROOT)
        elif args.command == "stop-relay":
            stop_relay(DEFAULT_ROOT)
        elif args.command == "restart-relay":
            restart_relay(DEFAULT_ROOT)
        elif args.command == "status":
            report = status(DEFAULT_ROOT)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                dc = report["dc"]
                print(f"DC {DC_ADDR}: {'up' if dc and dc['up'] else 'down'}")
                broker = report.get("broker")
                print(f"broker {BROKER_ADDR}: {'up' if broker and broker['up'] else 'down'}")
                for node in report["nodes"]:
                    print(f"{node['name']} {node['address']}: {'up' if node['up'] else 'down'}")
            sys.exit(0 if report["up"] else (1 if report["exists"] else 3))
        elif args.command == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            sys.exit(exec_in_node(DEFAULT_ROOT, args.node, argv))
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
