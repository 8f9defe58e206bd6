"""Tests of jkin.data (the FITS format, the loader's validation) and jkin.mocks."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
from astropy.io import fits

from jkin import data as kdata
from jkin import kinematics as kin
from jkin import mocks

N = 6
M, RA0, DEC0 = mocks.mock_grid(N, 0.1)


def good_arrays(**over):
    bins = np.arange(N * N).reshape(N, N) % 4
    bins[0, 0] = -1
    a = dict(vrms=np.array([210.0, 220.0, 230.0, 240.0]), bin_index=bins,
             transform_pix2angle=M, ra_at_xy_0=RA0, dec_at_xy_0=DEC0,
             vrms_err=np.array([10.0, 11.0, 12.0, 13.0]), psf_fwhm=0.1, supersampling=2)
    a.update(over)
    return a


def write(**over):
    buf = io.BytesIO()
    kdata.write_kinematic_fits(buf, **good_arrays(**over))
    return buf


def test_round_trip_and_fields():
    buf = write(light=np.ones((N, N)), bin_sn=np.array([15.0, 14, 16, 15]))
    data = kdata.load_kinematic_data(buf)
    assert data.n_bins == 4 and data.shape == (N, N) and data.supersampling == (2,)
    np.testing.assert_array_equal(data.bin_index, good_arrays()["bin_index"])
    np.testing.assert_allclose(np.diag(data.cov_cholesky), [10, 11, 12, 13])
    np.testing.assert_allclose(data.log_norm,
                               -2 * np.log(2 * np.pi) - np.log([10, 11, 12, 13]).sum())
    np.testing.assert_allclose(data.psf_kernel.sum(), 1.0)
    assert data.psf_fwhm == 0.1 and data.light is not None
    # geometry: evaluated sub-pixels are the padded grid's (all pixels within the PSF's reach)
    assert data.pad == kin.psf_reach(data.psf_kernel.shape, 2)
    assert data.grid_shape == ((N + 2 * data.pad) * 2,) * 2
    # save -> load is the identity on every field
    buf2 = io.BytesIO()
    kdata.save_kinematic_data(buf2, data, truth={"theta_E": 1.1})
    again = kdata.load_kinematic_data(buf2)
    for field in ("vrms", "cov_cholesky", "bin_index", "psf_kernel", "sample_ra", "sample_dec",
                  "bin_psf_weights", "sub_bin_index", "light", "sample_light", "bin_sn"):
        np.testing.assert_array_equal(getattr(again, field), getattr(data, field), err_msg=field)
    assert kdata.load_truth(buf2) == {"theta_E": 1.1} and kdata.load_truth(buf) is None
    # supersampling from the loader overrides SUPERSAM; adaptive specs round-trip
    assert kdata.load_kinematic_data(buf, supersampling=3).supersampling == (3,)
    adaptive = kdata.load_kinematic_data(buf, supersampling=(4, 2, 1),
                                         supersampling_radii=(0.1, 0.25),
                                         supersampling_centre=(0.05, -0.05))
    buf3 = io.BytesIO()
    kdata.save_kinematic_data(buf3, adaptive)
    again = kdata.load_kinematic_data(buf3)
    assert (again.supersampling, again.supersampling_radii, again.supersampling_centre) == (
        (4, 2, 1), (0.1, 0.25), (0.05, -0.05))
    np.testing.assert_array_equal(again.bin_psf_weights, adaptive.bin_psf_weights)
    # a file without SUPERSAM gets the default sampling
    default = kdata.load_kinematic_data(write(supersampling=None))
    assert (default.supersampling, default.supersampling_radii) == (
        kdata.DEFAULT_SUPERSAMPLING, kdata.DEFAULT_SUPERSAMPLING_RADII)
    # unit-fraction levels (one sample per k x k pixels) round-trip as "1/k"
    blocks = kdata.load_kinematic_data(buf, supersampling=(4, 1, 0.5), supersampling_radii=(
        0.05, 0.1))
    buf4 = io.BytesIO()
    kdata.save_kinematic_data(buf4, blocks)
    assert fits.getheader(io.BytesIO(buf4.getvalue()))["SUPERSAM"] == "4,1,1/2"
    again = kdata.load_kinematic_data(buf4)
    assert again.supersampling == (4, 1, Fraction(1, 2)) and again.supersampling_radii == (
        0.05, 0.1)
    np.testing.assert_array_equal(again.bin_psf_weights, blocks.bin_psf_weights)
    assert blocks.sample_ra.size < adaptive.sample_ra.size


def test_full_covariance_and_pixel_kernel_round_trip(tmp_path):
    cov = np.diag([100.0, 121, 144, 169]) + 5.0
    kernel = np.outer([1.0, 2.0, 1.0], [1.0, 3.0, 1.0])
    path = tmp_path / "k.fits"
    kdata.write_kinematic_fits(path, **good_arrays(vrms_err=None, covariance=cov, psf_fwhm=None,
                                                   psf_kernel=kernel, psf_sampling=2))
    data = kdata.load_kinematic_data(path)
    np.testing.assert_allclose(data.covariance, cov, rtol=1e-12)
    np.testing.assert_allclose(data.psf_kernel, kernel / kernel.sum())
    assert data.psf_fwhm is None
    buf = io.BytesIO()
    kdata.save_kinematic_data(buf, data)
    np.testing.assert_allclose(kdata.load_kinematic_data(buf).covariance, cov, rtol=1e-12)
    with fits.open(path) as h:
        assert h[0].header["JKINFMT"] == "KINDATA" and "COVARIANCE" in h


BAD_BINS = np.arange(N * N).reshape(N, N) % 4
BAD_BINS_EMPTY = np.where(BAD_BINS == 2, 1, BAD_BINS)
NOT_PD = np.array([[1.0, 2, 0, 0], [2, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


@pytest.mark.parametrize("over, field, words", [
    (dict(vrms_err=np.array([10.0, 11.0, 12.0])), "vrms_err", "has 3 entries"),
    (dict(vrms_err=np.array([10.0, 0.0, 12.0, 13.0])), "vrms_err", "must be > 0"),
    (dict(vrms_err=np.array([10.0, -1.0, 12.0, 13.0])), "vrms_err", "must be > 0"),
    (dict(vrms=np.array([210.0, np.nan, 230.0, 240.0])), "vrms", "NaN"),
    (dict(vrms_err=np.array([10.0, np.nan, 12.0, 13.0])), "vrms_err", "NaN"),
    (dict(vrms=np.array([210.0, 220.0, 230.0])), "bin_index", "refers to bins up to 3"),
    (dict(bin_index=BAD_BINS_EMPTY), "bin_index", r"bin\(s\) \[2\] have no pixels"),
    (dict(bin_index=np.full((N, N), -2)), "bin_index", "< -1"),
    (dict(vrms_err=None, covariance=NOT_PD), "covariance", "not positive definite"),
    (dict(vrms_err=None, covariance=np.eye(3)), "covariance", r"shape \(4, 4\)"),
    (dict(vrms_err=None, covariance=np.triu(np.ones((4, 4))) + np.eye(4)), "covariance",
     "not symmetric"),
    (dict(vrms_err=None, covariance=np.diag([1.0, np.nan, 1.0, 1.0])), "covariance", "NaN"),
    (dict(vrms_err=None), "vrms_err", "exactly one"),
    (dict(covariance=np.eye(4)), "vrms_err", "exactly one"),
    (dict(psf_fwhm=None), "psf_fwhm", "exactly one"),
    (dict(psf_fwhm=-0.1), "psf_fwhm", ">= 0"),
    (dict(psf_fwhm=None, psf_kernel=np.ones((2, 3)), psf_sampling=2), "psf_kernel", "odd"),
    (dict(psf_fwhm=None, psf_kernel=np.ones((3, 3)), psf_sampling=1), "psf_kernel",
     "sampled at 1"),
    (dict(psf_fwhm=None, psf_kernel=np.full((3, 3), np.nan), psf_sampling=2), "psf_kernel",
     "NaN"),
    (dict(light=np.ones((N, N + 1))), "light", r"shape \(6, 6\)"),
    (dict(light=np.full((N, N), np.nan)), "light", "NaN"),
    (dict(light=-np.ones((N, N))), "light", ">= 0"),
    (dict(light=np.where(BAD_BINS == 1, 0.0, 1.0)), "light", r"bin\(s\) \[1\] have no light"),
    (dict(transform_pix2angle=np.zeros((2, 2))), "transform_pix2angle", "singular"),
    (dict(supersampling=0), "supersampling", ">= 1"),
    (dict(supersampling=(4, 3), supersampling_radii=(0.1,)), "supersampling", "divide"),
    (dict(supersampling=(4, 0.4), supersampling_radii=(0.1,)), "supersampling",
     "unit fractions"),
    (dict(supersampling=(4, "2/3"), supersampling_radii=(0.1,)), "supersampling",
     "unit fractions"),
    (dict(supersampling=("1/2", 1), supersampling_radii=(0.1,)), "supersampling",
     "the first an integer"),
    (dict(supersampling=(4, 2, 1), supersampling_radii=(0.1,)), "supersampling_radii",
     "need 2 radii"),
    (dict(supersampling=(4, 2, 1), supersampling_radii=(0.3, 0.1)), "supersampling_radii",
     "increasing"),
    (dict(bin_sn=np.ones(3)), "bin_sn", "has 3 entries"),
])
def test_loader_errors_name_the_field(over, field, words):
    buf = write(**over)
    with pytest.raises(ValueError, match=rf"^{field}: .*{words}"):
        kdata.load_kinematic_data(buf)


def test_loader_rejects_foreign_and_incomplete_files():
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU()]).writeto(buf)
    with pytest.raises(ValueError, match="not a jkin kinematic-data file"):
        kdata.load_kinematic_data(buf)
    buf = write()
    with fits.open(io.BytesIO(buf.getvalue())) as h:
        del h["VRMS"]
        out = io.BytesIO()
        h.writeto(out)
    with pytest.raises(ValueError, match="^vrms: extension VRMS missing"):
        kdata.load_kinematic_data(out)
    with fits.open(io.BytesIO(buf.getvalue())) as h:
        del h[0].header["PIXM11"]
        out = io.BytesIO()
        h.writeto(out)
    with pytest.raises(ValueError, match="^pixm11: primary header key PIXM11 missing"):
        kdata.load_kinematic_data(out)


def analytic_map(params, x, y):
    import jax.numpy as jnp

    p = jnp.asarray(params)[..., None, :]
    r2 = p[..., 2] * x**2 + y**2 / p[..., 2] + 0.08**2
    return 250.0 * r2 ** (-0.05 * (p[..., 1] - 1.0))


def test_mock_recipe(tmp_path):
    """The paper's mock: 55 x 55 at 0.05", ~30 bins at S/N 15, the noise model, file round trip."""
    path = tmp_path / "mock.fits"
    data = mocks.make_mock_ifu(seed=0, truth="emulator", emulator=analytic_map, path=path)
    assert data.shape == (55, 55) and np.all(data.bin_index >= 0)
    assert 20 <= data.n_bins <= 50
    assert np.allclose(np.abs(np.diag(data.transform_pix2angle)), 0.05)
    assert data.transform_pix2angle[0, 0] < 0  # RA flipped
    # the file records the truth's sampling as the model's unless told
    assert data.psf_fwhm == 0.1 and data.supersampling == mocks.TRUTH_SUPERSAMPLING == (8, 2, 1)
    assert data.supersampling_radii == mocks.TRUTH_SUPERSAMPLING_RADII == (0.1, 0.3)
    # bins reach about the target S/N; errors follow 10% -> 5% between S/N 10 and 40
    assert np.median(data.bin_sn) == pytest.approx(15, rel=0.15)
    frac = np.diag(data.cov_cholesky) / data.vrms_true
    np.testing.assert_allclose(frac, np.clip(0.10 - 0.05 * (data.bin_sn - 10) / 30, 0.05, 0.10),
                               rtol=1e-12)
    z = (data.vrms - data.vrms_true) / np.diag(data.cov_cholesky)
    assert abs(z.mean()) < 4 / np.sqrt(data.n_bins) and 0.4 < z.std() < 1.6
    # the file holds the truth and reproduces the returned data
    truth = kdata.load_truth(path)
    assert truth == pytest.approx(mocks.PAPER_MOCK_THETA)
    again = kdata.load_kinematic_data(path)
    np.testing.assert_array_equal(again.vrms, data.vrms)
    np.testing.assert_array_equal(again.bin_index, data.bin_index)
    # photometry: total counts = magnitude 19 at zero point 26 over the exposure (in the field)
    total = data.flux.sum() / mocks.EXPOSURE
    assert 0.6 * 10 ** (0.4 * 7) < total < 10 ** (0.4 * 7)
    # same seed, same mock
    np.testing.assert_array_equal(
        mocks.make_mock_ifu(seed=0, truth="emulator", emulator=analytic_map).vrms, data.vrms)


def test_sersic_total_flux_matches_a_numerical_integral():
    from scipy import integrate

    from jkin import conventions as cv

    R, n, q = 0.8, 3.5, 0.7
    f = lambda y, x: cv.sersic_profile(x, y, R, n, q)  # noqa: E731
    num = 4 * integrate.dblquad(f, 0, 60, 0, 60, epsabs=1e-10, epsrel=1e-9)[0]
    # the integral stops at 60" (it misses ~5e-5 of the light of this n = 3.5 profile)
    assert mocks.sersic_total_flux(R, n) == pytest.approx(num, rel=1e-4)
