"""A restricted unpickler for CIFAR python batches: only plain containers,
bytes, str and numpy arrays, with a budget on the bytes it builds."""
from __future__ import annotations

import io
import pickle

import numpy as np

from ..errors import DatasetError


class _PlainUnpickler(pickle._Unpickler):
    """Rebuilds only plain containers and numpy arrays; anything else (a
    function, a class, ``os.system``) is refused before it is created. The
    bytes it creates (arrays, encoded text) are counted against a budget, so
    a small file that references one large object many times cannot
    allocate without bound. Pure-Python unpickler: the budget needs a hook
    on every object built."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles spell bytes; a pure str→bytes function

    def __init__(self, file, budget: int, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = budget

    def _charge(self, nbytes: int) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise pickle.UnpicklingError("it builds far more data than the file holds")

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}: CIFAR batches hold plain data only")
        fn = super().find_class(module, name)
        if (module, name) != ("_codecs", "encode"):
            return fn

        def encode(*args):
            self._charge(len(args[0]) if args and isinstance(args[0], str) else 0)
            return fn(*args)
        return encode

    def load_build(self):
        inst = self.stack[-2]
        super().load_build()
        if isinstance(inst, np.ndarray):
            self._charge(inst.nbytes)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def read_cifar_batch(data: bytes, where: str = "CIFAR batch") -> dict:
    """Decode one CIFAR python batch with the restricted unpickler; keys as str."""
    try:
        obj = _PlainUnpickler(io.BytesIO(data), 4 * len(data) + (1 << 20), encoding="bytes").load()
    except Exception as exc:  # any malformed or hostile pickle
        raise DatasetError(f"{where}: not a plain CIFAR batch ({str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: not a CIFAR batch (top level is {type(obj).__name__})")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
