"""Seed the lab DC's directory offline, in one process (Samba's own Python bindings).

Run by lab.py with Debian's /usr/bin/python3 (python3-samba): the JSON spec
comes on stdin, so no password is ever on a command line. Writes straight
into sam.ldb before the DC starts, which takes a second instead of a minute
of samba-tool calls.
"""

from __future__ import annotations

import json
import sys
import time

import ldb
from samba.auth import system_session
from samba.dsdb import UF_ACCOUNTDISABLE
from samba.param import LoadParm
from samba.samdb import SamDB

NT_EPOCH_OFFSET = 11644473600


def nt_time(unix_seconds: float) -> int:
    return int((unix_seconds + NT_EPOCH_OFFSET) * 10_000_000)


def modify(samdb: SamDB, dn: str, attrs: dict[str, str | list[str]], op: int) -> None:
    msg = ldb.Message()
    msg.dn = ldb.Dn(samdb, dn)
    for name, value in attrs.items():
        msg[name] = ldb.MessageElement(value, op, name)
    samdb.modify(msg)


def user_dn(samdb: SamDB, base: str, name: str) -> str:
    found = samdb.search(
        base, scope=ldb.SCOPE_SUBTREE, expression=f"(sAMAccountName={name})", attrs=[]
    )
    return str(found[0].dn)


