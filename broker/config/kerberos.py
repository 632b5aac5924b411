"""Kerberos configuration for this process, set once by each entry point at start.

gssapi (the LDAP bind, SPNEGO, ticket checks) and krb5 (key derivation) take no
per-call configuration file: MIT krb5 reads KRB5_CONFIG whenever it builds a
context. So the entry points that run Kerberos (the daemon, the CLI's bootstrap
commands, lab tools) call `use_krb5_conf` before any of it runs, instead of the
composition root changing the environment as a side effect of being built.
"""

from __future__ import annotations

import os

from broker.config.settings import KerberosSection


def use_krb5_conf(kerberos: KerberosSection) -> None:
    """Point this process's Kerberos libraries at kerberos.krb5_conf, when it is set."""
    if kerberos.krb5_conf is not None:
        os.environ["KRB5_CONFIG"] = str(kerberos.krb5_conf)
