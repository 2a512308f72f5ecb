"""Bad input is refused at trace time, with jconv's own argument names and values."""

import jax
import jax.numpy as jnp
import pytest

import jconv

K2 = jnp.ones((3, 3, 4, 6))  # channels_last 2-D kernel: 4 in, 6 out
X2 = jnp.ones((2, 8, 8, 4))
Z2 = jnp.ones((2, 6, 6, 6))  # VALID output


def fwd(x=X2, kernel=K2, **kw):
    return lambda: jconv.conv_forward({"kernel": kernel}, x, **kw)


CASES = {
    "input rank": (
        fwd(x=jnp.ones((8, 8, 4))),
        ValueError,
        r"x must have rank 4 .* got x of shape \(8, 8, 4\)",
    ),
    "channel mismatch": (
        fwd(x=jnp.ones((2, 8, 8, 3))),
        ValueError,
        r"channel mismatch: x has C_in=3",
    ),
    "grouped channel mismatch": (fwd(groups=2), ValueError, r"channel mismatch.*groups=2"),
    "groups not dividing C_in": (
        fwd(x=jnp.ones((2, 8, 8, 3)), kernel=jnp.ones((3, 3, 1, 6)), groups=2),
        ValueError,
        r"groups=2 does not divide the input channels C_in=3",
    ),
    "groups not dividing C_out": (
        fwd(x=jnp.ones((2, 8, 8, 4)), kernel=jnp.ones((3, 3, 2, 5)), groups=2),
        ValueError,
        r"groups=2 does not divide the output channels C_out=5",
    ),
    "groups zero": (fwd(groups=0), ValueError, r"groups must be >= 1, got 0"),
    "groups float": (fwd(groups=1.5), TypeError, r"groups must be an int, got 1.5"),
    "stride zero": (fwd(stride=0), ValueError, r"stride must be >= 1 in every dim, got 0"),
    "stride negative tuple": (
        fwd(stride=(1, -2)),
        ValueError,
        r"stride must be >= 1 .* got \(1, -2\)",
    ),
    "stride wrong length": (
        fwd(stride=(1, 2, 1)),
        ValueError,
        r"stride must be an int or a sequence of 2 ints .* got \(1, 2, 1\)",
    ),
    "stride float": (
        fwd(stride=1.0),
        TypeError,
        r"stride must be an int or a sequence of 2 ints, got 1.0",
    ),
    "dilation zero": (fwd(dilation=(0, 1)), ValueError, r"dilation must be >= 1 .* got \(0, 1\)"),
    "dilation wrong length": (
        fwd(dilation=(2,)),
        ValueError,
        r"dilation must be an int or a sequence of 2 ints .* got \(2,\)",
    ),
    "unknown padding string": (
        fwd(padding="FULL"),
        ValueError,
        r"padding string must be one of .* got 'FULL'",
    ),
    "padding wrong length": (
        fwd(padding=(1, 1, 1)),
        ValueError,
        r"padding must have one entry per spatial dim \(2\), got \(1, 1, 1\)",
    ),
    "padding negative": (fwd(padding=-1), ValueError, r"padding must be >= 0, got -1"),
    "padding bad pair": (
        fwd(padding=((1, 2, 3), (0, 0))),
        TypeError,
        r"each entry of padding must be an int or a \(low, high\) pair",
    ),
    "1-D pair without nesting": (
        fwd(x=jnp.ones((2, 8, 4)), kernel=jnp.ones((3, 4, 6)), padding=(1, 2)),
        ValueError,
        r"padding=\(\(1, 2\),\)",
    ),
    "kernel larger than padded input": (
        fwd(x=jnp.ones((2, 2, 8, 4))),
        ValueError,
        r"kernel larger than the padded input in spatial dim 0: window 3 .* size 2",
    ),
    "dilated kernel larger": (
        fwd(x=jnp.ones((2, 8, 4, 4)), dilation=2),
        ValueError,
        r"spans 5, but the input has size 4",
    ),
    "unknown layout": (
        fwd(layout="NHWC"),
        ValueError,
        r"layout must be one of \('channels_last', 'channels_first'\), got 'NHWC'",
    ),
    "kernel rank too small": (
        fwd(kernel=jnp.ones((4, 6))),
        ValueError,
        r"kernel must have rank >= 3; got 2",
    ),
    "integer kernel": (
        fwd(kernel=jnp.ones((3, 3, 4, 6), jnp.int32)),
        TypeError,
        r"params\['kernel'\] must have a floating dtype",
    ),
    "unknown precision": (fwd(precision="ultra"), ValueError, r"unknown precision 'ultra'"),
    "wrong bias shape": (
        lambda: jconv.conv_forward({"kernel": K2, "bias": jnp.ones((4,))}, X2),
        ValueError,
        r"params\['bias'\] must have shape \(C_out,\) = \(6,\), got \(4,\)",
    ),
    "missing kernel": (
        lambda: jconv.conv_forward({"bias": jnp.ones((6,))}, X2),
        ValueError,
        r"missing the 'kernel' entry",
    ),
    "unknown params key": (
        lambda: jconv.conv_forward({"kernel": K2, "bais": jnp.ones((6,))}, X2),
        ValueError,
        r"unknown keys \['bais'\]",
    ),
    "params not a mapping": (
        lambda: jconv.conv_forward(K2, X2),
        TypeError,
        r"params must be a mapping",
    ),
    "grad_input dz shape": (
        lambda: jconv.conv_grad_input(jnp.ones((2, 7, 6, 6)), K2, X2.shape),
        ValueError,
        r"conv_grad_input: dz has shape \(2, 7, 6, 6\), but .* produces \(2, 6, 6, 6\)",
    ),
    "grad_input input_shape": (
        lambda: jconv.conv_grad_input(Z2, K2, (2, 8, 8, 5)),
        ValueError,
        r"conv_grad_input: channel mismatch: x has C_in=5",
    ),
    "grad_input input_shape type": (
        lambda: jconv.conv_grad_input(Z2, K2, "2,8,8,4"),
        TypeError,
        r"input_shape must be a sequence of non-negative ints",
    ),
    "grad_input stride mismatch": (
        lambda: jconv.conv_grad_input(Z2, K2, X2.shape, stride=2),
        ValueError,
        r"dz has shape \(2, 6, 6, 6\), .*produces \(2, 3, 3, 6\)",
    ),
    "grad_kernel dz shape": (
        lambda: jconv.conv_grad_kernel(X2, jnp.ones((2, 6, 6, 5)), K2.shape),
        ValueError,
        r"conv_grad_kernel: dz has shape \(2, 6, 6, 5\)",
    ),
    "grad_kernel kernel_shape": (
        lambda: jconv.conv_grad_kernel(X2, Z2, (3, 3, 4)),
        ValueError,
        r"conv_grad_kernel: x must have rank 3",
    ),
    "grad_kernel kernel_shape groups": (
        lambda: jconv.conv_grad_kernel(X2, Z2, (3, 3, 4, 6), groups=2),
        ValueError,
        r"conv_grad_kernel: channel mismatch",
    ),
    "grad_bias layout": (
        lambda: jconv.conv_grad_bias(Z2, layout="nchw"),
        ValueError,
        r"conv_grad_bias: layout must be one of",
    ),
    "grad_bias rank": (
        lambda: jconv.conv_grad_bias(jnp.ones((2, 6))),
        ValueError,
        r"dz must have rank >= 3",
    ),
    "init groups": (
        lambda: jconv.conv_init(jax.random.key(0), 3, 4, 3, groups=2),
        ValueError,
        r"conv_init: groups=2 must divide in_channels=3",
    ),
    "init kernel_size": (
        lambda: jconv.conv_init(jax.random.key(0), 3, 4, (3, 0)),
        ValueError,
        r"conv_init: kernel_size must be >= 1",
    ),
    "init dtype": (
        lambda: jconv.conv_init(jax.random.key(0), 3, 4, 3, dtype=jnp.int8),
        TypeError,
        r"conv_init: dtype must be a floating dtype, got int8",
    ),
    "init layout": (
        lambda: jconv.conv_init(jax.random.key(0), 3, 4, 3, layout="first"),
        ValueError,
        r"conv_init: layout must be one of",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_refused_with_a_clear_message(case):
    thunk, error, pattern = CASES[case]
    with pytest.raises(error, match=pattern):
        thunk()


@pytest.mark.parametrize(
    "case", ["channel mismatch", "stride zero", "unknown padding string", "wrong bias shape"]
)
def test_errors_are_raised_at_trace_time_under_jit(case):
    thunk, error, pattern = CASES[case]
    with pytest.raises(error, match=pattern):
        jax.jit(thunk)()  # raised while tracing, before any XLA compilation
    with pytest.raises(error, match=pattern):
        jax.eval_shape(thunk)


def test_messages_name_the_calling_function():
    with pytest.raises(ValueError, match=r"^conv_forward: "):
        fwd(stride=0)()
    with pytest.raises(ValueError, match=r"^conv_grad_kernel: "):
        jconv.conv_grad_kernel(X2, Z2, K2.shape, stride=0)
