"""The kinematic forward model: galaxy-frame emulator v_rms -> binned, PSF-blurred IFU v_rms.

Observed IFU kinematics are light-weighted, PSF-blurred line-of-sight second moments summed over
Voronoi bins of a sky pixel grid. This module turns any emulator with the signature

    emulator(params, x, y) -> v_rms [km/s],   params (..., 8) in PARAM_NAMES order,
                                              x, y (M,) galaxy-frame arcsec, result (..., M)

and, optionally, a method ``emulator.vrms2(params, x, y) -> (v_rms, signed <v^2>)`` (jkin's
``Emulator`` and ``JamEmulator`` have it; see step 3) into those observables, differentiably (pure JAX; jit / vmap / grad), and gives the Gaussian
log-likelihood of binned data. Everything here is a pure function of arrays; the data bundle it
reads (``jkin.data.KinematicData``) holds the precomputed pixel geometry.

Parameters ``theta``
--------------------
A mapping with the 13 names of ``THETA_NAMES`` (extra keys are ignored, so the joint model can
pass one dict to the lensing and kinematic sides), or an array (..., 13) in that order:

* the 8 emulator inputs ``PARAM_NAMES`` (theta_E, gamma, q_mass, q_light, R_sersic, n_sersic,
  beta_z, inclination [deg]);
* ``phi`` [deg]: position angle of the galaxy major axis, counter-clockwise from the sky x axis
  (the pixel grid's RA axis as herculens / lenstronomy define it), i.e. lenstronomy's
  e1 + i e2 = (1 - q)/(1 + q) exp(2 i phi) with phi in radians there;
* ``x_c``, ``y_c`` [arcsec]: the galaxy centre in the sky frame of the pixel grid;
* ``D_dt``, ``D_d`` [Mpc]: time-delay and lens angular-diameter distances.

The operator (``predict_binned_vrms``)
--------------------------------------
1. Sample points: pixel (i, j) (column i, row j, herculens' PixelGrid convention) has its
   centre at ``M @ (i, j) + (ra_at_xy_0, dec_at_xy_0)`` with ``M = transform_pix2angle``;
   split into s x s sub-pixels, sub-pixel (a, b) sits at pixel coordinates
   (i + (a + 1/2)/s - 1/2, j + (b + 1/2)/s - 1/2). Adaptive supersampling (``jkin.data``): s
   near the lens centre, where v_rms and the light vary on the 0.08" core scale, fewer
   samples per pixel elsewhere; the data hold the sample positions ``sample_ra, sample_dec``.
2. Sky -> galaxy frame (``sky_to_galaxy``): translate by (x_c, y_c), rotate by -phi::

       x = cos(phi) (ra - x_c) + sin(phi) (dec - y_c)
       y = -sin(phi) (ra - x_c) + cos(phi) (dec - y_c)

   -- the same rotation herculens / lenstronomy apply to an elliptical profile, so the light and
   mass of the lens model and the kinematics share (phi, x_c, y_c).
3. <v^2> at those points (no pre-rendered map, no interpolation): the **signed** second
   moment ``emulator.vrms2(...)[1]`` where the emulator has that method, else
   emulator(params, x, y)^2 (``emulator_v2``). Where the Jeans solution has no positive second
   moment (high beta_z: JAM's "zero-valued pixels") <v^2> < 0; JAM itself (jampy's
   ``jam_axi_proj``) convolves and bins the signed moment and clips only the result, and so
   does this operator (step 5). Clipping per point instead biases such bins high: on a
   beta_z = 0.38 mock (13% of the samples negative) one outer bin came out 48.7 km/s against
   JAM's 30.9 (5.8 sigma), and a joint fit pushed beta_z to its bound. Light I = Sersic (jkin.conventions, normalised to 1 at R_sersic) at the same
   points, or a measured per-pixel light map replicated to its sub-pixels.
4. PSF: I v^2 and I are convolved with the PSF kernel P (sampled on the sub-pixel grid) on a
   grid padded by the kernel's reach, so light from outside the IFU field that the PSF
   scatters in is included; only pixels within reach of a binned pixel are evaluated.
5. Binning: v_bin = sqrt( max(sum_bin P*(I v^2) / sum_bin P*I, 0) ), the luminosity-weighted
   second moment that JAM and spectra measure (not the light-weighted mean of v), clipped at
   zero only here.

   Steps 4 and 5 are linear in (I v^2, I), so the data precompute them as one matrix,
   W[b, q] = sum_{p in bin b} P(p - q) (``KinematicData.bin_psf_weights``, n_bins x K): the
   model applies ``W @ [I v^2, I]``, exactly ``bin_sums(convolve_psf(.))`` (the standalone
   kernels below, tested against each other) at a fraction of the cost of a 2-D convolution.
6. Distances (Birrer-style rescaling, Eq. 11 of the SKiNN paper)::

       v -> v * sqrt[(D_dt / D_d) / (D_DT / D_D)]

   with the fiducial D_DT, D_D of ``jkin.conventions`` at which the emulator was trained. It
   is a constant factor, so it is applied to the binned v.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
from jax.scipy.linalg import solve_triangular
from jax.scipy.signal import convolve
from jax.scipy.special import gammainc, gammaln

from jkin import conventions as cv

__all__ = [
    "THETA_NAMES",
    "theta_to_array",
    "theta_from_array",
    "emulator_params",
    "sky_to_galaxy",
    "galaxy_to_sky",
    "pixel_to_sky",
    "subpixel_sky_coordinates",
    "normalise_supersampling",
    "format_supersampling",
    "adaptive_samples",
    "sersic_bn",
    "sersic_light",
    "distance_factor",
    "gaussian_psf_kernel",
    "psf_reach",
    "convolve_psf",
    "bin_sums",
    "bin_vrms",
    "emulator_v2",
    "predict_binned_vrms",
    "gaussian_log_likelihood",
    "kinematic_log_likelihood",
    "JamEmulator",
    "jam_emulator",
]

#: Names of the kinematic parameters, and the order of a flat ``theta`` array.
THETA_NAMES = cv.PARAM_NAMES + ("phi", "x_c", "y_c", "D_dt", "D_d")

#: Softening [arcsec] of the Sersic radius at the centre (keeps gradients finite there).
SERSIC_SOFTENING = 1e-4


# ----------------------------------------------------------------------------------------------
# parameters


def theta_to_array(theta) -> jax.Array:
    """Stack a theta mapping into an array (..., 13) in ``THETA_NAMES`` order."""
    return jnp.stack([jnp.asarray(_get(theta, name)) for name in THETA_NAMES], axis=-1)


def theta_from_array(theta_array) -> dict:
    """The mapping {name: array (...)} of an array (..., 13) in ``THETA_NAMES`` order."""
    a = jnp.asarray(theta_array)
    if a.shape[-1:] != (len(THETA_NAMES),):
        raise ValueError(
            f"theta array must have shape (..., {len(THETA_NAMES)}) in the order {THETA_NAMES}; "
            f"got shape {a.shape}"
        )
    return {name: a[..., k] for k, name in enumerate(THETA_NAMES)}


def _get(theta, name):
    try:
        return theta[name]
    except KeyError:
        raise KeyError(f"theta has no entry {name!r}; it needs all of {THETA_NAMES}") from None


def _as_mapping(theta) -> Mapping:
    return theta if isinstance(theta, Mapping) else theta_from_array(theta)


def emulator_params(theta) -> jax.Array:
    """The emulator's input vector (..., 8) in ``PARAM_NAMES`` order, from theta."""
    theta = _as_mapping(theta)
    return jnp.stack([jnp.asarray(_get(theta, name)) for name in cv.PARAM_NAMES], axis=-1)


