"""The targets package's errors. Every message names the host (`address:port`) or the text at fault.

TargetError
├── HostKeyRefused   text that is not an SSH host key (also a ValueError: it is bad input)
├── ScanFailed       a host whose keys could not be read: refused, timed out, not an SSH server, …
└── CommandRefused   a remote run asked for in a form that cannot run (also a ValueError: it is bad input)
"""


class TargetError(Exception):
    """Base class of every error raised by `targets`."""


class HostKeyRefused(TargetError, ValueError):
    """The text given as a host key is not one: the message says what was given and which forms are accepted."""


class ScanFailed(TargetError):
    """A host's keys could not be read; the message names `address:port` and the cause."""


class CommandRefused(TargetError, ValueError):
    """A remote run's command or limits are not in a form that can run; the message says what and what is expected."""
