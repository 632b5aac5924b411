"""Compliance reports: what the broker enforced over a period, with evidence and charts."""