# ----------------------------------------------------------------------------------------------
# geometry


def sky_to_galaxy(ra, dec, phi, x_c, y_c):
    """Galaxy-frame (x, y) [arcsec] of sky points (ra, dec) [arcsec].

    ``phi`` [deg] is the position angle of the major axis (galaxy +x), counter-clockwise from
    the sky x axis; (x_c, y_c) the galaxy centre. Same rotation as herculens / lenstronomy.
    """
    p = jnp.deg2rad(phi)
    c, s = jnp.cos(p), jnp.sin(p)
    dx, dy = ra - x_c, dec - y_c
    return c * dx + s * dy, -s * dx + c * dy


def galaxy_to_sky(x, y, phi, x_c, y_c):
    """Inverse of ``sky_to_galaxy``."""
    p = jnp.deg2rad(phi)
    c, s = jnp.cos(p), jnp.sin(p)
    return c * x - s * y + x_c, s * x + c * y + y_c


def pixel_to_sky(i, j, transform_pix2angle, ra_at_xy_0, dec_at_xy_0):
    """Sky (ra, dec) of pixel coordinates (i = column, j = row), herculens' PixelGrid rule."""
    M = transform_pix2angle
    return (
        M[0, 0] * i + M[0, 1] * j + ra_at_xy_0,
        M[1, 0] * i + M[1, 1] * j + dec_at_xy_0,
    )


