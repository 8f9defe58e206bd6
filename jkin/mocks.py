"""Mock data. Kinematics: the paper's mock IFU data set (SKiNN paper, Sect. 5.2).

``make_mock_ifu`` builds, for sky parameters ``theta`` (the 13 ``THETA_NAMES``):

1. the IFU grid: ``n_pix`` x ``n_pix`` pixels of ``pixel_scale`` arcsec (55 x 55 at 0.05"),
   centred on the sky origin (the centre of pixel ((n-1)/2, (n-1)/2)), RA flipped by default
   (``transform_pix2angle = diag(-d, d)``, east to the left, as real images);
2. the photometric image: the Sersic light of ``jkin.conventions`` (total magnitude
   ``magnitude`` = 19 at zero point ``zero_point`` = 26, i.e. 10**(0.4 (26 - 19)) = 631 e-/s in
   total), blurred by the Gaussian PSF (FWHM 0.1"), plus a sky of ``sky_mag`` = 20
   mag/arcsec^2, observed for ``exposure`` seconds with Poisson noise; signal = counts - sky,
   noise = sqrt(counts);
3. Voronoi bins of that image (vorbin, ``voronoi_2d_binning``, all pixels, target S/N
   ``target_sn`` = 15). With the default parameters and ``EXPOSURE`` = 60 s this gives 30-35
   bins (see docs/kinematics.md);
4. the noiseless binned v_rms: the same operator as ``jkin.kinematics.predict_binned_vrms``
   (sub-pixels, sky -> galaxy transform, light-weighted v^2, PSF, bins, distance factor) but
   written independently in numpy (explicit convolution and bin sums), sampled like the
   forward model's adaptive rings (``TRUTH_SUPERSAMPLING``: 8 x 8 sub-pixels within 0.1" of
   the lens, 2 x 2 within 0.3", 1 beyond: 4836 points for 55 x 55 pixels with the PSF
   padding; the file records the model's sampling, by default the same), with the signed JAM <v^2>
   (``jkin.jam.jam_vrms2``, ``truth="jam"``) or the emulator's (``kin.emulator_v2``,
   ``truth="emulator"``) at the sample points, clipped at zero only after the bin sums, as
   JAM does. JAM is singular at exactly (0, 0): with even factors and the centre on a
   pixel centre or corner no sample lands there; any point that does anyway is moved to
   (1e-6, 0) arcsec (v_rms is continuous there);
5. Gaussian noise per bin with sigma = f v_true, f = 10% at S/N <= 10 falling linearly to 5% at
   S/N >= 40 (bin S/N from vorbin), and the diagonal covariance of those variances;
6. the FITS file of ``jkin.data`` (to ``path``, or in memory), read back with
   ``load_kinematic_data``: mocks and real data take one path.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np
from scipy import signal, special

from jkin import conventions as cv
from jkin import data as kdata
from jkin import kinematics as kin

__all__ = [
    "EXPOSURE",
    "PAPER_MOCK_THETA",
    "sersic_total_flux",
    "mock_grid",
    "voronoi_bins",
    "velocity_error_fraction",
    "binned_vrms_numpy",
    "make_mock_ifu",
    "TRUTH_SUPERSAMPLING",
    "TRUTH_SUPERSAMPLING_RADII",
]

#: Exposure time [s] of the mock photometry (zero point 26 = 1 e-/s): 30-35 bins at S/N 15.
EXPOSURE = 60.0

#: Default sampling of the mocks' true v_rms (``jkin.kinematics.normalise_supersampling``): 8 x 8
#: sub-pixels within 0.1" of the lens, 2 x 2 within 0.3", 1 beyond; finer than the forward
#: model's default (``jkin.data.DEFAULT_SUPERSAMPLING``, one sample per 2 x 2 pixels far out).
TRUTH_SUPERSAMPLING = (8, 2, 1)
TRUTH_SUPERSAMPLING_RADII = (0.1, 0.3)

#: True parameters of the default mock (a typical lens; inside the emulator's training space).
PAPER_MOCK_THETA = {
    "theta_E": 1.0,
    "gamma": 2.05,
    "q_mass": 0.8,
    "q_light": 0.85,
    "R_sersic": 0.8,
    "n_sersic": 3.5,
    "beta_z": 0.1,
    "inclination": 70.0,
    "phi": 30.0,
    "x_c": 0.0,
    "y_c": 0.0,
    "D_dt": cv.D_DT,
    "D_d": cv.D_D,
}


def sersic_total_flux(R_sersic, n_sersic):
    """Total flux of the conventions' Sersic (1 at R_sersic): 2 pi n R^2 e^b b^-2n Gamma(2n).

    The isophote R = sqrt(q x^2 + y^2/q) encloses an area pi R^2 for any q.
    """
    b = cv.sersic_bn(n_sersic)
    return (2.0 * np.pi * n_sersic * R_sersic**2 * np.exp(b) * b ** (-2.0 * n_sersic)
            * special.gamma(2.0 * n_sersic))


def mock_grid(n_pix=55, pixel_scale=0.05, ra_flip=True):
    """(transform_pix2angle, ra_at_xy_0, dec_at_xy_0) of a square grid centred on the origin."""
    M = np.diag([-pixel_scale if ra_flip else pixel_scale, pixel_scale])
    c = 0.5 * (n_pix - 1)
    return M, -M[0, 0] * c, -M[1, 1] * c


def _subpixel_centres(nx, ny, M, ra0, dec0, s, pad):
    # independent of jkin.kinematics: offsets of the s x s sub-pixel centres inside a pixel
    off = (np.arange(s) + 0.5) / s - 0.5
    i = (np.arange(-pad, nx + pad)[:, None] + off[None, :]).ravel()
    j = (np.arange(-pad, ny + pad)[:, None] + off[None, :]).ravel()
    jj, ii = np.meshgrid(j, i, indexing="ij")
    return M[0, 0] * ii + M[0, 1] * jj + ra0, M[1, 0] * ii + M[1, 1] * jj + dec0


def _block_sum(a, s):
    ny, nx = a.shape[0] // s, a.shape[1] // s
    return a.reshape(ny, s, nx, s).sum(axis=(1, 3))


def velocity_error_fraction(bin_sn):
    """Fractional v_rms error: 10% at S/N <= 10, linear to 5% at S/N >= 40."""
    return np.interp(bin_sn, [10.0, 40.0], [0.10, 0.05])


def voronoi_bins(x, y, signal_, noise, target_sn, pixel_scale):
    """vorbin's Voronoi binning of pixels (x, y): (bin number per pixel, S/N per bin)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # vorbin's deprecation notice
        from vorbin.voronoi_2d_binning import voronoi_2d_binning

        try:
            out = voronoi_2d_binning(x, y, signal_, noise, target_sn, plot=False, quiet=True,
                                     pixelsize=pixel_scale)
        except ValueError as e:
            if "binning is not needed" in str(e):  # every pixel alone reaches the target
                return np.arange(x.size), signal_ / noise
            raise ValueError(f"vorbin: {e} (a longer exposure gives more S/N)") from e
    return np.asarray(out[0]), np.asarray(out[5])


