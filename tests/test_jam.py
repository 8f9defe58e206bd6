"""jkin.jam against independent references: the profiles it expands and jampy's public API."""

import dataclasses

import numpy as np
import pytest

from jkin import conventions as cv
from jkin import jam

ROUND = np.array([1.0, 2.0, 1.0, 1.0, 0.7, 3.0, 0.0, 90.0])
FLAT = np.array([1.0, 2.0, 0.6, 0.6, 0.7, 3.0, 0.0, 90.0])
TYPICAL = np.array([1.3, 1.9, 0.75, 0.85, 0.9, 3.2, 0.15, 65.0])


def _mge_surface(peak, sigma, q, x, y):
    return (peak * np.exp(-0.5 * (x[:, None] ** 2 + (y[:, None] / q) ** 2) / sigma**2)).sum(1)


def _points(n, r_lo, r_hi, seed=0, q=1.0):
    """Points with major-axis elliptical radius sqrt(x^2 + y^2/q^2) log-uniform in [r_lo, r_hi]."""
    rng = np.random.default_rng(seed)
    r = np.exp(rng.uniform(np.log(r_lo), np.log(r_hi), n))
    phi = rng.uniform(0, 2 * np.pi, n)
    return r * np.cos(phi), q * r * np.sin(phi)


@pytest.mark.parametrize("theta_E,gamma,q", [(0.5, 1.5, 0.6), (1.4, 2.0, 0.8), (2.0, 2.5, 1.0)])
def test_mass_mge_reproduces_the_cored_pemd(theta_E, gamma, q):
    """The truncated MGE is good to 1e-4 inside 10" and 3e-4 inside 30" (major axis), as
    jkin.jam documents."""
    peak, sigma, qobs = jam.mge_mass(theta_E, gamma, q)
    for r_max, rtol in ((10.0, 1e-4), (30.0, 3e-4)):
        x, y = _points(400, 0.003, r_max, q=q)  # all position angles: checks the q convention
        mge = _mge_surface(peak, sigma, qobs, x, y) / cv.SIGMA_CRIT
        np.testing.assert_allclose(mge, cv.kappa_pemd(x, y, theta_E, gamma, q), rtol=rtol)


@pytest.mark.parametrize("R_sersic,n,q", [(0.25, 4.0, 0.6), (1.0, 2.0, 0.9), (2.0, 3.0, 1.0)])
def test_light_mge_reproduces_the_sersic(R_sersic, n, q):
    peak, sigma, qobs = jam.mge_light(R_sersic, n, q)
    """Good to 2.5e-3 from 0.01" (the smallest radius sampled) to 15 R_sersic, as documented."""
    x, y = _points(400, 0.01, min(30.0, 15 * R_sersic), q=q)
    np.testing.assert_allclose(
        _mge_surface(peak, sigma, qobs, x, y), cv.sersic_profile(x, y, R_sersic, n, q), rtol=2.5e-3
    )


@pytest.mark.parametrize("p", [TYPICAL, FLAT, np.array([0.5, 1.5, 0.6, 0.6, 0.25, 4.0, 0.4, 55.2]),
                               np.array([2.0, 2.5, 0.95, 1.0, 2.0, 2.0, -0.4, 80.0])])
def test_quadrature_equals_jampy_integration(p):
    """The vectorised fixed-rule quadrature of Eq. (28) against jampy's adaptive one, on the
    same MGEs, including points near the centre and at the field's corner."""
    x, y = _points(40, 0.01, 7.7, seed=7)
    x, y = np.abs(x), np.abs(y)
    jampy_settings = dataclasses.replace(jam.DEFAULT_SETTINGS, method="jampy")
    ref = jam.jam_vrms2(p, x, y, jampy_settings)
    ours = jam.jam_vrms2(p, x, y)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_identical_to_jampy_analytic_projection():
    """jam_vrms calls jampy's analytic LOS integral directly; jam_axi_proj (public API, no sky
    interpolation because nrad*nang exceeds the number of points) must give the same numbers."""
    x, y = _points(40, 0.05, 5.5, seed=3)
    ours = jam.jam_vrms(TYPICAL, x, y, dataclasses.replace(jam.DEFAULT_SETTINGS, method="jampy"))
    ref = jam.jam_vrms_jampy(TYPICAL, x, y, interp=True, nrad=100, nang=1)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_matches_jampy_numerical_integral():
    """Against jampy's fully numerical double integral (interp=False, epsrel=1e-4) with a refined
    intrinsic-moment grid; benchmarks/jam_accuracy.py measures the same on 20 maps."""
    x, y = _points(30, 0.05, 5.5, seed=4)
    ours = jam.jam_vrms(TYPICAL, x, y)
    ref = jam.jam_vrms_jampy(TYPICAL, x, y, interp=False, epsrel=1e-4, nrad=100, nang=40)
    d = np.abs(ours - ref)
    assert d.mean() < 0.03 and d.max() < 0.1, (d.mean(), d.max())


