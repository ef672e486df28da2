"""The targets package's errors. Every message names the host (`address:port`) or the text at fault.

TargetError
├── HostKeyRefused   text that is not an SSH host key (also a ValueError: it is bad input)
└── ScanFailed       a host whose keys could not be read: refused, timed out, not an SSH server, …
"""


class TargetError(Exception):
    """Base class of every error raised by `targets`."""


class HostKeyRefused(TargetError, ValueError):
    """The text given as a host key is not one: the message says what was given and which forms are accepted."""


class ScanFailed(TargetError):
    """A host's keys could not be read; the message names `address:port` and the cause."""
