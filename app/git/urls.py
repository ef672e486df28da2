"""Which Git remote URLs the server accepts (DESIGN §3): allowed schemes only, no credentials inside the URL."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from app.services.errors import InvalidInput

# scp-like ssh syntax: user@host:path (no scheme, a colon before any slash)
_SCP_LIKE = re.compile(r"^(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>[^/].*|/.+)$")


def scheme_of(url: str) -> str:
    """`https`, `ssh`, `file`, …; scp-like `git@host:path` counts as ssh, a plain path as file."""
    if "://" in url:
        return url.split("://", 1)[0].lower()
    if _SCP_LIKE.match(url):
        return "ssh"
    return "file"


def check_remote_url(url: str, allowed_schemes: frozenset[str]) -> str:
    """Return `url` if the server may fetch it; raise `InvalidInput` naming what is wrong otherwise."""

    def refuse(reason: str) -> InvalidInput:
        return InvalidInput(f"repository url refused: {reason}", {"url": reason})

    if not url or url != url.strip() or any(ord(c) < 32 for c in url):
        raise refuse("it is empty or holds whitespace or control characters")
    if url.startswith("-"):
        raise refuse("it starts with '-', which git would read as an option")
    if "::" in url.split("://", 1)[0]:
        raise refuse("remote helpers such as ext:: are not allowed")
    scheme = scheme_of(url)
    if scheme not in allowed_schemes:
        allowed = ", ".join(sorted(allowed_schemes))
        raise refuse(f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    if scheme in ("https", "http", "ssh", "git") and "://" in url:
        parts = urlsplit(url)
        if not parts.hostname:
            raise refuse("it names no host")
        if parts.password is not None or (scheme in ("https", "http") and parts.username is not None):
            raise refuse("credentials must not be part of the url; give them as the repository's credentials")
    return url
