"""Weight tables: one Parquet file per run, written once, never modified.

Schema (one row per checkpoint epoch × state-dict tensor). Row groups never
span two epochs and hold at most ``ROW_GROUP_VALUES`` values unless a single
tensor is larger, which then has a row group of its own; with statistics on
``epoch``, ``name`` and ``layer`` a reader fetches one layer of many runs by
column projection and row-group pruning, without the rest of the weights:

=============  ================  ==============================================
column         type              meaning
=============  ================  ==============================================
epoch          int32             checkpoint epoch (0 = initialization)
name           string            state-dict key, e.g. ``layers.0.weight``
layer          int16             index along the chain (output layer = depth)
role           string            ``weight``, ``bias``, ``weight_ih``, ...
shape          list<int32>       tensor shape
dtype          string            torch dtype name
values         list<float32>     values (float32/16/bf16 tensors; exact)
raw            binary            little-endian bytes for other dtypes
checksum       string            blake2b-128 of every other column of the row
                                 (format 2: the values enter as their CRC-32)
run_id         string            the run's content hash (constant per file)
seed           int64             the run's seed (constant per file)
test_accuracy  float64           final test accuracy (constant per file)
=============  ================  ==============================================

File metadata key ``weightsim`` holds JSON: format version, run id, dataset
(name, fingerprint), problem, arch name and ``ArchSpec``, training config,
seed, metrics, checkpoint epochs, library and torch versions, device, and the
file checksum (sha256 over the row checksums and the rest of the metadata),
so any change to a value, a column or the metadata is detected. No pickle.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import __version__
from .archs import ArchSpec, param_shapes
from .errors import SpecError, StoreError, TableError, WeightsimError
from .store import Store, open_store
from .archs import finite
from .parquet import decode_parquet, parquet_bytes, row_groups

FORMAT = 2  # 1: values hashed with blake2b (still read); 2: values enter the row checksum as CRC-32
ROW_GROUP_VALUES = 1 << 18  # 1 MiB of float32 per row group
META_KEY = b"weightsim"
WEIGHTS_GLOB = "weights/**/*.parquet"
SCHEMA = pa.schema([
    ("epoch", pa.int32()), ("name", pa.string()), ("layer", pa.int16()), ("role", pa.string()),
    ("shape", pa.list_(pa.int32())), ("dtype", pa.string()), ("values", pa.list_(pa.float32())),
    ("raw", pa.binary()), ("checksum", pa.string()), ("run_id", pa.string()), ("seed", pa.int64()),
    ("test_accuracy", pa.float64()),
])
_EXACT_IN_F32 = {torch.float32, torch.float16, torch.bfloat16}
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                        torch.int64, torch.int32, torch.int16, torch.int8,
                                                        torch.uint8, torch.bool)}
_DTYPE_NAMES = {d: name for name, d in _DTYPES.items()}
_LAYER = re.compile(r"^(?:layers|convs|norms|rnns)\.(\d+)\.")


@dataclass
class Run:
    """One checkpoint of one run: ``state_dict`` (name → tensor), ``spec``,
    ``meta`` (dataset, problem, arch, seed, epoch, test_accuracy, run_id, ...)."""

    state_dict: dict[str, torch.Tensor]
    spec: ArchSpec
    meta: dict
    uri: str


def _layer_role(name: str, depth: int) -> tuple[int, str]:
    m = _LAYER.match(name)
    layer = int(m.group(1)) if m else depth
    role = name.rsplit(".", 1)[-1].removesuffix("_l0")
    return layer, role


ROW_KEYS = ("epoch", "name", "layer", "role", "dtype", "shape", "run_id", "seed", "test_accuracy")


def _key_text(keys: Sequence) -> str:
    """The text of row key values that enters a row checksum."""
    return "|".join(map(repr, keys)) + "|"


def _row_checksum(key_text: str, data: memoryview, fmt: int = FORMAT) -> str:
    """blake2b-128 over every column of a row: ``key_text`` (``_key_text``
    of the ``ROW_KEYS`` values, in order) and the values, as raw bytes
    (format 1) or as their CRC-32 and length (format 2: hashing at memory
    speed, still catching any corrupted value)."""
    h = hashlib.blake2b(key_text.encode(), digest_size=16)
    if fmt == 1:
        h.update(data)
    else:
        h.update(zlib.crc32(data).to_bytes(4, "little") + data.nbytes.to_bytes(8, "little"))
    return h.hexdigest()


def _file_checksum(row_checksums: list[str], meta: dict) -> str:
    """sha256 over the row checksums and the metadata (without this checksum)."""
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(("".join(row_checksums) + json.dumps(rest, sort_keys=True)).encode()).hexdigest()


def _as_bytes(t: torch.Tensor) -> tuple[str, np.ndarray | None, memoryview]:
    """(dtype name, float32 values or None, little-endian bytes of the values)."""
    dtype = _DTYPE_NAMES.get(t.dtype)
    if dtype is None:
        raise SpecError(f"cannot store tensors of dtype {str(t.dtype).removeprefix('torch.')}")
    t = t.detach().cpu()
    if t.dtype in _EXACT_IN_F32:
        f32 = np.ascontiguousarray(t.numpy() if t.dtype == torch.float32 else t.float().numpy()).reshape(-1)
        return dtype, f32, memoryview(f32).cast("B")
    t = t.contiguous()
    arr = t.numpy().reshape(-1)
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return dtype, None, memoryview(arr.tobytes())


@dataclass(frozen=True)
class _Layout:
    """What a weight table's columns hold that depends only on its structure
    (which tensors, dtypes and shapes at which epochs): the same for every
    run of a solution set, so built once (``_layout``) and shared."""

    arrays: dict[str, pa.Array]  # epoch, name, layer, role, shape, dtype
    key_texts: tuple[str, ...]  # per row: _key_text of those columns
    in_values: tuple[bool, ...]  # per row: stored in ``values`` (else ``raw``)
    offsets: pa.Array
    null: pa.Array
    groups: list[tuple[int, int]]


@functools.lru_cache(maxsize=64)
def _layout(structure: tuple[tuple[int, str, str, tuple[int, ...]], ...], depth: int) -> _Layout:
    """``structure``: (epoch, name, dtype, shape) per row, in row order."""
    epochs, names, dtypes, shapes = zip(*structure) if structure else ((),) * 4
    layers, roles = zip(*(_layer_role(n, depth) for n in names)) if names else ((), ())
    in_values = tuple(_DTYPES[d] in _EXACT_IN_F32 for d in dtypes)
    sizes = [math.prod(s) if v else 0 for s, v in zip(shapes, in_values)]
    cols = {"epoch": epochs, "name": names, "layer": layers, "role": roles, "dtype": dtypes,
            "shape": [list(s) for s in shapes]}
    return _Layout(arrays={k: pa.array(v, SCHEMA.field(k).type) for k, v in cols.items()},
                   key_texts=tuple(_key_text(row) for row in zip(*(cols[k] for k in ROW_KEYS[:6]))),
                   in_values=in_values, offsets=pa.array(np.concatenate([[0], np.cumsum(sizes)]), pa.int32()),
                   null=pa.array([not v for v in in_values], pa.bool_()),
                   groups=row_groups(epochs, sizes, ROW_GROUP_VALUES))


def encode(checkpoints: dict[int, dict[str, torch.Tensor]], meta: dict) -> bytes:
    """Parquet bytes of a run (``meta`` must hold ``run_id``, ``seed``,
    ``spec``, ``metrics``)."""
    structure, datas, flats = [], [], []
    for epoch in sorted(checkpoints):
        for name, t in checkpoints[epoch].items():
            dtype, f32, data = _as_bytes(t)
            structure.append((epoch, name, dtype, tuple(t.shape)))
            datas.append(data)
            if f32 is not None:
                flats.append(f32)
    layout = _layout(tuple(structure), len(meta["spec"]["widths"]))
    const = (meta["run_id"], meta["seed"], meta["metrics"].get("test_accuracy"))
    suffix = _key_text(const)
    checksums = [_row_checksum(text + suffix, data, FORMAT) for text, data in zip(layout.key_texts, datas)]
    n = len(structure)
    flat = np.concatenate(flats) if flats else np.zeros(0, np.float32)
    arrays = {**layout.arrays, **{k: pa.array([v] * n, SCHEMA.field(k).type) for k, v in zip(ROW_KEYS[6:], const)},
              "values": pa.ListArray.from_arrays(layout.offsets, pa.array(flat), mask=layout.null),
              "raw": pa.array([None if v else bytes(d) for v, d in zip(layout.in_values, datas)], pa.binary()),
              "checksum": pa.array(checksums, pa.string())}
    meta = json.loads(json.dumps({**meta, "format": FORMAT, "checkpoints": sorted(checkpoints),
                                  "library_version": __version__, "torch_version": torch.__version__}))
    meta["checksum"] = _file_checksum(checksums, meta)
    table = pa.Table.from_arrays([arrays[k] for k in SCHEMA.names],
                                 schema=SCHEMA.with_metadata({META_KEY: json.dumps(meta)}))
    return parquet_bytes(table, layout.groups, ["epoch", "name", "layer"])


def write(store: str | Store, key: str, checkpoints: dict[int, dict[str, torch.Tensor]], meta: dict) -> str:
    """Write a run's weight table atomically under ``key``; return its URI."""
    return open_store(store).put_bytes(key, encode(checkpoints, meta))


