"""Arrow columns gathered batch by batch into buffers that grow in place, for the tables a build writes.

A part of ten million rows gathers each column of its tables in small Arrow batches; joined with
`pa.concat_arrays`, a column is held twice (its batches and their copy) and the allocator keeps the freed
batches' pages. A `GrowingColumn` appends each batch's buffers to `bytearray`s instead: a large one grows
by the allocator's realloc, which moves pages rather than copying them, so the finished column costs
about its own size and becomes one Arrow array without a copy (`array`).

Types handled: fixed-width primitives, string and large_string, and lists of those, each nullable or not.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def _bits(array: pa.Array) -> np.ndarray:
    """The validity of each value of an unsliced array, as booleans."""
    validity = array.buffers()[0]
    if validity is None:
        return np.ones(len(array), dtype=bool)
    return np.unpackbits(np.frombuffer(validity, dtype=np.uint8), count=len(array), bitorder="little").astype(bool)


class GrowingColumn:
    """One column of `type_`, appended an Arrow array at a time (`append`), finished once (`array`)."""

    def __init__(self, type_: pa.DataType, nullable: bool = True):
        self.type, self.nullable = type_, nullable
        self.length = self.nulls = 0
        self.validity = bytearray()  # little-endian bitmap of `length` bits, kept for a nullable column
        self.child: GrowingColumn | None = None
        self.offsets: bytearray | None = None
        self.data = bytearray()
        self.offset_type: np.dtype = np.dtype(np.int32)  # of a string or list column's offsets
        self.finished: pa.Array | None = None
        self.failed = False
        if pa.types.is_primitive(type_) and not pa.types.is_boolean(type_):
            self.width = type_.bit_width // 8
            return
        if not (pa.types.is_list(type_) or pa.types.is_string(type_) or pa.types.is_large_string(type_)):
            raise TypeError(f"no growing column for {type_}")
        if pa.types.is_list(type_):
            self.child = GrowingColumn(type_.value_type, type_.value_field.nullable)
        if pa.types.is_large_string(type_):
            self.offset_type = np.dtype(np.int64)
        self.offsets = bytearray(np.zeros(1, dtype=self.offset_type).tobytes())
        self.end = 0  # the last offset: bytes of string data, or child values, so far

    def append(self, array: pa.Array) -> None:
        """Append `array`'s values. A refused one (TypeError, ValueError) leaves the column unusable:
        what it had gathered may be partly updated, so it takes nothing more and gives no array."""
        if self.finished is not None or self.failed:
            raise RuntimeError(f"the column was {'finished' if self.finished is not None else 'left incomplete'}")
        try:
            self._append(array)
        except Exception:
            self.failed = True
            raise

    def _append(self, array: pa.Array) -> None:
        if not array.type.equals(self.type):
            raise TypeError(f"a {array.type} array appended to a {self.type} column")
        n = len(array)
        if not n:
            return
        if array.offset:
            array = pa.concat_arrays([array])  # a slice, copied to start at its first value
        if array.null_count and not self.nullable:
            raise ValueError(f"a null in a non-nullable {self.type} column")
        if self.nullable:
            self._append_bits(_bits(array))
        self.nulls += array.null_count
        buffers = [b"" if buffer is None else buffer for buffer in array.buffers()]
        if self.offsets is None:
            self.data += memoryview(buffers[1])[:n * self.width]
        else:
            offsets = np.frombuffer(buffers[1], dtype=self.offset_type, count=n + 1)
            first, last = int(offsets[0]), int(offsets[-1])
            moved = offsets[1:] - (first - self.end)
            if self.offset_type == np.int32 and self.end + last - first > np.iinfo(np.int32).max:
                raise ValueError(f"a {self.type} column past 2 GiB of values")
            self.offsets += moved.astype(self.offset_type).tobytes()
            if self.child is not None:
                self.child.append(array.values.slice(first, last - first))
            else:
                self.data += memoryview(buffers[2])[first:last]
            self.end += last - first
        self.length += n

    def _append_bits(self, new: np.ndarray) -> None:
        used = self.length % 8
        if used:  # the last byte is partly filled: its bits go again in front of the new ones
            head = np.unpackbits(np.frombuffer(self.validity[-1:], dtype=np.uint8), count=used, bitorder="little")
            del self.validity[-1]
            new = np.concatenate([head.astype(bool), new])
        self.validity += np.packbits(new, bitorder="little").tobytes()

    def array(self) -> pa.Array:
        """The column as one array over the gathered buffers (no copy). Nothing may be appended after."""
        if self.failed:
            raise RuntimeError("the column was left incomplete")
        if self.finished is None:
            validity = pa.py_buffer(self.validity) if self.nulls else None
            if self.offsets is None:
                self.finished = pa.Array.from_buffers(self.type, self.length, [validity, pa.py_buffer(self.data)],
                                                      null_count=self.nulls)
            elif self.child is not None:
                self.finished = pa.Array.from_buffers(self.type, self.length, [validity, pa.py_buffer(self.offsets)],
                                                      null_count=self.nulls, children=[self.child.array()])
            else:
                self.finished = pa.Array.from_buffers(self.type, self.length,
                                                      [validity, pa.py_buffer(self.offsets), pa.py_buffer(self.data)],
                                                      null_count=self.nulls)
        return self.finished
