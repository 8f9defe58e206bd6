"""The CIPS network's building blocks, independent of any trained weights."""

import jax
import jax.numpy as jnp
import numpy as np

from jkin.emulator.network import CIPS, CIPSConfig, ModulatedDense, vrms_from_output


def test_output_is_non_negative_with_finite_gradient_everywhere():
    out = jnp.array([-10.0, -1e-2, -1e-6, 0.0, 1e-6, 1e-2, 1.0], jnp.float32)  # v2 in units
    theta_E = jnp.array(1.3, jnp.float32)
    v, v2 = vrms_from_output(out[None], theta_E[None])
    assert np.all(np.asarray(v) >= 0)
    g = jax.grad(lambda o: jnp.sum(vrms_from_output(o[None], theta_E[None])[0]))(out)
    assert np.all(np.isfinite(np.asarray(g)))
    # where v2 >> tau the output is sqrt(v2)
    np.testing.assert_allclose(np.asarray(v)[0, -1], np.sqrt(np.asarray(v2)[0, -1]), rtol=1e-6)


def test_modulated_dense_is_stylegan2_demodulation():
    """Against a plain numpy evaluation: y = h (s W) / ||s W||_col + b per map."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 4)).astype(np.float32)
    w = rng.normal(size=(2, 3)).astype(np.float32)
    layer = ModulatedDense(6)
    params = layer.init(jax.random.PRNGKey(0), h, w)
    y = np.asarray(layer.apply(params, h, w))
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    s = w @ p["style"]["kernel"] + p["style"]["bias"]
    for b in range(2):
        wm = s[b][:, None] * p["kernel"]
        wm = wm / np.sqrt((wm**2).sum(axis=0, keepdims=True) + 1e-8)
        np.testing.assert_allclose(y[b], h[b] @ wm + p["bias"], rtol=1e-5, atol=1e-5)


def test_value_and_grad_of_a_random_network():
    cfg = CIPSConfig(width=16, n_layers=2, mapping_width=16, mapping_layers=2, n_fourier=16)
    net = CIPS(cfg)
    z = jnp.zeros((3, 8))
    f = jnp.zeros((1, 7, 4))
    params = net.init(jax.random.PRNGKey(1), z, f)
    out = net.apply(params, z, f)
    assert out.shape == (3, 7)
    g = jax.grad(lambda zz: jnp.sum(net.apply(params, zz, f)))(z)
    assert np.all(np.isfinite(np.asarray(g)))
