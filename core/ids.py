"""Server-made ids: a type prefix and 128 random bits, URL-safe."""

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


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    return f"{prefix}_{_base62(secrets.randbits(128)).rjust(22, '0')}"


def random_token(nbytes: int = 32) -> str:
    """A secret token in base62 (nbytes of entropy), safe in URLs and headers."""
    return _base62(secrets.randbits(nbytes * 8)).rjust((nbytes * 8 + 5) // 6, "0")
