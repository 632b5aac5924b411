"""Two brokers trusting each other's keys (issue 24): nodes get every broker's grant key,
checkpoints name the broker that sealed them and verify on either broker, and a peer's key
file is read only as a trust root may be."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.app import App
from broker.audit import writer
from broker.audit.checkpoint import (
    SigningKey,
    checkpoint_keys,
    checkpoint_line,
    create_signing_key,
    key_id,
    parse_checkpoint_line,
)
from broker.config.loader import load_settings
from broker.config.settings import Settings
from broker.core.errors import IntegrityError, UnavailableError, UsageError
from broker.core.pubkeys import load_peer_keys, load_public_key_file
from broker.core.timeutil import utcnow
from broker.grants import grantfile
from broker.provision.bundle import check_key_file
from broker.report.document import sign
from tests.helpers import write_config


def peer_key(directory: Path, name: str) -> tuple[SigningKey, Path]:
    """Another broker's key pair as its `broker init` made it; the public half's path."""
    key = create_signing_key(directory / f"{name}.pem", None)
    return key, directory / f"{name}.pub"


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "peer"
    directory.mkdir()
    return directory


def make_app(tmp_path: Path) -> App:
    """An initialised broker named broker-a (write_config puts extra lines under [audit])."""
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("[broker]\n", '[broker]\nname = "broker-a"\n'))
    app = App(load_settings(config))
    app.setup().init("unix:test")
    return app


def append(app: App, target: str) -> None:
    with app.ready_store().transaction() as conn:
        writer.record(conn, writer.EventInput("unix:test", "test.append", target))


def seal_as(key: SigningKey, app: App, broker: str) -> None:
    """What the peer's sealer writes after its own commit to the shared chain."""
    seq, digest = writer.head(app.ready_store().conn)
    line = checkpoint_line(key, seq, digest, "2026-12-07T22:00:00Z", broker=broker)
    with app.settings.checkpoint_log.open("a") as log:
        log.write(line + "\n")


# --- checkpoints ---------------------------------------------------------------------------


