"""A pool of strings (graph names, node labels, node/edge types) as int32 codes.

Kernels only ever see the codes.  Encoding a batch column costs one
``dictionary_encode`` (in Arrow) plus one dict look-up per *distinct* string of
the batch, not per row.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ._ids import filled_values


class StringPool:
    def __init__(self, values=()):
        self._codes: dict[str, int] = {}
        self._values: list[str] = []
        self._arrow: pa.Array | None = None
        self._by_bytes: dict[bytes, int] = {}  # ASCII spans already seen -> code
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

    def encode(self, arr) -> np.ndarray:
        """int32 codes of a string or dictionary array, or of an ``(offsets, bytes,
        present)`` triple of ASCII spans; -1 for nulls."""
        if isinstance(arr, tuple):
            return self._encode_spans(*arr)
        n = len(arr)
        if n == 0 or arr.null_count == n:
            return np.full(n, -1, np.int32)
        if not pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_encode()
        dictionary = arr.dictionary.to_pylist()
        lut = np.array([self.code(s) for s in dictionary] + [-1], np.int32)
        # the indices from their buffers, nulls pointing at the -1 (pyarrow's fill_null
        # cost ~40 µs: most of a small batch's string coding)
        return lut[filled_values(arr.indices, len(dictionary))[0]]

    def _encode_spans(self, offs: np.ndarray, data: np.ndarray, present: np.ndarray) -> np.ndarray:
        n = present.shape[0]
        rows = np.flatnonzero(present)
        if rows.size > 64:  # one dictionary_encode in Arrow beats a Python loop
            return self.encode(utf8_array(offs, data, present))
        out = np.full(n, -1, np.int32)
        if rows.size:
            raw = data.tobytes()
            bounds = offs.tolist()
            seen = self._by_bytes
            for r in rows.tolist():
                b = raw[bounds[r]:bounds[r + 1]]
                c = seen.get(b)
                if c is None:
                    c = seen[b] = self.code(b.decode("utf-8"))
                out[r] = c
        return out

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


def utf8_array(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray, typ=pa.large_utf8()) -> pa.Array:
    """String array of ``data`` cut at int64 ``offsets`` (one more than rows), null where
    not ``valid``; the bytes are not copied."""
    n = len(valid)
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    if typ == pa.utf8():
        offsets = offsets.astype(np.int32)
    return pa.Array.from_buffers(typ, n, [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=-1 if mask is not None else 0)
