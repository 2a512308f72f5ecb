"""A LeNet-style CNN built only from jconv's layers, as plain init/apply functions.

``conv → relu → max_pool → conv → relu → max_pool → dense → relu → dense``, every
backward pass a hand-derived rule. ``apply`` takes the layer functions as an
``ops`` namespace, so the very same network runs on ``jconv.autodiff``'s plain
lax/jnp layers for comparison.
"""

from __future__ import annotations

import types
from typing import Any

import jax
import jax.numpy as jnp

from ._activations import relu, softmax_cross_entropy
from ._conv import conv_forward
from ._dense import dense_forward, dense_init
from ._init import conv_init
from ._pool import max_pool

__all__ = ["JCONV_OPS", "lenet_apply", "lenet_init"]

# The layers jconv's network is made of. ``jconv.autodiff`` has the same names.
JCONV_OPS = types.SimpleNamespace(
    conv_forward=conv_forward,
    relu=relu,
    max_pool=max_pool,
    dense_forward=dense_forward,
    softmax_cross_entropy=softmax_cross_entropy,
)


def lenet_init(
    key: jax.Array,
    input_shape: tuple[int, int, int],
    num_classes: int = 10,
    *,
    channels: tuple[int, int] = (16, 32),
    hidden: int = 128,
    kernel_size: int | None = None,
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """Parameters of the LeNet-style network for ``(H, W, C)`` images.

    Args:
        key: PRNG key.
        input_shape: ``(H, W, C)`` of one image (channels_last).
        num_classes: number of logits.
        channels: output channels of the two convolutions.
        hidden: width of the hidden dense layer.
        kernel_size: convolution window (square); default 5, or 3 for images
            smaller than 16 pixels.
        dtype: parameter dtype.

    Returns:
        ``{"conv1", "conv2", "dense1", "dense2"}``, each ``{"kernel", "bias"}``.
    """
    h, w, c = input_shape
    if kernel_size is None:
        kernel_size = 3 if min(h, w) < 16 else 5
    k1, k2, k3, k4 = jax.random.split(key, 4)
    # Two SAME convolutions keep H, W; each 2x2 pool (VALID) halves them, flooring.
    flat = (h // 2 // 2) * (w // 2 // 2) * channels[1]
    if flat == 0:
        raise ValueError(f"lenet_init: images of shape {input_shape} are too small for two pools")
    return {
        "conv1": conv_init(k1, c, channels[0], (kernel_size, kernel_size), dtype=dtype),
        "conv2": conv_init(k2, channels[0], channels[1], (kernel_size, kernel_size), dtype=dtype),
        "dense1": dense_init(k3, flat, hidden, dtype=dtype),
        "dense2": dense_init(k4, hidden, num_classes, dtype=dtype),
    }


def lenet_apply(params: dict[str, Any], x: jax.Array, *, ops: Any = JCONV_OPS) -> jax.Array:
    """Logits ``(N, num_classes)`` for images ``x`` of shape ``(N, H, W, C)``."""
    h = ops.max_pool(ops.relu(ops.conv_forward(params["conv1"], x, padding="SAME")), 2)
    h = ops.max_pool(ops.relu(ops.conv_forward(params["conv2"], h, padding="SAME")), 2)
    h = h.reshape(h.shape[0], -1)
    h = ops.relu(ops.dense_forward(params["dense1"], h))
    return ops.dense_forward(params["dense2"], h)
