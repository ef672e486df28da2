"""The storage package's errors. Every message names the object, path or figure at fault.

StorageError
├── InvalidDigest        text that is not `sha256:<64 lowercase hex>`
├── SnapshotRefused      content that cannot become a canonical snapshot (bad input); `missing_member` names
│   │                    the file it was to hold when that is what is missing
│   └── LimitExceeded    a tree over the size or file-count limit (the message gives both figures)
├── IntegrityError       bytes that are not what their digest or checksum says
│   └── UnsafeArchive    an archive member that a canonical tar never holds (escaping path, device, …)
├── BlobNotFound         no object under the blob's key
├── BucketNotFound       the configured bucket does not exist
└── StorageUnavailable   the S3 endpoint did not answer or refused our credentials
"""


class StorageError(Exception):
    """Base class of every error raised by `storage`."""


class InvalidDigest(StorageError, ValueError):
    """A digest string is malformed."""


class SnapshotRefused(StorageError):
    """The requested content cannot be packed canonically (a symlink leaving the tree, a submodule, …)."""

    def __init__(self, message: str, *, missing_member: str | None = None) -> None:
        super().__init__(message)
        self.missing_member = missing_member
        """The file that the snapshot was to hold and that its path lacks (an entry file that is absent or not a
        file); None when the path or its content is what is refused."""


class LimitExceeded(SnapshotRefused):
    """The content is larger, or has more files, than the caller allows."""


class IntegrityError(StorageError):
    """Content does not match its recorded digest, checksum or size."""


class UnsafeArchive(IntegrityError):
    """An archive holds a member that a canonical tar never holds."""


class BlobNotFound(StorageError):
    """No blob is stored under the requested digest."""


class BucketNotFound(StorageError):
    """The configured bucket does not exist on the object store."""


class StorageUnavailable(StorageError):
    """The object store could not be reached or refused the request."""
