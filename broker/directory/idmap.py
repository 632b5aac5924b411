"""POSIX ids for AD objects without uidNumber/gidNumber: SSSD's default algorithmic mapping.

SSSD (ldap_id_mapping = true) hashes the domain SID with MurmurHash3
(seed 0xdeadbeef) to pick a slice of the id range, then adds the RID. Doing
the same here means a node running SSSD and the broker agree on every id
without any shared state. Pure: the settings come in as a value.
"""

from __future__ import annotations

from dataclasses import dataclass

import mmh3

SSSD_SEED = 0xDEADBEEF


@dataclass(frozen=True)
class IdRange:
    """SSSD's ldap_idmap_range_min, _max and _size (their defaults here)."""

    minimum: int = 200_000
    maximum: int = 2_000_200_000
    size: int = 200_000

    @property
    def slices(self) -> int:
        return (self.maximum - self.minimum) // self.size


class IdMapError(ValueError):
    """The SID cannot be mapped (not a domain SID, or a RID beyond the slice)."""


def split_sid(sid: str) -> tuple[str, int]:
    """`S-1-5-21-a-b-c-1104` -> (`S-1-5-21-a-b-c`, 1104)."""
    domain, _, rid = sid.rpartition("-")
    if not domain.startswith("S-1-5-21-") or not rid.isdigit():
        raise IdMapError(f"{sid} is not a domain account SID")
    return domain, int(rid)


def slice_of(domain_sid: str, id_range: IdRange) -> int:
    return mmh3.hash(domain_sid, SSSD_SEED, signed=False) % id_range.slices


def posix_id(sid: str, id_range: IdRange = IdRange()) -> int:
    """The uid (or gid) SSSD gives `sid` in its first slice for the domain.

    SSSD moves RIDs beyond the slice size into secondary slices whose position
    depends on which domains it met first; the broker refuses those rather
    than guess (set uidNumber/gidNumber in AD, or widen the range size).
    """
    domain, rid = split_sid(sid)
    if rid >= id_range.size:
        raise IdMapError(
            f"RID {rid} of {sid} is beyond the id range size {id_range.size}; "
            "set uidNumber/gidNumber in AD or raise directory.idmap_range_size"
        )
    return id_range.minimum + slice_of(domain, id_range) * id_range.size + rid
