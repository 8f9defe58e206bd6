"""The lensing half of jkin: herculens lens model, mock imaging, time delays and likelihoods.

Model (all angles in arcsec in the sky frame of ``jkin.lensing_data``; position angles in degrees,
counter-clockwise from +x; ``e1 + i e2 = (1 - q)/(1 + q) exp(2 i phi)``):

* mass: herculens' EPL (Tessore & Metcalf 2015; lenstronomy's EPL / EPL_Q_PHI convention, no
  core) with ``theta_E, gamma, q_mass, phi, x_c, y_c`` -- the names and meaning of
  ``jkin.conventions`` -- plus an external shear ``gamma1_ext, gamma2_ext`` (lenstronomy's SHEAR,
  zero deflection at the origin);
* lens light: an elliptical Sersic in lenstronomy's SERSIC_ELLIPSE convention (herculens'
  ``Sersic(radius_major_axis=False)``: R = sqrt(q x'^2 + y'^2/q), R_sersic the product-average
  half-light radius, b_n = 1.9992 n - 0.3271) with ``amp_light, q_light, R_sersic, n_sersic``,
  sharing the mass's centre and position angle unless the ``LensModelConfig`` frees them
  (``x_light, y_light``, ``phi_light``);
* source: a circular (or, configurable, elliptical: ``q_src, phi_src``) Sersic ``amp_src,
  R_sersic_src, n_sersic_src`` centred on the quasar's source-plane position ``x_src, y_src``;
* quasar: its images are found by solving the lens equation (Newton, see
  ``solve_lens_equation``) from the measured positions in the data, and rendered with the PSF;
  amplitudes ``amp_ps`` are either free per image or the source flux times |magnification|;
* time-delay distance ``D_dt`` [Mpc].

The parameter dict ``params`` maps these names to scalars (``amp_ps`` to an array of one amplitude
per image when the amplitudes are free); ``param_names(config)`` lists them and ``PARAM_UNITS``
gives their units. Extra keys (e.g. the kinematic ones) are ignored, so the joint model can pass
one dict to both halves.

Every model function is a pure function of ``(params, data, config)`` that jits (``config`` is
static), vmaps and differentiates. x64 is never switched on here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from herculens.Coordinates.pixel_grid import PixelGrid
from herculens.Instrument.psf import PSF
from herculens.LensImage.lens_image import LensImage
from herculens.LightModel.light_model import LightModel
from herculens.LightModel.Profiles.sersic import Sersic
from herculens.MassModel.mass_model import MassModel
from herculens.MassModel.Profiles.epl import EPL, EPLMajorAxis
from herculens.MassModel.Profiles.shear import Shear
from herculens.PointSourceModel.point_source_model import PointSourceModel

from jkin import conventions as cv
from jkin.lensing_data import LensingData

__all__ = [
    "LensModelConfig",
    "DEFAULT_CONFIG",
    "PARAM_UNITS",
    "param_names",
    "check_params",
    "TIME_DELAY_DAYS",
    "EPLQPhi",
    "epl_omega_series",
    "SersicQPhi",
    "sersic_bn",
    "sersic_total_flux",
    "magnitude_to_flux",
    "shear_cartesian",
    "deflection",
    "convergence",
    "lensing_potential",
    "ray_shoot",
    "magnification",
    "fermat_potential",
    "time_delays",
    "solve_lens_equation",
    "find_images",
    "image_positions",
    "lens_image_model",
    "imaging_log_likelihood",
    "imaging_chi2",
    "time_delay_log_likelihood",
    "delay_distance",
    "source_plane_log_likelihood",
    "lensing_log_likelihood",
    "lensing_value_and_grad",
    "make_psf_kernel",
    "MockSettings",
    "DEFAULT_TRUTH",
    "Mock",
    "make_mock_lensing",
]

# --------------------------------------------------------------------------------------------
# Units and constants
# --------------------------------------------------------------------------------------------

_MPC_M = 3.0856775814913673e22  # IAU 2015: 1 pc = 648000/pi au, au = 149597870700 m
_C_M_S = 299792458.0
_DAY_S = 86400.0
_ARCSEC_RAD = math.pi / 648000.0
#: Days of delay per Mpc of D_dt per arcsec^2 of Fermat potential: dt = TIME_DELAY_DAYS D_dt dphi.
TIME_DELAY_DAYS = _MPC_M / _C_M_S / _DAY_S * _ARCSEC_RAD**2

PARAM_UNITS = {
    "theta_E": "arcsec",
    "gamma": "",
    "q_mass": "",
    "phi": "deg",
    "x_c": "arcsec",
    "y_c": "arcsec",
    "gamma1_ext": "",
    "gamma2_ext": "",
    "amp_light": "electron/s/arcsec^2",
    "q_light": "",
    "R_sersic": "arcsec",
    "n_sersic": "",
    "x_light": "arcsec",
    "y_light": "arcsec",
    "phi_light": "deg",
    "x_src": "arcsec",
    "y_src": "arcsec",
    "amp_src": "electron/s/arcsec^2",
    "R_sersic_src": "arcsec",
    "n_sersic_src": "",
    "q_src": "",
    "phi_src": "deg",
    "amp_ps": "electron/s",
    "D_dt": "Mpc",
}

_PS_AMPLITUDES = ("free", "magnified")
_NOISE_MODELS = ("map", "model")
_PRECISIONS = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class LensModelConfig:
    """Static choices of the lens model (hashable: pass it as a static argument to jit).

    share_light_center, share_light_phi
        The lens light shares the mass centre (x_c, y_c) / position angle phi (SKiNN's
        assumption); if False it has its own ``x_light, y_light`` / ``phi_light``.
    elliptical_source
        The source Sersic has its own ``q_src, phi_src`` (default: circular).
    point_source_amplitudes
        ``"free"``: ``amp_ps`` holds one amplitude [electron/s] per image (robust to
        microlensing); ``"magnified"``: ``amp_ps`` is the source-plane flux, each image gets
        ``amp_ps * |mu_i|``.
    noise_model
        ``"map"``: the data's fixed noise map (the default); ``"model"``: variance
        ``background_rms^2 + max(model, 0)/exposure_time`` of the model image, with its log-det.
    newton_iterations, newton_max_step
        The lens-equation solver: fixed number of Newton iterations from the measured image
        positions, each step clipped to ``newton_max_step`` arcsec.
    source_plane_sigma
        Tolerance [arcsec] of the source-plane consistency term that takes over only where the
        solver has not converged (see ``source_plane_log_likelihood``).
    light_precision
        Precision of the extended light: the lens light and the lensed source on the
        supersampled grid (ray shooting, profiles) and their PSF convolution. ``"float32"``
        (default) makes the lensing potential's value + gradient ~1.5x cheaper on a CPU and
        changes the model image by < 1e-7 of its peak; ``"float64"`` follows the caller's precision. The
        parameters, the image positions, the quasar images, the delays and the chi^2 sum stay in
        the caller's precision either way (benchmarks/results/light_precision.txt).
    """

    share_light_center: bool = True
    share_light_phi: bool = True
    elliptical_source: bool = False
    point_source_amplitudes: str = "free"
    noise_model: str = "map"
    newton_iterations: int = 12
    newton_max_step: float = 0.1
    source_plane_sigma: float = 1e-3
    light_precision: str = "float32"

    def __post_init__(self):
        if self.point_source_amplitudes not in _PS_AMPLITUDES:
            raise ValueError(f"point_source_amplitudes must be one of {_PS_AMPLITUDES}; got "
                             f"{self.point_source_amplitudes!r}")
        if self.noise_model not in _NOISE_MODELS:
            raise ValueError(f"noise_model must be one of {_NOISE_MODELS}; "
                             f"got {self.noise_model!r}")
        if not (isinstance(self.newton_iterations, int) and self.newton_iterations >= 1):
            raise ValueError(f"newton_iterations must be an integer >= 1; "
                             f"got {self.newton_iterations!r}")
        if not self.newton_max_step > 0:
            raise ValueError(f"newton_max_step must be > 0; got {self.newton_max_step}")
        if not self.source_plane_sigma > 0:
            raise ValueError(f"source_plane_sigma must be > 0; got {self.source_plane_sigma}")
        if self.light_precision not in _PRECISIONS:
            raise ValueError(f"light_precision must be one of {_PRECISIONS}; "
                             f"got {self.light_precision!r}")


DEFAULT_CONFIG = LensModelConfig()

_MASS_NAMES = ("theta_E", "gamma", "q_mass", "phi", "x_c", "y_c", "gamma1_ext", "gamma2_ext")
_SOLVER_NAMES = _MASS_NAMES + ("x_src", "y_src")
_DELAY_NAMES = _SOLVER_NAMES + ("D_dt",)


def param_names(config: LensModelConfig = DEFAULT_CONFIG) -> tuple[str, ...]:
    """Names of the lensing parameters under ``config``, in a fixed order."""
    names = list(_MASS_NAMES) + ["amp_light", "q_light", "R_sersic", "n_sersic"]
    if not config.share_light_center:
        names += ["x_light", "y_light"]
    if not config.share_light_phi:
        names += ["phi_light"]
    names += ["x_src", "y_src", "amp_src", "R_sersic_src", "n_sersic_src"]
    if config.elliptical_source:
        names += ["q_src", "phi_src"]
    names += ["amp_ps", "D_dt"]
    return tuple(names)


def check_params(params, config: LensModelConfig = DEFAULT_CONFIG, n_images: int | None = None,
                 names=None) -> None:
    """Raise ``ValueError`` naming the first missing parameter or a wrong ``amp_ps`` shape."""
    names = param_names(config) if names is None else names
    for name in names:
        if name not in params:
            raise ValueError(f"params is missing {name!r} [{PARAM_UNITS[name]}]; this model needs "
                             f"{names}")
    if "amp_ps" in names and n_images is not None:
        shape = jnp.shape(params["amp_ps"])
        want = (n_images,) if config.point_source_amplitudes == "free" else ()
        if shape != want:
            raise ValueError(f"amp_ps has shape {shape}; with point_source_amplitudes="
                             f"{config.point_source_amplitudes!r} and {n_images} images it "
                             f"must have shape {want}")


# --------------------------------------------------------------------------------------------
# Profiles: herculens' EPL and Sersic, parametrised by (q, phi) instead of (e1, e2)
# --------------------------------------------------------------------------------------------

_CENTRE_EPS = 1e-6  # arcsec: points closer than this to a singular centre are moved onto it


def _safe_offset(x, y, eps=_CENTRE_EPS):
    """Move points within ``eps`` of the origin to (eps, 0), so that values and gradients
    stay finite at a profile's centre (the double-where pattern)."""
    tiny = x * x + y * y < eps * eps
    return jnp.where(tiny, eps, x), jnp.where(tiny, 0.0, y)


