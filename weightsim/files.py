"""Bounded reads of the local files a user names: manifests, arch specs,
name mappings, network files and config files.

``read_file`` is the one way they are read: a regular file only (opened
without blocking and checked on the open descriptor, so a FIFO cannot hang
the reader and a device or folder is refused whatever it is named), at most
``limit`` bytes (counted while reading: a device or a file that grows
cannot exceed it), and every failure one ``WeightsimError`` naming the file.
Dataset URLs are read by ``datasets`` under the same byte limit and a time
limit (``URL_TIMEOUT``).
"""
from __future__ import annotations

import json
import os
import stat

from .errors import WeightsimError

URL_TIMEOUT = 60.0  # seconds a dataset URL may take to connect or to send the next bytes
TEXT_LIMIT = 16 << 20  # manifests, specs, name mappings, config files


def read_file(path: str, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    A missing file, a FIFO, device or folder, a file over ``limit`` bytes or
    a path that cannot name a file (a NUL byte) is one ``WeightsimError``
    whose message starts with ``what`` and the path."""
    where = f"{what} {path!r}" if not path.isprintable() else f"{what} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise WeightsimError(f"{where} does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL byte
        raise WeightsimError(f"{where} is not readable ({getattr(exc, 'strerror', None) or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, device or socket)"
        raise WeightsimError(f"{where} is {kind}")
    with os.fdopen(fd, "rb") as f:
        os.set_blocking(fd, True)
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise WeightsimError(f"{where} is not readable ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise WeightsimError(f"{where} is larger than {limit:,} bytes")
    return data


def read_text(path: str, what: str, limit: int = TEXT_LIMIT) -> str:
    """``read_file`` as UTF-8 text (a leading byte-order mark dropped, as
    spreadsheet programs write one)."""
    data = read_file(path, limit, what)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise WeightsimError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_json(path: str, what: str, limit: int = TEXT_LIMIT):
    """The JSON value of a file read by ``read_text``; malformed or too
    deeply nested JSON is one ``WeightsimError``."""
    text = read_text(path, what, limit)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise WeightsimError(f"{what} {path} is not readable JSON ({reason})") from None
