"""Tests of jkin.lensing and jkin.lensing_data against lenstronomy (the independent reference).

Tight comparisons run in float64 inside ``jax.enable_x64(True)`` (never globally); the mocks are
made in the library's default float32.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

from jkin import conventions as cv
from jkin import lensing as L
from jkin.lensing_data import (
    LensingData,
    load_lensing_data,
    load_lensing_truth,
    save_lensing_data,
)

lenstronomy = pytest.importorskip("lenstronomy")
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.Util.param_util import phi_q2_ellipticity  # noqa: E402

SMALL = L.MockSettings(n_pix=40, psf_size=11)


@pytest.fixture(scope="module")
def mock():
    """A 40x40 mock (float32), quad images inside the field."""
    return L.make_mock_lensing(3, settings=SMALL)


def _lenstronomy_kwargs(p):
    """lenstronomy kwargs (EPL + SHEAR, SERSIC_ELLIPSE lens light and source) of jkin params."""
    e1, e2 = phi_q2_ellipticity(np.radians(p["phi"]), p["q_mass"])
    kw_lens = [
        dict(theta_E=p["theta_E"], gamma=p["gamma"], e1=e1, e2=e2, center_x=p["x_c"],
             center_y=p["y_c"]),
        dict(gamma1=p["gamma1_ext"], gamma2=p["gamma2_ext"], ra_0=0.0, dec_0=0.0),
    ]
    if "q_light" not in p:  # mass-only parameters
        return kw_lens, None, None
    el1, el2 = phi_q2_ellipticity(np.radians(p["phi"]), p["q_light"])
    kw_light = [dict(amp=p["amp_light"], R_sersic=p["R_sersic"], n_sersic=p["n_sersic"], e1=el1,
                     e2=el2, center_x=p["x_c"], center_y=p["y_c"])]
    kw_source = [dict(amp=p["amp_src"], R_sersic=p["R_sersic_src"], n_sersic=p["n_sersic_src"],
                      e1=0.0, e2=0.0, center_x=p["x_src"], center_y=p["y_src"])]
    return kw_lens, kw_light, kw_source


MASS_CASES = [
    dict(theta_E=1.2, gamma=2.05, q_mass=0.8, phi=25.0, x_c=0.03, y_c=-0.02,
         gamma1_ext=-0.007, gamma2_ext=0.019),
    dict(theta_E=0.7, gamma=1.55, q_mass=0.6, phi=-70.0, x_c=-0.1, y_c=0.05,
         gamma1_ext=0.03, gamma2_ext=-0.01),
    dict(theta_E=1.9, gamma=2.45, q_mass=1.0, phi=10.0, x_c=0.0, y_c=0.0,
         gamma1_ext=0.0, gamma2_ext=0.0),
]


def test_epl_series_matches_herculens_and_unrolls(x64, monkeypatch):
    """``epl_omega_series`` (Horner) equals herculens' ``R_omega`` (the recurrence) in value to
    1e-13 relative and in its derivatives by q and t to 1e-11, over the training space's q_mass
    and gamma; unrolled (as on accelerators) the deflection and its gradient trace without any
    sequential loop, and give the same numbers as the loop."""
    from herculens.Util.jax_util import R_omega

    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.uniform(-3, 3, 200) + 1j * rng.uniform(-3, 3, 200))
    for q, gamma in [(0.6, 1.5), (0.75, 2.0), (0.93, 2.5), (1.0, 2.1)]:
        t = gamma - 1.0
        ours, ref = L.epl_omega_series(z, t, q), R_omega(z, t, q, nmax=20)
        np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=0)

        def summed(fn, q, t):
            w = fn(z, t, q)
            return jnp.sum(w.real * jnp.cos(jnp.abs(z)) + w.imag)

        g_ours = jax.grad(lambda q, t: summed(L.epl_omega_series, q, t), (0, 1))(q, t)
        g_ref = jax.grad(lambda q, t: summed(lambda *a: R_omega(*a, nmax=20), q, t), (0, 1))(q, t)
        assert np.all(np.isfinite(g_ours))
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-11, atol=1e-11)

    p = MASS_CASES[0]

    def deflection_sum(theta):
        ax, ay = L.deflection(z.real, z.imag, dict(p, **theta))
        return jnp.sum(ax + ay)

    theta = dict(theta_E=1.2, gamma=2.05, q_mass=0.8)
    vg = jax.value_and_grad(deflection_sum)
    results = {}
    for unroll in (False, True):  # the CPU's default, then an accelerator's
        monkeypatch.setattr(L, "_unroll_loops", lambda: unroll)
        jax.clear_caches()  # herculens jits inside: retrace
        has_loop = "stablehlo.while" in jax.jit(vg).lower(theta).as_text()
        assert has_loop != unroll
        results[unroll] = vg(theta)
    monkeypatch.undo()
    jax.clear_caches()  # later tests trace this backend's default again
    rolled, unrolled = results[False], results[True]
    np.testing.assert_allclose(jax.tree.leaves(unrolled), jax.tree.leaves(rolled), rtol=1e-13)


@pytest.mark.parametrize("p", MASS_CASES)
def test_mass_model_matches_lenstronomy(x64, p):
    """Deflection, convergence, potential and Fermat potential of EPL + SHEAR and EPL_Q_PHI:
    agreement to 1e-9 (absolute, arcsec / arcsec^2; 1e-9 relative for kappa) in float64."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-3, 3, 300), rng.uniform(-3, 3, 300)
    kw_lens, _, _ = _lenstronomy_kwargs(p)
    lm = LensModel(["EPL", "SHEAR"])
    ax, ay = L.deflection(x, y, p)
    rx, ry = lm.alpha(x, y, kw_lens)
    np.testing.assert_allclose(ax, rx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ay, ry, rtol=0, atol=1e-9)
    np.testing.assert_allclose(L.convergence(x, y, p), lm.kappa(x, y, kw_lens), rtol=1e-9, atol=0)
    np.testing.assert_allclose(L.lensing_potential(x, y, p), lm.potential(x, y, kw_lens),
                               rtol=0, atol=1e-9)
    xs, ys = 0.05, -0.02
    np.testing.assert_allclose(L.fermat_potential(x, y, p, xs, ys),
                               lm.fermat_potential(x, y, kw_lens, xs, ys), rtol=0, atol=1e-9)
    np.testing.assert_allclose(L.fermat_potential(x, y, p), lm.fermat_potential(x, y, kw_lens),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(L.magnification(x, y, p), lm.magnification(x, y, kw_lens),
                               rtol=1e-8, atol=0)
    # the (q, phi [rad]) parametrisation directly: lenstronomy's EPL_Q_PHI
    kw_qphi = [dict(theta_E=p["theta_E"], gamma=p["gamma"], q=p["q_mass"],
                    phi=np.radians(p["phi"]), center_x=p["x_c"], center_y=p["y_c"])]
    ex, ey = L.EPLQPhi().derivatives(x, y, **kw_qphi[0])
    rx, ry = LensModel(["EPL_Q_PHI"]).alpha(x, y, kw_qphi)
    np.testing.assert_allclose(ex, rx, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ey, ry, rtol=0, atol=1e-9)


def test_sersic_matches_lenstronomy(x64):
    """SersicQPhi = lenstronomy SERSIC_ELLIPSE (product-average radius) to 1e-10 relative."""
    from lenstronomy.LightModel.light_model import LightModel as LLight

    rng = np.random.default_rng(2)
    x, y = rng.uniform(-3, 3, 400), rng.uniform(-3, 3, 400)
    for q, phi, n, R in [(0.75, 25.0, 3.0, 0.9), (0.6, -50.0, 4.0, 0.5), (1.0, 0.0, 1.0, 0.1)]:
        e1, e2 = phi_q2_ellipticity(np.radians(phi), q)
        ref = LLight(["SERSIC_ELLIPSE"]).surface_brightness(
            x, y, [dict(amp=3.0, R_sersic=R, n_sersic=n, e1=e1, e2=e2, center_x=0.1,
                        center_y=-0.2)])
        got = L.SersicQPhi().function(x, y, 3.0, R, n, q, np.radians(phi), 0.1, -0.2)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=0)
    # total flux of the lens light used by the mock (lenstronomy's analytic total flux)
    from lenstronomy.LightModel.Profiles.sersic import SersicElliptic

    ref_flux = SersicElliptic().total_flux(amp=2.0, R_sersic=0.9, n_sersic=3.0, e1=0.1, e2=0.0)
    np.testing.assert_allclose(L.sersic_total_flux(2.0, 0.9, 3.0), ref_flux, rtol=1e-10)


