"""Kinematic data: the ``KinematicData`` pytree, its validation, and its FITS file format.

One path for real and mock data: a FITS file (format below) -> ``load_kinematic_data`` ->
``make_kinematic_data`` (validation + the geometry the forward model needs, computed once) ->
``KinematicData``, which ``jkin.kinematics.predict_binned_vrms`` and
``kinematic_log_likelihood`` read.

File format (``JKINFMT = 'KINDATA'``, ``FMTVER = 1``)
------------------------------------------------------
Primary HDU (no data), header keys:

=========  ==========================================================================
PIXM11..   ``PIXM11 PIXM12 PIXM21 PIXM22``: herculens' ``transform_pix2angle`` matrix M
           [arcsec / pixel]: (ra, dec) = M @ (i, j) + (RA0, DEC0) for pixel column i,
           row j. An RA-flipped grid (east left) has PIXM11 < 0.
RA0, DEC0  sky position [arcsec] of the centre of pixel (0, 0) (``ra_at_xy_0``...).
NBINS      number of bins.
PSFFWHM    Gaussian PSF FWHM [arcsec] (0 = no PSF); or give a PSF_KERNEL extension.
SUPERSAM   (optional) model sampling: samples per pixel side, an int (uniform) or a
           comma-separated list "8,2,1,1/2" of factors for the rings of SSRADII (1/k: one
           sample per k x k pixels). Default "8,2,1,1/2".
SSRADII    (optional) ring radii [arcsec], comma-separated, one fewer than the factors.
           Default "0.1,0.3,0.8".
SSCENRA,   (optional, default 0, 0) the rings' centre [arcsec]: where the lens is.
SSCENDEC
=========  ==========================================================================

Image extensions (by name; pixel maps have shape (ny, nx), row = pixel y index):

===========  =====================  ===========================================================
BIN_INDEX    int (ny, nx)           bin of every IFU pixel, 0..NBINS-1; -1 = pixel not used
VRMS         float (NBINS,)         binned v_rms [km/s]
VRMS_ERR     float (NBINS,)         1-sigma errors [km/s] (independent bins), or
COVARIANCE   float (NBINS, NBINS)   full covariance [(km/s)^2] (exactly one of the two)
PSF_KERNEL   float (kh, kw)         optional pixel PSF (odd sides, orientation of the pixel
                                    grid); header PSFSAMP = samples per IFU pixel side, which
                                    must equal the fine (first) SUPERSAM factor. Normalised.
LIGHT        float (ny, nx)         optional measured light map (>= 0), else the model's Sersic
BIN_SN       float (NBINS,)         optional S/N of each bin (provenance)
VRMS_TRUE    float (NBINS,)         optional noiseless v_rms (mocks)
FLUX         float (ny, nx)         optional image the bins were made from (provenance)
TRUTH        binary table, 1 row    optional true parameters of a mock (``THETA_NAMES``)
===========  =====================  ===========================================================

The loader raises ``ValueError`` whose message begins with the offending field (the lower-case
extension / argument name, e.g. ``vrms_err:``) for shape mismatches, NaNs, non-positive errors,
a covariance that is not symmetric positive definite, bins with no pixels, and a missing or
ambiguous PSF or error model.
"""

from __future__ import annotations

import io
import math
import os
from fractions import Fraction
from typing import Optional

import numpy as np
from flax import struct
from scipy import ndimage, signal

from jkin import kinematics as kin

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "DEFAULT_SUPERSAMPLING",
    "DEFAULT_SUPERSAMPLING_RADII",
    "KinematicData",
    "make_kinematic_data",
    "write_kinematic_fits",
    "save_kinematic_data",
    "load_kinematic_data",
    "load_truth",
]