def write_many(store: str | Store, runs: Iterable[tuple[str, dict[int, dict[str, torch.Tensor]], dict]]) -> list[str]:
    """Write the weight tables of (key, checkpoints, meta) triples, each as
    ``write`` does; return their URIs in order. Tables are encoded one after
    another while earlier ones are written concurrently (``Store.put_many``)."""
    return open_store(store).put_many((key, encode(cps, meta)) for key, cps, meta in runs)


def _writable_floats(arr: pa.Array) -> np.ndarray:
    """The values of a float32 Arrow array without nulls as a writable numpy
    array: a view of its buffer when that is mutable (freshly decoded
    Parquet), else one copy."""
    buf = arr.buffers()[1]
    if buf is not None and buf.is_mutable and arr.null_count == 0:
        return np.frombuffer(buf, np.float32, len(arr), arr.offset * 4)
    return arr.to_numpy(zero_copy_only=False).copy()


def decode_rows(table: pa.Table, uri: str, fmt: int = FORMAT) -> list[tuple[int, str, torch.Tensor]]:
    """Rebuild and verify every row of a (possibly projected) table: (epoch,
    name, tensor) per row. Float tensors are views of the table's value
    buffer when that is mutable (a table just read), else of one copy."""
    values = table.column("values").combine_chunks()
    if values.type != SCHEMA.field("values").type:
        raise TableError(uri, "values are not float32")
    offsets = values.offsets.to_numpy()
    flat = _writable_floats(values.values)[offsets[0]:offsets[-1]]  # tensors are views of it
    offsets = (offsets - offsets[0]).tolist()
    out = []
    rows = zip(*(table.column(c).to_pylist() for c in (*ROW_KEYS, "raw", "checksum")))
    for i, (*keys, raw, checksum) in enumerate(rows):
        epoch, name, _, _, dtype, shape = keys[:6]
        if dtype not in _DTYPES or shape is None or name is None:
            raise TableError(uri, f"row {i} has an invalid dtype, shape or name")
        size = math.prod(shape)
        if raw is None:
            arr = flat[offsets[i]:offsets[i + 1]]
            data = memoryview(arr).cast("B")
        else:
            np_dtype = torch.empty(0, dtype=_DTYPES[dtype]).numpy().dtype.newbyteorder("<")
            if len(raw) != size * np_dtype.itemsize:
                raise TableError(uri, f"row {name}@{epoch} has {len(raw)} bytes for shape {shape}")
            arr = np.frombuffer(raw, np_dtype).astype(np_dtype.newbyteorder("="))
            data = memoryview(raw)
        if arr.size != size:
            raise TableError(uri, f"row {name}@{epoch} has {arr.size} values for shape {shape}")
        if _row_checksum(_key_text(keys), data, fmt) != checksum:
            raise TableError(uri, f"checksum mismatch in row {name}@{epoch}")
        t = torch.from_numpy(arr.reshape(shape))
        out.append((epoch, name, t if dtype == "float32" else t.to(_DTYPES[dtype])))
    return out


