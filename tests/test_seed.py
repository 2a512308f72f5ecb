"""The seed's worked example, element by element.

A 3x3 input X, a 2x2 kernel K and a bias B give a 2x2 Z (one channel, one
example, "valid" cross-correlation). Indices below are the seed's, 1-based.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jconv


@pytest.fixture
def seed_case(x64):
    rng = np.random.default_rng(2024)
    X = rng.normal(size=(3, 3))
    K = rng.normal(size=(2, 2))
    B = float(rng.normal())
    dZ = rng.normal(size=(2, 2))
    # Seed arrays as 1-based dicts for literal transcription of its equations.
    x = {(i + 1, j + 1): X[i, j] for i in range(3) for j in range(3)}
    k = {(i + 1, j + 1): K[i, j] for i in range(2) for j in range(2)}
    dz = {(i + 1, j + 1): dZ[i, j] for i in range(2) for j in range(2)}
    params = {"kernel": jnp.asarray(K.reshape(2, 2, 1, 1)), "bias": jnp.asarray([B])}
    xa = jnp.asarray(X.reshape(1, 3, 3, 1))
    dza = jnp.asarray(dZ.reshape(1, 2, 2, 1))
    return x, k, B, dz, params, xa, dza


def test_forward_matches_seed_equations(seed_case):
    x, k, B, _, params, xa, _ = seed_case
    Z = np.asarray(jconv.conv_forward(params, xa))[0, :, :, 0]
    expected = {
        (1, 1): x[1, 1] * k[1, 1] + x[1, 2] * k[1, 2] + x[2, 1] * k[2, 1] + x[2, 2] * k[2, 2] + B,
        (1, 2): x[1, 2] * k[1, 1] + x[1, 3] * k[1, 2] + x[2, 2] * k[2, 1] + x[2, 3] * k[2, 2] + B,
        (2, 1): x[2, 1] * k[1, 1] + x[2, 2] * k[1, 2] + x[3, 1] * k[2, 1] + x[3, 2] * k[2, 2] + B,
        (2, 2): x[2, 2] * k[1, 1] + x[2, 3] * k[1, 2] + x[3, 2] * k[2, 1] + x[3, 3] * k[2, 2] + B,
    }
    for (i, j), value in expected.items():
        np.testing.assert_allclose(Z[i - 1, j - 1], value, rtol=1e-14)


def _seed_dk(x, dz):
    # dL/dK_mn = sum_ij dL/dZ_ij * dZ_ij/dK_mn, with dZ_ij/dK_mn = X_(i+m-1)(j+n-1).
    return {
        (1, 1): dz[1, 1] * x[1, 1] + dz[1, 2] * x[1, 2] + dz[2, 1] * x[2, 1] + dz[2, 2] * x[2, 2],
        (1, 2): dz[1, 1] * x[1, 2] + dz[1, 2] * x[1, 3] + dz[2, 1] * x[2, 2] + dz[2, 2] * x[2, 3],
        (2, 1): dz[1, 1] * x[2, 1] + dz[1, 2] * x[2, 2] + dz[2, 1] * x[3, 1] + dz[2, 2] * x[3, 2],
        (2, 2): dz[1, 1] * x[2, 2] + dz[1, 2] * x[2, 3] + dz[2, 1] * x[3, 2] + dz[2, 2] * x[3, 3],
    }


def _seed_dx(k, dz):
    return {
        (1, 1): dz[1, 1] * k[1, 1],
        (1, 2): dz[1, 1] * k[1, 2] + dz[1, 2] * k[1, 1],
        (1, 3): dz[1, 2] * k[1, 2],
        (2, 1): dz[1, 1] * k[2, 1] + dz[2, 1] * k[1, 1],
        (2, 2): dz[1, 1] * k[2, 2] + dz[1, 2] * k[2, 1] + dz[2, 1] * k[1, 2] + dz[2, 2] * k[1, 1],
        (2, 3): dz[1, 2] * k[2, 2] + dz[2, 2] * k[1, 2],
        (3, 1): dz[2, 1] * k[2, 1],
        (3, 2): dz[2, 1] * k[2, 2] + dz[2, 2] * k[2, 1],
        (3, 3): dz[2, 2] * k[2, 2],
    }


def _check(actual, expected):
    assert len(expected) == actual.size
    for (m, n), value in expected.items():
        np.testing.assert_allclose(actual[m - 1, n - 1], value, rtol=1e-13, atol=1e-15)


def test_public_rules_match_seed_equations(seed_case):
    x, k, _, dz, params, xa, dza = seed_case
    dK = jconv.conv_grad_kernel(xa, dza, params["kernel"].shape)
    dX = jconv.conv_grad_input(dza, params["kernel"], xa.shape)
    dB = jconv.conv_grad_bias(dza)
    _check(np.asarray(dK)[:, :, 0, 0], _seed_dk(x, dz))
    _check(np.asarray(dX)[0, :, :, 0], _seed_dx(k, dz))
    np.testing.assert_allclose(dB, [dz[1, 1] + dz[1, 2] + dz[2, 1] + dz[2, 2]], rtol=1e-14)


def test_jax_grad_through_conv_forward_gives_seed_equations(seed_case):
    x, k, _, dz, params, xa, dza = seed_case

    def loss(p, xa):  # dL/dZ = dZ exactly
        return jnp.sum(jconv.conv_forward(p, xa) * dza)

    gp, gx = jax.grad(loss, argnums=(0, 1))(params, xa)
    _check(np.asarray(gp["kernel"])[:, :, 0, 0], _seed_dk(x, dz))
    _check(np.asarray(gx)[0, :, :, 0], _seed_dx(k, dz))
    np.testing.assert_allclose(gp["bias"], [sum(dz.values())], rtol=1e-14)


def test_input_gradient_is_full_correlation_with_rotated_kernel(seed_case):
    # The seed's picture: pad dZ with one ring of zeros, correlate with rot180(K).
    _, _, _, _, params, xa, dza = seed_case
    K = np.asarray(params["kernel"])[:, :, 0, 0]
    padded = np.pad(np.asarray(dza)[0, :, :, 0], 1)
    rotated = K[::-1, ::-1]
    full = np.array(
        [[np.sum(padded[i : i + 2, j : j + 2] * rotated) for j in range(3)] for i in range(3)]
    )
    dX = jconv.conv_grad_input(dza, params["kernel"], xa.shape)
    np.testing.assert_allclose(np.asarray(dX)[0, :, :, 0], full, rtol=1e-13)


def test_one_optax_sgd_step_is_the_seed_update(seed_case):
    x, _, B, dz, params, xa, dza = seed_case
    alpha = 0.1

    def loss(p):
        return jnp.sum(jconv.conv_forward(p, xa) * dza)

    opt = optax.sgd(alpha)
    state = opt.init(params)
    grads = jax.grad(loss)(params)
    updates, _ = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    dK = _seed_dk(x, dz)
    K = np.asarray(params["kernel"])[:, :, 0, 0]
    for (m, n), g in dK.items():
        np.testing.assert_allclose(
            new["kernel"][m - 1, n - 1, 0, 0], K[m - 1, n - 1] - alpha * g, rtol=1e-13
        )
    np.testing.assert_allclose(new["bias"], [B - alpha * sum(dz.values())], rtol=1e-13)
