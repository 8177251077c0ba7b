"""Stores: a root URI (local folder or ``s3://bucket/prefix``) holding weight
tables and reports.

Keys are relative, ``/``-separated and validated, so nothing a user names can
escape the store root. Writes are atomic: a reader sees either nothing or the
whole object under its final key, even if the writer is killed mid-write
(local: temporary file + fsync + rename in the same folder; S3: one PUT or a
multipart upload, which S3 only makes visible once complete). ``put_many``
writes a batch the same way, with the fsyncs (local) or PUTs (S3) of the
batch overlapping.
"""
from __future__ import annotations

import abc
import errno
import json
import os
import re
import stat
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import fsspec

from .errors import StoreError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
PARTIAL_SUFFIX = ".partial"
PARTIAL_MAX_AGE = 3600.0  # seconds after which a temporary file is known to be abandoned
SYNC_GROUP_BYTES = 64 << 20  # local put_many: bytes staged before a group is synced and published
MAX_NAME = 200
# OSErrors that no retry can cure: the task fails at once with one line
PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                    errno.EFBIG, errno.ENOTDIR, errno.EISDIR}


def check_name(name: str, what: str = "name", limit: int = MAX_NAME) -> str:
    """Validate one path segment (dataset, problem, arch, run id) of at most
    ``limit`` characters.

    Allowed: letters, digits and ``._=+-``, not starting with a dot, so ``..``,
    absolute paths and separators are rejected (a trailing newline too).
    """
    if isinstance(name, str) and len(name) > limit:
        raise StoreError(f"invalid {what} {name[:40]!r}...: {len(name)} characters, at most {limit}",
                         transient=False)
    if not isinstance(name, str) or not _SEGMENT.fullmatch(name):
        raise StoreError(f"invalid {what} {name!r}: use letters, digits and ._=+- only", transient=False)
    return name


def _check_key(key: str) -> str:
    for part in key.split("/"):
        check_name(part, "store key segment")
    return key