FORMAT_NAME = "KINDATA"
FORMAT_VERSION = 1
#: Default model sampling (``jkin.kinematics.normalise_supersampling``): 8 x 8 sub-pixels per
#: pixel within 0.1" of the lens (the light cusp and the 0.08" core: JAM's central pixel needs
#: it), 2 x 2 within 0.3", 1 within 0.8", one sample per 2 x 2 pixels beyond. Used when a file
#: does not say (SUPERSAM, SSRADII). The outer blocks halve the paper mock's points (4836 ->
#: 2505) and the kinematic value + gradient time, for binned errors <= 0.07 km/s, less than
#: the 1 x 1 ring's own (``benchmarks/model_sampling.py``); they are sized for 0.05" pixels:
#: coarser IFU pixels want a larger last radius, in proportion.
DEFAULT_SUPERSAMPLING = (8, 2, 1, Fraction(1, 2))
DEFAULT_SUPERSAMPLING_RADII = (0.1, 0.3, 0.8)


@struct.dataclass
class KinematicData:
    """Binned IFU kinematics and the precomputed geometry of its forward model (a pytree).

    Build it with ``make_kinematic_data`` or ``load_kinematic_data`` (they validate); the
    arrays are numpy float64 leaves, cast to JAX's default float type when traced.

    Observations: ``vrms`` (n_bins,) [km/s]; ``cov_cholesky`` (n_bins, n_bins), the lower
    Cholesky factor of the covariance; ``log_norm`` = -n/2 log 2pi - sum log diag L;
    ``bin_index`` (ny, nx), -1 = unused pixel.
    Sky geometry (herculens PixelGrid): ``transform_pix2angle`` (2, 2), ``ra_at_xy_0``,
    ``dec_at_xy_0`` [arcsec].
    PSF: ``psf_kernel`` on the sub-pixel grid (sums to 1); ``psf_fwhm`` [arcsec] if Gaussian.
    Light: ``light`` (ny, nx) measured map or None (model Sersic).
    Model samples: the grid is padded by ``pad`` pixels (the PSF's reach) and split into
    s_0 x s_0 sub-pixels (the fine grid, ``grid_shape``, s_0 = ``supersampling[0]``;
    ``sub_bin_index`` is the bin of each fine sub-pixel, -1 none). Pixels are sampled
    adaptively (``supersampling``, ``supersampling_radii`` [arcsec] around
    ``supersampling_centre`` (ra, dec); see ``jkin.kinematics.adaptive_samples``), and only
    those within the PSF's reach of a binned pixel. ``sample_ra``, ``sample_dec`` (K,) are the
    sky positions of the K samples, ``sample_light`` (K,) the measured light there (or None),
    and ``bin_psf_weights`` (n_bins, K) holds W[b, q] = sum over the fine sub-pixels p of bin b
    and p' of sample q of psf_kernel(p - p'): the PSF convolution and the bin sums as one
    linear map (n_bins x K floats). Numpy leaves are converted at every jit call when ``data``
    is an argument: close over it, or ``jax.device_put(data)`` once.
    Provenance (unused by the model): ``bin_sn``, ``vrms_true``, ``flux``.
    """

    vrms: np.ndarray
    cov_cholesky: np.ndarray
    log_norm: np.ndarray
    bin_index: np.ndarray
    transform_pix2angle: np.ndarray
    ra_at_xy_0: np.ndarray
    dec_at_xy_0: np.ndarray
    psf_kernel: np.ndarray
    sample_ra: np.ndarray
    sample_dec: np.ndarray
    bin_psf_weights: np.ndarray
    sub_bin_index: np.ndarray
    light: Optional[np.ndarray] = None
    sample_light: Optional[np.ndarray] = None
    bin_sn: Optional[np.ndarray] = None
    vrms_true: Optional[np.ndarray] = None
    flux: Optional[np.ndarray] = None
    supersampling: tuple = struct.field(pytree_node=False, default=DEFAULT_SUPERSAMPLING)
    supersampling_radii: tuple = struct.field(pytree_node=False,
                                              default=DEFAULT_SUPERSAMPLING_RADII)
    supersampling_centre: tuple = struct.field(pytree_node=False, default=(0.0, 0.0))
    pad: int = struct.field(pytree_node=False, default=0)
    grid_shape: tuple = struct.field(pytree_node=False, default=(0, 0))
    psf_fwhm: Optional[float] = struct.field(pytree_node=False, default=None)

    @property
    def n_bins(self) -> int:
        return self.vrms.shape[0]

    @property
    def fine_supersampling(self) -> int:
        """Sub-pixels per pixel side of the fine grid (the PSF kernel's sampling)."""
        return self.supersampling[0]

    @property
    def shape(self) -> tuple:
        """(ny, nx) of the IFU pixel grid."""
        return self.bin_index.shape

    @property
    def covariance(self) -> np.ndarray:
        L = np.asarray(self.cov_cholesky, dtype=float)
        return L @ L.T