def subpixel_sky_coordinates(nx, ny, transform_pix2angle, ra_at_xy_0, dec_at_xy_0,
                             supersampling=1, pad=0):
    """Sky coordinates (ra, dec) of the sub-pixel centres, arrays ((ny + 2 pad) s, (nx + 2 pad) s).

    numpy (geometry is fixed per data set). Row r, column c is sub-pixel (c mod s, r mod s) of
    pixel (c // s - pad, r // s - pad); ``pad`` adds that many pixels on every side. Sub-pixel
    centres average to the pixel centre (herculens' ``subgrid_from_coordinate_transform``).
    """
    s = int(supersampling)
    M = np.asarray(transform_pix2angle, dtype=float)
    i = (np.arange((nx + 2 * pad) * s) + 0.5) / s - 0.5 - pad
    j = (np.arange((ny + 2 * pad) * s) + 0.5) / s - 0.5 - pad
    ii, jj = np.meshgrid(i, j)
    return pixel_to_sky(ii, jj, M, float(ra_at_xy_0), float(dec_at_xy_0))


def _sampling_factor(f):
    """One supersampling factor as an int >= 1 or a Fraction 1/k (k >= 2), else None.
    Accepts ints, floats equal to either (0.5, 1/3 to 1e-9) and strings ("2", "1/2")."""
    if isinstance(f, (bool, np.bool_)):
        return None
    try:
        frac = Fraction(f.strip()) if isinstance(f, str) else Fraction(float(f))
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return None
    near = frac.limit_denominator(10_000)
    if abs(float(near) - float(frac)) > 1e-9 or near <= 0:
        return None
    if near.denominator == 1:
        return int(near)
    return near if near.numerator == 1 else None


def normalise_supersampling(supersampling, supersampling_radii=()):
    """(factors, radii) of a supersampling spec, validated; ``ValueError`` names the field.

    ``supersampling``: an int s (uniform s x s sub-pixels per pixel; radii ignored) or a
    sequence (s_0, s_1, ..., s_L) with ``supersampling_radii`` (r_1 < ... < r_L) [arcsec]:
    pixels whose centre lies within r_1 of the centre get s_0 x s_0 samples, within r_2
    s_1 x s_1, ..., beyond r_L s_L x s_L. The first factor, the fine grid's, is an integer;
    every other is an integer dividing it or a unit fraction 1/k ("1/2", 0.5): one sample per
    k x k block of pixels (blocks aligned on the padded grid, split where a ring or the
    sampled region ends). Returned factors are ints and ``fractions.Fraction``s.
    """
    raw = (supersampling,) if np.ndim(supersampling) == 0 else tuple(supersampling)
    radii = () if np.ndim(supersampling) == 0 else tuple(np.atleast_1d(supersampling_radii))
    out = [_sampling_factor(f) for f in raw]
    if not out:
        raise ValueError("supersampling: give at least one factor")
    if any(f is None for f in out) or not isinstance(out[0], int):
        raise ValueError(f"supersampling: factors must be integers >= 1 or unit fractions 1/k "
                         f"(k >= 2), the first an integer; got {supersampling!r}")
    if any(isinstance(f, int) and out[0] % f for f in out):
        raise ValueError(f"supersampling: every integer factor must divide the first "
                         f"(finest); got {tuple(str(f) for f in out)}")
    radii = tuple(float(r) for r in radii)
    if len(radii) != len(out) - 1:
        raise ValueError(f"supersampling_radii: {len(out)} factors need {len(out) - 1} radii; "
                         f"got {radii}")
    if any(not np.isfinite(r) or r < 0 for r in radii) or list(radii) != sorted(radii):
        raise ValueError(f"supersampling_radii: must be finite, >= 0 and increasing; got {radii}")
    return tuple(out), radii


