"""Grants: the signed grant file a node's PAM hook trusts (docs/grants.md)."""
