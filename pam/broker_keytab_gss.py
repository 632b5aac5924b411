"""GSS-API acceptance for the keytab node program (broker_keytab.py, docs/keytabs.md):
a token the broker (or the benchmark's prober) obtained for a principal, accepted with a
keytab through the system's MIT libgssapi_krb5 over ctypes, as the service itself would.

Its own module so that `keytab-install` and `keytab-list`, which run for every node of
every rotation, never load ctypes or the library. Standard library only (Python 3.9).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any


class Missing(Exception):
    """libgssapi_krb5 cannot be loaded."""


def _clean(text: object, limit: int = 80) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))[:limit]


class _Buffer(ctypes.Structure):
    _fields_ = [("length", ctypes.c_size_t), ("value", ctypes.c_void_p)]


_GSS: Any = None


def _gss() -> Any:
    global _GSS
    if _GSS is None:
        name = ctypes.util.find_library("gssapi_krb5") or "libgssapi_krb5.so.2"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise Missing("libgssapi_krb5 is not installed (Debian: libgssapi-krb5-2)") from None
        u32p, vp = ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p
        vpp, bp = ctypes.POINTER(vp), ctypes.POINTER(_Buffer)
        lib.gss_accept_sec_context.restype = ctypes.c_uint32
        lib.gss_accept_sec_context.argtypes = [u32p, vpp, vp, bp, vp, vpp, vpp, bp, u32p, u32p, vpp]
        lib.gss_delete_sec_context.argtypes = [u32p, vpp, vp]
        lib.gss_release_buffer.argtypes = [u32p, bp]
        lib.gss_release_name.argtypes = [u32p, vpp]
        lib.gss_display_name.argtypes = [u32p, vp, bp, vpp]
        lib.gss_display_status.argtypes = [u32p, ctypes.c_uint32, ctypes.c_int, vp, u32p, bp]
        lib.krb5_gss_register_acceptor_identity.argtypes = [ctypes.c_char_p]
        _GSS = lib
    return _GSS


def _status_text(lib: Any, code: int, kind: int) -> str:
    minor, context = ctypes.c_uint32(0), ctypes.c_uint32(0)
    parts = []
    for _ in range(4):
        buffer = _Buffer()
        lib.gss_display_status(
            ctypes.byref(minor), code, kind, None, ctypes.byref(context), ctypes.byref(buffer)
        )
        if buffer.value:
            parts.append(ctypes.string_at(buffer.value, buffer.length).decode("utf-8", "replace"))
        lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(buffer))
        if context.value == 0:
            break
    return "; ".join(parts)


def accept(token: bytes, keytab: str) -> tuple[bool, str]:
    """Accept one initiator token with the keys in `keytab`: (True, client) or (False, why)."""
    os.environ["KRB5RCACHETYPE"] = "none"  # verification tokens are fresh; no replay cache file
    lib = _gss()
    if lib.krb5_gss_register_acceptor_identity(keytab.encode()) != 0:
        return False, "cannot use the keytab"
    minor = ctypes.c_uint32(0)
    context, name = ctypes.c_void_p(None), ctypes.c_void_p(None)
    raw = ctypes.create_string_buffer(token, len(token))
    given = _Buffer(len(token), ctypes.cast(raw, ctypes.c_void_p))
    output, flags, lifetime = _Buffer(), ctypes.c_uint32(0), ctypes.c_uint32(0)
    try:
        major = lib.gss_accept_sec_context(
            ctypes.byref(minor),
            ctypes.byref(context),
            None,
            ctypes.byref(given),
            None,
            ctypes.byref(name),
            None,
            ctypes.byref(output),
            ctypes.byref(flags),
            ctypes.byref(lifetime),
            None,
        )
        if major & 0xFFFF0000:
            why = _status_text(lib, minor.value, 2) or _status_text(lib, major, 1)
            return False, _clean(why, 200)
        shown, kind = _Buffer(), ctypes.c_void_p(None)
        client = ""
        if (
            lib.gss_display_name(ctypes.byref(minor), name, ctypes.byref(shown), ctypes.byref(kind))
            == 0
        ):
            client = ctypes.string_at(shown.value, shown.length).decode("utf-8", "replace")
            lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(shown))
        return True, _clean(client, 200)
    finally:
        lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(output))
        if name.value:
            lib.gss_release_name(ctypes.byref(minor), ctypes.byref(name))
        if context.value:
            lib.gss_delete_sec_context(ctypes.byref(minor), ctypes.byref(context), None)