def test_new_checkpoints_name_the_broker_that_sealed_them(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    append(app, "t")
    last = json.loads(app.settings.checkpoint_log.read_text().splitlines()[-1])
    assert (last["v"], last["broker"]) == (2, "broker-a")
    private = serialization.load_pem_private_key(app.settings.signing_key.read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    assert last["key"] == key_id(private.public_key())
    report = app.audit().verify()
    assert report.ok and report.sealed_seq == report.head_seq


def test_a_version_1_checkpoint_without_a_name_still_verifies(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    append(app, "t")
    private = serialization.load_pem_private_key(app.settings.signing_key.read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    kid = key_id(private.public_key())
    seq, digest = writer.head(app.ready_store().conn)
    body = {"v": 1, "seq": seq, "hash": digest, "time": "2026-11-01T00:00:00Z", "key": kid}
    text = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    line = json.dumps({**body, "sig": base64.b64encode(private.sign(text)).decode()})
    app.settings.checkpoint_log.write_text(line + "\n")
    checkpoint = parse_checkpoint_line(line, checkpoint_keys(private.public_key(), []), "t:1")
    assert (checkpoint.seq, checkpoint.broker) == (seq, "")
    assert app.audit().verify().ok
    # the version is signed too: a v1 line called v2 (or v true) is refused
    for forged, why in (
        (line.replace('"v": 1', '"v": 2, "broker": "x"'), "bad signature"),
        (line.replace('"v": 1', '"v": true'), "malformed"),
    ):
        app.settings.checkpoint_log.write_text(forged + "\n")
        with pytest.raises(IntegrityError, match=why):
            app.audit().verify()


def test_a_peers_checkpoint_verifies_only_when_its_key_is_trusted(
    tmp_path: Path, config_dir: Path
) -> None:
    peer, peer_pub = peer_key(config_dir, "audit-b")
    app = make_app(tmp_path)
    append(app, "from a")
    seal_as(peer, app, "broker-b")
    with pytest.raises(IntegrityError, match=f"unknown key {peer.key_id} \\(sealed by broker-b\\)"):
        app.audit().verify()
    app.close()
    trusting = App(load_settings(write_config(tmp_path, f'trusted_keys = ["{peer_pub}"]\n')))
    report = trusting.audit().verify()
    assert report.ok and report.sealed_seq == report.head_seq
    trusting.close()


def test_a_checkpoint_whose_broker_name_was_changed_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    append(app, "t")
    log = app.settings.checkpoint_log
    log.write_text(log.read_text().replace('"broker":"broker-a"', '"broker":"broker-b"'))
    with pytest.raises(IntegrityError, match="bad signature"):
        app.audit().verify()


@pytest.mark.parametrize(
    ("host", "name"), [("broker-a.example.org", "broker-a"), ("node_7", "node-7"), ("_", "broker")]
)
def test_a_host_name_always_gives_a_checkpoint_name(
    monkeypatch: pytest.MonkeyPatch, host: str, name: str
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: host)
    assert Settings().broker_name == name
    assert Settings.model_validate({"broker": {"name": "b1"}}).broker_name == "b1"


# --- grant keys ------------------------------------------------------------------------------


def test_nodes_get_this_brokers_grant_key_then_the_peers(tmp_path: Path, config_dir: Path) -> None:
    _b, b_pub = peer_key(config_dir, "grant-b")
    _c, c_pub = peer_key(config_dir, "grant-c")
    alone = make_app(tmp_path)
    own = load_public_key_file(alone.settings.grant_key.with_suffix(".pub"), "key")
    assert alone._grant_key_file() == grantfile.public_key_line(own)  # one key: as before
    alone.close()
    app = App(
        load_settings(write_config(tmp_path, f'[grants]\ntrusted_keys = ["{b_pub}", "{c_pub}"]\n'))
    )
    text = app._grant_key_file()
    expected = [own, load_public_key_file(b_pub, "k"), load_public_key_file(c_pub, "k")]
    assert text == grantfile.public_key_lines(expected)
    assert check_key_file(text) == text and text.count("\n") == 3


def test_a_peer_list_naming_this_brokers_own_key_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    own_pub = app.settings.grant_key.with_suffix(".pub")
    app.close()
    app = App(load_settings(write_config(tmp_path, f'[grants]\ntrusted_keys = ["{own_pub}"]\n')))
    with pytest.raises(IntegrityError, match="same key as this broker's own key"):
        app._grant_key_file()


def test_the_key_file_nodes_get_is_checked_line_by_line() -> None:
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(9)]
    two = grantfile.public_key_lines(keys[:2])
    assert check_key_file(two) == two
    assert check_key_file(grantfile.public_key_lines(keys[:8])).count("\n") == 8
    line = grantfile.public_key_line(keys[0])
    for bad, why in (
        (grantfile.public_key_lines(keys[:8]) + grantfile.public_key_line(keys[8]), "1 to 8"),
        (line + line, "line 2 repeats"),
        (line + "\n" + line, "line 2 is malformed"),
        (line + "# comment\n", "line 2 is malformed"),
    ):
        with pytest.raises(UsageError, match=why):
            check_key_file(bad)
    with pytest.raises(UsageError, match="1 to 8"):
        grantfile.public_key_lines(keys)
    with pytest.raises(UsageError, match="listed twice"):
        grantfile.public_key_lines([keys[0], keys[0]])


# --- a peer's key file ---------------------------------------------------------------------------


def test_a_peer_key_file_is_read_only_as_a_trust_root(config_dir: Path) -> None:
    own = Ed25519PrivateKey.generate().public_key()
    _b, b_pub = peer_key(config_dir, "b")
    [loaded] = load_peer_keys(own, [b_pub], "trusted grant key")
    assert grantfile.key_id(loaded) == _b.key_id
    with pytest.raises(UnavailableError, match="no trusted grant key at"):
        load_peer_keys(own, [config_dir / "missing.pub"], "trusted grant key")
    os.chmod(b_pub, 0o664)
    with pytest.raises(IntegrityError, match="mode 0664"):
        load_peer_keys(own, [b_pub], "trusted grant key")
    os.chmod(b_pub, 0o644)
    link = config_dir / "link.pub"
    link.symlink_to(b_pub)
    with pytest.raises(IntegrityError, match="is a symlink"):
        load_peer_keys(own, [link], "trusted grant key")
    with pytest.raises(IntegrityError, match="is the same key as"):
        load_peer_keys(own, [b_pub, b_pub], "trusted grant key")
    rsa_like = config_dir / "not-ed25519.pub"
    rsa_like.write_text("broker-grant-key-v1 AAAA\n")
    with pytest.raises(IntegrityError, match="not an Ed25519 public key in PEM"):
        load_peer_keys(own, [rsa_like], "trusted grant key")
    big = config_dir / "big.pub"
    big.write_bytes(b"x" * 5000)
    with pytest.raises(IntegrityError, match="larger than"):
        load_peer_keys(own, [big], "trusted grant key")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('["relative/b.pub"]', "absolute path"),
        ('["/k/b.pub", "/k/b.pub"]', "listed twice"),
        ("[" + ", ".join(f'"/k/{n}.pub"' for n in range(8)) + "]", "at most 7"),
    ],
)
def test_trusted_key_lists_that_cannot_be_meant_are_refused(
    tmp_path: Path, value: str, message: str
) -> None:
    for section in ("", "[grants]\n"):
        with pytest.raises(UsageError, match=message):
            load_settings(write_config(tmp_path, f"{section}trusted_keys = {value}\n"))


def test_a_report_a_trusted_peer_signed_over_the_shared_chain_verifies(
    tmp_path: Path, config_dir: Path
) -> None:
    peer, peer_pub = peer_key(config_dir, "audit-b")
    app = make_app(tmp_path)
    now = utcnow()
    doc = app.report().controls(
        since=now - timedelta(days=1), until=now, zone=None, actor="unix:root", now=now
    )
    by_peer = sign({k: v for k, v in doc.items() if k != "signature"}, peer)
    outcome = app.report().verify(by_peer, actor="unix:root", now=now)
    assert outcome.failed == "signature" and "not this broker's key" in outcome.message
    app.close()
    trusting = App(load_settings(write_config(tmp_path, f'trusted_keys = ["{peer_pub}"]\n')))
    assert trusting.report().verify(by_peer, actor="unix:root", now=now).ok
    trusting.close()
