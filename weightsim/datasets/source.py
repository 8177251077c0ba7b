"""Where dataset bytes come from: a local path or an fsspec URI (``s3://``,
``http(s)://``), opened, read or listed with one error message per failure
and refused when over the byte limit (``$WEIGHTSIM_MAX_DATASET_BYTES``)."""
from __future__ import annotations

import contextlib
import io
import os
import re

from .. import files
from ..errors import DatasetError
from ..store import s3_options_from_env
from ..uris import redact, resolve

LIMIT_ENV = "WEIGHTSIM_MAX_DATASET_BYTES"
DEFAULT_LIMIT = 8 << 30
_CHUNK = 16 << 20


def byte_limit() -> int:
    """Most bytes a dataset may declare or hold (``$WEIGHTSIM_MAX_DATASET_BYTES``,
    default 8 GiB): checked against headers before anything is allocated."""
    raw = os.environ.get(LIMIT_ENV)
    if raw is None:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise DatasetError(f"{LIMIT_ENV}={raw!r} is not a positive number of bytes")
    return value


def _check_size(nbytes: int, where: str, what: str = "declares") -> None:
    if nbytes > byte_limit():
        raise DatasetError(f"{where}: {what} {nbytes:,} bytes, over the limit of {byte_limit():,} "
                           f"(raise it with {LIMIT_ENV})")


def _options(uri: str, storage_options: dict | None) -> dict:
    """fsspec options of a dataset URI: for S3 and HTTP, ``URL_TIMEOUT``
    seconds to connect and for each next read."""
    if storage_options is not None:
        return storage_options
    if uri.startswith("s3://"):  # a fresh client: the environment's credentials now
        return {**s3_options_from_env(), "skip_instance_cache": True,
                "config_kwargs": {"connect_timeout": files.URL_TIMEOUT, "read_timeout": files.URL_TIMEOUT}}
    if uri.startswith(("http://", "https://")):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_connect=files.URL_TIMEOUT,
                                                                   sock_read=files.URL_TIMEOUT)}}
    return {}


@contextlib.contextmanager
def _io_errors(uri: str):
    """Turn what a filesystem raises into one ``DatasetError`` naming ``uri``."""
    where = redact(uri)
    try:
        yield
    except FileNotFoundError:
        remote = " or not accessible" if "://" in uri else ""
        raise DatasetError(f"dataset file not found{remote}: {where}") from None
    except TimeoutError:
        raise DatasetError(f"cannot read dataset {where}: no answer within {files.URL_TIMEOUT:g} s") from None
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {where}: {exc.strerror or exc}") from None
    except Exception as exc:  # botocore / aiohttp: no credentials, unreachable endpoint
        if type(exc).__module__.split(".")[0] in {"botocore", "aiobotocore", "aiohttp"}:
            status = getattr(exc, "status", None)
            raise DatasetError(f"cannot reach dataset {where}: {type(exc).__name__}"
                               + (f" (HTTP {status})" if status else "")) from None
        raise


@contextlib.contextmanager
def _open(uri: str, storage_options: dict | None):
    """(binary file object, size) of a regular file (never a FIFO or device:
    those could block forever), refused when over the byte limit."""
    import fsspec

    with _io_errors(uri):
        fs, path = fsspec.core.url_to_fs(resolve(uri), **_options(uri, storage_options))
        info = fs.info(path)
        if info.get("type") != "file":
            kind = "a folder" if info.get("type") == "directory" else "not a regular file"
            raise DatasetError(f"{redact(uri)}: {kind}")
        size = int(info.get("size") or 0)
        _check_size(size, redact(uri), "holds")
        with fs.open(path, "rb") as f:
            if "http" in fs.protocol:  # many HTTP servers refuse ranged reads: read the (bounded) file once
                f = io.BytesIO(f.read(size + 1))
            yield f, size


def _read_all(uri: str, storage_options: dict | None = None) -> bytes:
    with _open(uri, storage_options) as (f, size), _io_errors(uri):
        return f.read(size + 1)


def _list(uri: str, storage_options: dict | None = None) -> list[str]:
    import fsspec

    with _io_errors(uri):
        fs, path = fsspec.core.url_to_fs(resolve(uri), **_options(uri, storage_options))
        try:
            return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
        except NotADirectoryError:
            raise DatasetError(f"dataset not found: {redact(uri)}") from None


def stem(uri: str) -> str:
    """The name a dataset file gets (``.../three.npz`` → ``three``): its file
    name without credentials, query or extension, in safe characters."""
    base = os.path.basename(redact(uri).split("?", 1)[0].rstrip("/"))
    for ext in (".npz", ".parquet"):
        base = base[: -len(ext)] if base.endswith(ext) else base
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", base).lstrip("._")[:64] or "dataset"


def _read_exact(fp, nbytes: int, where: str) -> bytearray:
    """Exactly ``nbytes`` from ``fp`` and nothing after them, read in chunks
    (memory follows the data actually present, not what a header claims)."""
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - len(buf)))
        if not chunk:
            raise DatasetError(f"{where}: holds {len(buf):,} data bytes, header says {nbytes:,}")
        buf += chunk
    if fp.read(1):
        raise DatasetError(f"{where}: holds more data than its header says ({nbytes:,} bytes)")
    return buf
