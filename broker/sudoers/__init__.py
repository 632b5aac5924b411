"""Sudoers drop-ins for grants: rendered from allow-listed values, checked with visudo."""

from __future__ import annotations

from broker.sudoers.render import SudoersGrant, check_with_visudo, drop_in_name, render_grant

__all__ = ["SudoersGrant", "check_with_visudo", "drop_in_name", "render_grant"]
