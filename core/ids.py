"""Server-made ids: a type prefix and 22 random base62 characters (~130 bits), URL-safe."""

import os
import secrets

PREFIXES = frozenset(
    {"evt", "seg", "auto", "camp", "tpl", "msg", "news", "key", "inv", "usr", "proj", "run"}
)
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _base62(n: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out)) or "0"


# Each random byte picks a character (byte % 62): ids are made for every ingested event,
# and this is ~20x cheaper than base62 of a 128-bit integer. The slight bias toward the
# first 8 characters leaves ~130 bits of entropy; ids are unique names, not secrets.
_BYTE_TO_CHAR = bytes(ord(_ALPHABET[b % 62]) for b in range(256))


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{os.urandom(22).translate(_BYTE_TO_CHAR).decode()}"


def random_token(nbytes: int = 32) -> str:
    """A secret token in base62 (nbytes of entropy), safe in URLs and headers."""
    return _base62(secrets.randbits(nbytes * 8)).rjust((nbytes * 8 + 5) // 6, "0")