# ----------------------------------------------------------------------------------------------
# validation


def _fail(field, msg):
    raise ValueError(f"{field}: {msg}")


def _float_array(field, value, *, ndim=None, shape=None):
    try:
        a = np.array(value, dtype=float)
    except (TypeError, ValueError) as e:
        _fail(field, f"is not numeric ({e})")
    if ndim is not None and a.ndim != ndim:
        _fail(field, f"must be {ndim}-D; got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        _fail(field, f"must have shape {tuple(shape)}; got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0]
        _fail(field, f"{int(bad.sum())} value(s) are NaN or infinite (first at index "
                     f"{tuple(int(w) for w in where)})")
    return a


def _scalar(field, value):
    a = _float_array(field, value)
    if a.ndim != 0:
        _fail(field, f"must be a number; got shape {a.shape}")
    return a


def _bin_index(value):
    a = np.asarray(value)
    if a.ndim != 2:
        _fail("bin_index", f"must be a 2-D map on the IFU pixel grid; got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        f = _float_array("bin_index", a)
        if np.any(f != np.round(f)):
            _fail("bin_index", "must hold integers (bin numbers, -1 for unused pixels)")
        a = f
    a = a.astype(np.int64)
    if np.any(a < -1):
        _fail("bin_index", f"has values < -1 (min {a.min()}); use -1 for unused pixels")
    if not np.any(a >= 0):
        _fail("bin_index", "has no pixel in any bin")
    return a


def make_kinematic_data(
    vrms,
    bin_index,
    transform_pix2angle,
    ra_at_xy_0,
    dec_at_xy_0,
    *,
    vrms_err=None,
    covariance=None,
    psf_fwhm=None,
    psf_kernel=None,
    psf_sampling=None,
    light=None,
    supersampling=DEFAULT_SUPERSAMPLING,
    supersampling_radii=DEFAULT_SUPERSAMPLING_RADII,
    supersampling_centre=(0.0, 0.0),
    psf_truncate=4.0,
    bin_sn=None,
    vrms_true=None,
    flux=None,
) -> KinematicData:
    """Validate kinematic data and precompute its forward-model geometry.

    Give exactly one of ``vrms_err`` (n_bins,) and ``covariance`` (n_bins, n_bins), and exactly
    one of ``psf_fwhm`` [arcsec] (Gaussian; 0 = no PSF) and ``psf_kernel`` (a pixel kernel with
    ``psf_sampling`` samples per IFU pixel side, which must equal the fine factor
    ``supersampling[0]``). Sampling: ``supersampling`` is an int (uniform) or factors
    (s_0, ..., s_L) for the rings bounded by ``supersampling_radii`` (r_1, ..., r_L) [arcsec]
    around ``supersampling_centre`` (sky ra, dec: put it at the lens); see
    ``jkin.kinematics.normalise_supersampling``. See the module docstring for the meaning of
    every field. Raises ``ValueError`` naming the field.
    """
    factors, radii = kin.normalise_supersampling(supersampling, supersampling_radii)
    s = factors[0]
    cen = _float_array("supersampling_centre", supersampling_centre, shape=(2,))

    vrms = _float_array("vrms", vrms, ndim=1)
    n_bins = vrms.shape[0]
    if n_bins == 0:
        _fail("vrms", "is empty")
    if np.any(vrms <= 0):
        _fail("vrms", f"must be > 0 km/s; {int(np.sum(vrms <= 0))} value(s) are not")

    bin_index = _bin_index(bin_index)
    if bin_index.max() >= n_bins:
        _fail("bin_index", f"refers to bins up to {bin_index.max()} but vrms has {n_bins} "
                           f"entries (bins 0..{n_bins - 1})")
    counts = np.bincount(bin_index[bin_index >= 0], minlength=n_bins)
    if np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)
        _fail("bin_index", f"bin(s) {empty[:10].tolist()} have no pixels")

    # errors / covariance -> Cholesky factor
    if (vrms_err is None) == (covariance is None):
        _fail("vrms_err", "give exactly one of vrms_err (VRMS_ERR) and covariance (COVARIANCE)")
    if vrms_err is not None:
        err = _float_array("vrms_err", vrms_err, ndim=1)
        if err.shape != (n_bins,):
            _fail("vrms_err", f"has {err.shape[0]} entries but vrms has {n_bins}")
        if np.any(err <= 0):
            bad = np.flatnonzero(err <= 0)
            _fail("vrms_err", f"must be > 0; bin(s) {bad[:10].tolist()} are not")
        L = np.diag(err)
    else:
        cov = _float_array("covariance", covariance, ndim=2)
        if cov.shape != (n_bins, n_bins):
            _fail("covariance", f"must have shape ({n_bins}, {n_bins}) to match vrms; "
                                f"got {cov.shape}")
        if not np.allclose(cov, cov.T, rtol=1e-10, atol=1e-12 * np.abs(cov).max()):
            _fail("covariance", "is not symmetric")
        try:
            L = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            w = np.linalg.eigvalsh(cov)
            _fail("covariance", f"is not positive definite (smallest eigenvalue {w.min():.3g})")
        if not np.all(np.isfinite(L)) or np.any(np.diag(L) <= 0):
            _fail("covariance", "is not positive definite")
    log_norm = -0.5 * n_bins * math.log(2.0 * math.pi) - np.sum(np.log(np.diag(L)))

    # sky geometry
    M = _float_array("transform_pix2angle", transform_pix2angle, shape=(2, 2))
    if abs(np.linalg.det(M)) <= 0:
        _fail("transform_pix2angle", "is singular")
    ra0 = _scalar("ra_at_xy_0", ra_at_xy_0)
    dec0 = _scalar("dec_at_xy_0", dec_at_xy_0)

    # PSF
    if (psf_fwhm is None) == (psf_kernel is None):
        _fail("psf_fwhm", "give exactly one of psf_fwhm (PSFFWHM) and psf_kernel (PSF_KERNEL)")
    if psf_fwhm is not None:
        fwhm = float(_scalar("psf_fwhm", psf_fwhm))
        if fwhm < 0:
            _fail("psf_fwhm", f"must be >= 0 arcsec; got {fwhm}")
        kernel = kin.gaussian_psf_kernel(fwhm, M, s, truncate=psf_truncate)
    else:
        fwhm = None
        kernel = _float_array("psf_kernel", psf_kernel, ndim=2)
        if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            _fail("psf_kernel", f"must have odd sides (a centre pixel); got {kernel.shape}")
        if np.any(kernel < 0) or kernel.sum() <= 0:
            _fail("psf_kernel", "must be >= 0 with a positive sum")
        samp = 1 if psf_sampling is None else psf_sampling
        if samp != s:
            _fail("psf_kernel", f"is sampled at {samp} per IFU pixel (PSFSAMP) but the fine "
                                f"supersampling is {s}; give a kernel sampled like the fine grid")
        kernel = kernel / kernel.sum()

    # light
    ny, nx = bin_index.shape
    if light is not None:
        light = _float_array("light", light, shape=(ny, nx))
        if np.any(light < 0):
            _fail("light", "must be >= 0 (clip or mask negative pixels)")
        lsum = np.bincount(bin_index[bin_index >= 0], weights=light[bin_index >= 0],
                           minlength=n_bins)
        if np.any(lsum <= 0):
            _fail("light", f"bin(s) {np.flatnonzero(lsum <= 0)[:10].tolist()} have no light")

    def optional_bins(field, value):
        if value is None:
            return None
        a = _float_array(field, value, ndim=1)
        if a.shape != (n_bins,):
            _fail(field, f"has {a.shape[0]} entries but vrms has {n_bins}")
        return a

    bin_sn = optional_bins("bin_sn", bin_sn)
    vrms_true = optional_bins("vrms_true", vrms_true)
    if flux is not None:
        flux = _float_array("flux", flux, shape=(ny, nx))

    # forward-model geometry: the grid padded by the PSF's reach, split into s x s sub-pixels
    pad = kin.psf_reach(kernel.shape, s)
    P = np.pad(bin_index, pad, constant_values=-1)
    hy, hx = kernel.shape[0] // 2, kernel.shape[1] // 2
    ry, rx = int(math.ceil(hy / s)), int(math.ceil(hx / s))
    need = ndimage.binary_dilation(P >= 0, structure=np.ones((2 * ry + 1, 2 * rx + 1), bool))
    group, sample_ra, sample_dec = kin.adaptive_samples(nx, ny, M, ra0, dec0, factors, radii,
                                                        cen, pad, need)
    grid_shape = group.shape
    sub_bin_index = np.repeat(np.repeat(P, s, axis=0), s, axis=1)
    fine = np.flatnonzero(group.ravel() >= 0)
    g = group.ravel()[fine]
    n_samples = sample_ra.size

    # PSF + bin sums as one linear map: W[b, q] = sum_{p in bin b} K(p - q), i.e. each bin's
    # mask correlated with the kernel (beyond the sampled sub-pixels it is out of reach),
    # summed over the fine sub-pixels that each sample stands for
    W = np.zeros((n_bins, n_samples))
    k_flip = kernel[::-1, ::-1]
    for b in range(n_bins):
        mask = (sub_bin_index == b).astype(float)
        w = signal.fftconvolve(mask, k_flip, mode="same") if kernel.size > 1 else mask
        W[b] = np.bincount(g, weights=w.ravel()[fine], minlength=n_samples)
    sample_light = None
    if light is not None:
        lp = np.repeat(np.repeat(np.pad(light, pad, mode="edge"), s, 0), s, 1).ravel()[fine]
        sample_light = np.bincount(g, weights=lp, minlength=n_samples) / np.bincount(g)

    return KinematicData(
        vrms=vrms,
        cov_cholesky=L,
        log_norm=np.asarray(log_norm),
        bin_index=bin_index.astype(np.int32),
        transform_pix2angle=M,
        ra_at_xy_0=ra0,
        dec_at_xy_0=dec0,
        psf_kernel=kernel,
        sample_ra=sample_ra,
        sample_dec=sample_dec,
        bin_psf_weights=W,
        sub_bin_index=sub_bin_index.ravel().astype(np.int32),
        light=light,
        sample_light=sample_light,
        bin_sn=bin_sn,
        vrms_true=vrms_true,
        flux=flux,
        supersampling=factors,
        supersampling_radii=radii,
        supersampling_centre=(float(cen[0]), float(cen[1])),
        pad=pad,
        grid_shape=tuple(int(g) for g in grid_shape),
        psf_fwhm=fwhm,
    )