def binned_vrms_numpy(v2_fn, theta, bin_index, M, ra0, dec0, kernel, supersampling,
                      supersampling_radii=(), supersampling_centre=(0.0, 0.0)):
    """Noiseless binned v_rms [km/s] and the PSF-blurred light per pixel (numpy reference).

    ``v2_fn(x, y)`` gives <v^2> at galaxy-frame points. The light (jkin.conventions' Sersic)
    and <v^2> are evaluated at the sample points (uniform: every sub-pixel centre, computed
    here; adaptive: those of ``jkin.kinematics.adaptive_samples``), spread over the fine grid
    (each sample over the sub-pixels it stands for), convolved with ``kernel`` on the fine grid
    (scipy), summed per pixel and per bin (bincount). Returns (v_bin, light_pix) where
    light_pix (ny, nx) is the blurred Sersic summed over each pixel's fine sub-pixels.
    """
    factors, radii = kin.normalise_supersampling(supersampling, supersampling_radii)
    s = factors[0]
    ny, nx = bin_index.shape
    pad = kin.psf_reach(kernel.shape, s)
    if len(factors) == 1:
        ra, dec = _subpixel_centres(nx, ny, M, ra0, dec0, s, pad)
        group = np.arange(ra.size).reshape(ra.shape)
        ra, dec = ra.ravel(), dec.ravel()
    else:
        group, ra, dec = kin.adaptive_samples(nx, ny, M, ra0, dec0, factors, radii,
                                              supersampling_centre, pad)
    p = np.radians(theta["phi"])
    dra, ddec = ra - theta["x_c"], dec - theta["y_c"]
    x = np.cos(p) * dra + np.sin(p) * ddec
    y = -np.sin(p) * dra + np.cos(p) * ddec
    at_centre = (x == 0) & (y == 0)
    x = np.where(at_centre, 1e-6, x)
    light = cv.sersic_profile(x, y, theta["R_sersic"], theta["n_sersic"], theta["q_light"])
    v2 = np.asarray(v2_fn(x, y), dtype=float)
    light, v2 = light[group], v2[group]  # onto the fine grid
    conv_Iv2 = signal.fftconvolve(light * v2, kernel, mode="same")
    conv_I = signal.fftconvolve(light, kernel, mode="same")
    inner = (slice(pad * s, (pad + ny) * s), slice(pad * s, (pad + nx) * s))
    Iv2_pix = _block_sum(conv_Iv2[inner], s)
    I_pix = _block_sum(conv_I[inner], s)
    n_bins = int(bin_index.max()) + 1
    used = bin_index >= 0
    num = np.bincount(bin_index[used], weights=Iv2_pix[used], minlength=n_bins)
    den = np.bincount(bin_index[used], weights=I_pix[used], minlength=n_bins)
    factor = math.sqrt((theta["D_dt"] / theta["D_d"]) / (cv.D_DT / cv.D_D))
    return np.sqrt(np.clip(num / den, 0.0, None)) * factor, I_pix


