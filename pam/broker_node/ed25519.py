"""Ed25519 signature verification (RFC 8032), hand-written on Python integers.

Only the curve code and `ed25519_verify` live here: the node program is to call a small
compiled verifier instead, and then this module goes whole.
"""

from __future__ import annotations

from .contract import hash_module


def sha512(data: bytes) -> bytes:
    """SHA-512 from the builtin module: importing hashlib would cost start-up time."""
    module = hash_module("sha512")
    return bytes(module.sha512(data).digest())  # type: ignore[attr-defined]


_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, -1, _P) % _P
_D2 = 2 * _D % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_B_Y = 4 * pow(5, -1, _P) % _P
_W = 5  # wNAF width: tables of the odd multiples 1..15
_B_TABLE: list[tuple[int, int, int]] = []


def decode_point(data: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3, strictly: y < p, x recoverable, no negative zero."""
    if len(data) != 32:
        return None
    number = int.from_bytes(data, "little")
    sign = number >> 255
    y = number & ((1 << 255) - 1)
    if y >= _P:
        return None
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x % _P * x % _P
    if vxx != u:
        if vxx != (_P - u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(p1: tuple[int, int, int, int], p2: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Extended-coordinate addition (RFC 8032 5.1.4); used for the small tables only."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 % _P * t2 % _P
    d = z1 * 2 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _odd_multiples(x: int, y: int) -> list[tuple[int, int, int, int]]:
    """1P, 3P, ..., 15P in extended coordinates."""
    point = (x, y, 1, x * y % _P)
    twice = _add(point, point)
    out = [point]
    for _ in range(2 ** (_W - 2) - 1):
        out.append(_add(out[-1], twice))
    return out


def _signed_table(points: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Cached form (Y+X, Y-X, 2Z, 2dT) indexed by the signed digit (negative = from the end)."""
    size = 2**_W
    table: list[tuple[int, int, int, int]] = [(1, 1, 2, 0)] * size
    for index, (x, y, z, t) in enumerate(points):
        digit = 2 * index + 1
        t2d = t * _D2 % _P
        table[digit] = ((y + x) % _P, (y - x) % _P, 2 * z % _P, t2d)
        table[size - digit] = ((y - x) % _P, (y + x) % _P, 2 * z % _P, (_P - t2d) % _P)
    return table


def _base_table() -> list[tuple[int, int, int]]:
    """B's odd multiples in affine form (Y+X, Y-X, 2dXY), computed once per process."""
    if not _B_TABLE:
        base = decode_point(_B_Y.to_bytes(32, "little"))
        assert base is not None
        size = 2**_W
        table: list[tuple[int, int, int]] = [(1, 1, 0)] * size
        for index, (x, y, z, _t) in enumerate(_odd_multiples(*base)):
            zi = pow(z, -1, _P)
            ax, ay = x * zi % _P, y * zi % _P
            xy2d = ax * ay % _P * _D2 % _P
            digit = 2 * index + 1
            table[digit] = ((ay + ax) % _P, (ay - ax) % _P, xy2d)
            table[size - digit] = ((ay - ax) % _P, (ay + ax) % _P, (_P - xy2d) % _P)
        _B_TABLE.extend(table)
    return _B_TABLE


def _wnaf(scalar: int) -> list[int]:
    """Width-5 non-adjacent form, least significant digit first."""
    digits: list[int] = []
    half, full = 2 ** (_W - 1), 2**_W
    while scalar:
        digit = 0
        if scalar & 1:
            digit = scalar & (full - 1)
            if digit >= half:
                digit -= full
            scalar -= digit
        digits.append(digit)
        scalar >>= 1
    return digits


def _straus(s: int, h: int, neg_a: tuple[int, int]) -> bytes:
    """Encode [s]B + [h](-A): one shared doubling chain (Straus/Shamir), then one inversion."""
    p = _P
    btab = _base_table()
    atab = _signed_table(_odd_multiples(*neg_a))
    ds, dh = _wnaf(s), _wnaf(h)
    n = max(len(ds), len(dh))
    ds += [0] * (n - len(ds))
    dh += [0] * (n - len(dh))
    x, y, z, t = 0, 1, 1, 0
    for i in range(n - 1, -1, -1):
        sd, hd = ds[i], dh[i]
        if i != n - 1:  # double; T only when an addition follows
            a = x * x % p
            b = y * y % p
            c = 2 * z * z % p
            hh = a + b
            e = hh - (x + y) * (x + y) % p
            g = a - b
            f = c + g
            x, y, z = e * f % p, g * hh % p, f * g % p
            if sd or hd:
                t = e * hh % p
        if sd:
            ypx, ymx, xy2d = btab[sd]
            a = (y - x) * ymx % p
            b = (y + x) * ypx % p
            c = t * xy2d % p
            d = 2 * z
            e, f, g, hh = b - a, d - c, d + c, b + a
            x, y, z = e * f % p, g * hh % p, f * g % p
            if hd:
                t = e * hh % p
        if hd:
            ypx, ymx, z2, t2d = atab[hd]
            a = (y - x) * ymx % p
            b = (y + x) * ypx % p
            c = t * t2d % p
            d = z * z2 % p
            e, f, g, hh = b - a, d - c, d + c, b + a
            x, y, z = e * f % p, g * hh % p, f * g % p
    zi = pow(z, -1, p)
    ax, ay = x * zi % p, y * zi % p
    return (ay | ((ax & 1) << 255)).to_bytes(32, "little")


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 5.1.7, cofactorless: [S]B == R + [h]A, compared as encodings."""
    if len(public) != 32 or len(signature) != 64:
        return False
    point_a = decode_point(public)
    if point_a is None or decode_point(signature[:32]) is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(sha512(signature[:32] + public + message), "little") % _L
    neg_a = ((_P - point_a[0]) % _P, point_a[1])
    return _straus(s, h, neg_a) == signature[:32]