# ----------------------------------------------------------------------------------------------
# FITS I/O


def write_kinematic_fits(
    path,
    *,
    vrms,
    bin_index,
    transform_pix2angle,
    ra_at_xy_0,
    dec_at_xy_0,
    vrms_err=None,
    covariance=None,
    psf_fwhm=None,
    psf_kernel=None,
    psf_sampling=1,
    light=None,
    supersampling=None,
    supersampling_radii=None,
    supersampling_centre=None,
    bin_sn=None,
    vrms_true=None,
    flux=None,
    truth=None,
    header=None,
    overwrite=False,
):
    """Write kinematic data in the documented FITS format (no validation: the loader does it).

    ``path`` is a file name or a writable binary file object. ``truth`` is an optional mapping
    of true parameters (stored as the TRUTH table); ``header`` extra primary-header cards.
    """
    from astropy.io import fits

    M = np.asarray(transform_pix2angle, dtype=float)
    hdr = fits.Header()
    hdr["JKINFMT"] = (FORMAT_NAME, "jkin kinematic data")
    hdr["FMTVER"] = (FORMAT_VERSION, "format version")
    for (a, b), key in zip(((0, 0), (0, 1), (1, 0), (1, 1)), ("PIXM11", "PIXM12", "PIXM21",
                                                              "PIXM22")):
        hdr[key] = (float(M[a, b]), "transform_pix2angle [arcsec/pix]")
    hdr["RA0"] = (float(ra_at_xy_0), "ra of pixel (0, 0) centre [arcsec]")
    hdr["DEC0"] = (float(dec_at_xy_0), "dec of pixel (0, 0) centre [arcsec]")
    hdr["NBINS"] = (int(np.size(vrms)), "number of Voronoi bins")
    if psf_fwhm is not None:
        hdr["PSFFWHM"] = (float(psf_fwhm), "Gaussian PSF FWHM [arcsec]")
    if supersampling is not None:
        hdr["SUPERSAM"] = (kin.format_supersampling(supersampling),
                           "samples per pixel side, inner to outer ring")
    if supersampling_radii is not None:
        hdr["SSRADII"] = (",".join(repr(float(r)) for r in np.atleast_1d(supersampling_radii)),
                          "ring radii [arcsec]")
    if supersampling_centre is not None:
        hdr["SSCENRA"] = (float(supersampling_centre[0]), "its centre, ra [arcsec]")
        hdr["SSCENDEC"] = (float(supersampling_centre[1]), "its centre, dec [arcsec]")
    for key, value in (header or {}).items():
        hdr[key] = value
    hdus = [fits.PrimaryHDU(header=hdr),
            fits.ImageHDU(np.asarray(bin_index, dtype=np.int32), name="BIN_INDEX"),
            fits.ImageHDU(np.asarray(vrms, dtype=float), name="VRMS")]
    hdus[-1].header["BUNIT"] = "km/s"

    def add(name, value, **cards):
        if value is not None:
            hdu = fits.ImageHDU(np.asarray(value, dtype=float), name=name)
            for k, v in cards.items():
                hdu.header[k] = v
            hdus.append(hdu)

    add("VRMS_ERR", vrms_err, BUNIT="km/s")
    add("COVARIANCE", covariance, BUNIT="(km/s)**2")
    add("PSF_KERNEL", psf_kernel, PSFSAMP=int(psf_sampling))
    add("LIGHT", light)
    add("BIN_SN", bin_sn)
    add("VRMS_TRUE", vrms_true, BUNIT="km/s")
    add("FLUX", flux)
    if truth is not None:
        cols = [fits.Column(name=k, format="D", array=np.atleast_1d(float(v)))
                for k, v in truth.items()]
        hdus.append(fits.BinTableHDU.from_columns(cols, name="TRUTH"))
    fits.HDUList(hdus).writeto(path, overwrite=overwrite)


