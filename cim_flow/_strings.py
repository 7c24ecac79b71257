"""A pool of strings (graph names, node labels, node/edge types) as int32 codes.

Kernels only ever see the codes.  Encoding a batch column costs one
``dictionary_encode`` (in Arrow) plus one dict look-up per *distinct* string of
the batch, not per row.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class StringPool:
    def __init__(self, values=()):
        self._codes: dict[str, int] = {}
        self._values: list[str] = []
        self._arrow: pa.Array | None = None
        for v in values:
            self.code(v)

    def __len__(self) -> int:
        return len(self._values)

    def code(self, s: str) -> int:
        c = self._codes.get(s)
        if c is None:
            c = self._codes[s] = len(self._values)
            self._values.append(s)
            self._arrow = None
        return c

    def get(self, s: str) -> int:
        """Code of ``s``, or -1 when the pool has never seen it."""
        return self._codes.get(s, -1)

    def value(self, code: int) -> str | None:
        return None if code < 0 else self._values[code]

    def encode(self, arr: pa.Array) -> np.ndarray:
        """int32 codes of a string or dictionary array; -1 for nulls."""
        n = len(arr)
        if n == 0 or arr.null_count == n:
            return np.full(n, -1, np.int32)
        if not pa.types.is_dictionary(arr.type):
            arr = pc.dictionary_encode(arr)
        dictionary = arr.dictionary.to_pylist()
        lut = np.array([self.code(s) for s in dictionary] + [-1], np.int32)
        idx = arr.indices.fill_null(len(dictionary)).to_numpy(zero_copy_only=False)
        return lut[idx]

    def decode(self, codes: np.ndarray) -> pa.Array:
        """utf8 array for int32 codes (-1 becomes null)."""
        codes = np.asarray(codes)
        if self._arrow is None:
            self._arrow = pa.array(self._values, pa.utf8())
        if len(codes) == 0:
            return pa.array([], pa.utf8())
        mask = codes < 0
        idx = pa.array(np.where(mask, 0, codes), mask=mask if mask.any() else None)
        if len(self._values) == 0:
            return pa.nulls(len(codes), pa.utf8())
        return self._arrow.take(idx)

    def values(self) -> list[str]:
        return list(self._values)