def format_supersampling(factors) -> str:
    """A supersampling spec as the FITS SUPERSAM card writes it: "8,2,1,1/2"."""
    factors = (factors,) if np.ndim(factors) == 0 else tuple(factors)
    parsed = [_sampling_factor(f) for f in factors]  # a bad one as given (the loader names it)
    return ",".join(str(f if p is None else p) for f, p in zip(factors, parsed))


def adaptive_samples(nx, ny, transform_pix2angle, ra_at_xy_0, dec_at_xy_0, supersampling,
                     supersampling_radii=(), centre=(0.0, 0.0), pad=0, need=None):
    """Sample points of (adaptively) supersampled pixels (numpy; geometry fixed per data set).

    The grid, padded by ``pad`` pixels, is split into s_0 x s_0 sub-pixels (the fine grid, of
    shape ((ny + 2 pad) s_0, (nx + 2 pad) s_0)). A pixel of ring level l (its centre's distance
    from ``centre`` (ra, dec); ``normalise_supersampling``) of factor f is covered by squares of
    g = s_0 / f fine sub-pixels per side, aligned on the fine grid: f x f squares per pixel for
    an integer f, one square per k x k pixels for f = 1/k. Each square's sub-pixels of that
    level (and in ``need``, the padded pixel mask of pixels to sample) share one sample, placed
    at their mean. Returns (group, sample_ra, sample_dec): ``group`` (fine grid) is the sample
    of each fine sub-pixel, -1 if none.
    """
    factors, radii = normalise_supersampling(supersampling, supersampling_radii)
    s = factors[0]
    M = np.asarray(transform_pix2angle, dtype=float)
    pix_ra, pix_dec = subpixel_sky_coordinates(nx, ny, M, ra_at_xy_0, dec_at_xy_0, 1, pad)
    dist = np.hypot(pix_ra - centre[0], pix_dec - centre[1])
    level = np.searchsorted(np.asarray(radii), dist, side="left")  # r <= radius -> that level
    side = np.array([int(Fraction(s) / f) for f in factors])  # fine sub-pixels per sample side
    if need is None:
        need = np.ones(pix_ra.shape, bool)
    rep = lambda a: np.repeat(np.repeat(a, s, axis=0), s, axis=1)  # noqa: E731
    H, W = pix_ra.shape[0] * s, pix_ra.shape[1] * s
    rr, cc = np.indices((H, W))
    lev = rep(level)
    g = side[lev]
    key = (lev * H + rr // g) * W + cc // g
    keep = rep(need).ravel()
    group = np.full(key.size, -1)
    _, group[keep] = np.unique(key.ravel()[keep], return_inverse=True)
    ra, dec = subpixel_sky_coordinates(nx, ny, M, ra_at_xy_0, dec_at_xy_0, s, pad)
    n = int(group.max()) + 1
    members = np.bincount(group[keep], minlength=n)
    sample_ra = np.bincount(group[keep], weights=ra.ravel()[keep], minlength=n) / members
    sample_dec = np.bincount(group[keep], weights=dec.ravel()[keep], minlength=n) / members
    return group.reshape(rr.shape), sample_ra, sample_dec


# ----------------------------------------------------------------------------------------------
# light


def _sersic_bn_series(n):
    # Ciotti & Bertin (1999), eq. 18: b_n to ~1e-6 relative for n >= 0.5
    return (2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)
            + 131.0 / (1148175.0 * n**3) - 2194697.0 / (30690717750.0 * n**4))