def test_model_image_matches_lenstronomy(x64, mock):
    """The full model image (lens light + lensed source + 4 quasar images, supersampling 2, PSF
    convolution) equals lenstronomy's ImageModel to 1e-10 of its peak, on the mock's grid
    (x axis flipped: transform_pix2angle = diag(-0.1, 0.1)). The PSF gets a 1-pixel zero border
    here, so that both codes' bilinear quasar shifts keep all the light (see the next test)."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF as LPSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LightModel.light_model import LightModel as LLight
    from lenstronomy.PointSource.point_source import PointSource

    p = mock.truth
    x_img = np.asarray(mock.images["x"], dtype=float)
    y_img = np.asarray(mock.images["y"], dtype=float)
    kw_lens, kw_light, kw_source = _lenstronomy_kwargs(p)
    kw_ps = [dict(ra_image=x_img, dec_image=y_img, point_amp=np.asarray(p["amp_ps"], float))]

    def reference(kernel):
        data = ImageData(image_data=np.zeros((SMALL.n_pix,) * 2),
                         transform_pix2angle=np.asarray(mock.data.transform_pix2angle),
                         ra_at_xy_0=mock.data.ra_at_xy_0, dec_at_xy_0=mock.data.dec_at_xy_0)
        im = ImageModel(data, LPSF(psf_type="PIXEL", kernel_point_source=kernel),
                        lens_model_class=LensModel(["EPL", "SHEAR"]),
                        source_model_class=LLight(["SERSIC_ELLIPSE"]),
                        lens_light_model_class=LLight(["SERSIC_ELLIPSE"]),
                        point_source_class=PointSource(["LENSED_POSITION"]),
                        kwargs_numerics={"supersampling_factor": 2,
                                         "supersampling_convolution": False})
        return im.image(kw_lens, kw_source, kw_light, kw_ps)

    kernel = np.pad(np.asarray(mock.data.psf_kernel), 1)
    data = mock.data.replace(psf_kernel=kernel)
    exact = L.LensModelConfig(light_precision="float64")  # the float32 default: next test
    got = np.asarray(jax.jit(L._model_image, static_argnums=(2, 5))(
        p, data, exact, x_img, y_img, None))
    ref = reference(kernel)
    assert np.abs(got - ref).max() < 1e-10 * ref.max()


def test_float32_light_matches_float64(x64, mock):
    """The default float32 extended light (``LensModelConfig.light_precision``) against float64,
    at the truth and away from it: the model image to 1e-7 of its peak (measured <= 8e-9), log L
    to 0.05 (1e-4 and 1e-2), and each gradient component to 1e-3 of its Fisher scale
    sqrt(F_ii) = sqrt(sum (dI/dp_i)^2 / sigma^2) (measured <= 1e-4: a MAP moves by that many
    sd); the delays' D_dt gradient is unchanged. The supersampled light is computed in float32
    and the result returned in float64."""
    d = jax.tree.map(np.asarray, mock.data)
    p = {k: jnp.asarray(v, jnp.float64) for k, v in mock.truth.items()}
    exact = L.LensModelConfig(light_precision="float64")
    assert L.DEFAULT_CONFIG.light_precision == "float32"
    jac = jax.jit(jax.jacfwd(lambda q: L.lens_image_model(q, d, exact)))(p)
    w = (np.asarray(d.mask) / np.asarray(d.noise_map) ** 2).reshape(-1, 1)
    scale = {k: np.sqrt(np.sum(np.asarray(j).reshape(d.image.size, -1) ** 2 * w, axis=0))
             for k, j in jac.items()}
    vg = jax.jit(jax.value_and_grad(L.lensing_log_likelihood), static_argnums=2)
    image = jax.jit(L.lens_image_model, static_argnames="config")
    away = dict(p, theta_E=p["theta_E"] + 2e-3, gamma=p["gamma"] - 0.02, x_src=p["x_src"] + 2e-3)
    for q in (p, away):
        (v64, g64), (v32, g32) = vg(q, d, exact), vg(q, d, L.DEFAULT_CONFIG)
        i64, i32 = np.asarray(image(q, d, config=exact)), np.asarray(image(q, d))
        assert i32.dtype == np.float64
        assert np.abs(i32 - i64).max() < 1e-7 * i64.max()
        assert abs(float(v32) - float(v64)) < 0.05
        assert float(g32["D_dt"]) == float(g64["D_dt"])
        for k in g64:
            if k != "D_dt":
                dg = np.abs(np.asarray(g32[k]) - np.asarray(g64[k]))
                assert np.all(dg < 1e-3 * scale[k]), (k, dg / scale[k])
    text = str(jax.make_jaxpr(lambda q: L._extended_light(q, d, L.DEFAULT_CONFIG))(p))
    n_sub = (d.n_pix * d.supersampling) ** 2
    assert text.count(f"f32[{n_sub}]") > 20 and text.count(f"f64[{n_sub}]") <= 2  # the grid, cast


def test_point_source_rendering_conserves_flux(x64, mock):
    """herculens renders a quasar image as the bilinearly shifted PSF and keeps all its flux;
    lenstronomy's shift drops what moves past the kernel edge (here 0 < loss < 5e-3 of the flux
    for the 11-pixel kernel, 2.8e-4 for the 21-pixel mock PSF), otherwise they agree."""
    from lenstronomy.Data.pixel_grid import PixelGrid as LGrid
    from lenstronomy.Data.psf import PSF as LPSF
    from lenstronomy.ImSim.Numerics.point_source_rendering import PointSourceRendering

    d = mock.data
    kernel = np.asarray(d.psf_kernel, dtype=float)
    x, y, amp = np.array([0.537, -0.61]), np.array([-0.213, 0.35]), np.array([1.0, 2.0])
    got = np.asarray(L._herculens_image(d).ImageNumerics.render_point_sources(
        x, y, amp, kwargs_psf={"pixels": kernel}))
    grid = LGrid(d.n_pix, d.n_pix, np.asarray(d.transform_pix2angle), d.ra_at_xy_0, d.dec_at_xy_0)
    ref = PointSourceRendering(grid, 1, LPSF(psf_type="PIXEL", kernel_point_source=kernel)
                               ).point_source_rendering(x, y, amp)
    assert got.sum() == pytest.approx(amp.sum(), rel=1e-12)
    assert 0 < 1 - ref.sum() / amp.sum() < 5e-3
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-3 * amp.max())
    assert np.argmax(got) == np.argmax(ref)


def _lenstronomy_delays(mock):
    """The mock's image positions, lenstronomy's Fermat potentials there (EPL + SHEAR at the
    truth) and its LensCosmo for FlatLambdaCDM(72, 0.32), z = 0.5 -> 2."""
    from astropy.cosmology import FlatLambdaCDM
    from lenstronomy.Cosmo.lens_cosmo import LensCosmo

    p = mock.truth
    x_img = np.asarray(mock.images["x"], dtype=float)
    y_img = np.asarray(mock.images["y"], dtype=float)
    kw_lens, _, _ = _lenstronomy_kwargs(p)
    fp = LensModel(["EPL", "SHEAR"]).fermat_potential(x_img, y_img, kw_lens, p["x_src"], p["y_src"])
    lc = LensCosmo(cv.Z_D, cv.Z_S, cosmo=FlatLambdaCDM(H0=cv.H0, Om0=cv.OMEGA_M))
    return x_img, y_img, fp, lc


def test_time_delays_match_lenstronomy(x64, mock):
    """Delays from jkin (D_dt = conventions.D_DT) equal lenstronomy's Fermat potential x
    LensCosmo.time_delay_units for FlatLambdaCDM(72, 0.32), z = 0.5 -> 2, to 1e-6 relative
    (the precision of the tabulated fiducial distances)."""
    p = mock.truth
    x_img, y_img, fp, lc = _lenstronomy_delays(mock)
    ref = lc.time_delay_units(fp - fp[0])
    got = np.asarray(L.time_delays(x_img, y_img, p, p["x_src"], p["y_src"]))
    assert got[0] == 0.0
    np.testing.assert_allclose(got[1:], ref[1:], rtol=1e-6)
    # the mock's noiseless delays (float32 pipeline) agree to 1e-4 days
    np.testing.assert_allclose(mock.images["time_delays"], ref, rtol=0, atol=1e-4)


def test_delay_distance_is_the_weighted_least_squares_d_dt(x64, mock):
    """``delay_distance`` against numpy's least squares on lenstronomy's delays per unit D_dt
    (Fermat potential x LensCosmo.time_delay_units / its D_dt), for delays made at another D_dt
    plus known offsets and unequal errors; at its D_dt the delay likelihood is stationary."""
    p = mock.truth
    x_img, y_img, fp, lc = _lenstronomy_delays(mock)
    k = lc.time_delay_units(fp - fp[0]) / lc.ddt
    err = np.array([1.0, 0.7, 1.3, 2.1])
    delays = 2600.0 * k + np.array([0.0, 0.4, -0.9, 0.3])
    data = mock.data.replace(time_delays=jnp.asarray(delays), time_delay_errors=jnp.asarray(err))
    a = (k / err)[1:, None]
    want, *_ = np.linalg.lstsq(a, (delays / err)[1:], rcond=None)
    want_sd = np.sqrt(np.linalg.inv(a.T @ a))[0, 0]
    got, sd = L.delay_distance(dict(p, D_dt=9999.0), data)
    assert got == pytest.approx(want[0], rel=1e-6) and sd == pytest.approx(want_sd, rel=1e-6)
    dll = jax.grad(lambda d: L.time_delay_log_likelihood(dict(p, D_dt=d), data))(got)
    assert abs(float(dll)) * sd < 1e-6


def test_mock_quad_satisfies_lens_equation(mock):
    """Four images, labelled in order of arrival, each mapping to the source to < 1e-4 arcsec
    under lenstronomy's float64 ray shooting; the likelihood's Newton solver (float32) started
    from the stored positions returns them to < 1e-4 arcsec; magnifications match lenstronomy
    to 1e-3."""
    p, d = mock.truth, mock.data
    assert d.labels == ("A", "B", "C", "D")
    x_img = np.asarray(mock.images["x"], dtype=float)
    y_img = np.asarray(mock.images["y"], dtype=float)
    kw_lens, _, _ = _lenstronomy_kwargs(p)
    lm = LensModel(["EPL", "SHEAR"])
    bx, by = lm.ray_shooting(x_img, y_img, kw_lens)
    assert np.hypot(bx - p["x_src"], by - p["y_src"]).max() < 1e-4
    assert np.all(np.diff(mock.images["time_delays"]) > 0)
    assert np.min(np.hypot(x_img[:, None] - x_img, y_img[:, None] - y_img) + 9 * np.eye(4)) > 0.1
    np.testing.assert_allclose(mock.images["mu"], lm.magnification(x_img, y_img, kw_lens),
                               rtol=1e-3)
    xs, ys = jax.jit(L.image_positions)(p, d)
    assert np.hypot(np.asarray(xs) - x_img, np.asarray(ys) - y_img).max() < 1e-4
    # from positions off by ~0.05 arcsec, Newton still lands on the same images
    pert = d.replace(x_image=d.x_image + 0.05, y_image=d.y_image - 0.03)
    xs, ys = jax.jit(L.image_positions)(p, pert)
    assert np.hypot(np.asarray(xs) - x_img, np.asarray(ys) - y_img).max() < 1e-4


def test_likelihood_at_truth(mock):
    """At the truth, the imaging chi^2 is N_pix within 5 sigma (sqrt(2 N)), the delay term is
    chi^2 with 3 degrees of freedom (< 20), the source-plane term vanishes (> -1e-3), and the total
    is their sum. The 'model' noise model equals the 'map' one plus -1/2 sum log var."""
    p, d = mock.truth, mock.data
    n = d.image.size
    cfg = L.LensModelConfig(noise_model="model")

    @jax.jit
    def terms(p, d):  # one compilation for all of them
        return (L.imaging_log_likelihood(p, d), L.time_delay_log_likelihood(p, d),
                L.source_plane_log_likelihood(p, d), L.lensing_log_likelihood(p, d),
                L.imaging_log_likelihood(p, d, cfg))

    img, td, sp, tot, img_model_noise = terms(p, d)
    model = jax.jit(L.lens_image_model)(p, d)
    img, td, sp, tot = float(img), float(td), float(sp), float(tot)
    assert abs(-2 * img - n) < 5 * np.sqrt(2 * n)
    assert -10.0 < td <= 0.0
    assert -1e-3 < sp <= 0.0
    assert tot == pytest.approx(img + td + sp, rel=1e-5)
    model = np.asarray(model, dtype=float)
    var = d.background_rms**2 + np.maximum(model, 0) / d.exposure_time
    want = -0.5 * np.sum((np.asarray(d.image) - model) ** 2 / var + np.log(var))
    assert float(img_model_noise) == pytest.approx(want, rel=1e-5)


def test_imaging_chi2_against_numpy(x64, mock):
    """imaging_chi2 = sum over unmasked pixels of (data - model)^2 / var, var from the noise map
    or the model (numpy from lens_image_model); ~1 per pixel at the truth, well above at a
    wrong slope."""
    p, d = mock.truth, mock.data
    model = np.asarray(jax.jit(L.lens_image_model)(p, d), dtype=float)
    mask = np.asarray(d.mask) > 0
    r = np.asarray(d.image) - model
    chi2, n = L.imaging_chi2(p, d)
    assert n == mask.sum()
    assert float(chi2) == pytest.approx(np.sum((r**2 / np.asarray(d.noise_map) ** 2)[mask]),
                                        rel=1e-5)
    var = d.background_rms**2 + np.maximum(model, 0) / d.exposure_time
    chi2_m, _ = L.imaging_chi2(p, d, L.LensModelConfig(noise_model="model"))
    assert float(chi2_m) == pytest.approx(np.sum((r**2 / var)[mask]), rel=1e-5)
    assert abs(float(chi2) / n - 1) < 5 * np.sqrt(2 / n)
    wrong, _ = L.imaging_chi2(dict(p, gamma=p["gamma"] - 0.2), d)
    assert float(wrong) / n > 1.5


def test_fit_records_map_image_quality(x64, mock, capsys):
    from jkin.fitting import CHI2_WARN, _map_imaging_quality
    from jkin.inference import map_imaging_chi2

    good = map_imaging_chi2(mock.truth, mock.data)
    chi2, n = L.imaging_chi2({k: np.asarray(v, float) for k, v in mock.truth.items()},
                             jax.tree.map(np.asarray, mock.data))  # float64, as the check
    assert good == pytest.approx(float(chi2) / n, rel=1e-6) and good < CHI2_WARN
    wrong = map_imaging_chi2(dict(mock.truth, gamma=mock.truth["gamma"] - 0.2), mock.data)
    assert wrong > CHI2_WARN
    rec = _map_imaging_quality(dict(imaging_chi2_per_pixel=good, restarts=0,
                                    round_log_density=[-1.0]), "good")
    assert rec["map_imaging_chi2_per_pixel"] == good and rec["map_restarts"] == 0
    assert "warning" not in capsys.readouterr().err
    _map_imaging_quality(dict(imaging_chi2_per_pixel=wrong, restarts=1,
                              round_log_density=[-2.0, -3.0]), "bad")
    assert "bad: image chi^2 per pixel" in capsys.readouterr().err


def test_gradients_match_finite_differences(x64, mock):
    """check_grads (reverse mode, order 1) of the total lensing log-likelihood in float64 (the
    light too), away from the truth, with all parameters perturbed at once: central differences with
    eps = 1e-6 agree to 1e-5 relative (the error shrinks as eps^2, as it should)."""
    p0 = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in mock.truth.items()}
    p0.update(theta_E=p0["theta_E"] + 1e-3, gamma=p0["gamma"] - 0.01, phi=p0["phi"] + 0.5,
              x_src=p0["x_src"] + 1e-3, D_dt=p0["D_dt"] * 1.02, n_sersic=p0["n_sersic"] + 0.05)
    f = jax.jit(L.lensing_log_likelihood, static_argnums=2)
    exact = L.LensModelConfig(light_precision="float64")  # the float32 default: see above
    check_grads(lambda q: f(q, mock.data, exact), (p0,), order=1, modes=["rev"], eps=1e-6,
                atol=0, rtol=1e-5)


def test_gradients_finite_at_edges(mock):
    """Value and gradient are finite (float32) at q_mass = q_light = 1, at the gamma bounds
    1.5 / 2.5, and with the lens centre exactly on a supersampled grid point; at the truth every
    parameter has a finite, non-zero gradient."""
    d = mock.data
    vg = jax.jit(L.lensing_value_and_grad)
    _, g = vg(mock.truth, d)
    assert set(g) == set(L.param_names())
    for k, gk in g.items():
        assert np.all(np.isfinite(np.asarray(gk))) and np.all(np.asarray(gk) != 0), k
    xg, yg = d.pixel_coordinates()
    on_grid = dict(x_c=float(xg[20, 20]) + 0.025, y_c=float(yg[20, 20]) + 0.025)  # subpixel centre
    for change in (dict(q_mass=1.0, q_light=1.0), dict(gamma=1.5), dict(gamma=2.5), on_grid,
                   dict(q_mass=1.0, q_light=1.0, **on_grid)):
        p = {**mock.truth, **change}
        v, g = vg(p, d)
        assert np.isfinite(float(v)), change
        for k, gk in g.items():
            assert np.all(np.isfinite(np.asarray(gk))), (change, k)


def test_jit_vmap_and_configs_agree(mock):
    """jit vs eager (image positions, delays) and vmap vs a loop (image) agree; the configurable
    variants (free light centre and angle, elliptical source, magnified quasar amplitudes)
    reproduce the default image when their extra parameters take the shared values (float32,
    1e-4 of the peak), and the freed light centre is really used."""
    p, d = mock.truth, mock.data
    ref = np.asarray(jax.jit(L.lens_image_model)(p, d))
    tol = 1e-4 * ref.max()  # float32: quasar pixels move with the ~1e-7" solver round-off
    xj, yj = jax.jit(L.image_positions)(p, d)
    xe, ye = L.image_positions(p, d)
    assert np.abs(np.asarray(xe) - np.asarray(xj)).max() < 1e-5
    assert np.abs(np.asarray(ye) - np.asarray(yj)).max() < 1e-5
    dj = jax.jit(L.time_delays)(xj, yj, p)
    de = L.time_delays(xe, ye, p)
    np.testing.assert_allclose(np.asarray(de), np.asarray(dj), rtol=0, atol=1e-4)
    thetas = jnp.array([p["theta_E"], p["theta_E"] * 1.01])
    batched = jax.jit(jax.vmap(lambda t: L.lens_image_model({**p, "theta_E": t}, d)))(thetas)
    single = jax.jit(L.lens_image_model)({**p, "theta_E": float(thetas[1])}, d)  # cache hit
    assert np.abs(np.asarray(batched[0]) - ref).max() < tol
    assert np.abs(np.asarray(batched[1]) - np.asarray(single)).max() < tol

    cfg = L.LensModelConfig(share_light_center=False, share_light_phi=False,
                            elliptical_source=True, point_source_amplitudes="magnified")
    amp_src = float(L.magnitude_to_flux(SMALL.ps_mag, SMALL.zero_point))
    q = {**p, "x_light": p["x_c"], "y_light": p["y_c"], "phi_light": p["phi"], "q_src": 1.0,
         "phi_src": 33.0, "amp_ps": amp_src}
    assert set(L.param_names(cfg)) - set(L.param_names()) == {
        "x_light", "y_light", "phi_light", "q_src", "phi_src"}
    got = np.asarray(jax.jit(L.lens_image_model, static_argnames="config")(q, d, config=cfg))
    assert np.abs(got - ref).max() < tol
    moved = np.asarray(jax.jit(L.lens_image_model, static_argnames="config")(
        {**q, "x_light": p["x_c"] + 0.1}, d, config=cfg))
    assert np.abs(moved - ref).max() > 0.5


def test_parameter_and_config_errors(mock):
    """Missing parameters and bad settings raise ValueError naming them; each likelihood needs
    only its own parameters (the delays: mass, source position, D_dt)."""
    delay_only = {k: mock.truth[k] for k in L._DELAY_NAMES}
    got = float(jax.jit(L.time_delay_log_likelihood)(delay_only, mock.data))
    d = mock.data
    want = -0.5 * np.sum(((mock.images["time_delays"] - np.asarray(d.time_delays))[1:]
                          / np.asarray(d.time_delay_errors)[1:]) ** 2)
    assert got == pytest.approx(want, rel=1e-3, abs=1e-4)
    with pytest.raises(ValueError, match="amp_light"):
        L.imaging_log_likelihood(delay_only, mock.data)
    p = dict(mock.truth)
    del p["gamma1_ext"]
    with pytest.raises(ValueError, match="gamma1_ext"):
        L.lensing_log_likelihood(p, mock.data)
    with pytest.raises(ValueError, match="amp_ps has shape"):
        L.lensing_log_likelihood({**mock.truth, "amp_ps": 1.0}, mock.data)
    with pytest.raises(ValueError, match="point_source_amplitudes"):
        L.LensModelConfig(point_source_amplitudes="fixed")
    with pytest.raises(ValueError, match="noise_model"):
        L.LensModelConfig(noise_model="poisson")
    with pytest.raises(ValueError, match="light_precision must be one of"):
        L.LensModelConfig(light_precision="float16")


def test_psf_kernel_is_normalised_and_not_gaussian():
    """21x21, sums to 1, peak at the centre, and with wings a Gaussian of the same FWHM lacks."""
    k = L.make_psf_kernel(21, 0.1)
    assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-12
    assert np.unravel_index(np.argmax(k), k.shape) == (10, 10)
    assert not np.allclose(k, k.T)  # elliptical core + spikes break the symmetry
    r = np.hypot(*np.mgrid[-10:11, -10:11])
    sigma = 1.5 / 2.3548  # pixels
    gauss = np.exp(-0.5 * (r / sigma) ** 2)
    gauss /= gauss.sum()
    assert k[r > 5].sum() > 100 * gauss[r > 5].sum()


# ---------------------------------------------------------------------------------------------
# File format
# ---------------------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path, mock):
    """Every field survives save + load exactly, and so does a mock's truth (TRUTH table)."""
    path = tmp_path / "lens.fits"
    save_lensing_data(path, mock.data, truth=mock.truth)
    back = load_lensing_data(path)
    truth = load_lensing_truth(path)
    assert set(truth) == set(mock.truth)
    for k, v in mock.truth.items():
        np.testing.assert_array_equal(truth[k], np.asarray(v, dtype=float))
    save_lensing_data(tmp_path / "no_truth.fits", mock.data)
    assert load_lensing_truth(tmp_path / "no_truth.fits") is None
    for name in ("image", "noise_map", "psf_kernel", "mask", "x_image", "y_image",
                 "time_delays", "time_delay_errors"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)),
                                      np.asarray(getattr(mock.data, name), dtype=float))
    for name in ("transform_pix2angle", "ra_at_xy_0", "dec_at_xy_0", "supersampling",
                 "background_rms", "exposure_time", "zero_point", "labels"):
        assert getattr(back, name) == getattr(mock.data, name), name
    assert jax.tree.structure(back) == jax.tree.structure(mock.data)


