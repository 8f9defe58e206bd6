"""The CIPS emulator: API, symmetry, tracing, gradients, weights integrity, accuracy on JAM maps."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jkin import conventions as cv
from jkin.emulator import Emulator
from jkin.emulator.network import CIPSConfig

SUBSET = Path(__file__).parent / "data" / "jam_test_subset.npz"
P0 = np.array([1.2, 2.0, 0.8, 0.9, 0.9, 3.0, 0.1, 75.0], dtype=np.float32)


@pytest.fixture(scope="module")
def emu():
    return Emulator.load()


def test_shapes_and_dtypes(emu):
    x = jnp.linspace(0.05, 5.0, 7)
    y = jnp.linspace(-3.0, 2.0, 7)
    v = emu(P0, x, y)
    assert v.shape == (7,) and v.dtype == jnp.float32
    batch = np.stack([P0, P0, P0]).reshape(3, 8)
    assert emu(batch, x, y).shape == (3, 7)
    assert emu(batch.reshape(1, 3, 8), x, y).shape == (1, 3, 7)
    img = emu.map(P0, npix=11, pixel_scale=0.5)
    assert img.shape == (11, 11)
    assert np.all(np.asarray(v) >= 0)


def test_quadrant_symmetry(emu):
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-5.5, 5.5, (2, 50)).astype(np.float32)
    v = emu(P0, x, y)
    for sx, sy in ((-1, 1), (1, -1), (-1, -1)):
        np.testing.assert_array_equal(emu(P0, sx * x, sy * y), v)
    img = np.asarray(emu.map(P0, npix=21, pixel_scale=0.5))
    np.testing.assert_array_equal(img, img[::-1, :])
    np.testing.assert_array_equal(img, img[:, ::-1])


def test_jit_vmap_equal_eager(emu):
    x = jnp.linspace(0.1, 5.0, 9)
    y = jnp.linspace(0.1, 3.0, 9)
    batch = jnp.asarray(cv.sample_params(np.random.default_rng(1), 4), jnp.float32)
    eager = emu(batch, x, y)
    np.testing.assert_allclose(jax.jit(lambda p: emu(p, x, y))(batch), eager, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(jax.vmap(lambda p: emu(p, x, y))(batch), eager, rtol=1e-5, atol=1e-3)
    # the emulator is a pytree: it can itself be a jit argument
    np.testing.assert_allclose(jax.jit(lambda e, p: e(p, x, y))(emu, batch), eager, rtol=1e-5,
                               atol=1e-3)


@pytest.mark.parametrize(
    "p",
    [
        P0,
        np.array([1.0, 2.0, 1.0, 1.0, 0.75, 3.0, 0.0, 90.0], np.float32),  # q = 1, edge-on
        np.array([0.5, 1.5, 0.6, 0.6, 0.25, 2.0, -0.4, 55.1301], np.float32),  # low corner
        np.array([2.0, 2.5, 1.0, 1.0, 2.0, 4.0, 0.4, 90.0], np.float32),  # high corner
    ],
)
def test_gradients_finite_including_centre_and_edges(emu, p):
    x = jnp.array([0.0, 0.0, 1e-4, 1.0, 5.5], jnp.float32)  # the exact centre included
    y = jnp.array([0.0, 1.0, 0.0, 1e-4, 5.5], jnp.float32)
    g = jax.jacfwd(lambda q: emu(q, x, y))(jnp.asarray(p))
    assert np.all(np.isfinite(np.asarray(g)))
    gx = jax.grad(lambda xx: jnp.sum(emu(jnp.asarray(p), xx, y)))(x)
    assert np.all(np.isfinite(np.asarray(gx)))
    np.testing.assert_allclose(np.asarray(gx)[:2], 0.0, atol=1e-3)  # v is even in x: flat at x=0


def test_gradient_matches_finite_differences(emu):
    """Reverse-mode gradients against finite differences, in float64 (house style)."""
    from jax.test_util import check_grads

    with jax.enable_x64(True):
        emu64 = emu.replace(params=jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                                          emu.params))
        x = jnp.linspace(0.1, 4.0, 12, dtype=jnp.float64)
        y = jnp.linspace(0.2, 2.0, 12, dtype=jnp.float64)
        f = lambda p: jnp.mean(emu64(p, x, y))
        # leaky-ReLU kinks make central differences err in proportion to eps: keep it small
        check_grads(f, (jnp.asarray(P0, jnp.float64),), order=1, modes=["rev"], eps=1e-6,
                    atol=1e-4, rtol=1e-4)


def _dot_dtypes(jaxpr):
    """dtypes of every matrix product in a jaxpr, nested ones (jit, custom_jvp) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn.outvars[0].aval.dtype
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _dot_dtypes(sub)