_EPL_SERIES_TERMS = 20  # herculens' nmax for the EPL deflection series


def _unroll_loops() -> bool:
    """Whether the lens model's short loops (the EPL series, the Newton solve) are unrolled:
    on an accelerator, where every iteration of an XLA loop is a kernel launch and a host round
    trip, yes; on the CPU, where a loop iteration costs nothing extra and unrolling only makes
    the program bigger (recovery system 2's joint potential: value + gradient compiles in 14.7
    s unrolled against 9.6 s, its Hessian in 62 s against 29 s, a NUTS step in 21 against 13 s;
    session 13's benchmarks/results/gpu/README.md), no."""
    return jax.default_backend() != "cpu"


def epl_omega_series(z, t, q, nmax: int = _EPL_SERIES_TERMS):
    """R omega(phi) of Tessore & Metcalf (2015), eqs. (23)-(29): the angular part of the EPL
    deflection at z = q x + i y (major-axis frame), summed over ``nmax`` terms.

    The same series and number of terms as herculens' ``jax_util.R_omega`` (equal to it to ~1e-15
    relative), summed by Horner's rule over precomputed coefficients in a loop that is unrolled
    on accelerators (``_unroll_loops``). herculens sums the recurrence in a ``lax.fori_loop``: 19
    sequential iterations per evaluation, 677 per call of the joint potential + gradient (13
    evaluations, 2 inside each of the Newton solve's 12 steps), each a kernel launch and a host
    round trip on a GPU: unrolled, one step of the potential + gradient for 2 chains takes 3.1
    ms on an H200 against ~10 ms. The terms fall as ((1 - q)/(1 + q))^n: at q >= 0.5 the 20th
    is < 1e-9 of the first.
    """
    u = z / jnp.conj(z)  # exp(2 i phi)
    n = jnp.arange(1, nmax)
    coef = jnp.cumprod(-(1.0 - q) / (1.0 + q) * (2.0 * n + t - 2.0) / (2.0 * n - t + 2.0))

    def horner(k, total):  # c_(m) + u total, m = nmax - 2 - k: 1 + u (c_1 + u (c_2 + ...))
        return coef[nmax - 3 - k] + u * total

    total = jax.lax.fori_loop(0, nmax - 2, horner, jnp.broadcast_to(coef[-1], u.shape).astype(
        u.dtype), unroll=_unroll_loops())
    return z * (1.0 + u * total)


