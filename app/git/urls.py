"""Which Git remote URLs the server accepts (DESIGN §3): allowed schemes only, no credentials inside the URL."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from app.errors import InvalidInput

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


def check_local_path(url: str, roots: tuple[Path, ...], data_dir: Path) -> Path:
    """The resolved path of a local remote (`file:///abs/path` or a plain absolute path) if the server may read it.

    A local repository must lie under one of `roots` and never under `data_dir`, the server's own disk that holds
    every tenant's mirrors, even where a root contains it. Symlinks and `..` are resolved before comparing, so a
    link under a root that points elsewhere is judged by where it points. `InvalidInput` names the path and roots.
    """
    allowed = ", ".join(str(root) for root in roots) or "none configured (AHOP_GIT_FILE_ROOTS)"

    def refuse(reason: str) -> InvalidInput:
        reason = f"{reason}; local repositories must lie under the allowed roots: {allowed}"
        return InvalidInput(f"repository url refused: {reason}", {"url": reason})

    if "://" in url:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise refuse(f"{url!r} is not a local path; write a file url as file:///absolute/path")
        given = parts.path
    else:
        given = url
    if not given.startswith("/"):
        raise refuse(f"local path {given!r} is not absolute")
    resolved = Path(given).resolve()
    if resolved.is_relative_to(data_dir.resolve()):
        raise refuse(f"local path {given!r} lies in the server's data directory")
    if not any(resolved.is_relative_to(root.resolve()) for root in roots):
        raise refuse(f"local path {given!r} is not under an allowed root")
    return resolved