def save_kinematic_data(path, data: KinematicData, *, truth=None, header=None, overwrite=False):
    """Write a ``KinematicData`` in the FITS format (diagonal covariances as VRMS_ERR)."""
    L = np.asarray(data.cov_cholesky, dtype=float)
    diagonal = np.array_equal(L, np.diag(np.diag(L)))
    write_kinematic_fits(
        path,
        vrms=data.vrms,
        bin_index=data.bin_index,
        transform_pix2angle=data.transform_pix2angle,
        ra_at_xy_0=data.ra_at_xy_0,
        dec_at_xy_0=data.dec_at_xy_0,
        vrms_err=np.diag(L) if diagonal else None,
        covariance=None if diagonal else L @ L.T,
        psf_fwhm=data.psf_fwhm,
        psf_kernel=data.psf_kernel if data.psf_fwhm is None else None,
        psf_sampling=data.fine_supersampling,
        light=data.light,
        supersampling=data.supersampling,
        supersampling_radii=data.supersampling_radii,
        supersampling_centre=data.supersampling_centre,
        bin_sn=data.bin_sn,
        vrms_true=data.vrms_true,
        flux=data.flux,
        truth=truth,
        header=header,
        overwrite=overwrite,
    )


def _open(path):
    from astropy.io import fits

    if hasattr(path, "read"):  # a file object: read it whole (astropy closes what it opens)
        if hasattr(path, "seek"):
            path.seek(0)
        path = path.read()
    if isinstance(path, (bytes, bytearray)):
        path = io.BytesIO(path)
    return fits.open(path, memmap=False)


