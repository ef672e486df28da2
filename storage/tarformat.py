"""The canonical tar's bytes: header blocks, padding and the end of the archive, written out field by field.

The reference writer is CPython's `tarfile` in PAX_FORMAT with encoding utf-8 and these TarInfo fields:
mode 0644 (0755 executable; 0777 symlink), uid 0, gid 0, uname "", gname "", mtime 0, size (0 for symlinks),
type REGTYPE "0" or SYMTYPE "2", linkname (the symlink target). This module produces the same bytes without
`tarfile`, so that another implementation can match them from this description alone:

ustar header block (512 bytes; text fields NUL-padded, numbers octal, zero-padded, NUL-terminated):
    name      100  the path, when it is ASCII and at most 100 characters; otherwise a pax record carries it and
                   this field holds the path encoded ASCII with "?" for other characters, cut to 100 bytes
    mode        8  "0000644\\0", "0000755\\0" or "0000777\\0"
    uid, gid  8+8  "0000000\\0"
    size       12  "%011o\\0" of the file's length; 0 for a symlink
    mtime      12  "00000000000\\0"
    chksum      8  "%06o\\0 " of the sum of the block's bytes, counting this field as 8 spaces
    typeflag    1  "0" regular file, "2" symlink
    linkname  100  the symlink target, under the same ASCII/100 rule as name (linkpath record otherwise)
    magic       8  "ustar\\0" "00"
    uname, gname 32+32  all NUL
    devmajor, devminor  8+8  all NUL
    prefix    155  all NUL; then NULs to 512 bytes
A pax extended header precedes a member whose path or target needs it: a ustar block named "././@PaxHeader",
typeflag "x", mode/uid/gid/mtime 0, size = the records' length, then the records ("<len> path=<utf-8>\\n",
then "<len> linkpath=…\\n"; <len> counts the whole record including itself) padded with NULs to 512.
Member data follows its header, padded with NULs to 512. The archive ends with two 512-byte NUL blocks, then NULs
up to a multiple of 10240 bytes (tarfile's record size). No global pax header, no directory members.
"""

from __future__ import annotations

from collections.abc import Iterable

BLOCK = 512
RECORD = 20 * BLOCK
REGULAR = b"0"
SYMLINK = b"2"
PAX = b"x"
MODE_FILE = 0o644
MODE_EXECUTABLE = 0o755
MODE_SYMLINK = 0o777
_NAME_LIMIT = 100
_MAGIC = b"ustar\x0000"
_ZERO_NUMBER_8 = b"0000000\x00"
_ZERO_NUMBER_12 = b"00000000000\x00"
_SIZE_LIMIT = 8**11  # beyond this tarfile moves the size into a pax record


def _text(value: str, length: int) -> bytes:
    encoded = value.encode("ascii", "replace")[:length]
    return encoded + b"\x00" * (length - len(encoded))


def _number(value: int, digits: int) -> bytes:
    return b"%0*o\x00" % (digits - 1, value)


def _needs_pax(value: str) -> bool:
    return not value.isascii() or len(value) > _NAME_LIMIT


def _ustar(name: str, mode: int, size: int, typeflag: bytes, linkname: str) -> bytes:
    block = b"".join(
        (
            _text(name, 100),
            _number(mode, 8),
            _ZERO_NUMBER_8,
            _ZERO_NUMBER_8,
            _number(size, 12),
            _ZERO_NUMBER_12,
            b" " * 8,
            typeflag,
            _text(linkname, 100),
            _MAGIC,
            b"\x00" * (32 + 32 + 8 + 8 + 155),
        )
    ).ljust(BLOCK, b"\x00")
    checksum = b"%06o\x00" % sum(block)
    return block[:148] + checksum + block[155:]


def _record(keyword: str, value: str) -> bytes:
    body = f" {keyword}={value}\n".encode()
    length = len(body)
    digits = len(str(length))
    while len(str(length + digits)) != digits:  # the length counts its own digits
        digits += 1
    return str(length + digits).encode() + body


def padding(size: int) -> bytes:
    """NULs that bring `size` bytes of member data up to the next block boundary."""
    return b"\x00" * (-size % BLOCK)


def header(path: str, mode: int, size: int, typeflag: bytes, target: str = "") -> bytes:
    """The header block(s) of one member, with a pax extended header first when the path or target needs one."""
    records = b""
    if _needs_pax(path):
        records += _record("path", path)
    if _needs_pax(target):
        records += _record("linkpath", target)
    if size >= _SIZE_LIMIT:
        records += _record("size", str(size))
    ustar = _ustar(path, mode, size if size < _SIZE_LIMIT else 0, typeflag, target)
    if not records:
        return ustar
    return _ustar("././@PaxHeader", 0, len(records), PAX, "") + records + padding(len(records)) + ustar


def archive_size(members: Iterable[tuple[str, int]]) -> int:
    """The size of the archive of (path, data size) members, not counting pax records for long symlink targets
    (unknown until the targets are read): exact for files, a lower bound otherwise."""
    total = 0
    for path, size in members:
        total += BLOCK + size + len(padding(size))
        if _needs_pax(path):
            records = len(_record("path", path))
            total += BLOCK + records + len(padding(records))
    return total + 2 * BLOCK + (-(total + 2 * BLOCK) % RECORD)


def end_of_archive(offset: int) -> bytes:
    """Two NUL blocks, then NULs up to the record boundary, for an archive of `offset` bytes so far."""
    end = offset + 2 * BLOCK
    return b"\x00" * (2 * BLOCK + (-end % RECORD))