class _EPLMajorAxisHorner(EPLMajorAxis):
    """herculens' ``EPLMajorAxis`` (complex branch) with ``epl_omega_series`` for its series;
    ``function`` and ``hessian`` are herculens' own, built on this ``derivatives``."""

    def __init__(self):
        super().__init__(no_complex_numbers=False)

    def derivatives(self, x, y, b, t, q):
        z = q * x + 1j * y
        alpha = 2.0 / (1.0 + q) * (b / jnp.abs(z)) ** t * epl_omega_series(z, t, q)
        return alpha.real, alpha.imag


class EPLQPhi(EPL):
    """herculens' EPL with parameters (theta_E, gamma, q, phi [rad], center_x, center_y).

    Same physics as ``EPL`` (lenstronomy's EPL convention): kappa = (3 - gamma)/2 *
    [theta_E / sqrt(q x'^2 + y'^2/q)]^(gamma - 1). Taking q and phi directly avoids the
    (e1, e2) -> (phi, q) round trip whose gradient is NaN at q = 1; points at the centre are
    regularised (``_safe_offset``). The deflection series is ``epl_omega_series``.
    """

    param_names = ["theta_E", "gamma", "q", "phi", "center_x", "center_y"]

    def __init__(self):
        super().__init__(no_complex_numbers=False)
        self.epl_major_axis = _EPLMajorAxisHorner()

    @staticmethod
    def _frame(x, y, theta_E, gamma, q, phi, center_x, center_y):
        # herculens' EPL.param_conv without the (e1, e2) step: b = theta_E * sqrt(q)
        b = theta_E * jnp.sqrt(q)
        t = gamma - 1.0
        cos, sin = jnp.cos(phi), jnp.sin(phi)
        dx, dy = x - center_x, y - center_y
        xr = cos * dx + sin * dy
        yr = -sin * dx + cos * dy
        xr, yr = _safe_offset(xr, yr)
        return xr, yr, b, t, cos, sin

    def function(self, x, y, theta_E, gamma, q, phi, center_x=0.0, center_y=0.0):
        xr, yr, b, t, _, _ = self._frame(x, y, theta_E, gamma, q, phi, center_x, center_y)
        return self.epl_major_axis.function(xr, yr, b, t, q)

    def derivatives(self, x, y, theta_E, gamma, q, phi, center_x=0.0, center_y=0.0):
        xr, yr, b, t, cos, sin = self._frame(x, y, theta_E, gamma, q, phi, center_x, center_y)
        ax, ay = self.epl_major_axis.derivatives(xr, yr, b, t, q)
        return cos * ax - sin * ay, sin * ax + cos * ay

    def hessian(self, x, y, theta_E, gamma, q, phi, center_x=0.0, center_y=0.0):
        xr, yr, b, t, cos, sin = self._frame(x, y, theta_E, gamma, q, phi, center_x, center_y)
        fxx, fyy, fxy = self.epl_major_axis.hessian(xr, yr, b, t, q)
        kappa = 0.5 * (fxx + fyy)
        g1r, g2r = 0.5 * (fxx - fyy), fxy
        cos2, sin2 = cos * cos - sin * sin, 2.0 * sin * cos
        g1 = cos2 * g1r - sin2 * g2r
        g2 = sin2 * g1r + cos2 * g2r
        return kappa + g1, kappa - g1, g2


class SersicQPhi(Sersic):
    """herculens' ``Sersic(radius_major_axis=False)`` (lenstronomy's SERSIC_ELLIPSE) with
    parameters (amp, R_sersic, n_sersic, q, phi [rad], center_x, center_y).

    I = amp exp(-b_n [(R/R_sersic)^(1/n) - 1]), R = sqrt(q x'^2 + y'^2/q) floored at the
    smoothing length 1e-5 arcsec (gradient-safe), b_n = 1.9992 n - 0.3271.
    """

    param_names = ["amp", "R_sersic", "n_sersic", "q", "phi", "center_x", "center_y"]

    def __init__(self):
        super().__init__(smoothing=1e-5, exponent=2.0, radius_major_axis=False)

    def function(self, x, y, amp, R_sersic, n_sersic, q, phi, center_x=0.0, center_y=0.0):
        cos, sin = jnp.cos(phi), jnp.sin(phi)
        dx, dy = x - center_x, y - center_y
        xr = cos * dx + sin * dy
        yr = -sin * dx + cos * dy
        R = jnp.sqrt(jnp.maximum(q * xr * xr + yr * yr / q, self._s**2))
        return amp * self._r_sersic(R, R_sersic, n_sersic)


def sersic_bn(n):
    """b_n of the lenstronomy/herculens Sersic: 1.9992 n - 0.3271 (an approximation to the exact
    half-light b_n of ``jkin.conventions.sersic_bn``; see docs/lensing.md for the difference)."""
    return 1.9992 * n - 0.3271


def sersic_total_flux(amp, R_sersic, n_sersic):
    """Total flux of ``SersicQPhi`` (any q, R_sersic the product-average radius) [amp arcsec^2]."""
    b = sersic_bn(n_sersic)
    return (amp * 2.0 * np.pi * n_sersic * R_sersic**2 * np.exp(b) * special.gamma(2.0 * n_sersic)
            / b ** (2.0 * n_sersic))


