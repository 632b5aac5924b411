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


if __name__ == "__main__":
    main()
