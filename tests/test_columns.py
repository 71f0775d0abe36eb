"""Growing columns (`shared.index.columns`) against Arrow's own concatenation of the same batches."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.index.columns import GrowingColumn

TYPES = {
    "int32": (pa.int32(), st.integers(-2**31, 2**31 - 1)),
    "float64": (pa.float64(), st.floats(allow_nan=False)),
    "string": (pa.string(), st.text(max_size=12)),
    "large_string": (pa.large_string(), st.text(max_size=12)),
    "list<string>": (pa.list_(pa.string()), st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=4)),
    "list<int32>": (pa.list_(pa.int32()), st.lists(st.integers(-5, 5), max_size=4)),
}


@pytest.mark.parametrize("name", list(TYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_batches_grown_equal_their_concatenation(name, data):
    type_, values = TYPES[name]
    batches = data.draw(st.lists(st.lists(st.one_of(st.none(), values), max_size=20), max_size=6))
    arrays = [pa.array(batch, type=type_) for batch in batches]
    column = GrowingColumn(type_)
    for array in arrays:
        column.append(array)
    grown = column.array()
    grown.validate(full=True)
    assert grown.equals(pa.concat_arrays(arrays) if arrays else pa.array([], type=type_))
    assert grown.null_count == sum(a.null_count for a in arrays)


def test_slices_and_empty_arrays_append_their_own_values_and_a_finished_column_takes_no_more():
    column = GrowingColumn(pa.list_(pa.string()), nullable=False)
    column.append(pa.array([["a"], ["b", "c"], [], ["d"]], type=pa.list_(pa.string())).slice(1, 2))
    column.append(pa.array([], type=pa.list_(pa.string())))
    assert column.array().to_pylist() == [["b", "c"], []]
    with pytest.raises(RuntimeError, match="finished"):
        column.append(pa.array([["e"]], type=pa.list_(pa.string())))
    nullable = GrowingColumn(pa.float64())
    nullable.append(pa.array([1.0, None, 3.0]))
    nullable.append(pa.array([None, 5.0, 6.0, None]).slice(1, 3))  # a slice of a bitmap off a byte
    nullable.append(pa.Array.from_buffers(pa.float64(), 0, [None, None]))  # no buffers at all
    assert nullable.array().to_pylist() == [1.0, None, 3.0, 5.0, 6.0, None]


def test_a_refused_batch_leaves_the_column_refusing_everything():
    column = GrowingColumn(pa.list_(pa.int32()))
    column.append(pa.array([[1]], type=pa.list_(pa.int32())))
    child_null = GrowingColumn(pa.list_(pa.field("item", pa.int32(), nullable=False)))
    with pytest.raises(ValueError, match="non-nullable"):
        child_null.append(pa.array([[1, None]], type=pa.list_(pa.int32())).cast(child_null.type, safe=False))
    for use in (lambda: child_null.append(pa.array([[2]], type=child_null.type)), child_null.array):
        with pytest.raises(RuntimeError, match="incomplete"):
            use()
    assert column.array().to_pylist() == [[1]]


def test_wrong_types_and_nulls_where_none_may_be_are_refused():
    with pytest.raises(ValueError, match="non-nullable"):
        GrowingColumn(pa.int32(), nullable=False).append(pa.array([1, None], type=pa.int32()))
    with pytest.raises(TypeError, match="appended"):
        GrowingColumn(pa.int32()).append(pa.array(["x"]))
    with pytest.raises(TypeError, match="no growing column"):
        GrowingColumn(pa.bool_())