def _edit(path, fn):
    from astropy.io import fits

    with fits.open(path, mode="update") as h:
        fn(h)


def _set(ext, idx, value):
    def fn(h):
        data = h[ext].data.copy()
        data[idx] = value
        h[ext].data = data
    return fn


def _table(col, idx, value):
    def fn(h):
        h["IMAGES"].data[col][idx] = value
    return fn


def _drop_label_column(h):
    from astropy.io import fits

    data = h["IMAGES"].data
    cols = [fits.Column(name=n, format="D", array=np.array(data[n])) for n in ("X", "Y", "DT")]
    del h["IMAGES"]
    h.append(fits.BinTableHDU.from_columns(cols, name="IMAGES"))


BAD_FILES = [
    ("missing extension", lambda h: h.__delitem__("NOISE"), "^noise_map: extension NOISE missing"),
    ("missing table", lambda h: h.__delitem__("IMAGES"), "^labels: binary-table extension IMAGES"),
    ("missing column", _drop_label_column, "^labels: column LABEL"),
    ("wrong format", lambda h: h[0].header.set("JKINFMT", "KINDATA"), "not a jkin lensing-data"),
    ("wrong version", lambda h: h[0].header.set("FMTVER", 9), "FMTVER"),
    ("missing key", lambda h: h[0].header.remove("EXPTIME"), "^exposure_time: primary header "
                                                              "key EXPTIME missing"),
    ("nan pixel", _set("IMAGE", (3, 4), np.nan), "^image: 1 non-finite"),
    ("zero noise", _set("NOISE", (0, 0), 0.0), "^noise_map: 1 pixel"),
    ("psf not normalised", _set("PSF_KERNEL", (5, 5), 0.5), "psf_kernel: must be normalised"),
    ("even psf", lambda h: setattr(h["PSF_KERNEL"], "data", np.full((4, 4), 1 / 16)),
     "^psf_kernel: .*odd side"),
    ("noise shape", lambda h: setattr(h["NOISE"], "data", np.ones((5, 5))), "noise_map: shape"),
    ("mask values", _set("MASK", (0, 0), 2), "mask: values"),
    ("negative dt error", _table("DT_ERR", 2, -1.0), "time_delay_errors: must be > 0; image C"),
    ("dt reference", _table("DT", 0, 3.0), "time_delays: are relative to image A"),
    ("image outside", _table("X", 1, 30.0), "image B .* outside"),
    ("bad transform", lambda h: h[0].header.set("PIXM11", 0.0), "^transform_pix2angle"),
    ("zero supersampling", lambda h: h[0].header.set("SUPERSAM", 0), "^supersampling"),
]


