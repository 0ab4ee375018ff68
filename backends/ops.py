"""The operations the array API standard lacks, one function each, with a portable fallback.

The layers call these; the dispatch on the array library happens here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import array_api_extra as xpx


def index_add_onehot(target: Any, index: Any, values: Any) -> None:
    """Portable scatter-add: ``target[index[i]] += values[i]`` in place, repeated indices summed.

    target: (N, C), index: (M,) integer, values: (M, C). Written as a one-hot matmul, so it needs only the standard.
    """
    xp = compat.array_namespace(target)
    onehot = xpx.one_hot(index, target.shape[0], dtype=target.dtype, xp=xp)  # (M, N)
    target += xp.matrix_transpose(onehot) @ values


def index_add(target: Any, index: Any, values: Any) -> None:
    """Scatter-add ``target[index[i]] += values[i]`` in place, with repeated indices accumulating.

    target: (N, C), index: (M,) integer, values: (M, C). Uses each library's true scatter-add (``np.add.at``,
    ``cupyx.scatter_add``, ``torch.Tensor.index_add_``); other namespaces get the one-hot matmul.
    Note ``xpx.at(target, index).add(values)`` is not used: it does not accumulate duplicates. Values of another
    dtype (a float16 gradient into a float32 buffer, under mixed precision) are cast first: torch's ``index_add_``
    refuses mixed dtypes.
    """
    if values.dtype != target.dtype:
        values = compat.array_namespace(target).astype(values, target.dtype)
    if compat.is_numpy_array(target):
        import numpy as np

        n, c = target.shape
        if target.flags.c_contiguous:
            # np.add.at on the flat view is several times faster than on the 2-D table.
            flat_idx = (np.asarray(index)[:, None] * c + np.arange(c)).reshape(-1)
            np.add.at(target.reshape(-1), flat_idx, np.asarray(values).reshape(-1))
        else:
            np.add.at(target, np.asarray(index), values)
    elif compat.is_torch_array(target):
        target.index_add_(0, index, values)
    elif compat.is_cupy_array(target):
        import cupyx

        cupyx.scatter_add(target, index, values)
    else:
        index_add_onehot(target, index, values)


def add_at_columns(target: Any, cols: Any, values: Any) -> None:
    """``target[i, cols[i]] += values[i]`` for every row i, in place (one entry per row, so no collisions).

    target: (N, V), cols: (N,) integer, values: (N,). The loss uses it to subtract the one-hot target from the
    softmax without materializing an (N, V) one-hot array; other namespaces get exactly that one-hot fallback.
    """
    if compat.is_numpy_array(target) or compat.is_cupy_array(target):
        mod = compat.array_namespace(target)
        rows = mod.arange(target.shape[0])
        target[rows, cols] += values
    elif compat.is_torch_array(target):
        target.scatter_add_(1, cols[:, None], values[:, None])
    else:
        xp = compat.array_namespace(target)
        target += xpx.one_hot(cols, target.shape[1], dtype=target.dtype, xp=xp) * values[:, None]


def exp_(x: Any) -> Any:
    """``exp(x)`` written over `x` where the library can (the standard has no ``out=``); returns the result.

    NumPy, CuPy and torch compute in place (one pass, no new array); other namespaces return ``xp.exp(x)``, so
    callers must use the returned array and treat `x` as consumed.
    """
    if compat.is_numpy_array(x):
        import numpy as np

        return np.exp(x, out=x)
    if compat.is_cupy_array(x):
        import cupy

        return cupy.exp(x, out=x)
    if compat.is_torch_array(x):
        return x.exp_()
    return compat.array_namespace(x).exp(x)


def flat_views(buffer: Any, shapes: list[tuple[int, ...]]) -> list[Any]:
    """Views of consecutive slices of the 1-D `buffer`, each reshaped to its shape (llm.c's parameter layout).

    buffer: (P,) with P >= the sum of the shapes' sizes. A write through a view (``view += g``, ``view[...] = 0``)
    reaches the buffer and the buffer's writes reach the view. The standard does not promise views, so this asks for
    ``copy=False`` (an error rather than a silent copy) and the backend tests write through every view.
    """
    xp = compat.array_namespace(buffer)
    sizes = []
    for shape in shapes:
        size = 1
        for n in shape:
            size *= n
        sizes.append(size)
    if sum(sizes) > buffer.shape[0]:  # before slicing: an out-of-range slice fails differently on each library
        raise ValueError(f"flat buffer of {buffer.shape[0]} elements is too small for {sum(sizes)}")
    views, offset = [], 0
    for shape, size in zip(shapes, sizes):
        views.append(xp.reshape(buffer[offset:offset + size], tuple(shape), copy=False))
        offset += size
    return views