def make_mock_ifu(
    params_sky=None,
    seed=0,
    *,
    truth="jam",
    emulator=None,
    n_pix=55,
    pixel_scale=0.05,
    ra_flip=True,
    psf_fwhm=0.1,
    zero_point=26.0,
    magnitude=19.0,
    sky_mag=20.0,
    exposure=EXPOSURE,
    target_sn=15.0,
    supersampling=TRUTH_SUPERSAMPLING,
    supersampling_radii=TRUTH_SUPERSAMPLING_RADII,
    model_supersampling=None,
    model_supersampling_radii=None,
    psf_truncate=4.0,
    jam_settings=None,
    path=None,
    overwrite=False,
) -> kdata.KinematicData:
    """Mock IFU kinematics as in the SKiNN paper (Sect. 5.2); see the module docstring.

    ``params_sky``: mapping of the 13 ``THETA_NAMES`` (default ``PAPER_MOCK_THETA``);
    ``truth``: "jam" (jkin.jam, numpy; ~1-5 ms per sub-pixel) or "emulator" (then give
    ``emulator``). ``supersampling``, ``supersampling_radii``: the sampling of the truth
    (default ``TRUTH_SUPERSAMPLING``); ``model_supersampling``, ``model_supersampling_radii``:
    the forward model's, recorded in the file (default: the truth's; pass
    ``jkin.data.DEFAULT_SUPERSAMPLING`` and its radii for the cheaper default), both centred on
    the true lens centre.
    Written to ``path`` (FITS, with the truth in the TRUTH table) if given, and always
    returned as read back by ``jkin.data.load_kinematic_data``.
    """
    theta = dict(PAPER_MOCK_THETA if params_sky is None else params_sky)
    missing = [k for k in kin.THETA_NAMES if k not in theta]
    if missing:
        raise KeyError(f"params_sky lacks {missing}")
    theta = {k: float(theta[k]) for k in kin.THETA_NAMES}
    params = np.array([theta[k] for k in cv.PARAM_NAMES])
    if truth == "jam":
        from jkin.jam import DEFAULT_SETTINGS, jam_vrms2

        settings = DEFAULT_SETTINGS if jam_settings is None else jam_settings
        cv.validate_params(params)
        v2_fn = lambda x, y: jam_vrms2(params, x, y, settings)  # noqa: E731
    elif truth == "emulator":
        if emulator is None:
            raise ValueError("truth='emulator' needs an emulator")
        import jax.numpy as jnp

        v2_fn = lambda x, y: np.asarray(kin.emulator_v2(  # noqa: E731
            emulator, jnp.asarray(params), jnp.asarray(x), jnp.asarray(y)), dtype=float)
    else:
        raise ValueError(f"truth must be 'jam' or 'emulator'; got {truth!r}")

    rng = np.random.default_rng(seed)
    M, ra0, dec0 = mock_grid(n_pix, pixel_scale, ra_flip)
    factors, radii = kin.normalise_supersampling(supersampling, supersampling_radii)
    sampling = dict(supersampling=factors, supersampling_radii=radii,
                    supersampling_centre=(theta["x_c"], theta["y_c"]))
    if model_supersampling is None:
        model_sampling = sampling
    else:
        m_factors, m_radii = kin.normalise_supersampling(
            model_supersampling, () if model_supersampling_radii is None
            else model_supersampling_radii)
        model_sampling = dict(sampling, supersampling=m_factors, supersampling_radii=m_radii)
    kernel = kin.gaussian_psf_kernel(psf_fwhm, M, factors[0], truncate=psf_truncate)

    # photometry: the blurred Sersic per pixel comes out of the same sub-pixel sums as the truth
    all_pixels = np.zeros((n_pix, n_pix), dtype=int)
    _, light_pix = binned_vrms_numpy(lambda x, y: np.zeros_like(x), theta, all_pixels, M, ra0,
                                     dec0, kernel, **sampling)
    pix_area = abs(np.linalg.det(M))
    I_e = 10.0 ** (-0.4 * (magnitude - zero_point)) / sersic_total_flux(theta["R_sersic"],
                                                                         theta["n_sersic"])
    galaxy = I_e * light_pix * pix_area / factors[0] ** 2 * exposure  # expected e- per pixel
    sky = 10.0 ** (-0.4 * (sky_mag - zero_point)) * pix_area * exposure
    counts = rng.poisson(galaxy + sky).astype(float)
    flux = counts - sky
    noise = np.sqrt(np.maximum(counts, 1.0))

    # Voronoi bins on the pixel grid (vorbin wants regular x, y: use pixel indices x scale)
    jj, ii = np.indices((n_pix, n_pix))
    bin_number, bin_sn = voronoi_bins(ii.ravel() * pixel_scale, jj.ravel() * pixel_scale,
                                      flux.ravel(), noise.ravel(), target_sn, pixel_scale)
    bin_index = bin_number.reshape(n_pix, n_pix)

    vrms_true, _ = binned_vrms_numpy(v2_fn, theta, bin_index, M, ra0, dec0, kernel, **sampling)
    if np.any(vrms_true <= 0):
        raise ValueError(
            f"{int(np.sum(vrms_true <= 0))} of {vrms_true.size} bins lie wholly in the truth's "
            "zero-valued region (binned <v^2> <= 0, high beta_z) and would have no error bar; "
            "a larger target_sn (bigger bins) or a smaller field avoids them")
    err = velocity_error_fraction(bin_sn) * vrms_true
    vrms = vrms_true + err * rng.normal(size=vrms_true.shape)

    header = {
        "MOCK": (True, "jkin.mocks.make_mock_ifu"),
        "TRUTHSRC": (truth, "source of the true v_rms"),
        "SEED": (int(seed), "random seed"),
        "EXPTIME": (float(exposure), "exposure [s]"),
        "ZEROPT": (float(zero_point), "mag of 1 e-/s"),
        "MAG": (float(magnitude), "total galaxy magnitude"),
        "SKYMAG": (float(sky_mag), "sky [mag/arcsec^2]"),
        "TARGETSN": (float(target_sn), "vorbin target S/N"),
    }
    out = io.BytesIO() if path is None else path
    kdata.write_kinematic_fits(
        out, vrms=vrms, bin_index=bin_index, transform_pix2angle=M, ra_at_xy_0=ra0,
        dec_at_xy_0=dec0, vrms_err=err, psf_fwhm=psf_fwhm, **model_sampling,
        bin_sn=bin_sn, vrms_true=vrms_true, flux=flux, truth=theta, header=header,
        overwrite=overwrite,
    )
    return kdata.load_kinematic_data(out, psf_truncate=psf_truncate)