def load_kinematic_data(path, *, supersampling=None, supersampling_radii=None,
                        supersampling_centre=None, psf_truncate=4.0) -> KinematicData:
    """Read and validate a kinematic-data FITS file (path, file object or bytes).

    The ``supersampling*`` arguments override the file's SUPERSAM, SSRADII and
    SSCENRA/SSCENDEC (an int ``supersampling`` means uniform sampling). Raises ``ValueError``
    naming the bad field.
    """
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "<file>"
    with _open(path) as hdul:
        hdr = hdul[0].header
        if hdr.get("JKINFMT") != FORMAT_NAME:
            raise ValueError(f"{name}: not a jkin kinematic-data file (primary header JKINFMT "
                             f"is {hdr.get('JKINFMT')!r}, expected {FORMAT_NAME!r})")
        if int(hdr.get("FMTVER", -1)) > FORMAT_VERSION:
            raise ValueError(f"{name}: format version {hdr['FMTVER']} is newer than this "
                             f"reader ({FORMAT_VERSION})")
        names = {h.name.upper() for h in hdul[1:]}

        def ext(key, required=False):
            if key in names:
                return np.array(hdul[key].data)
            if required:
                raise ValueError(f"{key.lower()}: extension {key} missing from {name}")
            return None

        def card(key, required=False):
            if key in hdr:
                return hdr[key]
            if required:
                raise ValueError(f"{key.lower()}: primary header key {key} missing from {name}")
            return None

        M = [[card("PIXM11", True), card("PIXM12", True)],
             [card("PIXM21", True), card("PIXM22", True)]]
        kwargs = dict(
            vrms=ext("VRMS", True),
            bin_index=ext("BIN_INDEX", True),
            transform_pix2angle=M,
            ra_at_xy_0=card("RA0", True),
            dec_at_xy_0=card("DEC0", True),
            vrms_err=ext("VRMS_ERR"),
            covariance=ext("COVARIANCE"),
            psf_fwhm=card("PSFFWHM"),
            psf_kernel=ext("PSF_KERNEL"),
            psf_sampling=(int(hdul["PSF_KERNEL"].header.get("PSFSAMP", 1))
                          if "PSF_KERNEL" in names else None),
            light=ext("LIGHT"),
            bin_sn=ext("BIN_SN"),
            vrms_true=ext("VRMS_TRUE"),
            flux=ext("FLUX"),
        )
        nbins = card("NBINS")
    if kwargs["vrms"] is not None and nbins is not None and np.size(kwargs["vrms"]) != nbins:
        raise ValueError(f"vrms: {name} has NBINS = {nbins} but VRMS has "
                         f"{np.size(kwargs['vrms'])} entries")
    if supersampling is None:
        supersampling = (_parse_list("supersampling", hdr["SUPERSAM"], str)
                         if "SUPERSAM" in hdr else DEFAULT_SUPERSAMPLING)
        if supersampling_radii is None:
            supersampling_radii = (_parse_list("supersampling_radii", hdr["SSRADII"], float)
                                   if "SSRADII" in hdr else
                                   DEFAULT_SUPERSAMPLING_RADII if "SUPERSAM" not in hdr else ())
    if supersampling_radii is None:
        supersampling_radii = ()
    if supersampling_centre is None:
        supersampling_centre = (float(hdr.get("SSCENRA", 0.0)), float(hdr.get("SSCENDEC", 0.0)))
    return make_kinematic_data(
        **kwargs, supersampling=supersampling, supersampling_radii=supersampling_radii,
        supersampling_centre=supersampling_centre, psf_truncate=psf_truncate)


def _parse_list(field, value, kind):
    try:
        out = tuple(kind(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        _fail(field, f"cannot read {value!r} as a comma-separated list")
    return out[0] if len(out) == 1 and field == "supersampling" else out


def load_truth(path) -> Optional[dict]:
    """The TRUTH table of a kinematic-data file as {name: float}, or None if it has none."""
    with _open(path) as hdul:
        if "TRUTH" not in {h.name.upper() for h in hdul[1:]}:
            return None
        table = hdul["TRUTH"].data
        return {name: float(table[name][0]) for name in table.columns.names}