def test_float32_emulator_runs_the_network_in_float32_under_x64(emu):
    """inference.float32_emulator inside a float64 fit: every matrix product of the value and
    gradient in float32 (numpy float64 normalisation ranges once promoted the whole network to
    float64 under x64: the kinematic potential cost 1.9x), the output float64 and equal to the
    float32 evaluation."""
    from jkin.inference import float32_emulator

    x, y = np.linspace(0.1, 4.0, 50), np.linspace(0.2, 2.0, 50)
    ref = np.asarray(emu(P0, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    with jax.enable_x64(True):
        f = float32_emulator(emu)
        p64, x64, y64 = (jnp.asarray(a, jnp.float64) for a in (P0, x, y))
        v = f(p64, x64, y64)
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: f(p, x64, y64).sum()))(p64)
    assert v.dtype == jnp.float64
    dtypes = list(_dot_dtypes(jaxpr.jaxpr))
    assert len(dtypes) > 10 and set(dtypes) == {np.dtype(np.float32)}
    np.testing.assert_allclose(np.asarray(v), ref, rtol=1e-6)


def test_out_of_domain_eager_call_raises(emu):
    bad = P0.copy()
    bad[1] = 2.7
    with pytest.raises(ValueError, match=r"gamma = 2.7 is outside its allowed range \[1.5, 2.5\]"):
        emu(bad, jnp.ones(3), jnp.ones(3))
    assert emu.in_domain(P0) and not emu.in_domain(bad)
    np.testing.assert_array_equal(emu.in_domain(np.stack([P0, bad])), [True, False])
    with pytest.raises(ValueError, match="last axis of length 8"):
        emu(P0[:7], jnp.ones(3), jnp.ones(3))


def test_corrupted_weights_give_a_clear_error(emu, tmp_path):
    from jkin.emulator import DEFAULT_WEIGHTS
    from jkin.emulator.io import default_weights_dir

    src = default_weights_dir()
    manifest = src / f"{DEFAULT_WEIGHTS}.json"
    weights = src / json.loads(manifest.read_text())["weights_file"]
    shutil.copy(manifest, tmp_path / manifest.name)
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / weights.name).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256 .* does not match the manifest"):
        Emulator.load(tmp_path / manifest.name)
    (tmp_path / weights.name).unlink()
    with pytest.raises(FileNotFoundError, match="weights file .* is missing"):
        Emulator.load(tmp_path / manifest.name)


def test_manifest_describes_the_weights(emu):
    m = emu.manifest
    assert m["param_names"] == list(cv.PARAM_NAMES)
    assert CIPSConfig(**m["config"]) == emu.config
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(emu.params))
    assert m["n_parameters"] == n
    assert {"median_abs_eps", "p95_abs_eps", "mean_eps"} <= set(m["test"])


def test_reproduces_committed_jam_maps(emu):
    """tests/data/jam_test_subset.npz: JAM maps made by jkin.jam (see its 'made_by' field), never
    trained on. The emulator must reproduce them as well as the benchmark says: median |eps| per
    map within 1.5x the manifest's test median (a 40-map subset fluctuates), and no map worse
    than the manifest's 95th percentile times 3."""
    d = np.load(SUBSET)
    assert "jkin.jam" in str(d["made_by"])
    v = np.asarray(emu(d["params"].astype(np.float32), d["x"].astype(np.float32),
                       d["y"].astype(np.float32)))
    v_true = np.sqrt(np.clip(d["v2"], 0, None))
    abs_eps = np.abs(v - v_true).mean(axis=1)
    test = emu.manifest["test"]
    assert np.median(abs_eps) <= 1.5 * test["median_abs_eps"], np.median(abs_eps)
    assert abs_eps.max() <= 3.0 * test["p95_abs_eps"], abs_eps.max()
