"""Elevated sessions: events from the nodes' hook spools, collected and stored."""