def s3_options_from_env() -> dict[str, Any]:
    """s3fs options from the standard AWS variables (credentials are left to
    botocore's own chain, so they are never copied anywhere by us)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpoint_url": endpoint} if endpoint else {}


class Store(abc.ABC):
    """A store rooted at ``uri``: ``Store(uri)`` gives a ``LocalStore`` for a
    folder and an ``S3Store`` for ``s3://bucket/prefix``. ``options`` go to
    the fsspec filesystem (for S3: ``endpoint_url``, ``key``, ``secret``,
    ...); they are never logged or written anywhere.

    Keys are relative, ``/``-separated and validated; each implementation
    says how to address, read, write (atomically) and check its storage."""

    is_local = False

    def __new__(cls, uri: str, options: dict[str, Any] | None = None):
        if cls is Store:
            protocol, sep, _ = str(uri).partition("://")
            if not sep and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", str(uri)):
                raise StoreError(f"malformed store URI {uri!r}: expected a folder or scheme://bucket/prefix")
            if sep and "@" in str(uri).partition("://")[2].split("/", 1)[0]:
                raise StoreError("a store URI must not hold credentials: give them in the environment "
                                 "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
            if not sep or protocol == "file":
                cls = LocalStore
            elif protocol == "s3":
                cls = S3Store
            else:
                raise StoreError(f"unsupported store URI {uri!r}: use a local folder or s3://bucket/prefix")
        return super().__new__(cls)

    def __init__(self, uri: str, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        uri = str(uri).rstrip("/")
        if not uri:
            raise StoreError("empty store URI")
        self.root, self.fs = self._open(uri)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @abc.abstractmethod
    def _open(self, uri: str) -> tuple[str, Any]:
        """(root path without protocol, fsspec filesystem) of ``uri``."""

    @property
    def uri(self) -> str:
        return self.root

    def path(self, key: str) -> str:
        """Filesystem path (without protocol) of a key."""
        return f"{self.root}/{_check_key(key)}"

    def key_uri(self, key: str) -> str:
        """Full URI of a key, as handed between tasks."""
        return f"{self.uri}/{_check_key(key)}"

    def key_of(self, uri_or_path: str) -> str:
        """Key of a full URI or path inside this store."""
        p = self._strip(uri_or_path)
        if not p.startswith(self.root + "/"):
            raise StoreError(f"{uri_or_path} is not inside store {self.uri}")
        return _check_key(p[len(self.root) + 1:])

    def _strip(self, uri_or_path: str) -> str:
        return uri_or_path.split("://", 1)[-1]

    def exists(self, key: str) -> bool:
        return self._call(self.fs.exists, self.path(key))

    def get_bytes(self, key: str) -> bytes:
        return self._call(self.fs.cat_file, self.path(key))

    def get_json(self, key: str, damaged: Any = None, missing: Any = None) -> Any:
        """The JSON value stored under ``key``: ``missing`` when there is
        none, ``damaged`` when its bytes are not JSON (not UTF-8, malformed,
        nested too deeply). The one reader of JSON records a damaged copy of
        which must not stop a sweep (callers check the value's shape)."""
        try:
            data = self.get_bytes(key)
        except FileNotFoundError:
            return missing
        try:
            return json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return damaged

    @abc.abstractmethod
    def open_read(self, key: str):
        """A context manager giving what pyarrow reads best from this store."""

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` atomically under ``key``; return its URI."""
        return self.put_many([(key, data)])[0]

    @abc.abstractmethod
    def put_many(self, items: Iterable[tuple[str, bytes]], workers: int = 16) -> list[str]:
        """Write (key, data) pairs, each atomically; return their URIs in
        order. ``items`` is consumed in the calling thread, so a generator may
        encode as it goes. When an item or a write fails, the objects before
        it are still written, each whole, and the error is raised."""

    @abc.abstractmethod
    def read_workers(self, remote: int = 16) -> int:
        """Threads for reading many objects."""

    @abc.abstractmethod
    def check(self) -> None:
        """Fail early, with one clear ``StoreError``, if the store cannot be used."""

    def check_exists(self) -> None:
        """Fail with one ``StoreError`` unless the store exists (a listing
        must not show an empty list for a mistyped store); creates nothing."""
        self.check()

    def glob(self, pattern: str) -> list[str]:
        """Keys matching a glob pattern relative to the root, sorted."""
        found = self._call(self.fs.glob, f"{self.root}/{pattern}")
        n = len(self.root) + 1
        return sorted(p.split("://", 1)[-1][n:] for p in found)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` only if nothing is there: True if
        this call created it, False if it existed (atomic test-and-set)."""
        try:
            self._create(self.path(key), data)
        except FileExistsError:
            return False
        except Exception as exc:
            err = self._translate(exc)
            if err is None:
                raise
            raise err from exc
        return True

    @abc.abstractmethod
    def _create(self, path: str, data: bytes) -> None:
        """Create ``path`` with ``data``; ``FileExistsError`` if it exists."""

    def swap(self, key: str, expected: bytes, data: bytes | None) -> bool:
        """Compare and swap: replace the object under ``key`` by ``data``
        (``None``: delete it) only if it holds exactly ``expected`` now; True
        if this call did it. Two callers swapping the same ``expected`` never
        both succeed."""
        return self._call(self._swap, self.path(key), expected, data)

    @abc.abstractmethod
    def _swap(self, path: str, expected: bytes, data: bytes | None) -> bool:
        """``swap`` on a path."""

    def remove(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""
        for key in keys:
            try:
                self._call(self.fs.rm, self.path(key))
            except FileNotFoundError:
                pass

    def invalidate(self) -> None:
        """Forget cached listings (S3), so new objects become visible."""
        self.fs.invalidate_cache()

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:
            err = self._translate(exc)
            if err is None:
                raise
            raise err from exc

    def _translate(self, exc: Exception) -> StoreError | None:
        """The ``StoreError`` of a storage fault (an ``OSError``, a botocore or
        aiohttp connection error); None for anything else."""
        if isinstance(exc, OSError):
            return storage_error(self.uri, exc)
        if type(exc).__module__.split(".")[0] in {"botocore", "aiobotocore", "aiohttp"}:
            return StoreError(f"store {self.uri} is not reachable: {type(exc).__name__}")
        return None




def storage_error(uri: str, exc: OSError) -> StoreError:
    """One line for an ``OSError`` of store ``uri``; transient unless its
    errno is one no retry can cure (``PERMANENT_ERRNOS``: disk full, no
    permission, read-only, ...)."""
    permanent = exc.errno in PERMANENT_ERRNOS
    return StoreError(f"store {uri} is not usable: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename
                      else ""), transient=not permanent)


class LocalStore(Store):
    """A local folder: atomic writes by temporary file, fsync and rename.
    The first write into a folder removes the temporary files a killed
    writer left there (older than ``PARTIAL_MAX_AGE``)."""

    is_local = True

    def _open(self, uri: str) -> tuple[str, Any]:
        self._swept: set[str] = set()
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://"))), fsspec.filesystem("file")

    def _strip(self, uri_or_path: str) -> str:
        return os.path.abspath(uri_or_path.removeprefix("file://"))

    def open_read(self, key: str):
        """The local path (pyarrow reads it natively), once it is known to be
        a regular file."""
        path = self.path(key)
        os.close(self._open_regular(path))
        return nullcontext(path)

    def get_bytes(self, key: str) -> bytes:
        with os.fdopen(self._open_regular(self.path(key)), "rb") as f:
            return f.read()

    def _create(self, path: str, data: bytes) -> None:
        """A hard link of a written temporary file: the kernel makes the test
        and the creation one step, and the object appears with all its
        content (``O_EXCL`` would show a reader an empty file first)."""
        tmp, _, _ = self._stage(self.key_of(path), data)
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)

    def _swap(self, path: str, expected: bytes, data: bytes | None) -> bool:
        """Under an exclusive ``flock`` of the object's folder (held by
        every local swap, released by the kernel if the process dies):
        read, compare, then rename a written temporary file into place or
        unlink."""
        import fcntl

        folder = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            try:
                with os.fdopen(self._open_regular(path), "rb") as f:
                    if f.read(len(expected) + 1) != expected:
                        return False
            except FileNotFoundError:
                return False
            if data is None:
                os.unlink(path)
            else:
                tmp, _, _ = self._stage(self.key_of(path), data)
                os.replace(tmp, path)
            return True
        finally:
            os.close(folder)  # closing the descriptor releases the lock

    def _open_regular(self, path: str) -> int:
        """A read descriptor of ``path``; a FIFO, device or folder is refused
        (opened without blocking, so a FIFO cannot hang the reader)."""
        fd = self._call(os.open, path, os.O_RDONLY | os.O_NONBLOCK)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{path} is not a regular file", transient=False)
        os.set_blocking(fd, True)
        return fd

    def put_many(self, items: Iterable[tuple[str, bytes]], workers: int = 16) -> list[str]:
        """Write (key, data) pairs, each atomically; return their URIs in
        order. ``items`` is consumed in the calling thread, so a generator may
        encode as it goes. Objects go to hidden temporary files; every
        ``SYNC_GROUP_BYTES`` (and at the end) the files so far are fsynced by
        ``workers`` threads at once (the journal commits them together:
        instead of one commit per file), then renamed,
        so nothing is visible before it is durable. When an item or a write
        fails, the objects before it are still written, each whole, and the
        error is raised (an ``OSError`` as a ``StoreError``)."""
        return self._call(self._put_many, items, workers)

    def _put_many(self, items: Iterable[tuple[str, bytes]], workers: int) -> list[str]:
        uris: list[str] = []
        staged: list[tuple[str, str, str]] = []
        size = 0
        try:
            for key, data in items:
                staged.append(self._stage(key, data))
                size += len(data)
                if size >= SYNC_GROUP_BYTES:
                    group, staged, size = staged, [], 0
                    uris += self._publish(group, workers)
        except BaseException:  # the objects staged before the failing item are still written, each whole;
            try:  # the error raised is the one that happened
                self._publish(staged, workers)
            except Exception:  # noqa: BLE001 - a second failure must not hide the first
                pass
            raise
        return uris + self._publish(staged, workers)

    def _publish(self, staged: list[tuple[str, str, str]], workers: int) -> list[str]:
        """fsync staged files, rename them into place, then fsync their
        folders (so the renames survive a power loss); their URIs. On a
        failure nothing unsynced is published and no temporary file is left."""
        try:
            _fsync_all([tmp for tmp, _, _ in staged], workers)
            for tmp, path, _ in staged:
                os.replace(tmp, path)
            _fsync_all(sorted({os.path.dirname(path) for _, path, _ in staged}), workers)
        finally:
            for tmp, _, _ in staged:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return [self.key_uri(key) for _, _, key in staged]

    def _stage(self, key: str, data: bytes) -> tuple[str, str, str]:
        """(temporary path, final path, key) of ``data`` written, not yet synced."""
        path = self.path(key)
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        if folder not in self._swept:
            self._swept.add(folder)
            _remove_abandoned(folder)
        tmp = os.path.join(folder, f".{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return tmp, path, key

    def read_workers(self, remote: int = 16) -> int:
        """One: reads are CPU-bound and their Python part holds the GIL, so
        more threads only contend (see benchmarks/RESULTS.md)."""
        return 1

    def check_exists(self) -> None:
        if not os.path.isdir(self.root):
            what = "is not a folder" if os.path.exists(self.root) else "does not exist"
            raise StoreError(f"store {self.uri} {what}", transient=False)

    def check(self) -> None:
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise StoreError(f"store {self.uri} is not a folder (a file of that name exists)", transient=False)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {self.uri} is not usable: {exc.strerror or exc}") from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"store {self.uri} is not writable")


class S3Store(Store):
    """``s3://bucket/prefix`` through s3fs (endpoint from ``AWS_ENDPOINT_URL``):
    one PUT per object, which S3 makes visible only once complete."""

    def _open(self, uri: str) -> tuple[str, Any]:
        rest = uri.partition("://")[2]
        if not rest or rest.startswith("/"):
            raise StoreError(f"invalid S3 store URI {uri!r}: expected s3://bucket/prefix")
        return rest, fsspec.filesystem("s3", skip_instance_cache=True, **{**s3_options_from_env(), **self.options})

    @property
    def uri(self) -> str:
        return "s3://" + self.root

    def open_read(self, key: str):
        """A remote file object (pyarrow makes ranged reads)."""
        return self._call(self.fs.open, self.path(key), "rb")

    def put_many(self, items: Iterable[tuple[str, bytes]], workers: int = 16) -> list[str]:
        """Up to ``workers`` PUTs at once, at most ``2 * workers`` objects in
        memory; see ``Store.put_many``."""
        pending: deque = deque()
        uris: list[str] = []
        with ThreadPoolExecutor(workers) as pool:  # on an error, leaving it waits for the PUTs in flight
            for key, data in items:
                if len(pending) >= workers:
                    uris.append(pending.popleft().result())
                pending.append(pool.submit(self._put_one, key, data))
            uris.extend(f.result() for f in pending)
        return uris

    def _create(self, path: str, data: bytes) -> None:
        """A conditional PUT (``If-None-Match: *``): S3 refuses it when the key exists."""
        self.fs.pipe_file(path, data, mode="create")

    def _swap(self, path: str, expected: bytes, data: bytes | None) -> bool:
        """A conditional PUT or DELETE (``If-Match`` the ETag of the object
        read and found to hold ``expected``): S3 refuses it when the object
        changed in between."""
        from fsspec.asyn import sync

        bucket, _, key = path.partition("/")

        async def get() -> tuple[bytes, str]:
            out = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            async with out["Body"] as body:
                return await body.read(), out["ETag"]

        try:
            body, etag = sync(self.fs.loop, get)
        except FileNotFoundError:
            return False
        if body != expected:
            return False
        try:
            if data is None:
                self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
            else:
                self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
        except (FileNotFoundError, PermissionError):
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        self.invalidate()
        return True

    def _put_one(self, key: str, data: bytes) -> str:
        self._call(self.fs.pipe_file, self.path(key), data)
        return self.key_uri(key)

    def read_workers(self, remote: int = 16) -> int:
        """``remote``: reads are latency-bound."""
        return remote

    def check(self) -> None:
        bucket = self.root.split("/", 1)[0]
        try:
            found = self._call(self.fs.exists, bucket)
        except FileNotFoundError:
            found = False
        if not found:
            raise StoreError(f"store {self.uri}: bucket {bucket!r} does not exist or is not accessible")


def _precondition_failed(exc: BaseException) -> bool:
    """Whether S3 refused a conditional request because the object changed
    (HTTP 412, or 409 for a concurrent conditional write); s3fs raises it as
    an ``OSError`` caused by botocore's ``ClientError``."""
    while exc is not None:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _remove_abandoned(folder: str) -> None:
    """Remove the temporary files in ``folder`` older than ``PARTIAL_MAX_AGE``
    (a writer killed mid-write left them; no write takes that long)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if (entry.name.startswith(".") and entry.name.endswith(PARTIAL_SUFFIX) and entry.is_file(follow_symlinks=False)
                    and now - entry.stat(follow_symlinks=False).st_mtime > PARTIAL_MAX_AGE):
                os.unlink(entry.path)
        except OSError:  # removed by another writer meanwhile
            pass


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_all(paths: list[str], workers: int) -> None:
    """fsync files, up to ``workers`` at once (one at a time costs a journal
    commit each)."""
    thread_map(_fsync, paths, min(workers, len(paths)))


def thread_map(fn: Callable[[Any], Any], items: Iterable, workers: int) -> list:
    """``[fn(x) for x in items]``, on ``workers`` threads when more than one."""
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def open_store(store: str | Store, options: dict[str, Any] | None = None) -> Store:
    """A ``Store`` from a URI (or the store itself)."""
    return store if isinstance(store, Store) else Store(store, options or {})