def _parse(data: bytes, uri: str) -> tuple[pa.Table, dict]:
    try:
        table = decode_parquet(data)
        raw_meta = (table.schema.metadata or {}).get(META_KEY)
        if raw_meta is None:
            raise TableError(uri, "no weightsim metadata (not a weight table)")
        meta = json.loads(raw_meta)
    except TableError:
        raise
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
        raise TableError(uri, f"unreadable Parquet ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (1, FORMAT):
        raise TableError(uri, f"unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    if not table.schema.equals(SCHEMA):  # the usual case costs one comparison
        types = dict(zip(table.schema.names, table.schema.types))
        missing = [f.name for f in SCHEMA if types.get(f.name) != f.type]
        if missing:
            raise TableError(uri, f"wrong schema (columns {missing})")
    if _file_checksum(table.column("checksum").to_pylist(), meta) != meta.get("checksum"):
        raise TableError(uri, "file checksum mismatch (rows missing or altered)")
    return table, meta


def read_table(data: bytes, uri: str) -> tuple[pa.Table, dict]:
    """The rows and metadata of a weight table held in memory, with the file
    checksum and every row verified (a ``TableError`` naming ``uri`` if not)."""
    try:
        table, meta = _parse(data, uri)
        decode_rows(table, uri, meta["format"])
    except TableError:
        raise
    except (pa.ArrowException, ValueError, TypeError, KeyError) as exc:
        raise TableError(uri, f"malformed table ({type(exc).__name__}: {str(exc)[:200]})") from None
    return table, meta


def read_bytes(data: bytes, uri: str, epochs: Sequence[int | None] = (None,)) -> list[Run]:
    """Decode and verify a weight table held in memory: one ``Run`` per
    requested epoch (``None`` = the final checkpoint). Whatever is wrong with
    the bytes, the only error is a ``TableError`` naming ``uri``."""
    try:
        return _read(data, uri, epochs)
    except TableError:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError, OverflowError,
            RuntimeError) as exc:
        raise TableError(uri, f"malformed table ({type(exc).__name__}: {str(exc)[:200]})") from None


def _read(data: bytes, uri: str, epochs: Sequence[int | None]) -> list[Run]:
    table, meta = _parse(data, uri)
    try:
        spec = ArchSpec.from_dict(meta["spec"])
        final = int(meta["config"]["epochs"])
        metrics = meta.get("metrics", {})
        info = {"run_id": meta["run_id"], "dataset": meta["dataset"]["name"],
                "dataset_fingerprint": meta["dataset"].get("fingerprint"), "problem": meta["problem"]["name"],
                "arch": meta.get("arch"), "seed": meta["seed"], "final_epoch": final,
                "test_accuracy": metrics.get("test_accuracy"), "metrics": metrics, "config": meta["config"],
                "checkpoints": meta.get("checkpoints"), "library_version": meta.get("library_version")}
    except (KeyError, TypeError, ValueError, WeightsimError) as exc:
        raise TableError(uri, f"bad metadata ({type(exc).__name__}: {exc})") from None
    rows = decode_rows(table, uri, meta["format"])
    expected = param_shapes(spec)
    runs = []
    for epoch in epochs:
        want = final if epoch is None else int(epoch)
        state = {name: t for e, name, t in rows if e == want}
        if not state:
            raise TableError(uri, f"no checkpoint for epoch {want} (has {sorted({e for e, _, _ in rows})})")
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != expected:
            diff = sorted(set(got.items()) ^ set(expected.items()))[:3]
            raise TableError(uri, f"tensors do not match the arch spec (e.g. {diff})")
        if not finite(state):
            raise TableError(uri, f"non-finite weights at epoch {want}")
        runs.append(Run(state, spec, {**info, "epoch": want}, uri))
    return runs


@functools.lru_cache(maxsize=32)
def _store_of_root(root: str) -> Store:
    return open_store(root)


def _store_of(uri: str) -> Store:
    """The store of a table URI: one ``Store`` (one S3 client) per root."""
    return _store_of_root(uri.rsplit("/weights/", 1)[0] if "/weights/" in uri else uri.rsplit("/", 1)[0])


def read_run_epochs(uri: str, epochs: Sequence[int | None], store: Store | None = None) -> list[Run]:
    """Several checkpoints of one run from a single read (see ``read_run``)."""
    st = store or _store_of(uri)
    try:
        data = st.get_bytes(st.key_of(uri))
    except FileNotFoundError:
        raise TableError(uri, "no such file") from None
    except StoreError as exc:
        raise table_or_outage(uri, exc) from None
    return read_bytes(data, uri, epochs)


def table_or_outage(uri: str, exc: StoreError) -> WeightsimError:
    """A storage fault reading table ``uri``: the ``StoreError`` itself if
    it may pass (an outage: retried, never a bad table), else a
    ``TableError`` (the table is not a readable file)."""
    return exc if exc.transient else TableError(uri, str(exc))


def read_meta(uri: str, store: Store | None = None) -> dict:
    """A weight table's metadata (run id, dataset, problem, seed, metrics,
    checksum, ...) from its Parquet footer alone, without the weights. Its
    ``checksum`` names the table's content; the rows are not verified here."""
    st = store or _store_of(uri)
    try:
        with st.open_read(st.key_of(uri)) as f:
            meta = json.loads((pq.read_schema(f).metadata or {})[META_KEY])
        if not isinstance(meta, dict) or meta.get("format") not in (1, FORMAT) or not meta.get("checksum"):
            raise ValueError("not a weight table")
    except FileNotFoundError:
        raise TableError(uri, "no such file") from None
    except StoreError as exc:
        raise table_or_outage(uri, exc) from None
    except (pa.ArrowException, OSError, KeyError, ValueError, TypeError) as exc:
        raise TableError(uri, f"unreadable metadata ({type(exc).__name__}: {str(exc)[:200]})") from None
    return meta


def read_run(uri: str, epoch: int | None = None, store: Store | None = None) -> Run:
    """Read and verify a weight table: the final checkpoint unless ``epoch`` is
    given (0 = initialization). Raises ``TableError`` naming ``uri`` for a
    missing, truncated, corrupted or inconsistent table."""
    return read_run_epochs(uri, [epoch], store)[0]


def list_runs(store: str | Store) -> list[str]:
    """URIs of all weight tables in a store (sorted)."""
    st = open_store(store)
    st.invalidate()
    return [st.key_uri(k) for k in st.glob(WEIGHTS_GLOB)]