@jax.custom_jvp
def sersic_bn(n_sersic):
    """b_n of the Sersic profile, gammainc(2n, b_n) = 1/2, in JAX (differentiable in n).

    Ciotti & Bertin (1999) asymptotic series refined by two Newton steps; matches
    ``jkin.conventions.sersic_bn`` to < 1e-12 relative in float64 for 0.5 <= n <= 10 (float32:
    ~3e-6, the precision of its gammainc). Derivatives (any order) are those of the series,
    within 1e-5 of the root's: JAX has no second derivative of gammainc in its first argument,
    and Hessians (the Laplace approximation) need one.
    """
    n = jnp.asarray(n_sersic)
    b = _sersic_bn_series(n)
    a = 2.0 * n
    for _ in range(2):
        f = gammainc(a, b) - 0.5
        dfdb = jnp.exp((a - 1.0) * jnp.log(b) - b - gammaln(a))
        b = b - f / dfdb
    return b


@sersic_bn.defjvp
def _sersic_bn_jvp(primals, tangents):
    (n,), (t,) = primals, tangents
    _, db = jax.jvp(_sersic_bn_series, (n,), (t,))
    return sersic_bn(n), db


def sersic_light(x, y, R_sersic, n_sersic, q_light):
    """Sersic surface brightness at galaxy-frame (x, y), 1 at the half-light ellipse (JAX).

    ``jkin.conventions.sersic_profile``: R = sqrt(q x^2 + y^2/q) (lenstronomy's SERSIC_ELLIPSE,
    herculens' ``Sersic(radius_major_axis=False)``), softened by SERSIC_SOFTENING at the centre.
    """
    R = jnp.sqrt(q_light * x**2 + y**2 / q_light + SERSIC_SOFTENING**2)
    return jnp.exp(-sersic_bn(n_sersic) * ((R / R_sersic) ** (1.0 / n_sersic) - 1.0))


# ----------------------------------------------------------------------------------------------
# distances


def distance_factor(D_dt, D_d):
    """sqrt[(D_dt / D_d) / (D_DT / D_D)]: the factor on v_rms away from the fiducial distances."""
    return jnp.sqrt((D_dt / D_d) / (cv.D_DT / cv.D_D))


# ----------------------------------------------------------------------------------------------
# PSF


def gaussian_psf_kernel(fwhm, transform_pix2angle, supersampling=1, *, truncate=4.0,
                        n_integrate=16) -> np.ndarray:
    """Circular Gaussian PSF of ``fwhm`` [arcsec] sampled on the sub-pixel grid (numpy).

    Rows follow the grid's pixel y index and columns its x index (the orientation of the data
    arrays); the sky offset of kernel element (r, c) from the centre is
    (M / s) @ (c - c0, r - r0), so rotated, flipped or rectangular pixels are handled. Each
    element is the Gaussian integrated over its sub-pixel: exactly (erf) for axis-aligned
    pixels, else by the midpoint rule on ``n_integrate``^2 points. The kernel reaches
    ``truncate`` sigma on the sky, has odd sides and sums to 1. ``fwhm = 0`` gives the
    identity kernel [[1]].
    """
    if fwhm == 0:
        return np.ones((1, 1))
    if not fwhm > 0:
        raise ValueError(f"psf_fwhm must be >= 0 arcsec; got {fwhm}")
    s = int(supersampling)
    M_sub = np.asarray(transform_pix2angle, dtype=float) / s
    inv = np.linalg.inv(M_sub)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    reach = truncate * sigma
    hx = int(math.ceil(reach * np.hypot(*inv[0]) - 1e-9))
    hy = int(math.ceil(reach * np.hypot(*inv[1]) - 1e-9))
    a = np.arange(-hx, hx + 1)
    b = np.arange(-hy, hy + 1)
    if M_sub[0, 1] == 0 and M_sub[1, 0] == 0:
        def cell(centres, width):  # Gaussian mass in [c - w/2, c + w/2] along one axis
            lo = (centres - 0.5) * width / (math.sqrt(2.0) * sigma)
            hi = (centres + 0.5) * width / (math.sqrt(2.0) * sigma)
            return 0.5 * (special.erf(hi) - special.erf(lo))
        k = np.outer(cell(b, abs(M_sub[1, 1])), cell(a, abs(M_sub[0, 0])))
    else:
        t = (np.arange(n_integrate) + 0.5) / n_integrate - 0.5
        # (rows b, cols a, sub-rows tb, sub-cols ta)
        pa = a[None, :, None, None] + t[None, None, None, :]
        pb = b[:, None, None, None] + t[None, None, :, None]
        dra = M_sub[0, 0] * pa + M_sub[0, 1] * pb
        ddec = M_sub[1, 0] * pa + M_sub[1, 1] * pb
        k = np.exp(-0.5 * (dra**2 + ddec**2) / sigma**2).mean(axis=(2, 3))
    return k / k.sum()


