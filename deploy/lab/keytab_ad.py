"""The lab DC's part of keytab rotation: an OU for managed service accounts and the rights
the broker's own account (svc-broker) needs there, as a site would delegate them.

Run with Debian's /usr/bin/python3 (python3-samba), offline by seed_dc.py while the lab is
built, or against a running lab DC's sam.ldb (`/usr/bin/python3 keytab_ad.py ROOT`):
idempotent, it adds only what is missing.

Delegated on OU=Keytab Services (and nothing else):
- create and delete user objects (`broker keytab create --create-account`);
- on user objects below it: Reset Password, and write servicePrincipalName,
  userAccountControl, userPrincipalName and msDS-SupportedEncryptionTypes.
"""

from __future__ import annotations

import sys

import ldb
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB
from samba.sd_utils import SDUtils

OU = "OU=Keytab Services,OU=Cluster"
USER_CLASS = "bf967aba-0de6-11d0-a285-00aa003049e2"
RESET_PASSWORD = "00299570-246d-11d0-a768-00aa006e0529"
WRITABLE = (
    "f3a64788-5306-11d1-a9c5-0000f80367c1",  # servicePrincipalName
    "bf967a68-0de6-11d0-a285-00aa003049e2",  # userAccountControl
    "28630ebb-41d5-11d1-a9c1-0000f80367c1",  # userPrincipalName
    "20119867-1d04-4ab7-9371-cfc3d5df0afd",  # msDS-SupportedEncryptionTypes
)


def aces(sid: str) -> list[str]:
    return [
        f"(OA;;CCDC;{USER_CLASS};;{sid})",
        f"(OA;CIIO;CR;{RESET_PASSWORD};{USER_CLASS};{sid})",
        *(f"(OA;CIIO;WP;{attr};{USER_CLASS};{sid})" for attr in WRITABLE),
    ]


def prepare(samdb: SamDB, broker_account: str = "svc-broker") -> list[str]:
    """Create the OU and delegate; returns what was added."""
    base = str(samdb.get_default_basedn())
    dn = f"{OU},{base}"
    added = []
    if not samdb.search(base, scope=ldb.SCOPE_SUBTREE, expression=f"(distinguishedName={dn})"):
        samdb.add({"dn": dn, "objectClass": "organizationalUnit"})
        added.append(dn)
    found = samdb.search(
        base,
        scope=ldb.SCOPE_SUBTREE,
        expression=f"(sAMAccountName={broker_account})",
        attrs=["objectSid"],
    )
    sid = str(ndr_unpack(security.dom_sid, found[0]["objectSid"][0]))
    utils = SDUtils(samdb)
    current = utils.get_sd_as_sddl(dn)
    for ace in aces(sid):
        if ace not in current:
            utils.dacl_add_ace(dn, ace)
            added.append(ace)
    return added


def main(root: str) -> None:
    lp = LoadParm()
    lp.load(f"{root}/dc/etc/smb.conf")
    samdb = SamDB(url=f"{root}/dc/private/sam.ldb", session_info=system_session(), lp=lp)
    for item in prepare(samdb):
        print(f"added {item}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/var/lib/broker-lab")
