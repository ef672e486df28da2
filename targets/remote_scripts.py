"""The POSIX shell programs a remote run executes on its host, and the command lines that start them.

Every program goes to the host as `/bin/sh -c PROGRAM NAME ARGS...`, one exec request each: the login shell of
the host's user only parses that line, so any login shell that speaks sh quoting works, and nothing but `/bin/sh`,
`mktemp`, `cat`, `rm`, `sleep` and `setsid` (util-linux or BusyBox) is needed on the host. No program and no
argument ever holds a secret: secrets travel over an exec channel's stdin into files of mode 0600 (`prepare`,
`write_file`) or into sudo (`sudo -S`), so they never appear in the argv of any process (`/proc/PID/cmdline`,
`ps`), where every user of the host could read them.

How a run and its stop fit together:
- `RUN` reads the environment file into its own shell (`.` runs no process), deletes the file, enters the working
  directory and starts the entry with `setsid` as the leader of a session of its own. That leader first prints
  the run's mark and its pid (the session id) on stdout, then execs the entry, so the first line of the run's
  stdout says that the entry started and which session to stop. `RUN` waits for the entry and exits with its
  status, after killing whatever the entry left in its session, and removes the private directory. Signalled
  itself (SIGHUP, SIGINT, SIGTERM), it stops the session first: SIGTERM, the grace, SIGKILL. It also watches its
  stdin, which the client holds open for the whole run: the end of input means the connection is gone (OpenSSH
  does not signal a command without a terminal when its session closes), and it stops the run as if signalled.
- `STOP` signals every process group of the run's session (the entry may have made groups of its own), waits
  until no live process of the session is left, and with SIGKILL signals again at each look, so that a process
  forked between a look and a kill is caught too. What is still alive at the end of its bound is printed, one
  `PGRP PID (COMMAND)` a line, and it exits with `STOP_LEFT_OVER`.
A session's processes are found in `/proc/PID/stat` (field 6); zombies count as gone: they run nothing and only
wait for their parent (or init) to reap them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

POLL_SECONDS = 0.05
"""How often the host looks whether a run's session is empty."""
STOP_LEFT_OVER = 3
"""`STOP`'s exit status when processes of the session are still alive at the end of its bound."""
DIRECTORY_MARK = "ahop-private-directory:"
"""Before the path `prepare` prints: a login script may have printed text of its own before it."""
NOT_STARTED = 125
"""`RUN`'s exit status when the entry could not be started (the reason is on stderr)."""
FINAL_KILL_LOOKS = 600
"""How many looks `RUN` takes, after the entry ended, for the rest of its session to be gone under SIGKILL."""

_SESSION_FUNCTIONS = r"""
stat_fields() { state=$1 pgrp=$3 session=$4; }
session_members() {
	for stat in /proc/[0-9]*/stat; do
		read -r line 2>/dev/null <"$stat" || continue
		stat_fields ${line##*) }
		if [ "$session" = "$1" ] && [ "$state" != Z ] && [ "$state" != X ]; then
			echo "$pgrp ${line%%) *})"
		fi
	done
}
session_alive() { [ -n "$(session_members "$1")" ]; }
signal_session() {
	session_members "$2" | {
		seen=" "
		while read -r group _; do
			case $seen in *" $group "*) continue ;; esac
			seen="$seen$group "
			kill -s "$1" -- "-$group" 2>/dev/null
		done
	}
}
"""

_PREPARE = r"""
umask 077
dir=$(mktemp -d "${TMPDIR:-/tmp}/ahop-run.XXXXXXXXXX") || exit 1
if ! mkdir -- "$dir/files" || ! cat >"$dir/environment"; then rm -rf -- "$dir"; exit 1; fi
printf '@DIRECTORY_MARK@%s\n' "$dir"
"""

_WRITE_FILE = r"""
umask 077
cat >"$1"
"""

_REMOVE = r"""
rm -rf -- "$1"
"""

