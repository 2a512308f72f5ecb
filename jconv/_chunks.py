"""Loops over chunks of the batch: how the CPU lowerings keep their temporaries cache-sized.

A lowering that would materialise something per batch entry (padded images,
im2col stacks, Winograd tiles) runs over chunks of the batch instead, either
writing each chunk's result into the output (:func:`in_batch_chunks`: a
forward, an input gradient) or summing the chunks' results
(:func:`sum_of_chunks`: a kernel gradient, whose sum runs over the batch).
Chunks are interleaved (:func:`batch_chunk`) so a data-parallel sharding of the
batch is never gathered, and half-precision chunks are sliced as bits
(:func:`dynamic_slice_bits`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._correlation import Correlation
from ._slicing import resized


def divisor_within(size: int, most: int) -> int:
    """The largest divisor of ``size`` that is at most ``most`` (at least 1)."""
    return max(d for d in range(1, max(1, min(size, most)) + 1) if size % d == 0)


def dynamic_slice_bits(a, start, size, axis):
    """``lax.dynamic_slice_in_dim``, on the bits of a half-precision ``a``.

    XLA:CPU slices half-precision arrays in float32, converting the whole
    operand ahead of a chunk loop (``_taps._chunked_sum``,
    ``in_batch_chunks``). Sliced as 16-bit integers, only a copy of
    the bits is made: bfloat16 depthwise kernel gradient over 64 images of
    56x56x64, 106 -> 57 MiB and 79 -> 56 ms; the stem's kernel gradient 45 ->
    30 MiB and 54 -> 38 ms; 3x3@56's 27 -> 20 MiB at the same 34-36 ms.
    """
    if a.dtype.itemsize != 2:
        return lax.dynamic_slice_in_dim(a, start, size, axis)
    bits = lax.dynamic_slice_in_dim(lax.bitcast_convert_type(a, jnp.uint16), start, size, axis)
    return lax.bitcast_convert_type(bits, a.dtype)


def batch_chunk(a, i, count: int, axis: int):
    """Chunk ``i`` of ``count`` along ``axis``: entries ``i, i + count, i + 2 count, ...``.

    Interleaved rather than contiguous, so that every chunk holds an equal
    share of each contiguous block of the axis. Under data parallelism the
    batch axis is sharded in contiguous blocks, one per device: a loop over
    contiguous chunks reads each chunk from one device, and XLA's SPMD
    partitioner gathered the whole batch onto every device for it (the LeNet
    train step over two forced host devices: 1,600-1,900 images/s against
    3,500-3,700 now, each device computing the whole batch's kernel
    gradients). An interleaved chunk is a slice of the minor axis of ``(size /
    count, count)``, which a sharding of whole blocks does not split: each
    device loops over its own entries.
    That holds while chunks keep several entries per device: over 4 forced
    host devices and 64 images, the LeNet step's kernel-gradient chunks of 4
    images (one a device; budgets of 1-3 images of the second layer's input)
    had the partitioner shard the ``count`` axis instead and gather again;
    the default budgets' chunks do not. Sliced as bits
    (:func:`dynamic_slice_bits`).
    """
    if count == 1:
        return a
    size = a.shape[axis] // count
    split = a.reshape(*a.shape[:axis], size, count, *a.shape[axis + 1 :])
    return dynamic_slice_bits(split, i, 1, axis + 1).reshape(resized(a.shape, (axis,), (size,)))


def in_batch_chunks(f, lhs, chunk: int, corr: Correlation):
    """``f(lhs)``, computed ``chunk`` batch entries at a time in a ``fori_loop``.

    Each step takes its chunk of ``lhs`` (:func:`batch_chunk`: interleaved) and
    writes ``f``'s result into the output in place. The loop reads ``lhs`` as
    it is: mapping over a transposed ``(chunks, chunk, ...)`` copy instead
    (``lax.map``) made XLA copy the whole lhs when it is an entry parameter,
    e.g. a loss's cotangent. The output buffer must be the loop's own: from
    ``jnp.zeros``, two loops of one output shape (a training step's forward
    and input gradient) shared one zeros buffer, which XLA then copied for one
    of them (3x3 depthwise over 8 images of 28x28x256: 6.1 MiB more). Computing
    the first chunk before the loop instead unrolls a two-chunk loop, whose
    chunks XLA then schedules at once.
    """
    lb, ob = corr.lhs_axes[0], corr.out_axes[0]
    count = lhs.shape[lb] // chunk
    # Every output entry is written (what makes the zeros below safe to derive).
    assert count * chunk == lhs.shape[lb], (lhs.shape, chunk)
    if count == 1:
        return f(lhs)
    part = jax.eval_shape(f, jax.ShapeDtypeStruct(resized(lhs.shape, (lb,), (chunk,)), lhs.dtype))
    zero = _own_zero(lhs, lb, part.dtype)
    full = resized(part.shape, (ob,), (chunk * count,))
    split = (*part.shape[:ob], chunk, count, *part.shape[ob + 1 :])  # n at (n // count, n % count)

    def step(i, out):
        part = jnp.expand_dims(f(batch_chunk(lhs, i, count, lb)), ob + 1)
        # The carry keeps the output's shape: its consumer can then reuse the buffer.
        return lax.dynamic_update_slice_in_dim(out.reshape(split), part, i, ob + 1).reshape(full)

    return lax.fori_loop(0, count, step, jnp.broadcast_to(zero, full))


def in_blocks(block, count: int, axis: int, source):
    """``concatenate([block(i) for i in range(count)], axis)``, each block computed
    and written into the output in place in a ``fori_loop`` (one block: no loop).

    One block's operands and result are live at a time: unrolled, XLA:CPU
    sliced every block's operands before the first was used. ``source`` is an
    operand the loop's zeros are derived from (:func:`in_batch_chunks`).
    """
    if count == 1:
        return block(0)
    part = jax.eval_shape(block, 0)
    size = part.shape[axis]
    full = resized(part.shape, (axis,), (size * count,))
    zeros = jnp.broadcast_to(_own_zero(source, 0, part.dtype), full)

    def step(i, out):
        return lax.dynamic_update_slice_in_dim(out, block(i), i * size, axis)

    return lax.fori_loop(0, count, step, zeros)


def _own_zero(a, axis: int, dtype):
    """A zero of ``dtype`` computed from ``a``'s first entry on ``axis``.

    A loop's output buffer starts from it so that no two loops' buffers are the
    same expression (see :func:`in_batch_chunks`); every entry is overwritten.
    """
    entry = dynamic_slice_bits(a, 0, 1, axis)  # as bits: no float32 copy of a half array
    return lax.slice(entry, (0,) * a.ndim, (1,) * a.ndim).reshape(()).astype(dtype) * 0


def sum_of_chunks(part, count: int):
    """``sum_i part(i)`` over ``count`` chunks, in one ``fori_loop`` (one chunk:
    ``part(0)``, no loop).

    Every chunk is summed inside the loop, the first one included: a first
    chunk summed before the loop (as the accumulator's start) depends on the
    forward input alone, so XLA:CPU's concurrency-minded scheduler built its
    temporaries (a kernel gradient's im2col stacks) during the forward pass and
    held them through the backward, one set per layer of a network (three 3x3
    layers over 8 images of 56x56x64: 59.8 MiB against autodiff's 49.0, now
    45.5; 30.2 against 15.3, now 19.6, for four over 16 of 28x28x32).
    """
    if count == 1:
        return part(0)
    shape = jax.eval_shape(part, 0)
    zeros = jnp.zeros(shape.shape, shape.dtype)
    return lax.fori_loop(0, count, lambda i, acc: acc + part(i), zeros)
