"""Sudo rules for the test hosts' users, as an operator's hosts have them: a sudoers drop-in of the test's own.

The drop-in goes to /etc/sudoers.d/ under a name of its own (no `.` in it: sudo skips such files there), is checked
with `visudo -cf` before it is moved into place, and is removed at the end, with what sudo kept of those users (its
time stamps). Each rule also sets `timestamp_timeout=0`, so sudo asks for the password every time: a run never
passes only because an earlier one was let in, and `!lecture`, so sudo leaves no "lectured" mark on this machine.
Only root can write sudoers: as anyone else `sudo_rules` raises.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

SUDOERS_DIR = Path("/etc/sudoers.d")
SUDO_STATE = (Path("/run/sudo/ts"), Path("/var/lib/sudo/ts"), Path("/var/lib/sudo/lectured"))
"""Where sudo keeps per-user time stamps and lecture marks (by Debian's paths and sudo's defaults)."""

SudoRule = Literal["nopasswd", "password"]
"""`nopasswd`: may run anything as root without a password; `password`: with the user's own password."""


def _rule_lines(user: str, rule: SudoRule) -> str:
    tag = "NOPASSWD: " if rule == "nopasswd" else ""
    return f"Defaults:{user} timestamp_timeout=0, !lecture\n{user} ALL=(ALL:ALL) {tag}ALL\n"


@contextmanager
def sudo_rules(rules: Mapping[str, SudoRule]) -> Iterator[Path]:
    """Let each user of `rules` run commands as root through sudo, as its rule says, until the end of the block;
    yields the drop-in's path."""
    if os.geteuid() != 0:
        raise RuntimeError("only root can write sudo rules (/etc/sudoers.d)")
    visudo = shutil.which("visudo", path="/usr/sbin:/usr/bin")
    if visudo is None or shutil.which("sudo", path="/usr/bin:/usr/sbin") is None:
        raise RuntimeError("sudo is missing: install it with `apt-get install -y sudo` (make test does)")
    text = "".join(_rule_lines(user, rule) for user, rule in rules.items())
    target = SUDOERS_DIR / f"ahop-test-{secrets.token_hex(4)}"
    descriptor, draft_name = tempfile.mkstemp(dir=SUDOERS_DIR, prefix=".ahop-draft-")
    draft = Path(draft_name)
    try:
        with os.fdopen(descriptor, "w") as draft_file:
            draft_file.write(text)
        draft.chmod(0o440)
        check = subprocess.run([visudo, "-cf", str(draft)], capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"visudo refuses the sudo rules {text!r}: {(check.stdout + check.stderr).strip()}")
        draft.rename(target)
    finally:
        draft.unlink(missing_ok=True)
    try:
        yield target
    finally:
        target.unlink(missing_ok=True)
        for directory in SUDO_STATE:
            for user in rules:
                with suppress(FileNotFoundError):
                    (directory / user).unlink()