def magnitude_to_flux(mag, zero_point):
    """Flux [electron/s] of an AB magnitude for a zero point (the magnitude of 1 electron/s)."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - zero_point))


def shear_cartesian(gamma_ext, phi_ext_deg):
    """(gamma1_ext, gamma2_ext) of a shear of strength ``gamma_ext`` at angle ``phi_ext_deg``."""
    a = 2.0 * jnp.deg2rad(phi_ext_deg)
    return gamma_ext * jnp.cos(a), gamma_ext * jnp.sin(a)


# --------------------------------------------------------------------------------------------
# Mass model: deflection, convergence, potential, Fermat potential, time delays
# --------------------------------------------------------------------------------------------

_MASS = MassModel([EPLQPhi(), Shear()])


def _mass_kwargs(params):
    return [
        dict(theta_E=params["theta_E"], gamma=params["gamma"], q=params["q_mass"],
             phi=jnp.deg2rad(params["phi"]), center_x=params["x_c"], center_y=params["y_c"]),
        dict(gamma1=params["gamma1_ext"], gamma2=params["gamma2_ext"], ra_0=0.0, dec_0=0.0),
    ]


def deflection(x, y, params):
    """Deflection (alpha_x, alpha_y) [arcsec] of EPL + shear at (x, y) [arcsec]."""
    check_params(params, names=_MASS_NAMES)
    return _MASS.alpha(jnp.asarray(x), jnp.asarray(y), _mass_kwargs(params))


def convergence(x, y, params):
    """Convergence kappa of EPL + shear at (x, y) [arcsec]."""
    check_params(params, names=_MASS_NAMES)
    return _MASS.kappa(jnp.asarray(x), jnp.asarray(y), _mass_kwargs(params))


def lensing_potential(x, y, params):
    """Lensing potential psi [arcsec^2] of EPL + shear at (x, y)."""
    check_params(params, names=_MASS_NAMES)
    return _MASS.potential(jnp.asarray(x), jnp.asarray(y), _mass_kwargs(params))


def ray_shoot(x, y, params):
    """Source-plane position (beta_x, beta_y) = (x, y) - alpha(x, y) [arcsec]."""
    ax, ay = deflection(x, y, params)
    return x - ax, y - ay


def magnification(x, y, params):
    """Signed magnification 1/det(A) at (x, y)."""
    check_params(params, names=_MASS_NAMES)
    return _MASS.magnification(jnp.asarray(x), jnp.asarray(y), _mass_kwargs(params))


def fermat_potential(x, y, params, x_src=None, y_src=None):
    """Fermat potential |theta - beta|^2/2 - psi(theta) [arcsec^2] (lenstronomy's sign).

    ``beta`` is (x_src, y_src) when given, else each point's own ray-shot source position.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x_src is None or y_src is None:
        x_src, y_src = ray_shoot(x, y, params)
    return 0.5 * ((x - x_src) ** 2 + (y - y_src) ** 2) - lensing_potential(x, y, params)


def time_delays(x, y, params, x_src=None, y_src=None):
    """Delays [days] of the images at (x, y) relative to the first:
    dt_i = D_dt/c (phi_i - phi_0), with D_dt = ``params["D_dt"]`` [Mpc]."""
    phi_f = fermat_potential(x, y, params, x_src, y_src)
    return TIME_DELAY_DAYS * params["D_dt"] * (phi_f - phi_f[..., :1])


# --------------------------------------------------------------------------------------------
# Image positions: Newton on the lens equation, differentiable by the implicit function theorem
# --------------------------------------------------------------------------------------------


def _residual_jacobian(xy, kw, beta):
    """Lens-equation residual F = x - alpha(x) - beta and its Jacobian A = 1 - Hessian(psi)."""
    x, y = xy[..., 0], xy[..., 1]
    ax, ay = _MASS.alpha(x, y, kw)
    f = jnp.stack([x - ax - beta[0], y - ay - beta[1]], axis=-1)
    fxx, fxy, _, fyy = _MASS.hessian(x, y, kw)
    jac = jnp.stack([jnp.stack([1.0 - fxx, -fxy], -1), jnp.stack([-fxy, 1.0 - fyy], -1)], -2)
    return f, jac


def _solve2(jac, f):
    """jac^-1 f for a batch of 2x2 systems, with the determinant kept away from 0."""
    a, b, c, d = jac[..., 0, 0], jac[..., 0, 1], jac[..., 1, 0], jac[..., 1, 1]
    det = a * d - b * c
    det = jnp.where(jnp.abs(det) < 1e-12, jnp.where(det < 0, -1e-12, 1e-12), det)
    return jnp.stack([(d * f[..., 0] - b * f[..., 1]) / det,
                      (a * f[..., 1] - c * f[..., 0]) / det], axis=-1)


def _newton(xy, kw, beta, n_iter, max_step):
    xy = xy.astype(jnp.result_type(xy, *jax.tree.leaves((kw, beta))))

    def body(_, xy):
        f, jac = _residual_jacobian(xy, kw, beta)
        step = _solve2(jac, f)
        norm = jnp.sqrt(jnp.sum(step * step, axis=-1, keepdims=True))
        return xy - step * jnp.minimum(1.0, max_step / jnp.maximum(norm, 1e-30))

    # unrolled on accelerators only (see _unroll_loops)
    return jax.lax.fori_loop(0, n_iter, body, xy, unroll=_unroll_loops())


def solve_lens_equation(params, x_init, y_init, *, n_iter: int = 12, max_step: float = 0.1):
    """Image positions of the source at (x_src, y_src) nearest (by Newton) to (x_init, y_init).

    ``n_iter`` Newton steps on F(theta) = theta - alpha(theta) - beta, each clipped to
    ``max_step`` arcsec, run without gradient; then one more Newton step is taken from the
    (stopped) result x0 with the Jacobian A(x0) held fixed: theta = x0 - A^-1 F(x0; params). Its
    value is the next Newton iterate and its derivative is exactly the implicit-function one,
    d theta/d p = -A^-1 dF/dp, once x0 has converged. Returns (x, y), one per initial point, in
    the same order (so the labels of the data carry over).
    """
    check_params(params, names=_SOLVER_NAMES)
    x, y, _ = _solve(params, x_init, y_init, n_iter, max_step)
    return x, y


def _solve(params, x_init, y_init, n_iter, max_step):
    """(x, y, F): the solved positions and the lens-equation residual F(x0; params) [arcsec]
    at the stopped Newton iterate x0 (differentiable in params; ~0 where Newton converged)."""
    kw = _mass_kwargs(params)
    beta = (params["x_src"], params["y_src"])
    xy = jnp.stack([jnp.asarray(x_init), jnp.asarray(y_init)], axis=-1)
    kw_sg, beta_sg = jax.lax.stop_gradient((kw, beta))
    x0 = jax.lax.stop_gradient(_newton(xy, kw_sg, beta_sg, n_iter, max_step))
    f, _ = _residual_jacobian(x0, kw, beta)
    _, jac = _residual_jacobian(x0, kw_sg, beta_sg)
    xy = x0 - _solve2(jac, f)
    return xy[..., 0], xy[..., 1], f


def find_images(params, x_src, y_src, *, half_width=None, spacing=0.02,
                min_abs_magnification=0.01, tol=1e-5):
    """All images of a point source (a mock-time helper in numpy; not differentiable).

    Ray-shoots a grid of ``spacing`` arcsec over the square of ``half_width`` arcsec (default
    3 theta_E) around the lens centre, refines every local minimum of |beta(theta) - beta_src|
    with Newton, keeps solutions with source-plane residual < ``tol`` arcsec and |mu| >=
    ``min_abs_magnification`` (this drops a demagnified central image of a shallow profile), and
    merges duplicates. Returns (x, y, mu) numpy arrays.
    """
    p = {k: jnp.asarray(float(params[k])) for k in _MASS_NAMES}
    hw = 3.0 * float(p["theta_E"]) if half_width is None else float(half_width)
    xc, yc = float(p["x_c"]), float(p["y_c"])
    g = np.arange(-hw, hw + 0.5 * spacing, spacing)
    gx, gy = np.meshgrid(xc + g, yc + g)
    bx, by = _ray_shoot_jit(p, jnp.asarray(gx), jnp.asarray(gy))
    d2 = np.asarray((bx - x_src) ** 2 + (by - y_src) ** 2, dtype=float)
    pad = np.pad(d2, 1, constant_values=np.inf)
    centre = pad[1:-1, 1:-1]
    is_min = np.ones_like(centre, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= centre <= pad[1 + di:pad.shape[0] - 1 + di, 1 + dj:pad.shape[1] - 1 + dj]
    is_min &= centre < (5.0 * spacing) ** 2
    cand = np.stack([gx[is_min], gy[is_min]], axis=-1)
    if len(cand) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    # pad to a fixed size so that the jitted refinement compiles once
    n = len(cand)
    size = 16 * ((n + 15) // 16)
    cand = np.concatenate([cand, np.repeat(cand[:1], size - n, axis=0)])
    xy, res, mu = _refine_jit(p, jnp.asarray(cand), jnp.asarray(float(x_src)),
                              jnp.asarray(float(y_src)), 4 * max(1, int(spacing / 0.005)))
    xy, res, mu = np.asarray(xy)[:n], np.asarray(res)[:n], np.asarray(mu)[:n]
    keep = (res < tol) & (np.abs(mu) >= min_abs_magnification)
    out = []
    for k in np.flatnonzero(keep):
        if all(np.hypot(*(xy[k] - xy[j])) > 1e-3 for j in out):
            out.append(k)
    out = np.array(out, dtype=int)
    return xy[out, 0], xy[out, 1], mu[out]


@jax.jit
def _ray_shoot_jit(p, x, y):
    return ray_shoot(x, y, p)


@functools.partial(jax.jit, static_argnums=4)
def _refine_jit(p, xy, x_src, y_src, n_iter):
    kw = _mass_kwargs(p)
    beta = (x_src, y_src)
    xy = _newton(xy, kw, beta, 10 + n_iter, 0.05)
    f, jac = _residual_jacobian(xy, kw, beta)
    det = jac[..., 0, 0] * jac[..., 1, 1] - jac[..., 0, 1] * jac[..., 1, 0]
    return xy, jnp.sqrt(jnp.sum(f * f, axis=-1)), 1.0 / det


def image_positions(params, data: LensingData, config: LensModelConfig = DEFAULT_CONFIG):
    """Model positions (x, y) [arcsec] of the quasar images, in the order of ``data.labels``."""
    return solve_lens_equation(params, data.x_image, data.y_image,
                               n_iter=config.newton_iterations, max_step=config.newton_max_step)


# --------------------------------------------------------------------------------------------
# Imaging
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _lens_image(n: int, transform, ra0: float, dec0: float, supersampling: int, psf_side: int,
                x64: bool):
    """The herculens LensImage for a pixel grid (static); the PSF kernel is passed per call.

    Built eagerly even when called inside a trace (herculens stores jnp coordinate grids), and
    cached per grid and x64 mode."""
    with jax.ensure_compile_time_eval():
        return _build_lens_image(n, transform, ra0, dec0, supersampling, psf_side)


def _build_lens_image(n, transform, ra0, dec0, supersampling, psf_side):
    grid = PixelGrid(n, n, np.asarray(transform, dtype=float), ra0, dec0)
    placeholder = np.zeros((psf_side, psf_side))
    placeholder[psf_side // 2, psf_side // 2] = 1.0
    psf = PSF(psf_type="PIXEL", kernel_point_source=placeholder)
    mass = MassModel([EPLQPhi(), Shear()])
    return LensImage(
        grid, psf,
        lens_mass_model_class=mass,
        source_model_class=LightModel([SersicQPhi()]),
        lens_light_model_class=LightModel([SersicQPhi()]),
        point_source_model_class=PointSourceModel(["IMAGE_POSITIONS"], mass, grid),
        kwargs_numerics={"supersampling_factor": int(supersampling)},
    )


def _herculens_image(data: LensingData, supersampling: int | None = None):
    ss = data.supersampling if supersampling is None else supersampling
    return _lens_image(data.n_pix, tuple(map(tuple, data.transform_pix2angle)),
                       float(data.ra_at_xy_0), float(data.dec_at_xy_0), int(ss),
                       int(np.shape(data.psf_kernel)[0]), bool(jax.config.jax_enable_x64))


def _light_kwargs(params, config):
    phi_l = params["phi"] if config.share_light_phi else params["phi_light"]
    xl, yl = ((params["x_c"], params["y_c"]) if config.share_light_center
              else (params["x_light"], params["y_light"]))
    lens_light = dict(amp=params["amp_light"], R_sersic=params["R_sersic"],
                      n_sersic=params["n_sersic"], q=params["q_light"],
                      phi=jnp.deg2rad(phi_l), center_x=xl, center_y=yl)
    q_s, phi_s = ((params["q_src"], jnp.deg2rad(params["phi_src"])) if config.elliptical_source
                  else (1.0, 0.0))
    source = dict(amp=params["amp_src"], R_sersic=params["R_sersic_src"],
                  n_sersic=params["n_sersic_src"], q=q_s, phi=phi_s,
                  center_x=params["x_src"], center_y=params["y_src"])
    return [lens_light], [source]


def _point_amplitudes(params, config, x_img, y_img):
    if config.point_source_amplitudes == "free":
        return jnp.asarray(params["amp_ps"])
    return params["amp_ps"] * jnp.abs(magnification(x_img, y_img, params))


def _extended_light(params, data, config, supersampling=None):
    """Lens light + lensed source on the supersampled grid, binned and convolved with the PSF
    (one convolution of their sum), computed in ``config.light_precision`` and returned in the
    default float type."""
    li = _herculens_image(data, supersampling)
    out = jnp.result_type(float)
    dtype = jnp.float32 if config.light_precision == "float32" else out
    x, y = li.ImageNumerics.coordinates_evaluate
    kw_lens_light, kw_source = _light_kwargs(params, config)
    x, y, kw_lens, kw_lens_light, kw_source, psf = jax.tree.map(
        lambda a: jnp.asarray(a, dtype),
        (x, y, _mass_kwargs(params), kw_lens_light, kw_source, data.psf_kernel))
    xs, ys = li.MassModel.ray_shooting(x, y, kw_lens)
    flux = (li.SourceModel.surface_brightness(xs, ys, kw_source)
            + li.LensLightModel.surface_brightness(x, y, kw_lens_light))
    return li.ImageNumerics.re_size_convolve(flux, kwargs_psf={"pixels": psf}).astype(out)


def _model_image(params, data, config, x_img, y_img, supersampling=None):
    li = _herculens_image(data, supersampling)
    amps = _point_amplitudes(params, config, x_img, y_img)
    quasars = li.point_source_image([dict(ra=x_img, dec=y_img, amp=amps)], _mass_kwargs(params),
                                    None, kwargs_psf={"pixels": jnp.asarray(data.psf_kernel)})
    return _extended_light(params, data, config, supersampling) + quasars


def lens_image_model(params, data: LensingData, config: LensModelConfig = DEFAULT_CONFIG, *,
                     supersampling: int | None = None):
    """Model image [electron/s per pixel] on the data's grid: lens light + lensed source,
    supersampled (``data.supersampling`` unless given), binned, convolved with the PSF, plus the
    quasar images at the solved positions rendered with the (bilinearly shifted) PSF."""
    check_params(params, config, data.n_images, _imaging_names(config))
    x_img, y_img = image_positions(params, data, config)
    return _model_image(params, data, config, x_img, y_img, supersampling)


def _imaging_residuals(params, data, config, x_img, y_img):
    """(mask * r^2 / var, var) per pixel: var is the fixed noise map squared (noise_model "map")
    or the model's variance (background + Poisson, noise_model "model")."""
    model = _model_image(params, data, config, x_img, y_img)
    if config.noise_model == "map":
        var = jnp.asarray(data.noise_map) ** 2
    else:
        var = data.background_rms**2 + jnp.maximum(model, 0.0) / data.exposure_time
    return jnp.asarray(data.mask) * (jnp.asarray(data.image) - model) ** 2 / var, var


def _imaging_ll(params, data, config, x_img, y_img):
    chi2, var = _imaging_residuals(params, data, config, x_img, y_img)
    if config.noise_model == "map":  # log var is a constant
        return -0.5 * jnp.sum(chi2)
    return -0.5 * jnp.sum(chi2 + jnp.asarray(data.mask) * jnp.log(var))


def _time_delay_ll(params, data, x_img, y_img):
    dt = time_delays(x_img, y_img, params, params["x_src"], params["y_src"])
    r = (dt[1:] - jnp.asarray(data.time_delays)[1:]) / jnp.asarray(data.time_delay_errors)[1:]
    return -0.5 * jnp.sum(r * r)


def _source_plane_ll(f, config):
    # f: the lens-equation residual at the stopped Newton iterate, differentiable in params:
    # ~0 with zero gradient where the solver converged, a pull back where it did not
    return -0.5 * jnp.sum(f * f) / config.source_plane_sigma**2


def _imaging_names(config):
    return tuple(n for n in param_names(config) if n != "D_dt")


def _solve_data(params, data, config):
    return _solve(params, data.x_image, data.y_image, config.newton_iterations,
                  config.newton_max_step)


def imaging_log_likelihood(params, data: LensingData, config: LensModelConfig = DEFAULT_CONFIG):
    """log L of the image: -chi^2/2 over unmasked pixels with the fixed noise map (noise_model
    "map"; up to a constant), or -1/2 sum[r^2/var + log var] with the model's variance
    (noise_model "model")."""
    check_params(params, config, data.n_images, _imaging_names(config))
    x_img, y_img = image_positions(params, data, config)
    return _imaging_ll(params, data, config, x_img, y_img)


def imaging_chi2(params, data: LensingData, config: LensModelConfig = DEFAULT_CONFIG):
    """(chi^2, number of unmasked pixels) of the image, with the noise of ``config.noise_model``
    (the fixed map, or the model's variance): chi^2 per pixel ~1 at a good fit, >> 1 where a
    blind start ended in a wrong optimum."""
    check_params(params, config, data.n_images, _imaging_names(config))
    x_img, y_img = image_positions(params, data, config)
    chi2, _ = _imaging_residuals(params, data, config, x_img, y_img)
    return jnp.sum(chi2), int(np.sum(np.asarray(data.mask) > 0))


def time_delay_log_likelihood(params, data: LensingData, config: LensModelConfig = DEFAULT_CONFIG):
    """log L of the measured delays relative to image 0: -1/2 sum_i ((dt_i - d_i)/sigma_i)^2,
    dt from the Fermat potential at the solved image positions and D_dt."""
    check_params(params, config, data.n_images, _DELAY_NAMES)
    x_img, y_img = image_positions(params, data, config)
    return _time_delay_ll(params, data, x_img, y_img)


def delay_distance(params, data: LensingData,
                   config: LensModelConfig = DEFAULT_CONFIG) -> tuple[float, float]:
    """The D_dt [Mpc] that the measured delays alone give for the lens model ``params`` (its
    ``D_dt`` ignored), and its sd: the delays are linear in D_dt, dt_i = D_dt k_i with
    k_i = TIME_DELAY_DAYS (phi_i - phi_0), so the maximum of ``time_delay_log_likelihood`` is
    the weighted least-squares D_dt = sum(w k d) / sum(w k^2), sd = sum(w k^2)^(-1/2),
    w = 1 / sigma^2. At the true lens model it is what the delays can tell about D_dt (and so,
    through the kinematics' D_dt / D_d, about D_d) however well the rest is measured."""
    params = dict(params, D_dt=1.0)
    check_params(params, config, data.n_images, _DELAY_NAMES)
    x_img, y_img = image_positions(params, data, config)
    k = np.asarray(time_delays(x_img, y_img, params, params["x_src"], params["y_src"]),
                   dtype=float)[1:]
    d = np.asarray(data.time_delays, dtype=float)[1:]
    w = 1.0 / np.asarray(data.time_delay_errors, dtype=float)[1:] ** 2
    info = float(np.sum(w * k * k))
    return float(np.sum(w * k * d)) / info, info ** -0.5


def source_plane_log_likelihood(params, data: LensingData,
                                config: LensModelConfig = DEFAULT_CONFIG):
    """Source-plane consistency: -1/2 sum |theta_i - alpha(theta_i) - beta|^2 / sigma^2 at the
    solver's positions theta_i (sigma = ``config.source_plane_sigma``). It is ~0 wherever Newton
    converged and keeps the likelihood informative where it did not (e.g. a source pushed out of
    the caustic by a far-off proposal)."""
    check_params(params, config, data.n_images, _SOLVER_NAMES)
    _, _, f = _solve_data(params, data, config)
    return _source_plane_ll(f, config)


def lensing_log_likelihood(params, data: LensingData, config: LensModelConfig = DEFAULT_CONFIG):
    """imaging + time delays + source-plane consistency, with the image positions solved once."""
    check_params(params, config, data.n_images)
    x_img, y_img, f = _solve_data(params, data, config)
    return (_imaging_ll(params, data, config, x_img, y_img)
            + _time_delay_ll(params, data, x_img, y_img)
            + _source_plane_ll(f, config))


#: (log L, d log L / d params) of ``lensing_log_likelihood``; one module-level function object, so
#: every ``jax.jit(lensing_value_and_grad)`` in a process shares one compilation per data shape.
lensing_value_and_grad = jax.value_and_grad(lensing_log_likelihood)


# --------------------------------------------------------------------------------------------
# Mock data (Gomer et al. 2023, Sect. 5.2)
# --------------------------------------------------------------------------------------------


def make_psf_kernel(size: int = 21, pixel_scale: float = 0.1, *, fwhm: float = 0.15,
                    moffat_beta: float = 2.5, core_q: float = 0.92, core_phi: float = 20.0,
                    ring_radius: float = 0.33, ring_width: float = 0.04,
                    ring_fraction: float = 0.04, spike_fraction: float = 0.02,
                    spike_angles=(45.0, 135.0), oversampling: int = 9) -> np.ndarray:
    """A non-Gaussian HST-like pixel PSF, ``size`` x ``size`` pixels, normalised to sum 1.

    Sum of: an elliptical Moffat core (FWHM ``fwhm`` arcsec along the major axis, index
    ``moffat_beta``, axis ratio ``core_q`` at ``core_phi`` deg), a Gaussian-profile Airy-like ring
    at ``ring_radius`` arcsec holding ``ring_fraction`` of the light, and four diffraction spikes
    (two lines at ``spike_angles`` deg, Gaussian width 0.015 arcsec across, Lorentzian fall-off
    with scale 0.1 arcsec along) holding ``spike_fraction``. Integrated over each pixel by
    ``oversampling`` x ``oversampling`` sub-pixels.
    """
    if size % 2 == 0:
        raise ValueError(f"size must be odd; got {size}")
    m = size * oversampling
    u = (np.arange(m) - (m - 1) / 2) * pixel_scale / oversampling
    x, y = np.meshgrid(u, u)
    c, s = np.cos(np.radians(core_phi)), np.sin(np.radians(core_phi))
    xr, yr = c * x + s * y, -s * x + c * y
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / moffat_beta) - 1.0))
    core = (1.0 + (xr**2 + (yr / core_q) ** 2) / alpha**2) ** (-moffat_beta)
    r = np.hypot(x, y)
    ring = np.exp(-0.5 * ((r - ring_radius) / ring_width) ** 2)
    spikes = np.zeros_like(x)
    for ang in spike_angles:
        ca, sa = np.cos(np.radians(ang)), np.sin(np.radians(ang))
        along, across = ca * x + sa * y, -sa * x + ca * y
        spikes += np.exp(-0.5 * (across / 0.015) ** 2) / (1.0 + (along / 0.1) ** 2)
    img = ((1.0 - ring_fraction - spike_fraction) * core / core.sum()
           + ring_fraction * ring / ring.sum() + spike_fraction * spikes / spikes.sum())
    kernel = img.reshape(size, oversampling, size, oversampling).sum(axis=(1, 3))
    return kernel / kernel.sum()


@dataclasses.dataclass(frozen=True)
class MockSettings:
    """Settings of the mock image and delays: an HST-like quad with time delays, modelled on the
    joint test of Gomer et al. (2023, Sect. 5.2); the values below are jkin's choices, not all
    taken from the paper (its time-delay errors in particular are not checked here).

    Photometry as the kinematic mock's light: AB zero point 26 (1 electron/s), lens magnitude 19,
    sky 20 mag/arcsec^2; source: circular Sersic of magnitude 22.5, R_sersic 0.1", n 1; quasar of
    (intrinsic, unlensed) magnitude 21.75 at the source centre. Exposure: 5400 s (two HST orbits)
    in 4 exposures with 10 electrons of read noise each. External shear 0.02 at 30 deg from the
    mass major axis. Delays relative to the first-arriving image, errors max(2%, 1 day).
    The image is computed at ``mock_supersampling`` (the stored ``supersampling`` is the one the
    fit uses; make them differ to include discretisation error in the mock).
    """

    n_pix: int = 70
    pixel_scale: float = 0.1
    supersampling: int = 2
    mock_supersampling: int = 2
    zero_point: float = 26.0
    lens_mag: float = 19.0
    source_mag: float = 22.5
    ps_mag: float = 21.75
    R_sersic_src: float = 0.1
    n_sersic_src: float = 1.0
    sky_mag: float = 20.0
    exposure_time: float = 5400.0
    read_noise: float = 10.0
    n_exposures: int = 4
    shear_strength: float = 0.02
    shear_angle_offset: float = 30.0
    td_rel_error: float = 0.02
    td_min_error: float = 1.0
    source_box: float = 0.15
    max_draws: int = 500
    psf_fwhm: float = 0.15
    psf_size: int = 21
    noise: bool = True


#: Default true lens: the kinematic mock's (``jkin.mocks.PAPER_MOCK_THETA``), so that the two
#: halves of a joint mock describe one galaxy; inside the emulator's training space.
DEFAULT_TRUTH = {
    "theta_E": 1.0,
    "gamma": 2.05,
    "q_mass": 0.8,
    "phi": 30.0,
    "x_c": 0.0,
    "y_c": 0.0,
    "q_light": 0.85,
    "R_sersic": 0.8,
    "n_sersic": 3.5,
    "D_dt": cv.D_DT,
}


class Mock(NamedTuple):
    """A mock: the data, the true parameters (a valid ``params`` dict) and the true images."""

    data: LensingData
    truth: dict
    images: dict  # x, y [arcsec], mu, time_delays [days, noiseless], labels


def make_mock_lensing(seed=0, truth: dict | None = None, settings: MockSettings = MockSettings(),
                      config: LensModelConfig = DEFAULT_CONFIG) -> Mock:
    """Simulate the imaging and time delays of a quad (Gomer et al. 2023, Sect. 5.2).

    ``truth`` overrides entries of ``DEFAULT_TRUTH`` (any lensing parameter may be given; the
    shear, source position and amplitudes are otherwise derived from ``settings``). The source
    position is drawn uniformly in a box of +-``source_box`` theta_E around the lens centre
    until it has exactly four images (it lies inside the astroid caustic). Images are labelled
    A, B, C, D in order of arrival. Image noise: Poisson on (model + sky) counts, Gaussian read
    noise, sky subtracted; the stored noise map is the true one, sqrt(background_rms^2 +
    model/exposure_time). Delay noise: Gaussian with the stated errors.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    st = settings
    p = dict(DEFAULT_TRUTH)
    p.update(truth or {})
    if "gamma1_ext" not in p or "gamma2_ext" not in p:
        g1, g2 = shear_cartesian(st.shear_strength, p["phi"] + st.shear_angle_offset)
        p["gamma1_ext"], p["gamma2_ext"] = float(g1), float(g2)
    if not config.share_light_center:
        p.setdefault("x_light", p["x_c"])
        p.setdefault("y_light", p["y_c"])
    if not config.share_light_phi:
        p.setdefault("phi_light", p["phi"])
    if config.elliptical_source:
        p.setdefault("q_src", 1.0)
        p.setdefault("phi_src", 0.0)
    p.setdefault("R_sersic_src", st.R_sersic_src)
    p.setdefault("n_sersic_src", st.n_sersic_src)
    p.setdefault("amp_light", float(magnitude_to_flux(st.lens_mag, st.zero_point)
                                    / sersic_total_flux(1.0, p["R_sersic"], p["n_sersic"])))
    p.setdefault("amp_src", float(magnitude_to_flux(st.source_mag, st.zero_point)
                                  / sersic_total_flux(1.0, p["R_sersic_src"], p["n_sersic_src"])))
    p = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v, dtype=float)) for k, v in p.items()}

    # source inside the quad caustic
    if "x_src" in p and "y_src" in p:
        xi, yi, mu = find_images(p, p["x_src"], p["y_src"])
    else:
        box = st.source_box * p["theta_E"]
        for _ in range(st.max_draws):
            xs, ys = p["x_c"] + rng.uniform(-box, box), p["y_c"] + rng.uniform(-box, box)
            xi, yi, mu = find_images(p, xs, ys)
            if len(xi) == 4:
                break
        else:
            raise RuntimeError(f"no source position with 4 images in {st.max_draws} draws; "
                               "enlarge settings.source_box or make the lens more elliptical")
        p["x_src"], p["y_src"] = float(xs), float(ys)
    if len(xi) != 4:
        raise ValueError(f"the source at ({p['x_src']}, {p['y_src']}) has {len(xi)} images, not 4")
    dt = np.asarray(time_delays(jnp.asarray(xi), jnp.asarray(yi), p, p["x_src"], p["y_src"]))
    order = np.argsort(dt)
    xi, yi, mu, dt = (np.asarray(a[order], dtype=float) for a in (xi, yi, mu, dt))
    dt = dt - dt[0]
    labels = ("A", "B", "C", "D")

    f_ps = float(magnitude_to_flux(st.ps_mag, st.zero_point))
    p.setdefault("amp_ps", f_ps * np.abs(mu) if config.point_source_amplitudes == "free" else f_ps)

    # noiseless image
    d = st.pixel_scale
    half = (st.n_pix - 1) / 2.0
    geometry = dict(transform_pix2angle=((-d, 0.0), (0.0, d)), ra_at_xy_0=half * d,
                    dec_at_xy_0=-half * d, zero_point=st.zero_point, labels=labels)
    psf = make_psf_kernel(st.psf_size, d, fwhm=st.psf_fwhm)
    sky = float(magnitude_to_flux(st.sky_mag, st.zero_point)) * d * d  # electron/s/pixel
    t_exp = st.exposure_time
    read_var = st.n_exposures * st.read_noise**2  # electron^2
    bkg_rms = math.sqrt(sky * t_exp + read_var) / t_exp
    zeros = np.zeros((st.n_pix, st.n_pix))
    td_err = np.maximum(st.td_rel_error * np.abs(dt), st.td_min_error)
    td_err[0] = 0.0
    proto = LensingData(
        image=zeros, noise_map=np.ones_like(zeros), psf_kernel=psf, mask=np.ones_like(zeros),
        x_image=xi, y_image=yi, time_delays=dt, time_delay_errors=np.where(td_err > 0, td_err, 1.0),
        supersampling=st.supersampling, background_rms=bkg_rms, exposure_time=t_exp, **geometry)
    exact = dataclasses.replace(config, light_precision="float64")  # the caller's full precision
    model = np.asarray(jax.jit(_model_image, static_argnums=(2, 5))(
        p, proto, exact, jnp.asarray(xi), jnp.asarray(yi), st.mock_supersampling), dtype=float)
    model = np.maximum(model, 0.0)

    noise_map = np.sqrt(bkg_rms**2 + model / t_exp)
    if st.noise:
        counts = rng.poisson((model + sky) * t_exp).astype(float)
        read = rng.normal(0.0, math.sqrt(read_var), size=model.shape)
        image = (counts + read) / t_exp - sky
        dt_obs = dt + td_err * rng.normal(size=dt.shape)
        dt_obs[0] = 0.0
    else:
        image, dt_obs = model, dt.copy()
    data = proto.replace(image=image, noise_map=noise_map, time_delays=dt_obs,
                         time_delay_errors=td_err)
    images = {"x": xi, "y": yi, "mu": mu, "time_delays": dt, "labels": labels}
    return Mock(data, p, images)
