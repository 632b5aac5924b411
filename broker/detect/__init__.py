"""Detect and respond: rules over the audit and session streams, alerts, quarantine, drift."""