def add_bulk(samdb: SamDB, base: str, bulk: dict[str, int]) -> None:
    """Many users and nested groups at once (no passwords: never used to log on).

    `users` accounts bulk00001... in OU=Bulk; `groups` groups in `depth` levels, where
    each group of a level contains one group of the next, so membership nests `depth`
    deep; each user is a direct member of one leaf and one top group; with `big_group`,
    one group holds every bulk user (ranged retrieval needs more than 1,500).
    """
    ou = f"OU=Bulk,OU=Cluster,{base}"
    samdb.add({"dn": ou, "objectClass": "organizationalUnit"})
    users, groups, depth = bulk.get("users", 0), bulk.get("groups", 0), max(1, bulk.get("depth", 1))
    per_level = max(1, groups // depth) if groups else 0
    names = [f"bulk{n:05d}" for n in range(1, users + 1)]
    entries: list[dict[str, object]] = [
        {
            "dn": f"CN={name},{ou}",
            "objectClass": "user",
            "sAMAccountName": name,
            "userPrincipalName": f"{name}@{bulk['realm'].lower()}",
            "userAccountControl": "512",
        }
        for name in names
    ]
    group_dn: dict[tuple[int, int], str] = {}
    leaf_members: dict[int, list[str]] = {}
    top_members: dict[int, list[str]] = {}
    for i, user in enumerate(names):
        if per_level:
            leaf_members.setdefault(i % per_level, []).append(f"CN={user},{ou}")
            top_members.setdefault((i * 7) % per_level, []).append(f"CN={user},{ou}")
    for level in reversed(range(depth)):
        for index in range(per_level):
            name = f"bulkgrp-l{level}-{index:04d}"
            group_dn[(level, index)] = f"CN={name},{ou}"
            members = []
            if (level + 1, index) in group_dn:
                members.append(group_dn[(level + 1, index)])
            if level == depth - 1:
                members += leaf_members.get(index, [])
            if level == 0:
                members += top_members.get(index, [])
            entry: dict[str, object] = {"dn": group_dn[(level, index)], "objectClass": "group"}
            entry["sAMAccountName"] = name
            if members:
                entry["member"] = members
            entries.append(entry)
    if bulk.get("big_group"):
        entries.append(
            {
                "dn": f"CN=bulk-users,{ou}",
                "objectClass": "group",
                "sAMAccountName": "bulk-users",
                "member": [f"CN={u},{ou}" for u in names],
            }
        )
    # ldb re-walks a transaction's whole index cache at every add, so one huge transaction
    # is quadratic: commit every few hundred entries instead.
    for start in range(0, len(entries), 500):
        samdb.transaction_start()
        try:
            for entry in entries[start : start + 500]:
                samdb.add(entry)
        except BaseException:
            samdb.transaction_cancel()
            raise
        samdb.transaction_commit()


def child_dn(samdb: SamDB, parent: str, cn: str) -> ldb.Dn:
    """A DN whose CN is escaped by ldb itself, whatever characters it holds."""
    dn = ldb.Dn(samdb, parent)
    dn.add_child(ldb.Dn(samdb, "CN=placeholder"))
    dn.set_component(0, "CN", cn)
    return dn


def add_hostile(samdb: SamDB, base: str, nested_in: str) -> None:
    """Names that break naive code: quotes, parentheses, an asterisk, a newline and a
    backslash-comma in a DN, non-ASCII in sAMAccountName; nested into a mapped group."""
    people, groups = f"OU=People,OU=Cluster,{base}", f"OU=Groups,OU=Cluster,{base}"
    users = [
        child_dn(samdb, people, 'O\'Brien "ops" (x)*\n\\, y'),
        child_dn(samdb, people, "Zoë Ünicode"),
    ]
    for dn, sam in zip(users, ["o'brien(ops)", "zoë"], strict=True):
        samdb.add({"dn": dn, "objectClass": "user", "sAMAccountName": sam})
    group = child_dn(samdb, groups, 'ops (night) "shift"*')
    samdb.add(
        {
            "dn": group,
            "objectClass": "group",
            "sAMAccountName": "ops (night) 'shift'",
            "member": [str(dn) for dn in users],
        }
    )
    parent = samdb.search(
        base, expression=f"(sAMAccountName={nested_in})", attrs=[], scope=ldb.SCOPE_SUBTREE
    )[0].dn
    modify(samdb, str(parent), {"member": [str(group)]}, ldb.FLAG_MOD_ADD)


def main() -> None:
    spec = json.load(sys.stdin)
    lp = LoadParm()
    lp.load(spec["smb_conf"])
    samdb = SamDB(url=spec["sam_ldb"], session_info=system_session(), lp=lp)
    base = str(samdb.domain_dn())
    cluster = f"OU=Cluster,{base}"
    for ou in (
        cluster,
        f"OU=People,{cluster}",
        f"OU=Groups,{cluster}",
        f"OU=Service Accounts,{cluster}",
    ):
        samdb.add({"dn": ou, "objectClass": "organizationalUnit"})
    for group in spec["groups"]:
        samdb.newgroup(
            group["name"],
            groupou="OU=Groups,OU=Cluster",
            gidnumber=group["gid"],
            nisdomain=spec["nis_domain"],
        )
    for user in spec["users"]:
        posix = {}
        if user.get("uid") is not None:
            posix = {
                "uidnumber": user["uid"],
                "gidnumber": user["gid"],
                "unixhome": f"/home/{user['name']}",
                "loginshell": "/bin/bash",
                "nisdomain": spec["nis_domain"],
                "gecos": user["name"],
            }
        samdb.newuser(
            user["name"],
            user["password"],
            userou="OU=People,OU=Cluster",
            givenname=user["name"].capitalize(),
            surname="Lab",
            **posix,
        )
        dn = user_dn(samdb, base, user["name"])
        state = user["state"]
        if state == "disabled":
            samdb.toggle_userAccountFlags(
                f"(sAMAccountName={user['name']})", UF_ACCOUNTDISABLE, "UF_ACCOUNTDISABLE", on=True
            )
        elif state == "expired":
            modify(
                samdb,
                dn,
                {"accountExpires": str(nt_time(time.time() - 86400))},
                ldb.FLAG_MOD_REPLACE,
            )
        elif state == "locked":
            modify(samdb, dn, {"lockoutTime": str(nt_time(time.time() - 60))}, ldb.FLAG_MOD_REPLACE)
    for svc in spec["service_accounts"]:
        samdb.newuser(
            svc["name"],
            svc["password"],
            userou="OU=Service Accounts,OU=Cluster",
            useusernameascn=True,
        )
        modify(
            samdb,
            user_dn(samdb, base, svc["name"]),
            {"servicePrincipalName": svc["spns"]},
            ldb.FLAG_MOD_ADD,
        )
    # samba_spnupdate (part of the dnsupdate service, which the lab does not run) would add these.
    modify(
        samdb,
        user_dn(samdb, base, spec["dc_account"]),
        {"servicePrincipalName": spec["dc_spns"]},
        ldb.FLAG_MOD_ADD,
    )
    for group in spec["groups"]:
        if group["members"]:
            samdb.add_remove_group_members(
                group["name"], group["members"], add_members_operation=True
            )
    for name, days in spec.get("last_logon_days_ago", {}).items():
        stamp = str(nt_time(time.time() - days * 86400))
        modify(
            samdb, user_dn(samdb, base, name), {"lastLogonTimestamp": stamp}, ldb.FLAG_MOD_REPLACE
        )
    if spec.get("hostile_nested_in"):
        add_hostile(samdb, base, spec["hostile_nested_in"])
    if spec.get("bulk"):
        add_bulk(samdb, base, spec["bulk"])


if __name__ == "__main__":
    main()
