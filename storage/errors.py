"""The storage package's errors.

StorageError
├── StorageUnavailable   the S3 endpoint did not answer or refused our credentials
└── BucketNotFound       the configured bucket does not exist
"""


class StorageError(Exception):
    """Base class of every error raised by `storage`."""


class StorageUnavailable(StorageError):
    """The object store could not be reached or refused the request."""


class BucketNotFound(StorageError):
    """The configured bucket does not exist on the object store."""