def psf_reach(kernel_shape, supersampling=1) -> int:
    """Whole IFU pixels the PSF kernel reaches beyond a pixel (the padding it needs)."""
    half = max(kernel_shape[0] // 2, kernel_shape[1] // 2)
    return int(math.ceil(half / int(supersampling)))


def convolve_psf(image, kernel):
    """2-D convolution of ``image`` (..., H, W) with ``kernel`` (kh, kw), same size, zero fill.

    scipy.signal.convolve(mode='same') semantics (a true convolution, odd kernels centred).
    """
    kernel = jnp.asarray(kernel, dtype=jnp.result_type(image))
    flat = image.reshape((-1,) + image.shape[-2:])
    out = jax.vmap(lambda im: convolve(im, kernel, mode="same"))(flat)
    return out.reshape(image.shape)


# ----------------------------------------------------------------------------------------------
# binning


def bin_sums(values, bin_index, *, n_bins):
    """Sum of ``values`` over each bin; ``bin_index`` (same shape) -1 marks unused pixels.

    ``values`` may carry trailing axes beyond ``bin_index``'s shape (summed per component).
    """
    idx = jnp.asarray(bin_index).reshape(-1)
    v = jnp.asarray(values)
    v = v.reshape((idx.shape[0],) + v.shape[np.ndim(bin_index):])
    idx = jnp.where(idx < 0, n_bins, idx)
    return jax.ops.segment_sum(v, idx, num_segments=n_bins + 1)[:n_bins]


def bin_vrms(I, v2, bin_index, *, n_bins):
    """Luminosity-weighted binned v_rms = sqrt( sum_bin I v^2 / sum_bin I ) [km/s].

    ``I`` (light) and ``v2`` (<v^2>) are arrays of ``bin_index``'s shape; pixels with index -1
    are left out. This is the second moment a spectrum of the summed light measures.
    """
    sums = bin_sums(jnp.stack([I * v2, I], axis=-1), bin_index, n_bins=n_bins)
    return _safe_sqrt(sums[:, 0] / sums[:, 1])


def _safe_sqrt(x):
    # JAM's clip of the binned second moment (negative only where a bin lies in a zero-valued
    # region); the floor keeps the gradient finite at 0.
    tiny = jnp.finfo(jnp.result_type(x)).tiny
    return jnp.sqrt(jnp.maximum(x, tiny))


# ----------------------------------------------------------------------------------------------
# forward model and likelihood


def emulator_v2(emulator, params, x, y) -> jax.Array:
    """Signed <v_los^2> [(km/s)^2] at galaxy-frame points, shape (..., M).

    ``emulator.vrms2(params, x, y)[1]`` where the emulator has that method (jkin's ``Emulator``,
    ``JamEmulator``), else ``emulator(params, x, y) ** 2`` (a v_rms-only callable: its
    zero-valued regions then enter the bins as 0, not as the negative moment JAM bins).
    """
    vrms2 = getattr(emulator, "vrms2", None)
    if vrms2 is not None:
        return vrms2(params, x, y)[1]
    v = emulator(params, x, y)
    return v * v


def predict_binned_vrms(theta, data, emulator) -> jax.Array:
    """Binned, PSF-blurred, luminosity-weighted v_rms [km/s], shape (n_bins,).

    ``theta``: mapping with ``THETA_NAMES`` (or array (13,)); ``data``: a
    ``jkin.data.KinematicData``; ``emulator(params, x, y) -> v_rms``, with the signed <v^2> of
    its ``vrms2`` method binned where it has one (see module docstring, steps 3 and 5).
    Pure JAX: jit, vmap (over theta) and grad with respect to all 13 parameters.
    """
    theta = _as_mapping(theta)
    x, y = sky_to_galaxy(
        data.sample_ra, data.sample_dec,
        _get(theta, "phi"), _get(theta, "x_c"), _get(theta, "y_c"),
    )
    v2 = emulator_v2(emulator, emulator_params(theta), x, y)
    if data.sample_light is None:
        I = sersic_light(x, y, _get(theta, "R_sersic"), _get(theta, "n_sersic"),
                         _get(theta, "q_light"))
    else:
        I = jnp.asarray(data.sample_light, dtype=v2.dtype)
    # PSF convolution and bin sums in one: sums_b = sum_q W[b, q] f(q), with
    # W[b, q] = sum_{p in bin b} K(p - q) precomputed from the kernel (jkin.data)
    W = jnp.asarray(data.bin_psf_weights, dtype=v2.dtype)
    sums = W @ jnp.stack([I * v2, I], axis=-1)  # (n_bins, 2)
    v_bin = _safe_sqrt(sums[:, 0] / sums[:, 1])
    return v_bin * distance_factor(_get(theta, "D_dt"), _get(theta, "D_d"))


def gaussian_log_likelihood(model, observed, cov_cholesky, log_norm):
    """log N(observed | model, C) with C = L L^T; ``log_norm`` = -n/2 log 2pi - sum log diag L."""
    r = jnp.asarray(observed) - model
    z = solve_triangular(cov_cholesky, r, lower=True)
    return -0.5 * jnp.sum(z * z) + log_norm


def kinematic_log_likelihood(theta, data, emulator) -> jax.Array:
    """Gaussian log-likelihood (normalised) of the binned v_rms of ``data`` given ``theta``.

    The covariance is factorised once, when ``data`` is built (``data.cov_cholesky``).
    """
    model = predict_binned_vrms(theta, data, emulator)
    return gaussian_log_likelihood(model, data.vrms, data.cov_cholesky, data.log_norm)


# ----------------------------------------------------------------------------------------------
# JAM in place of the emulator


class JamEmulator:
    """JAM (``jkin.jam``, numpy/jampy) with the emulator's interface, via a host callback.

    ``JamEmulator(settings)(params, x, y)`` gives v_rms = sqrt(max(<v^2>, 0)) [km/s] and
    ``.vrms2(params, x, y)`` (v_rms, signed <v^2>), as ``jkin.emulator.Emulator``. A reference,
    not a fast path: ~0.5-2.5 ms per point, no gradients (``jax.grad`` raises), one parameter
    vector at a time under ``vmap`` (sequential). Points exactly at (0, 0) are moved to
    (1e-6, 0) arcsec, where JAM is finite (see ``jkin.mocks``). Hashable (a static argument of
    ``jax.jit``).
    """

    def __init__(self, settings=None):
        from jkin.jam import DEFAULT_SETTINGS

        self.settings = DEFAULT_SETTINGS if settings is None else settings

    def __eq__(self, other):
        return isinstance(other, JamEmulator) and other.settings == self.settings

    def __hash__(self):
        return hash((JamEmulator, self.settings))

    def __repr__(self):
        return f"JamEmulator({self.settings!r})"

    def vrms2(self, params, x, y):
        from jkin.jam import jam_vrms2

        settings = self.settings
        x, y = jnp.asarray(x), jnp.asarray(y)
        out_dtype = jnp.result_type(x)

        def host(p, xx, yy):
            p, xx, yy = (np.asarray(a, dtype=float) for a in (p, xx, yy))
            xx = np.where((xx == 0) & (yy == 0), 1e-6, xx)
            out = np.empty(p.shape[:-1] + xx.shape[-1:])
            for k in np.ndindex(p.shape[:-1]):
                out[k] = jam_vrms2(p[k], xx, yy, settings)
            return out.astype(out_dtype)

        params = jnp.asarray(params)
        shape = jax.ShapeDtypeStruct(params.shape[:-1] + x.shape[-1:], out_dtype)
        v2 = jax.pure_callback(host, shape, params, x, y, vmap_method="sequential")
        return jnp.sqrt(jnp.maximum(v2, 0.0)), v2

    def __call__(self, params, x, y):
        return self.vrms2(params, x, y)[0]


#: JAM at ``jkin.jam.DEFAULT_SETTINGS`` (the training set's) as an emulator.
jam_emulator = JamEmulator()
