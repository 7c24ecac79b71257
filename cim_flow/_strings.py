"""A pool of strings (graph names, node labels, node/edge types) as int32 codes.

Kernels only ever see the codes.  Encoding a batch column costs one
``dictionary_encode`` (in Arrow) plus one dict look-up per *distinct* string of
the batch, not per row.
"""
from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa

from kernels.hashing import span_groups
from kernels.jsonscan import gather_spans

from ._ids import filled_values, string_buffers, validity


class StringPool:
    def __init__(self, values=()):
        self._codes: dict[str, int] = {}
        self._values: list[str] = []
        self._by_bytes: dict[bytes, int] = {}  # ASCII spans already seen -> code
        self._json = _Texts(_JSON.encode)  # the values' JSON text (see json_values)
        self._utf8 = _Texts(str.encode)  # the values' UTF-8 bytes (see decode)
        for v in values:
            self.code(v)

    def __len__(self) -> int:
        return len(self._values)

    def code(self, s: str) -> int:
        c = self._codes.get(s)
        if c is None:
            c = self._codes[s] = len(self._values)
            self._values.append(s)
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
        typ = arr.type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            # read from the buffers and grouped in one compiled pass (dictionary_encode
            # cost ~25 us a column of a 15-row batch)
            offs, data = string_buffers(arr)
            present = validity(arr)
            return self._encode_spans(offs.astype(np.int64), data, np.ones(n, np.bool_) if present is None else present)
        if not pa.types.is_dictionary(typ):
            arr = arr.dictionary_encode()
        dictionary = arr.dictionary.to_pylist()
        lut = np.array([self.code(s) for s in dictionary] + [-1], np.int32)
        # the indices from their buffers, nulls pointing at the -1 (pyarrow's fill_null
        # cost ~40 µs: most of a small batch's string coding)
        return lut[filled_values(arr.indices, len(dictionary))[0]]

    def _encode_spans(self, offs: np.ndarray, data: np.ndarray, present: np.ndarray) -> np.ndarray:
        # rows grouped by their bytes in one compiled pass; Python sees each distinct value
        # once (a 1,400-row batch's dictionary_encode in Arrow and a per-row loop for small
        # ones were ~50 us a column)
        seen = self._by_bytes
        n = present.shape[0]
        if n <= _FEW_ROWS:  # a handful of rows (a 1-event batch): their bytes looked up directly,
            # cheaper than the compiled grouping's call and its two returned arrays
            out = np.full(n, -1, np.int32)
            for r in range(n):
                if present[r]:
                    out[r] = self._span_code(seen, data[offs[r]:offs[r + 1]].tobytes())
            return out
        if not present.any():
            return np.full(n, -1, np.int32)
        first, rep = span_groups(offs, data, present)
        lut = np.empty(len(first) + 1, np.int32)
        lut[-1] = -1  # absent rows (rep -1)
        for k, r in enumerate(first.tolist()):
            lut[k] = self._span_code(seen, data[offs[r]:offs[r + 1]].tobytes())
        return lut[rep]

    def _span_code(self, seen: dict, b: bytes) -> int:
        """The code of UTF-8 bytes ``b``, coded on first sight (``seen``: bytes -> code)."""
        c = seen.get(b)
        if c is None:
            c = seen[b] = self.code(b.decode("utf-8"))
        return c

    def decode(self, codes: np.ndarray) -> pa.Array:
        """utf8 array for int32 codes (-1 becomes null), gathered from the pool's bytes by
        the scanner's span gather: pyarrow's ``take`` would import pyarrow.compute (~65-130
        ms, paid before a service's ready line by its first listing of nodes or graphs)."""
        codes = np.asarray(codes, np.int64)
        if len(codes) == 0:
            return pa.array([], pa.utf8())
        if len(self._values) == 0:
            return pa.nulls(len(codes), pa.utf8())
        offs, data = self._utf8.view(self._values)
        n = codes.shape[0]
        valid = codes >= 0
        c = np.where(valid, codes, 0)
        spans = np.empty((n, 1, 2), np.int64)  # each row's value as a span of the pool's bytes
        spans[:, 0, 0] = offs[c]
        spans[:, 0, 1] = offs[c + 1]
        buf = data.view()
        buf.flags.writeable = False  # the argument types the scanner's calls compiled for
        out_offs, out = gather_spans(buf, spans, valid.reshape(n, 1), 0)
        return utf8_array(out_offs, out, valid, pa.utf8())

    def values(self) -> list[str]:
        return list(self._values)

    def truncate(self, n: int) -> None:
        """Forget every value coded from ``n`` on (those a batch that was then refused
        had added: nothing holds their codes)."""
        if n >= len(self._values):
            return
        for v in self._values[n:]:
            del self._codes[v]
        del self._values[n:]
        self._by_bytes = {b: c for b, c in self._by_bytes.items() if c < n}
        for texts in (self._json, self._utf8):
            texts.n = min(texts.n, n)

    def compacted(self, used: np.ndarray) -> tuple["StringPool", np.ndarray]:
        """A pool of only the values whose codes appear in ``used`` (codes; -1s are
        ignored), in their old order, and the old-to-new code map ``lut``: ``lut[c]`` is
        code ``c``'s new code, ``-1`` for a dropped one, and ``lut[-1]`` is ``-1`` (so
        ``lut[codes]`` maps a code column, nulls included)."""
        n = len(self._values)
        keep = np.zeros(n + 1, np.bool_)
        used = np.asarray(used)
        keep[used[used >= 0]] = True
        idx = np.flatnonzero(keep[:n])
        lut = np.full(n + 1, -1, np.int32)
        lut[idx] = np.arange(idx.size, dtype=np.int32)
        return StringPool([self._values[i] for i in idx.tolist()]), lut

    def json_values(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, data)``: code ``c``'s value as JSON text (quoted and escaped, as
        msgspec writes it) is ``data[offsets[c]:offsets[c + 1]]``.  Kept up to date by
        appending the values added since the last call (both arrays grow by doubling)."""
        return self._json.view(self._values)


class _Texts:
    """Every pooled value as bytes (``encode(value)``) in one buffer, with offsets:
    appended as values are added, both arrays growing by doubling."""

    def __init__(self, encode):
        self.encode = encode
        self.n = 0
        self.offs = np.zeros(1, np.int64)
        self.data = np.empty(0, np.uint8)

    def view(self, values: list) -> tuple[np.ndarray, np.ndarray]:
        n = len(values)
        if self.n < n:
            new = [self.encode(v) for v in values[self.n:n]]
            lens = np.fromiter(map(len, new), np.int64, len(new))
            start = int(self.offs[self.n])
            need = start + int(lens.sum())
            if self.offs.shape[0] < n + 1:
                offs = np.zeros(max(n + 1, 2 * self.offs.shape[0]), np.int64)
                offs[:self.n + 1] = self.offs[:self.n + 1]
                self.offs = offs
            if self.data.shape[0] < need:
                data = np.empty(max(need, 2 * self.data.shape[0]), np.uint8)
                data[:start] = self.data[:start]
                self.data = data
            np.cumsum(lens, out=self.offs[self.n + 1:n + 1])
            self.offs[self.n + 1:n + 1] += start
            self.data[start:need] = np.frombuffer(b"".join(new), np.uint8)
            self.n = n
        return self.offs[:n + 1], self.data[:self.offs[n]]


_JSON = msgspec.json.Encoder()
_FEW_ROWS = 4  # up to this many rows a column is coded row by row (see _encode_spans)


def utf8_array(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray, typ=pa.large_utf8()) -> pa.Array:
    """String array of ``data`` cut at int64 ``offsets`` (one more than rows), null where
    not ``valid``; the bytes are not copied."""
    n = len(valid)
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    if typ == pa.utf8():
        offsets = offsets.astype(np.int32)
    return pa.Array.from_buffers(typ, n, [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                 null_count=-1 if mask is not None else 0)
