from pathlib import Path

import pytest

from broker.config.loader import config_path, load_settings, settings_from_dict
from broker.core.errors import ConfigError

GOOD_DIRECTORY = {
    "uris": ["ldaps://dc1.hpc.test:636", "ldaps://dc2.hpc.test"],
    "base_dn": "DC=hpc,DC=test",
    "ca_file": "/etc/broker/ad-ca.pem",
    "principal": "svc-broker@HPC.TEST",
    "keytab": "/etc/broker/broker.keytab",
}


def error_of(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, source="broker.toml")
    return info.value.message


def test_empty_file_gives_fhs_defaults_and_derived_paths() -> None:
    settings = settings_from_dict({}, source="x")
    assert settings.broker.state_dir == Path("/var/lib/broker")
    assert settings.db_path == Path("/var/lib/broker/broker.db")
    assert settings.checkpoint_log == Path("/var/lib/broker/audit/checkpoints.jsonl")
    assert settings.directory is None


def test_unknown_key_is_named_with_its_path() -> None:
    message = error_of({"audit": {"sylog": True}})
    assert (
        message
        == "broker.toml: audit.sylog: unknown key (check the spelling against deploy/examples/broker.toml)"
    )


def test_bad_value_names_key_value_and_expectation() -> None:
    message = error_of({"audit": {"checkpoint_interval": "90x"}})
    assert message.startswith("broker.toml: audit.checkpoint_interval = '90x': bad duration '90x'")
    assert "30m" in message


def test_list_index_appears_in_the_key_path() -> None:
    message = error_of({"directory": {**GOOD_DIRECTORY, "uris": ["ldaps://dc1", "http://dc2"]}})
    assert "directory.uris = " not in message
    assert "'http://dc2' is not an ldaps://HOST[:PORT]" in message


def test_plain_ldap_without_starttls_is_refused() -> None:
    message = error_of({"directory": {**GOOD_DIRECTORY, "uris": ["ldap://dc1.hpc.test"]}})
    assert "plain LDAP" in message and "starttls" in message
    ok = settings_from_dict(
        {"directory": {**GOOD_DIRECTORY, "uris": ["ldap://dc1.hpc.test"], "starttls": True}},
        source="x",
    )
    assert ok.directory is not None and ok.directory.starttls


def test_gssapi_needs_a_keytab_and_simple_needs_a_password_file() -> None:
    no_keytab = {k: v for k, v in GOOD_DIRECTORY.items() if k != "keytab"}
    assert "needs directory.principal and directory.keytab" in error_of({"directory": no_keytab})
    simple = {**GOOD_DIRECTORY, "auth": "simple", "bind_dn": "CN=svc,DC=hpc,DC=test"}
    assert "password_file" in error_of({"directory": simple})


@pytest.mark.parametrize("name", ["Root", "bro ker", "a" * 40, "x;rm"])
def test_service_user_must_be_a_posix_name(name: str) -> None:
    assert "broker.service_user" in error_of({"broker": {"service_user": name}})


def test_relative_paths_are_refused() -> None:
    assert "broker.state_dir = 'var/lib/broker': expected an absolute path" in error_of(
        {"broker": {"state_dir": "var/lib/broker"}}
    )


def test_several_problems_are_each_reported_on_their_own_line() -> None:
    message = error_of({"broker": {"state_dir": "rel"}, "ssh": {"port": 0}})
    assert len(message.splitlines()) == 2


def test_config_file_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_CONFIG", raising=False)
    assert config_path(None) == Path("/etc/broker/broker.toml")
    monkeypatch.setenv("BROKER_CONFIG", str(tmp_path / "env.toml"))
    assert config_path(None) == tmp_path / "env.toml"
    assert config_path(tmp_path / "flag.toml") == tmp_path / "flag.toml"


def test_toml_syntax_errors_say_where(tmp_path: Path) -> None:
    bad = tmp_path / "broker.toml"
    bad.write_text("[broker\nstate_dir = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        load_settings(bad)


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"deploy/examples/broker\.toml"):
        load_settings(tmp_path / "absent.toml")


def test_the_documented_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "broker.toml"
    settings = load_settings(example)
    assert settings.directory is not None and settings.directory.auth == "gssapi"
