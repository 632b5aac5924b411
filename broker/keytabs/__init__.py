"""Service-account keytabs: rotate in AD, pre-stage on nodes, verify (docs/keytabs.md)."""
