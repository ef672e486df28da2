"""Errors of the local stack."""


class StackError(Exception):
    """A local service could not be started or did not become ready. The message says which, where, and its log."""
