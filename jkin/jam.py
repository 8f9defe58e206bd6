"""Training-set physics: cored PEMD mass + Sersic light -> MGE (mgefit) -> JAM v_rms (jampy).

``jam_vrms(params, x, y)`` is the reference every emulator is measured against. It follows
``jkin.conventions`` exactly: galaxy frame (major axis along x), arcsec, fiducial distances,
jampy's axisymmetric cylindrically aligned projection with one constant beta_z on every
luminous Gaussian, the line-of-sight second moment (``moment='zz'``), no black hole, no PSF
and no pixel convolution.

How it is evaluated, and why (measured by ``benchmarks/jam_accuracy.py``):

* The multi-Gaussian expansions fit each profile along the major axis (R_maj = R/sqrt(q)) with
  a constant axis ratio q, so the elliptical shapes are exact. Both use mgefit's linear mode
  (log-spaced dispersions, non-negative weights). The PEMD (40 Gaussians) is fitted out to
  3000", where it is truncated: the MGE is good to 5e-4 (relative) inside 10" and 2e-3 inside
  30". The Sersic (32 Gaussians) is fitted out to 100" or its 1e-10 isophote: good to 2e-3 from
  0.003" to 15 R_sersic. Doubling both numbers of Gaussians changes v_rms by ~0.002 km/s.
* The line-of-sight integral is jampy's analytic one (Cappellari 2008, Eq. 28), computed by
  jampy's ``surf_v2los_cyl`` directly at every requested point (adaptive quadrature, relative
  tolerance 1e-5) -- no polar-grid interpolation. This is what ``jam_axi_proj`` computes when
  it does not interpolate; calling it directly keeps the *signed* Sigma <v_los^2>, which jampy
  clips to zero where a model with strong beta_z and round light has no positive solution (the
  "zero-valued pixels" of Gomer et al. 2023).
* jampy's fully numerical path (``interp=False``) is the independent cross-check; it agrees to
  <~0.1 km/s on ordinary maps but is unstable where <v^2> <= 0 and for epsrel < 1e-4.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import numpy as np

from jkin import conventions as cv

__all__ = [
    "JamSettings",
    "DEFAULT_SETTINGS",
    "mge_mass",
    "mge_light",
    "jam_vrms2",
    "jam_vrms",
    "jam_vrms_jampy",
]

# arcsec -> pc at distance D [Mpc], as jampy: D * pi / 0.648.
_PC_PER_ARCSEC_PER_MPC = np.pi / 0.648

@dataclasses.dataclass(frozen=True)
class JamSettings:
    """Numerical settings of the MGE fits (radii along the major axis, arcsec).

    Both fits use mgefit's linear mode: ``n_gauss`` log-spaced dispersions whose non-negative
    weights minimise the relative error (the non-linear mode falls into local minima here and
    is 100x slower). The PEMD is fitted out to ``r_max_mass`` so that the truncation error
    stays far outside the field; the Sersic out to ``r_max_light`` or to where it has fallen
    by ``light_floor`` from the centre, whichever is smaller.
    """

    n_gauss_mass: int = 40
    n_gauss_light: int = 32
    r_min: float = 3e-3
    r_max_mass: float = 3000.0
    r_max_light: float = 100.0
    light_floor: float = 1e-10
    n_radii: int = 400

    def doubled(self) -> "JamSettings":
        """The same settings with twice the Gaussians (a convergence check)."""
        return dataclasses.replace(
            self, n_gauss_mass=2 * self.n_gauss_mass, n_gauss_light=2 * self.n_gauss_light
        )


DEFAULT_SETTINGS = JamSettings()


def _fit_mge_1d(radii, profile, n_gauss):
    """Peak values and sigmas [arcsec] of a 1-D MGE fitted to ``profile(radii)``."""
    from mgefit.mge_fit_1d import mge_fit_1d

    # mgefit prints a warning about the residuals at the outer edge, where the fit is truncated
    # on purpose (see the module docstring); the fitted range is checked in tests instead.
    with contextlib.redirect_stdout(io.StringIO()):
        fit = mge_fit_1d(radii, profile, ngauss=n_gauss, linear=True, quiet=True, plot=False)
    total, sigma = fit.sol
    return total / (np.sqrt(2.0 * np.pi) * sigma), sigma


def mge_mass(theta_E, gamma, q_mass, settings: JamSettings = DEFAULT_SETTINGS):
    """MGE of the cored PEMD: (peak surface densities [Msun/pc^2], sigma [arcsec], q)."""
    m = np.geomspace(settings.r_min, settings.r_max_mass, settings.n_radii)
    profile = cv.kappa_pemd(m, 0.0, theta_E, gamma, q_mass)
    peak, sigma = _fit_mge_1d(m, profile, settings.n_gauss_mass)
    return peak * cv.SIGMA_CRIT, sigma, np.full_like(sigma, q_mass)


def mge_light(R_sersic, n_sersic, q_light, settings: JamSettings = DEFAULT_SETTINGS):
    """MGE of the Sersic light: (peaks, 1 at the half-light ellipse; sigma [arcsec]; q)."""
    m = np.geomspace(settings.r_min, settings.r_max_light, settings.n_radii)
    profile = cv.sersic_profile(m, 0.0, R_sersic, n_sersic, q_light)
    keep = profile > settings.light_floor * profile[0]
    peak, sigma = _fit_mge_1d(m[keep], profile[keep], settings.n_gauss_light)
    return peak, sigma, np.full_like(sigma, q_light)


def _check_points(x, y):
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D arrays of one length; got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    if np.any((x == 0) & (y == 0)):
        raise ValueError("(x, y) = (0, 0) is singular in JAM; offset the centre point")
    return x, y


def _mges(params, settings):
    p = cv.validate_params(params)
    if p.ndim != 1:
        raise ValueError(f"JAM takes one parameter vector of shape (8,); got shape {p.shape}")
    theta_E, gamma, q_mass, q_light, R_sersic, n_sersic, beta_z, inc = p
    return (
        p,
        mge_light(R_sersic, n_sersic, q_light, settings),
        mge_mass(theta_E, gamma, q_mass, settings),
    )


def jam_vrms2(params, x, y, settings: JamSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """Signed JAM <v_los^2> [(km/s)^2] at galaxy-frame points (x, y) [arcsec].

    Negative where the Jeans solution has no positive second moment (jampy clips those to 0).
    ``params`` has shape (8,) in ``PARAM_NAMES`` order and is validated against the training
    space; ``x`` and ``y`` are 1-D arrays of one length, not containing the centre (0, 0).
    """
    from jampy.axi.jam_axi_proj import mge_surf, surf_v2los_cyl

    x, y = _check_points(x, y)
    p, (surf_lum, sigma_lum, q_lum), (surf_pot, sigma_pot, q_pot) = _mges(params, settings)
    beta_z, inc = p[6], np.radians(p[7])
    pc = cv.D_D * _PC_PER_ARCSEC_PER_MPC
    sigma_lum, sigma_pot = sigma_lum * pc, sigma_pot * pc

    # Deprojection, eqs. (12)-(14) of Cappellari (2008), as in jampy.
    def deproject(surf, sigma, qobs):
        qintr = np.sqrt(qobs**2 - np.cos(inc) ** 2) / np.sin(inc)
        return surf * qobs / (sigma * qintr * np.sqrt(2.0 * np.pi)), qintr

    dens_lum, qintr_lum = deproject(surf_lum, sigma_lum, q_lum)
    dens_pot, qintr_pot = deproject(surf_pot, sigma_pot, q_pot)
    # v_rms is even in x and y; jampy's formulae assume the first quadrant.
    xp, yp = np.abs(x) * pc, np.abs(y) * pc
    sb_v2 = np.asarray(
        surf_v2los_cyl(
            xp, yp, inc, dens_lum, sigma_lum, qintr_lum, dens_pot, sigma_pot, qintr_pot,
            np.full_like(surf_lum, beta_z), "zz",
        )
    )
    return sb_v2 / mge_surf(xp, yp, surf_lum, sigma_lum, q_lum)


def jam_vrms(params, x, y, settings: JamSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """JAM line-of-sight v_rms [km/s] at galaxy-frame points (x, y) [arcsec].

    sqrt(max(<v_los^2>, 0)), as jampy reports it; see ``jam_vrms2`` for the arguments.
    """
    return np.sqrt(np.clip(jam_vrms2(params, x, y, settings), 0.0, None))


def jam_vrms_jampy(params, x, y, settings: JamSettings = DEFAULT_SETTINGS, **jam_kwargs):
    """v_rms [km/s] from jampy's public ``jam_axi_proj`` on the same MGEs (a cross-check).

    ``jam_kwargs`` go to jampy, e.g. ``interp=False, epsrel=1e-4`` for its fully numerical
    line-of-sight integral.
    """
    from jampy.axi.jam_axi_proj import jam_axi_proj

    x, y = _check_points(x, y)
    p, lum, pot = _mges(params, settings)
    kwargs = dict(align="cyl", moment="zz", ml=1.0, plot=False, quiet=True)
    kwargs.update(jam_kwargs)
    with contextlib.redirect_stdout(io.StringIO()):
        out = jam_axi_proj(
            *lum, *pot, p[7], 0.0, cv.D_D, np.abs(x), np.abs(y),
            beta=np.full_like(lum[0], p[6]), **kwargs,
        )
    return np.asarray(out.model, dtype=float)
