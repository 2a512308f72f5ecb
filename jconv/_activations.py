"""ReLU and softmax cross-entropy with hand-derived rules.

- ``relu``: ``Z = max(X, 0)`` so ``dL/dX = dL/dZ · [X > 0]`` (0 at ``X = 0``, as in
  ``jax.nn.relu``).
- ``softmax_cross_entropy``: ``L = (1/N) Σ_n (logsumexp(X_n) − X_n[y_n])``, so
  ``dL/dX_n = (softmax(X_n) − onehot(y_n)) / N``. Both the loss and the softmax
  subtract the row maximum first, so large logits neither overflow nor lose the
  small ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._arrays import as_float_array
from ._correlation import accumulation_dtype


@jax.custom_vjp
def _relu(x):
    return jnp.maximum(x, jnp.zeros((), x.dtype))


def _relu_fwd(x):
    return _relu(x), x


def _relu_bwd(x, dz):
    return (relu_grad_input(dz, x),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def relu(x) -> jax.Array:
    """``max(x, 0)`` elementwise; the gradient is ``dz · [x > 0]``."""
    return _relu(as_float_array(x, "x", "relu"))


def relu_grad_input(dz, x) -> jax.Array:
    """``dL/dX = dL/dZ · [X > 0]``."""
    return jnp.where(x > 0, dz, jnp.zeros((), dz.dtype))


def _log_softmax(logits):
    """Row-wise ``X − logsumexp(X)`` computed stably (max subtracted first)."""
    acc = logits.astype(accumulation_dtype(logits.dtype) or logits.dtype)
    shifted = acc - jax.lax.stop_gradient(jnp.max(acc, axis=-1, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=())
def _xent(logits, labels):
    log_p = _log_softmax(logits)
    n, k = logits.shape
    valid = (labels >= 0) & (labels < k)
    picked = jnp.take_along_axis(log_p, jnp.clip(labels, 0, k - 1)[:, None], axis=-1)[:, 0]
    # Out-of-range labels (only possible under jit) make the loss NaN, not garbage.
    per_example = jnp.where(valid, -picked, jnp.nan)
    return (jnp.sum(per_example) / n).astype(logits.dtype)


def _xent_fwd(logits, labels):
    return _xent(logits, labels), (logits, labels)


def _xent_bwd(residuals, g):
    logits, labels = residuals
    dlogits = softmax_cross_entropy_grad(logits, labels) * g
    return dlogits.astype(logits.dtype), None  # (labels: integers, no cotangent)


_xent.defvjp(_xent_fwd, _xent_bwd)


def _check_labels(logits, labels, where):
    logits = as_float_array(logits, "logits", where)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{where}: labels must have an integer dtype, got {labels.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"{where}: logits must have shape (N, num_classes), got {logits.shape}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"{where}: labels must have shape ({logits.shape[0]},) to match logits of "
            f"shape {logits.shape}, got {labels.shape}"
        )
    try:
        concrete = np.asarray(labels)
    except jax.errors.ConcretizationTypeError:  # traced: checked inside (NaN loss)
        concrete = None
    except jax.errors.TracerArrayConversionError:
        concrete = None
    if concrete is not None and concrete.size:
        bad = (concrete < 0) | (concrete >= logits.shape[1])
        if bad.any():
            raise ValueError(
                f"{where}: labels must lie in [0, {logits.shape[1]}), got "
                f"{concrete[bad][:5].tolist()} at positions {np.flatnonzero(bad)[:5].tolist()}"
            )
    return logits, labels


def softmax_cross_entropy(logits, labels) -> jax.Array:
    """Mean softmax cross-entropy of integer ``labels`` under ``logits``.

    Args:
        logits: ``(N, num_classes)`` floating.
        labels: ``(N,)`` integers in ``[0, num_classes)``. Out-of-range labels raise
            ``ValueError`` when concrete; under ``jit`` they make the loss NaN.

    Returns:
        A scalar of the dtype of ``logits`` (half precision is computed in float32).
        Its gradient w.r.t. ``logits`` is ``(softmax(logits) − onehot(labels)) / N``.
    """
    logits, labels = _check_labels(logits, labels, "softmax_cross_entropy")
    return _xent(logits, labels)


def softmax_cross_entropy_grad(logits, labels) -> jax.Array:
    """``dL/dlogits = (softmax(logits) − onehot(labels)) / N`` (float32 for half types)."""
    logits, labels = _check_labels(logits, labels, "softmax_cross_entropy_grad")
    n, k = logits.shape
    p = jnp.exp(_log_softmax(logits))
    onehot = labels[:, None] == jnp.arange(k)[None, :]
    return ((p - onehot.astype(p.dtype)) / n).astype(logits.dtype)
