"""TOTP second factor: code checks (pure), sealed secrets, recovery codes, and the store flows."""