_RUN = (
    _SESSION_FUNCTIONS
    + r"""
dir=$1 workdir=$2 grace_looks=$3 mark=$4
shift 4
entry=
kill_session() {
	looks=0
	while session_alive "$entry" && [ "$looks" -lt @FINAL_KILL_LOOKS@ ]; do
		signal_session KILL "$entry"
		sleep @POLL_SECONDS@
		looks=$((looks + 1))
	done
}
stop_run() {
	trap '' HUP INT TERM
	if [ -n "$entry" ]; then
		signal_session TERM "$entry"
		looks=0
		while session_alive "$entry" && [ "$looks" -lt "$grace_looks" ]; do
			sleep @POLL_SECONDS@
			looks=$((looks + 1))
		done
		kill_session
	fi
	exit "$1"
}
trap 'rm -rf -- "$dir"' EXIT
trap 'stop_run 129' HUP
trap 'stop_run 130' INT
trap 'stop_run 143' TERM
if [ ! -r "$dir/environment" ]; then
	echo "ahop: the run's environment file $dir/environment is missing on this host" >&2
	exit @NOT_STARTED@
fi
. "$dir/environment"
rm -f -- "$dir/environment"
export AHOP_FILES_DIR="$dir/files"
if ! cd -- "$workdir" 2>/dev/null; then
	echo "ahop: cannot enter the working directory $workdir on this host (missing, or not a directory it may enter)" >&2
	exit @NOT_STARTED@
fi
if ! command -v setsid >/dev/null 2>&1; then
	echo "ahop: setsid is not installed on this host (it comes with util-linux or BusyBox)" >&2
	exit @NOT_STARTED@
fi
setsid /bin/sh -c 'printf "%s %s\n" "$1" "$$"; shift; exec "$@"' ahop-entry "$mark" "$@" </dev/null &
entry=$!
exec 3<&0
(
	while read -r _; do :; done
	kill -s HUP "$$"
) <&3 >/dev/null 2>&1 &
watchdog=$!
# From here on the wrapper writes nothing to the run's output: a shell reports a child killed by a signal
# ("Terminated") on stderr, which is not the entry's output, and once the connection is gone that write would
# end the wrapper by SIGPIPE before it could stop the run.
exec 3<&- >/dev/null 2>&1
wait "$entry"
status=$?
kill "$watchdog" 2>/dev/null
kill_session
exit "$status"
"""
)

_STOP = (
    _SESSION_FUNCTIONS
    + r"""
dir=$1 session=$2 signal=$3 looks=$4
# Once the run's private directory is gone its wrapper has ended, and the session id may be another's by now.
[ -d "$dir" ] || exit 0
signal_session "$signal" "$session"
count=0
while session_alive "$session"; do
	if [ "$count" -ge "$looks" ]; then
		session_members "$session"
		exit @STOP_LEFT_OVER@
	fi
	sleep @POLL_SECONDS@
	count=$((count + 1))
	if [ "$signal" = KILL ]; then signal_session KILL "$session"; fi
done
"""
)

_CONSTANTS = {
    "@DIRECTORY_MARK@": DIRECTORY_MARK,
    "@POLL_SECONDS@": str(POLL_SECONDS),
    "@FINAL_KILL_LOOKS@": str(FINAL_KILL_LOOKS),
    "@STOP_LEFT_OVER@": str(STOP_LEFT_OVER),
    "@NOT_STARTED@": str(NOT_STARTED),
}


def _program(text: str) -> str:
    for placeholder, value in _CONSTANTS.items():
        text = text.replace(placeholder, value)
    return text


def _sh(program: str, name: str, arguments: Sequence[str], sudo: Sequence[str]) -> str:
    return shlex.join([*sudo, "/bin/sh", "-c", program, name, *arguments])


def prepare_command() -> str:
    """Makes the run's private directory (mode 0700) with an empty `files/` in it, writes its stdin to the
    environment file (mode 0600) and prints the directory's path after `DIRECTORY_MARK`."""
    return _sh(_program(_PREPARE), "ahop-prepare", [], [])


def write_file_command(path: str) -> str:
    """Writes its stdin to `path`, mode 0600."""
    return _sh(_WRITE_FILE, "ahop-write", [path], [])


def remove_command(directory: str) -> str:
    """Removes the run's private directory, if it is still there."""
    return _sh(_REMOVE, "ahop-remove", [directory], [])


def run_command(
    directory: str, workdir: str, argv: Sequence[str], mark: str, grace_looks: int, sudo: Sequence[str]
) -> str:
    """Runs `argv` in `workdir` as described in the module docstring; `grace_looks` is how many looks the wrapper
    waits, when it stops the run itself, between SIGTERM and SIGKILL."""
    return _sh(_program(_RUN), "ahop-run", [directory, workdir, str(grace_looks), mark, *argv], sudo)


def stop_command(directory: str, session: int, signal: str, looks: int, sudo: Sequence[str]) -> str:
    """Sends `signal` (TERM or KILL) to the run's session and waits at most `looks` looks for it to be empty."""
    return _sh(_program(_STOP), "ahop-stop", [directory, str(session), signal, str(looks)], sudo)


def environment_file(environment: Mapping[str, str]) -> bytes:
    """The environment as `export NAME='value'` lines, which `RUN` reads with `.`: any value, newlines and quotes
    included, comes back byte for byte, and reading it starts no process."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(environment.items())).encode()
