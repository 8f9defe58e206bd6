"""The one source of truth for jkin's physical conventions.

Every other module (the JAM generator, the emulator, the likelihoods, the tests) imports its
units, fiducial cosmology, parameter names, order and ranges from here. See docs/conventions.md
for the prose version.

Units
-----
* angles on the sky: arcsec; the galaxy frame has its major axis along +x and its centre at
  the origin;
* inclination: degrees (90 = edge-on); position angle: degrees, counter-clockwise from +x;
* distances: Mpc; velocities: km/s; surface mass density: Msun/pc^2.

Mass and light (galaxy frame, q < 1 elongates along x)
------------------------------------------------------
* mass, cored PEMD (lenstronomy's EPL convention plus the core ``R_CORE``)::

      kappa(x, y) = (3 - gamma)/2 * [theta_E / sqrt(q_mass x^2 + y^2/q_mass + r_c^2)]^(gamma - 1)

* light, Sersic (lenstronomy's SERSIC_ELLIPSE)::

      I(x, y) ∝ exp(-b_n [(R/R_sersic)^(1/n) - 1]),   R = sqrt(q_light x^2 + y^2/q_light)

  with b_n from the exact half-light condition, gammainc(2n, b_n) = 1/2.
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = [
    "PARAM_NAMES",
    "N_PARAMS",
    "PARAM_UNITS",
    "R_CORE",
    "H0",
    "OMEGA_M",
    "Z_D",
    "Z_S",
    "D_D",
    "D_S",
    "D_DS",
    "D_DT",
    "SIGMA_CRIT",
    "FIELD_HALF_WIDTH",
    "param_bounds",
    "inclination_min",
    "validate_params",
    "in_domain",
    "sample_params",
    "sersic_bn",
    "kappa_pemd",
    "sersic_profile",
]

#: Emulator inputs, in the order every array of parameters uses.
PARAM_NAMES = (
    "theta_E",
    "gamma",
    "q_mass",
    "q_light",
    "R_sersic",
    "n_sersic",
    "beta_z",
    "inclination",
)
N_PARAMS = len(PARAM_NAMES)
PARAM_UNITS = {
    "theta_E": "arcsec",
    "gamma": "",
    "q_mass": "",
    "q_light": "",
    "R_sersic": "arcsec",
    "n_sersic": "",
    "beta_z": "",
    "inclination": "deg",
}

#: Core radius of the kinematic PEMD [arcsec] (Gomer et al. 2023).
R_CORE = 0.08

# Fiducial flat LCDM (astropy FlatLambdaCDM(H0=72, Om0=0.32), no radiation) and redshifts.
H0 = 72.0
OMEGA_M = 0.32
Z_D = 0.5
Z_S = 2.0
#: Angular diameter distances [Mpc] of the fiducial cosmology.
D_D = 1215.739
D_S = 1650.753
D_DS = 1042.883
#: Time-delay distance (1 + z_d) D_d D_s / D_ds [Mpc].
D_DT = (1.0 + Z_D) * D_D * D_S / D_DS
#: c^2 D_s / (4 pi G D_d D_ds) [Msun/pc^2] at the fiducial distances.
SIGMA_CRIT = 2165.0925

#: Half-width of SKiNN's field [arcsec]: the emulator is trained on 0 <= |x|, |y| <= 5.5.
FIELD_HALF_WIDTH = 5.5

# Fixed bounds; R_sersic and inclination have bounds that depend on other parameters.
_FIXED_BOUNDS = {
    "theta_E": (0.5, 2.0),
    "gamma": (1.5, 2.5),
    "q_mass": (0.6, 1.0),
    "q_light": (0.6, 1.0),
    "n_sersic": (2.0, 4.0),
    "beta_z": (-0.4, 0.4),
}
#: Margin [deg] above the inclination at which the flatter profile would be face-on-limited.
INCLINATION_MARGIN = 2.0
#: Fraction of theta_E spanned by R_sersic.
R_SERSIC_FRACTION = (0.5, 1.0)


def inclination_min(q_mass, q_light):
    """Smallest allowed inclination [deg]: arccos(min(q_mass, q_light)) + 2 deg."""
    q = np.minimum(q_mass, q_light)
    return np.degrees(np.arccos(q)) + INCLINATION_MARGIN


def param_bounds(params) -> dict[str, tuple]:
    """Allowed (low, high) of every parameter, given the others in ``params`` (shape (..., 8))."""
    p = np.asarray(params, dtype=float)
    bounds = dict(_FIXED_BOUNDS)
    theta_E = p[..., 0]
    bounds["R_sersic"] = (R_SERSIC_FRACTION[0] * theta_E, R_SERSIC_FRACTION[1] * theta_E)
    bounds["inclination"] = (inclination_min(p[..., 2], p[..., 3]), np.full_like(theta_E, 90.0))
    return {name: bounds[name] for name in PARAM_NAMES}


def _fmt_range(name, low, high):
    unit = PARAM_UNITS[name]
    unit = f" {unit}" if unit else ""
    return f"[{float(low):.6g}, {float(high):.6g}]{unit}"


def validate_params(params, *, rtol: float = 1e-9) -> np.ndarray:
    """Check parameters against the training space; return them as a float64 array.

    ``params`` has shape (8,) or (N, 8) in ``PARAM_NAMES`` order. Raises ``ValueError`` naming
    the first offending parameter (and the row, for a batch) with its allowed range.
    """
    p = np.asarray(params, dtype=float)
    if p.ndim not in (1, 2) or p.shape[-1] != N_PARAMS:
        raise ValueError(
            f"params must have shape ({N_PARAMS},) or (N, {N_PARAMS}) in the order "
            f"{PARAM_NAMES}; got shape {p.shape}"
        )
    rows = p[None] if p.ndim == 1 else p
    for j, name in enumerate(PARAM_NAMES):
        bad = ~np.isfinite(rows[:, j])
        if bad.any():
            i = int(np.argmax(bad))
            where = f" (row {i})" if p.ndim == 2 else ""
            raise ValueError(f"{name}{where} is {rows[i, j]}; it must be a finite number")
    bounds = param_bounds(rows)
    for j, name in enumerate(PARAM_NAMES):
        low, high = (np.broadcast_to(b, rows.shape[:1]) for b in bounds[name])
        tol = rtol * np.maximum(1.0, np.abs(high))
        bad = (rows[:, j] < low - tol) | (rows[:, j] > high + tol)
        if bad.any():
            i = int(np.argmax(bad))
            where = f" (row {i})" if p.ndim == 2 else ""
            extra = ""
            if name == "R_sersic":
                extra = " (0.5-1 x theta_E)"
            elif name == "inclination":
                extra = " (arccos(min(q_mass, q_light)) + 2 deg to 90 deg)"
            raise ValueError(
                f"{name}{where} = {rows[i, j]:.6g} is outside its allowed range "
                f"{_fmt_range(name, low[i], high[i])}{extra}"
            )
    return p


def in_domain(params, *, rtol: float = 1e-9) -> np.ndarray:
    """Whether each parameter vector (..., 8) lies in the training space (boolean, shape (...))."""
    p = np.asarray(params, dtype=float)
    if p.shape[-1:] != (N_PARAMS,):
        raise ValueError(f"params must have a last axis of length {N_PARAMS}; got shape {p.shape}")
    ok = np.all(np.isfinite(p), axis=-1)
    for name, (low, high) in param_bounds(p).items():
        j = PARAM_NAMES.index(name)
        tol = rtol * np.maximum(1.0, np.abs(high))
        ok &= (p[..., j] >= low - tol) & (p[..., j] <= high + tol)
    return ok


def sample_params(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` parameter vectors uniformly over the training space (SKiNN's design).

    theta_E, gamma, q_mass, q_light, n_sersic, beta_z are uniform in their fixed ranges;
    R_sersic is uniform in [0.5, 1] x theta_E and the inclination uniform in
    [inclination_min(q_mass, q_light), 90] deg.
    """
    u = rng.uniform(size=(n, N_PARAMS))
    p = np.empty((n, N_PARAMS))
    for j, name in enumerate(PARAM_NAMES):
        if name in _FIXED_BOUNDS:
            lo, hi = _FIXED_BOUNDS[name]
            p[:, j] = lo + (hi - lo) * u[:, j]
    lo, hi = R_SERSIC_FRACTION
    p[:, 4] = p[:, 0] * (lo + (hi - lo) * u[:, 4])
    i_min = inclination_min(p[:, 2], p[:, 3])
    p[:, 7] = i_min + (90.0 - i_min) * u[:, 7]
    return p


def sersic_bn(n):
    """b_n of the Sersic profile from the exact half-light condition gammainc(2n, b_n) = 1/2."""
    return special.gammaincinv(2.0 * np.asarray(n, dtype=float), 0.5)


def kappa_pemd(x, y, theta_E, gamma, q_mass, r_core=R_CORE):
    """Convergence of the cored PEMD at galaxy-frame (x, y) [arcsec] (numpy)."""
    r2 = q_mass * x**2 + y**2 / q_mass + r_core**2
    return 0.5 * (3.0 - gamma) * (theta_E**2 / r2) ** (0.5 * (gamma - 1.0))


def sersic_profile(x, y, R_sersic, n_sersic, q_light):
    """Sersic surface brightness, normalised to 1 at the half-light ellipse (numpy)."""
    R = np.sqrt(q_light * x**2 + y**2 / q_light)
    b = sersic_bn(n_sersic)
    return np.exp(-b * ((R / R_sersic) ** (1.0 / n_sersic) - 1.0))