@pytest.mark.parametrize("case,edit,message", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_loader_rejects_bad_files(tmp_path, mock, case, edit, message):
    path = tmp_path / "lens.fits"
    save_lensing_data(path, mock.data)
    _edit(path, edit)
    with pytest.raises(ValueError, match=message):
        load_lensing_data(path)


def test_loader_rejects_non_fits(tmp_path):
    path = tmp_path / "lens.fits"
    path.write_text("not a fits file")
    with pytest.raises(ValueError, match="not a readable FITS file"):
        load_lensing_data(path)


def test_lensing_data_validates_on_construction(mock):
    with pytest.raises(ValueError, match="time_delay_errors"):
        mock.data.replace(time_delay_errors=np.array([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="labels"):
        mock.data.replace(labels=("A", "A", "C", "D"))
    assert isinstance(jax.jit(lambda d: d)(mock.data), LensingData)  # tracers are not checked


def test_benchmark_smoke():
    """The benchmark script runs end to end at a tiny size."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lensing_likelihood.py"
    spec = importlib.util.spec_from_file_location("lensing_likelihood", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--n-pix", "40", "--n-calls", "1", "--psf-size", "11"])
    assert {r["what"] for r in rows} >= {"lensing_log_likelihood value+grad"}
    assert all(np.isfinite(r["median_ms"]) for r in rows)
