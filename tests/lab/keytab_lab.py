"""A private broker state for keytab lab tests and the benchmark, beside the lab's daemon.

The lab's daemon keeps its own database; these tests drive the keytab service layer
in their own state directory (its own store, inventory and policy) with the lab's
SSH key, pinned host keys, DC and broker keytab. The node side of rotation
(broker_keytab.py and its launcher) is installed on the nodes over SFTP, the way
`broker node bootstrap` does, without touching the rest of the node program.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from broker.app import App
from broker.config.kerberos import use_krb5_conf
from broker.config.loader import load_settings
from broker.fleet import inventory
from broker.fleet.pool import SshOptions, SshPool, put_atomic
from broker.provision import bundle

REPO = Path(__file__).resolve().parents[2]
ACCOUNTS_OU = "OU=Keytab Services,OU=Cluster,DC=hpc,DC=test"


def prepare_ad(lab: dict[str, Any]) -> None:
    """The lab DC's OU and delegation for rotation (idempotent; lab.py does it at `up`)."""
    subprocess.run(
        ["/usr/bin/python3", str(REPO / "deploy" / "lab" / "keytab_ad.py"), lab["root"]],
        check=True,
        capture_output=True,
        timeout=120,
    )


def private_config(lab: dict[str, Any], state_dir: Path, keytabs: str = "") -> Path:
    """The lab's broker.toml up to [daemon], with its own state directory and [keytabs]
    (`keytabs`: more lines for that section, e.g. the benchmark's rotate_workers)."""
    text = Path(lab["broker"]["config"]).read_text()
    head = text.split("\n[daemon]\n", 1)[0]
    head = head.replace(lab["broker"]["state_dir"], str(state_dir))
    # Our own pinned keys: pinning rewrites known_hosts, and the lab daemon's is not ours.
    head = head.replace(lab["broker"]["known_hosts"], str(state_dir / "known_hosts"))
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    config = state_dir.parent / "broker.toml"
    config.write_text(f'{head}\n[keytabs]\naccounts_ou = "{ACCOUNTS_OU}"\n{keytabs}')
    return config


def private_app(
    lab: dict[str, Any],
    state_dir: Path,
    policy_text: str,
    nodes: list[dict[str, Any]],
    keytabs: str = "",
) -> App:
    """Init the private state, pin `nodes`, sync the directory and apply `policy_text`."""
    settings = load_settings(private_config(lab, state_dir, keytabs))
    use_krb5_conf(settings.kerberos)
    app = App(settings)
    app.setup().init("test")
    store = app.ready_store()
    for node in nodes:
        if inventory.get(store.conn, node["name"]) is None:
            inventory.add(store, node["name"], node["address"], node.get("port", 22), "test")
        record = inventory.get(store.conn, node["name"])
        if record is not None and not record.enrolled:
            key_type, key_b64 = _host_key(lab, node)
            inventory.pin(
                store,
                node["name"],
                key_type,
                key_b64,
                node["host_key_fingerprint"],
                "test",
                known_hosts=app.settings.known_hosts,
                owner=None,
            )
    app.directory().sync("test")
    app.policy().apply(policy_text, "policy.toml", "test")
    return app


def _host_key(lab: dict[str, Any], node: dict[str, Any]) -> tuple[str, str]:
    for line in Path(lab["broker"]["known_hosts"]).read_text().splitlines():
        names, key_type, key_b64 = line.split()[:3]
        if {node["name"], node["address"]} & set(names.split(",")):
            return key_type, key_b64
    raise LookupError(f"no pinned key for {node['name']}")


def install_node_side(app: App, names: list[str]) -> None:
    """broker_keytab.py and broker-keytab into /usr/libexec/broker on each node."""
    source = bundle.pam_source_dir()
    files = [
        (source / "broker_keytab.py", bundle.KEYTAB_PY, 0o644),
        (source / "broker_keytab_gss.py", f"{bundle.LIBEXEC}/broker_keytab_gss.py", 0o644),
        (source / "broker-keytab", f"{bundle.LIBEXEC}/broker-keytab", 0o755),
    ]
    pool = SshPool(SshOptions.from_settings(app.settings))
    try:
        for target in inventory.targets(app.ready_store(), names):
            with pool.sftp(target) as sftp:
                for local, remote, mode in files:
                    put_atomic(sftp, remote, local.read_bytes(), mode)
    finally:
        pool.close()
