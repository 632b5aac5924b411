"""Directory sync benchmark against a lab DC seeded with 20,000 users and 2,000 nested groups.

Run (as root):  .venv/bin/python bench/directory_bench.py [--users 20000] [--groups 2000]
                [--depth 4] [--repeat 3] [--keep]

Brings the lab up with that population unless a lab with it is up already
(and, without --keep, takes it down again). Measures, each the median of
--repeat runs: a paged `ldapsearch` dump of the same users and groups with
the same attributes (the competitor, OpenLDAP's C client); the broker's full
sync into an empty store and into a populated one; a no-change incremental
sync in-process and as a whole `broker sync` command; and the two ways AD
offers to get transitive membership (tokenGroups per user, the
LDAP_MATCHING_RULE_IN_CHAIN filter per group), sampled and extrapolated,
against the broker's local closure. Goals (issue 3): full sync <= 2x
ldapsearch; incremental no-change sync <= 1 s.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ldap3

from broker.app import App
from broker.config.kerberos import use_krb5_conf
from broker.config.loader import load_settings
from broker.directory import build
from broker.directory.connection import bind_to, connect
from broker.directory.fetch import GROUP_ATTRIBUTES, GROUPS, USER_ATTRIBUTES, USERS, Reader, fetch

REPO = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))
IN_CHAIN = "1.2.840.113556.1.4.1941"


def lab_module() -> Any:
    spec = importlib.util.spec_from_file_location("broker_lab", REPO / "deploy" / "lab" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["broker_lab"] = module
    spec.loader.exec_module(module)
    return module


def median_of(repeat: int, run: Callable[[], float], label: str = "") -> float:
    value = statistics.median(run() for _ in range(repeat))
    if label:
        print(f"  measured {label}: {value:.3f} s", flush=True)
    return value


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ldapsearch_dump(info: dict[str, Any], password_file: Path) -> float:
    """OpenLDAP's ldapsearch: paged (1000), LDAPS, the sync's filters and attributes."""
    env = dict(os.environ, LDAPTLS_CACERT=info["dc"]["ca_file"], LDAPTLS_REQCERT="demand")
    base = [
        "ldapsearch", "-LLL", "-x", "-H", info["dc"]["ldaps_uri"],
        "-D", f"CN=Administrator,CN=Users,{info['base_dn']}", "-y", str(password_file),
        "-b", info["base_dn"], "-E", "pr=1000/noprompt",
    ]  # fmt: skip

    def run() -> None:
        for query, attributes in (
            (USERS, USER_ATTRIBUTES),
            (GROUPS, (*GROUP_ATTRIBUTES, "member")),
        ):
            subprocess.run(
                [*base, query, *attributes], env=env, stdout=subprocess.DEVNULL, check=True
            )

    return timed(run)


def fresh_app(info: dict[str, Any], where: Path) -> App:
    if where.exists():
        shutil.rmtree(where)
    where.mkdir(parents=True)
    text = Path(info["broker"]["config"]).read_text()
    config = where / "broker.toml"
    config.write_text(text.replace(info["broker"]["state_dir"], str(where / "state")))
    settings = load_settings(config)
    use_krb5_conf(settings.kerberos)  # the lab's realm, as every broker entry point does
    app = App(settings)
    app.setup().init("unix:bench")
    return app


def membership_strategies(app: App, sample: int) -> dict[str, float]:
    """Seconds for the whole population, by each way of getting transitive membership."""
    cfg = app.directory().settings()
    conn, bind = connect(cfg)
    try:
        reader = Reader(conn, bind.uri, cfg.base_dn, cfg.page_size)
        domain = reader.domain()

        def open_reader() -> tuple[Reader, Callable[[], None]]:
            extra, _info = bind_to(bind.uri, cfg)
            return Reader(extra, bind.uri, cfg.base_dn, cfg.page_size), extra.unbind

        fetched = fetch(
            open_reader, None, reader.dc_state().highest_usn, cfg.search_connections, reader
        )
        users, groups = fetched.users, fetched.groups
        local = timed(lambda: build.memberships(users, groups, domain.sid))
        started = time.perf_counter()
        for record in users[:sample]:
            conn.search(record.dn, "(objectClass=*)", ldap3.BASE, attributes=["tokenGroups"])
        token = (time.perf_counter() - started) / sample * len(users)
        started = time.perf_counter()
        for group in groups[:sample]:
            conn.search(
                cfg.base_dn,
                f"(&(objectClass=user)(memberOf:{IN_CHAIN}:={ldap3.utils.conv.escape_filter_chars(group.dn)}))",
                attributes=["objectGUID"],
                paged_size=1000,
            )
        chain = (time.perf_counter() - started) / sample * len(groups)
    finally:
        conn.unbind()
    return {"local closure": local, "tokenGroups (per user)": token, "IN_CHAIN (per group)": chain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=2_000)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sample", type=int, default=20, help="searches per strategy sample")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    args = parser.parse_args()
    lab = lab_module()
    bulk = {"users": args.users, "groups": args.groups, "depth": args.depth, "big_group": False}
    info = lab.load_info(ROOT) if (ROOT / "lab.json").exists() else {}
    if info.get("bulk") != bulk or not lab.status(ROOT).get("up"):
        print(f"bringing the lab up with {args.users} users and {args.groups} groups ...")
        started = time.perf_counter()
        lab.up(nodes="bench01", root=ROOT, bulk=bulk)
        print(f"lab up in {time.perf_counter() - started:.0f}s")
        info = lab.load_info(ROOT)
    work = Path(tempfile.mkdtemp(prefix="broker-dir-bench-"))
    try:
        password = work / "pw"
        password.write_text(Path(info["dc"]["admin_password_file"]).read_text().strip())
        password.chmod(0o600)
        dump = median_of(args.repeat, lambda: ldapsearch_dump(info, password), "ldapsearch")

        def full_into_empty() -> float:
            app = fresh_app(info, work / "empty")
            try:
                return timed(lambda: app.directory().sync("unix:bench", full=True))
            finally:
                app.close()

        empty = median_of(args.repeat, full_into_empty, "full sync, empty store")
        app = fresh_app(info, work / "populated")
        first = app.directory().sync("unix:bench", full=True)
        populated = median_of(
            args.repeat,
            lambda: timed(lambda: app.directory().sync("unix:bench", full=True)),
            "full sync, populated store",
        )
        unchanged = median_of(
            args.repeat, lambda: timed(lambda: app.directory().sync("unix:bench")), "no-change sync"
        )
        kind = app.directory().sync("unix:bench").kind
        config = work / "populated" / "broker.toml"
        broker = str(REPO / ".venv" / "bin" / "broker")
        command = median_of(
            args.repeat,
            lambda: timed(
                lambda: subprocess.run(
                    [broker, "--config", str(config), "sync"], stdout=subprocess.DEVNULL, check=True
                )
            ),
        )
        strategies = membership_strategies(app, args.sample)
        app.close()
    finally:
        shutil.rmtree(work)
        if not args.keep:
            lab.down(ROOT)
    print(
        f"\ndirectory sync benchmark (median of {args.repeat}): {first.users} users, "
        f"{first.groups} groups nested {args.depth} deep"
    )
    print(f"{'measure':44} {'seconds':>8} {'vs ldapsearch':>14} {'goal':>10}")
    rows = [
        ("ldapsearch paged dump (users + groups)", dump, None, ""),
        ("broker full sync, empty store", empty, empty / dump, "<= 2.0x"),
        ("broker full sync, populated store", populated, populated / dump, "<= 2.0x"),
        (f"broker incremental, no change ({kind})", unchanged, None, "<= 1 s"),
        ("`broker sync` command, no change", command, None, ""),
    ]
    for name, seconds, ratio, goal in rows:
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{name:44} {seconds:8.3f} {shown:>14} {goal:>10}")
    print("\ntransitive membership for the whole population (sampled searches extrapolated):")
    for name, seconds in strategies.items():
        print(f"  {name:28} {seconds:8.3f} s")


if __name__ == "__main__":
    main()
