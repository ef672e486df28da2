"""Checks that a file is made of complete zstd frames, by walking frame and block headers (no decompression).

A stream cut inside the last frame (for example just before its content checksum) can still decompress to all of
its data; libzstd's streaming reader then reports a plain end of input. This walk tells the two apart.
Layout (RFC 8878): magic, frame header descriptor, [window byte], [dictionary id], [content size], blocks of
3-byte headers (last flag, type, size), and a 4-byte checksum when the descriptor says so. Skippable frames
(magic 0x184D2A5?) carry a 4-byte length and are skipped.
"""

from __future__ import annotations

import struct
from pathlib import Path

_MAGIC = 0xFD2FB528
_DICT_ID_BYTES = (0, 1, 2, 4)
_CONTENT_SIZE_BYTES = (0, 2, 4, 8)
_RLE = 1
_RESERVED = 3


def complete_frames(path: Path) -> bool:
    """True when `path` holds one or more whole zstd frames and nothing else. Reads headers only."""
    with open(path, "rb") as handle:
        end = handle.seek(0, 2)
        handle.seek(0)

        def take(count: int) -> bytes | None:
            data = handle.read(count)
            return data if len(data) == count else None

        frames = 0
        while handle.tell() < end:
            head = take(4)
            if head is None:
                return False
            (magic,) = struct.unpack("<I", head)
            if magic & 0xFFFFFFF0 == 0x184D2A50:
                length = take(4)
                if length is None:
                    return False
                handle.seek(struct.unpack("<I", length)[0], 1)
                continue
            descriptor_byte = take(1)
            if magic != _MAGIC or descriptor_byte is None:
                return False
            descriptor = descriptor_byte[0]
            single_segment = bool(descriptor & 0x20)
            content_size_bytes = _CONTENT_SIZE_BYTES[descriptor >> 6] or (1 if single_segment else 0)
            handle.seek((0 if single_segment else 1) + _DICT_ID_BYTES[descriptor & 0x03] + content_size_bytes, 1)
            while True:
                block = take(3)
                if block is None:
                    return False
                header = int.from_bytes(block, "little")
                last, kind, size = header & 1, (header >> 1) & 3, header >> 3
                if kind == _RESERVED:
                    return False
                handle.seek(1 if kind == _RLE else size, 1)
                if handle.tell() > end:
                    return False
                if last:
                    break
            handle.seek(4 if descriptor & 0x04 else 0, 1)
            frames += 1
        return frames > 0 and handle.tell() == end
