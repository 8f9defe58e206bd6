"""jkin.conventions against independent references: astropy, lenstronomy, numerical integrals."""

import numpy as np
import pytest
from scipy import integrate

from jkin import conventions as cv


def test_fiducial_distances_match_astropy():
    import astropy.constants as const
    import astropy.units as u
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=cv.H0, Om0=cv.OMEGA_M)
    d_d = cosmo.angular_diameter_distance(cv.Z_D).to_value(u.Mpc)
    d_s = cosmo.angular_diameter_distance(cv.Z_S).to_value(u.Mpc)
    try:  # astropy 8 takes (z1, z2) and deprecates the _z1z2 method, which older ones need
        d_ds = cosmo.angular_diameter_distance(cv.Z_D, cv.Z_S)
    except TypeError:
        d_ds = cosmo.angular_diameter_distance_z1z2(cv.Z_D, cv.Z_S)
    d_ds = d_ds.to_value(u.Mpc)
    assert cv.D_D == pytest.approx(d_d, rel=1e-6)
    assert cv.D_S == pytest.approx(d_s, rel=1e-6)
    assert cv.D_DS == pytest.approx(d_ds, rel=1e-6)
    assert cv.D_DT == pytest.approx((1 + cv.Z_D) * d_d * d_s / d_ds, rel=1e-6)
    assert cv.D_DT == pytest.approx(2886.54, rel=1e-5)  # the value the issue quotes
    sigma_crit = (const.c**2 / (4 * np.pi * const.G) * d_s / (d_d * d_ds) / u.Mpc).to_value(
        u.Msun / u.pc**2
    )
    assert cv.SIGMA_CRIT == pytest.approx(sigma_crit, rel=1e-6)


@pytest.mark.parametrize("gamma,q", [(2.0, 1.0), (1.6, 0.7), (2.4, 0.62)])
def test_pemd_without_core_is_lenstronomy_epl(gamma, q):
    from lenstronomy.LensModel.lens_model import LensModel

    rng = np.random.default_rng(1)
    x, y = rng.uniform(-3, 3, (2, 200))
    e1 = (1 - q) / (1 + q)  # position angle 0: major axis along x
    kw = dict(theta_E=1.3, gamma=gamma, e1=e1, e2=0.0, center_x=0.0, center_y=0.0)
    ref = LensModel(["EPL"]).kappa(x, y, [kw])
    ours = cv.kappa_pemd(x, y, 1.3, gamma, q, r_core=0.0)
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_pemd_core():
    # At the centre the cored PEMD is (3 - gamma)/2 (theta_E / r_c)^(gamma - 1).
    k0 = cv.kappa_pemd(0.0, 0.0, 1.2, 2.2, 0.8)
    assert k0 == pytest.approx(0.4 * (1.2 / cv.R_CORE) ** 1.2)


@pytest.mark.parametrize("n,q", [(2.0, 1.0), (3.1, 0.7), (4.0, 0.6)])
def test_sersic_is_lenstronomy_sersic_ellipse(n, q):
    """Same elliptical radius and form; lenstronomy uses the approximation b_n = 1.9992n - 0.3271,
    jkin the exact half-light b_n, so the log-profiles differ by exactly that ratio."""
    from lenstronomy.LightModel.light_model import LightModel
    from lenstronomy.LensModel.Profiles.sersic_utils import SersicUtil

    rng = np.random.default_rng(2)
    x, y = rng.uniform(-4, 4, (2, 300))
    e1 = (1 - q) / (1 + q)
    kw = dict(amp=1.0, R_sersic=0.9, n_sersic=n, e1=e1, e2=0.0, center_x=0.0, center_y=0.0)
    ref = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(x, y, [kw])
    ours = cv.sersic_profile(x, y, 0.9, n, q)
    ok = np.abs(np.log(ref)) > 1e-3
    ratio = np.log(ours[ok]) / np.log(ref[ok])
    np.testing.assert_allclose(ratio, cv.sersic_bn(n) / SersicUtil.b_n(n), rtol=1e-9)


@pytest.mark.parametrize("n", [0.8, 2.0, 3.3, 4.0])
def test_sersic_bn_is_exact_half_light(n):
    # Circular profile: the flux inside R_sersic is half the total.
    f = lambda R: R * cv.sersic_profile(R, 0.0, 1.0, n, 1.0)
    inner = integrate.quad(f, 0, 1.0, epsrel=1e-12)[0]
    outer = integrate.quad(f, 1.0, np.inf, epsrel=1e-12, limit=500)[0]
    assert inner == pytest.approx(outer, rel=1e-8)


def test_sample_params_fill_the_space():
    p = cv.sample_params(np.random.default_rng(0), 20000)
    cv.validate_params(p)
    for j, name in enumerate(cv.PARAM_NAMES):
        if name in ("R_sersic", "inclination"):
            continue
        lo, hi = cv.param_bounds(p[:1])[name]
        assert p[:, j].min() == pytest.approx(lo, abs=0.01 * (hi - lo))
        assert p[:, j].max() == pytest.approx(hi, abs=0.01 * (hi - lo))
    frac = p[:, 4] / p[:, 0]
    assert frac.min() == pytest.approx(0.5, abs=0.01) and frac.max() == pytest.approx(1, abs=0.01)
    i_min = cv.inclination_min(p[:, 2], p[:, 3])
    u = (p[:, 7] - i_min) / (90 - i_min)
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01


GOOD = np.array([1.0, 2.0, 0.8, 0.9, 0.7, 3.0, 0.1, 70.0])


@pytest.mark.parametrize(
    "j,value,needle",
    [
        (0, 2.5, "theta_E = 2.5 is outside its allowed range [0.5, 2] arcsec"),
        (1, 1.2, "gamma = 1.2 is outside its allowed range [1.5, 2.5]"),
        (2, 0.5, "q_mass = 0.5 is outside its allowed range [0.6, 1]"),
        (3, 1.01, "q_light = 1.01 is outside its allowed range [0.6, 1]"),
        (4, 0.3, "R_sersic = 0.3 is outside its allowed range [0.5, 1] arcsec"),
        (5, 4.5, "n_sersic = 4.5 is outside its allowed range [2, 4]"),
        (6, -0.5, "beta_z = -0.5 is outside its allowed range [-0.4, 0.4]"),
        (7, 30.0, "inclination = 30 is outside its allowed range [38.8699, 90] deg"),
        (7, 91.0, "inclination = 91 is outside"),
        (3, np.nan, "q_light is nan; it must be a finite number"),
    ],
)
def test_validate_params_names_the_parameter_and_range(j, value, needle):
    p = GOOD.copy()
    p[j] = value
    with pytest.raises(ValueError) as err:
        cv.validate_params(p)
    assert needle in str(err.value)


def test_validate_params_shape_and_batch_row():
    with pytest.raises(ValueError, match=r"shape \(8,\) or \(N, 8\)"):
        cv.validate_params(np.ones(7))
    batch = np.tile(GOOD, (3, 1))
    batch[2, 1] = 3.0
    with pytest.raises(ValueError, match=r"gamma \(row 2\) = 3"):
        cv.validate_params(batch)
    np.testing.assert_array_equal(cv.validate_params(GOOD), GOOD)