def test_doubling_gaussians_converged():
    x, y = _points(30, 0.02, 5.5, seed=5)
    v = jam.jam_vrms(TYPICAL, x, y)
    v2 = jam.jam_vrms(TYPICAL, x, y, jam.DEFAULT_SETTINGS.doubled())
    assert np.abs(v - v2).mean() < 0.05


def test_flattening_propagates():
    r = np.array([0.5, 1.0, 2.0, 4.0])
    eps = np.full_like(r, 1e-6)
    v_round_x, v_round_y = jam.jam_vrms(ROUND, r, eps), jam.jam_vrms(ROUND, eps, r)
    np.testing.assert_allclose(v_round_x, v_round_y, rtol=1e-6)  # round model: round map
    v_flat_x, v_flat_y = jam.jam_vrms(FLAT, r, eps), jam.jam_vrms(FLAT, eps, r)
    # Edge-on flattened isotropic model: rotation support raises v_rms along the major axis (x).
    assert np.all(v_flat_x > v_flat_y + 20.0)


def test_symmetric_in_x_and_y():
    x, y = _points(10, 0.1, 5.0, seed=6)
    v = jam.jam_vrms(TYPICAL, x, y)
    np.testing.assert_allclose(jam.jam_vrms(TYPICAL, -x, y), v, rtol=1e-12)
    np.testing.assert_allclose(jam.jam_vrms(TYPICAL, x, -y), v, rtol=1e-12)


def test_zero_valued_pixels_are_negative_v2():
    """High beta_z with round light and flattened mass: <v^2> < 0 somewhere (SKiNN's zero-valued
    pixels); jam_vrms reports 0 there, exactly as jampy's public API does."""
    p = np.array([1.268, 2.45, 0.658, 0.979, 0.832, 2.847, 0.262, 66.887])
    x, y = np.array([5.0, 3.5, 0.5]), np.array([0.25, 0.25, 0.5])  # along the major axis
    v2 = jam.jam_vrms2(p, x, y)
    assert v2[0] < 0 and v2[1] < 0 and v2[2] > 0
    np.testing.assert_array_equal(jam.jam_vrms(p, x, y)[:2], 0.0)
    np.testing.assert_allclose(
        jam.jam_vrms(p, x, y), jam.jam_vrms_jampy(p, x, y, interp=True, nrad=10, nang=1), rtol=1e-6
    )


@pytest.mark.parametrize(
    "params,x,y,match",
    [
        (np.r_[3.0, TYPICAL[1:]], [1.0], [1.0], r"theta_E = 3 is outside its allowed range \[0.5, 2\]"),
        (np.r_[TYPICAL[:7], 10.0], [1.0], [1.0], "inclination = 10 is outside"),
        (np.r_[TYPICAL[:6], np.nan, 60.0], [1.0], [1.0], "beta_z is nan"),
        (TYPICAL[:5], [1.0], [1.0], r"shape \(8,\)"),
        (np.tile(TYPICAL, (2, 1)), [1.0], [1.0], "one parameter vector"),
        (TYPICAL, [1.0, 2.0], [1.0], "x and y must be 1-D arrays of one length"),
        (TYPICAL, [0.0, 1.0], [0.0, 1.0], "singular"),
        (TYPICAL, [np.inf], [1.0], "finite"),
    ],
)
def test_bad_input(params, x, y, match):
    with pytest.raises(ValueError, match=match):
        jam.jam_vrms(params, np.asarray(x, float), np.asarray(y, float))
