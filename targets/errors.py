"""The targets package's errors. Every message names the host (by name and `address:port`) or the text at fault.

TargetError
├── HostKeyRefused   text that is not an SSH host key (also a ValueError: it is bad input)
├── ScanFailed       a host whose keys could not be read: refused, timed out, not an SSH server, …
├── Unreachable      a host that could not be reached over SSH: refused, no route, unknown name, timed out, lost
├── HostKeyMismatch  a host with no pinned keys, or one that showed a key other than those pinned
├── LoginRefused     a login that failed: the host refused it, or its private key could not be opened
├── DeliveryFailed   content that could not be put into a host's cache (the copy that arrived is not the digest, …)
├── NotCached        content asked of a host's cache that it does not hold intact
└── CommandRefused   a remote run asked for in a form that cannot run (also a ValueError: it is bad input)
"""


class TargetError(Exception):
    """Base class of every error raised by `targets`."""


class HostKeyRefused(TargetError, ValueError):
    """The text given as a host key is not one: the message says what was given and which forms are accepted."""


class ScanFailed(TargetError):
    """A host's keys could not be read; the message names `address:port` and the cause."""


class Unreachable(TargetError):
    """No SSH connection to the host: refused, no route, a name that does not resolve, a timeout, a lost link."""


class HostKeyMismatch(TargetError):
    """The host's key cannot be checked (none pinned) or is not one of those pinned; the message names the key
    the host showed and the pinned ones by their fingerprints, and what to do."""


class LoginRefused(TargetError):
    """The login failed; the message names `user@host` and the method, never the secret."""


class DeliveryFailed(TargetError):
    """Content could not be stored in the host's cache; nothing was put in place."""


class NotCached(TargetError):
    """The host's cache does not hold the content asked for, or holds a copy that is not its digest."""


class CommandRefused(TargetError, ValueError):
    """A remote run's command or limits are not in a form that can run; the message says what and what is expected."""
