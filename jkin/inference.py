"""Joint NumPyro inference of the 13 lens-galaxy parameters: models, blind MAP start, NUTS.

    from jkin import inference as inf
    model = inf.joint_model                      # or kinematics_model / lensing_model
    kw = dict(kin_data=kin, lens_data=lens, emulator=Emulator.load())
    result = inf.fit(model, kw, seed=0)          # MAP from prior draws, then NUTS
    result.idata.to_netcdf("posterior.nc")

Models. ``kinematics_model``, ``lensing_model`` and ``joint_model`` share the sample sites of
the lens galaxy (``galaxy_params``) by name, so a joint posterior is literally the product of
the two likelihoods under one prior. The lens-only nuisance parameters (external shear, source,
amplitudes) live in ``lensing_model``. All 13 parameters are sampled in every mode; those a
data set does not constrain (e.g. beta_z in a lensing-only fit) return their prior.

Priors (``Priors``; every one can be replaced by passing a numpyro distribution under the
site's name in ``Priors(overrides={...})``):

=================  =========================================================================
site               prior
=================  =========================================================================
theta_E, gamma,    uniform on the emulator's training space (``jkin.conventions``)
q_mass, q_light,
n_sersic, beta_z
R_sersic           ``R_sersic = theta_E * R_sersic_frac``, ``R_sersic_frac ~ U(0.5, 1)``: the
                   coupled bound of the training space, without a likelihood cliff
inclination        ``i_min(q_mass, q_light) + (90 deg - i_min) * inclination_frac``,
                   ``inclination_frac ~ U(0, 1)``; i_min = arccos(min q) + 2 deg as in training
phi [deg]          ``phi = atan2(phi_vec[1], phi_vec[0]) / 2`` with ``phi_vec ~ N(0, I_2)``
                   times a ring factor exp(-(|phi_vec| - 1)^2 / (2 * 0.1^2)) (no funnel at 0):
                   uniform in (-90, 90], no wrap-around edge for NUTS (phi is defined mod 180);
                   ``fit`` stores its draws on the 180-deg branch around their circular mean
                   (``phi_branch``), so a posterior near +-90 deg is not split in two
x_c, y_c [arcsec]  uniform in ``centre +- centre_half_width`` (default (0, 0) +- 0.5")
D_dt, D_d [Mpc]    uniform in ``[D_dt_range]``, ``[D_d_range]`` (default 0.5-2x the fiducial
                   distances of the emulator, 1443-5773 and 608-2431 Mpc), independent;
                   sampled as ``log_D_ratio`` = ln(D_d / D_dt) (``DistanceRatio``, its
                   marginal under the box) and ``D_dt_frac`` ~ U(0, 1), the CDF of D_dt given
                   the ratio (``distances``): the kinematics fix the ratio, the delays D_dt.
                   An override of ``D_dt`` or ``D_d`` samples both directly
gamma1/2_ext,      offsets from ``source_reference``, the shear and source position that best
x_src, y_src       fit the measured image positions for the sampled EPL (linear least squares
                   in the image-plane metric): ``gamma1_ext = gamma1_ref + gamma1_ext_offset``,
                   offset ~ U(+-``shear_max``) (0.2); ``x_src = x_ref + x_src_offset``, offset
                   ~ U(+-``source_half_width``) (1"), likewise y. Shear and source then move
                   with the mass model: sampled directly, they are pinned to micro-arcseconds
                   by a quad's images along a curved valley (a banana with slope and q_mass
                   that stalled NUTS). An override of ``gamma1_ext``/``gamma2_ext`` or
                   ``x_src``/``y_src`` samples those directly.
R_sersic_src       uniform in ``R_sersic_src_range`` (0.02-1")
n_sersic_src       uniform in ``n_sersic_src_range`` (0.5-6)
amp_light, amp_src log-uniform over ``amplitude_decades`` (+-3) around a scale measured on the
amp_ps             image (``amplitude_scales``)
=================  =========================================================================

Every uniform prior is a ``ProbitUniform``: the uniform density, sampled through
z = Phi^-1((x - low) / (high - low)), whose prior is exactly N(0, 1) (see its docstring).

Custom priors must keep the emulator inside its training space (``jkin.conventions``): under
tracing the emulator does not check its inputs, and outside the space it extrapolates.

Inference (``fit``): a blind start (``find_map``: ``n_starts`` draws from the prior; with
imaging, the mass, shear and source position of 32 draws are first fitted to the image positions
and delays and the amplitudes solved by least squares, and the draws that then best fit the
image go on), each start optimised by L-BFGS on the exact gradient in numpyro's unconstrained
space and again in coordinates whitened by its Laplace approximation, the best kept; then NUTS
with several chains started from the Laplace approximation at the MAP, whose inverse Hessian
also seeds the dense mass matrix. With imaging everything runs in
float64 (``x64``). Returns an arviz InferenceData with derived quantities
(``derived_quantities``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import threading
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import (AffineTransform, ComposeTransform,
                                              ParameterFreeTransform, biject_to)
from numpyro.infer import MCMC, NUTS, hmc_util
from numpyro.infer.util import ParamInfo, constrain_fn, potential_energy

from jkin import conventions as cv
from jkin import kinematics as kin
from jkin import lensing as lens

__all__ = [
    "Priors", "GALAXY_SITES", "galaxy_params", "kinematics_model", "lensing_model",
    "joint_model", "amplitude_scales", "find_map", "run_nuts", "fit", "FitResult",
    "derived_quantities", "mass_within", "MODELS", "float32_emulator", "chain_method_for",
    "map_imaging_chi2", "ProbitUniform", "pooled_mass_matrix", "MASS_MATRICES", "Potential",
    "laplace", "DistanceRatio", "distances", "distance_latents", "with_distance_latents",
    "EdgeUniform", "edge_priors", "CurveShift", "curve_shifts", "curve_sites",
]

#: The 13 parameters of the paper's Tables 1-2, in ``jkin.kinematics.THETA_NAMES`` order.
GALAXY_SITES = kin.THETA_NAMES
#: Width of the ring that keeps the phi 2-vector's norm near 1 (see ``galaxy_params``).
PHI_RING_WIDTH = 0.1
#: Lens-only nuisance parameters of ``lensing_model`` (default ``LensModelConfig``).
LENS_NUISANCE = ("gamma1_ext_offset", "gamma2_ext_offset", "x_src_offset", "y_src_offset",
                 "amp_light", "amp_src", "R_sersic_src", "n_sersic_src", "amp_ps")
#: The sites of the image-position stage of the blind start besides the galaxy's.
_POSITION_SITES = ("gamma1_ext_offset", "gamma2_ext_offset", "x_src_offset", "y_src_offset",
                   "gamma1_ext", "gamma2_ext", "x_src", "y_src")


class _ProbitInterval(constraints._Interval):
    """An interval reached from the real line through the standard normal CDF (registered
    below with ``biject_to``)."""


class _NormalCDF(ParameterFreeTransform):
    """x -> Phi(x). Parameter-free: numpyro registers every Transform subclass as a pytree,
    and before 0.22 only ``ParameterFreeTransform`` gave it the ``tree_flatten`` that needs
    (a plain ``Transform`` subclass failed at import under numpyro 0.21)."""

    domain = constraints.real
    codomain = constraints.unit_interval

    def __call__(self, x):
        return jax.scipy.special.ndtr(x)

    def _inverse(self, y):
        return jax.scipy.special.ndtri(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return -0.5 * x**2 - 0.5 * math.log(2.0 * math.pi)


@biject_to.register(_ProbitInterval)
def _probit_bijection(constraint):
    scale = constraint.upper_bound - constraint.lower_bound
    return ComposeTransform([_NormalCDF(), AffineTransform(
        constraint.lower_bound, scale, domain=constraints.unit_interval)])


class ProbitUniform(dist.Uniform):
    """``Uniform(low, high)`` whose unconstrained coordinate (for MAP, Laplace and NUTS) is
    z = Phi^-1((x - low) / (high - low)) instead of numpyro's logit: the prior in z is then
    exactly N(0, 1), and a posterior piled against a bound (R_sersic at theta_E, beta_z at its
    edge) keeps a Gaussian tail in z where the logit gives an exponential one, reaching ~5 units
    past the bulk, which NUTS crossed in long trees and few effective draws. The density in x is
    the uniform's: only the parametrisation of the sampler changes."""

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return _ProbitInterval(self.low, self.high)


class _EdgeInterval(constraints._Interval):
    """An interval reached from the real line through the quantile function of N(loc, scale)
    truncated to it (registered below with ``biject_to``); ``scale`` < 0 mirrors the map so
    that the bound nearer to ``loc`` is the upper one in w = (x - loc) / scale."""

    def __init__(self, lower_bound, upper_bound, loc, scale):
        super().__init__(lower_bound, upper_bound)
        self.loc, self.scale = loc, scale

    def tree_flatten(self):
        return ((self.lower_bound, self.upper_bound, self.loc, self.scale),
                (("lower_bound", "upper_bound", "loc", "scale"), {}))


@biject_to.register(_EdgeInterval)
def _edge_bijection(c):
    # z -> p = Phi(z) -> p' = Phi(a) + (Phi(b) - Phi(a)) p -> w = Phi^-1(p') -> x = loc + scale w,
    # [a, b] the interval in w. The far bound is at a (its Phi(a) underflows harmlessly to 0)
    # and the near one at b, a few units up, so Phi(b) < 1 and p' never rounds to 1
    w_lo, w_hi = sorted(((c.lower_bound - c.loc) / c.scale, (c.upper_bound - c.loc) / c.scale))
    pa, pb = (jax.scipy.special.ndtr(v) for v in (w_lo, w_hi))
    return ComposeTransform([
        _NormalCDF(), AffineTransform(pa, pb - pa, domain=constraints.unit_interval),
        _NormalCDF().inv,
        AffineTransform(c.loc, c.scale, domain=constraints.interval(w_lo, w_hi))])


class EdgeUniform(dist.Uniform):
    """``Uniform(low, high)`` whose sampler coordinate is z = Phi^-1(G(x)), G the CDF of
    N(``loc``, |``scale``|) truncated to [low, high]: for a posterior pressed against a bound.

    Through the prior's probit (``ProbitUniform``) such a posterior sits where the map
    compresses, and a ridge straight in x (R_sersic against n_sersic in the lens light) bends in
    z, its local width changing several-fold along it (recovery system 8: 0.07-0.24 of its
    global width) - which a dense mass matrix cannot follow. With G close to the posterior's
    marginal CDF, the marginal in z is close to N(0, 1) and the ridge stays straight through its
    bulk. The density in x is the uniform's: only the parametrisation changes. ``run_nuts``
    fits loc and scale to warm-up draws (``edge_priors``); ``scale`` < 0 as in
    ``_EdgeInterval``."""

    pytree_aux_fields = ("loc", "scale")

    def __init__(self, low, high, loc, scale, *, validate_args=None):
        if not low < loc < high or scale == 0:
            raise ValueError(f"EdgeUniform: need low < loc < high and scale != 0; got low={low}, "
                             f"high={high}, loc={loc}, scale={scale}")
        self.loc, self.scale = float(loc), float(scale)
        super().__init__(low, high, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return _EdgeInterval(self.low, self.high, self.loc, self.scale)


class DistanceRatio(dist.Distribution):
    """The prior of s = ln(D_d / D_dt) when D_dt ~ U(a1, b1) and D_d ~ U(a2, b2) independently
    (``D_dt_range``, ``D_d_range`` [Mpc]): on [ln(a2 / b1), ln(b2 / a1)],

        p(s) = e^s (hi(s)^2 - lo(s)^2) / (2 (b1 - a1) (b2 - a2)),
        lo(s) = max(a1, a2 e^-s), hi(s) = min(b1, b2 e^-s)

    (the D_dt for which D_d = D_dt e^s stays inside its range), sampled through the probit as a
    ``ProbitUniform``. With D_dt given s drawn by the inverse of its conditional CDF (``p(D_dt |
    s)`` proportional to D_dt on [lo(s), hi(s)]: ``distances``), the pair (D_dt, D_d) is exactly
    uniform on the box. The kinematics fix s alone (v_rms scales with sqrt(D_dt / D_d)), the
    delays D_dt."""

    pytree_aux_fields = ("box",)

    def __init__(self, D_dt_range, D_d_range, *, validate_args=None):
        self.box = tuple(float(v) for v in (*D_dt_range, *D_d_range))
        super().__init__(batch_shape=(), event_shape=(), validate_args=validate_args)

    @property
    def low(self):
        a1, b1, a2, b2 = self.box
        return math.log(a2 / b1)

    @property
    def high(self):
        a1, b1, a2, b2 = self.box
        return math.log(b2 / a1)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return _ProbitInterval(self.low, self.high)

    def sample(self, key, sample_shape=()):
        a1, b1, a2, b2 = self.box
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        d_dt = jax.random.uniform(k1, shape, minval=a1, maxval=b1)
        d_d = jax.random.uniform(k2, shape, minval=a2, maxval=b2)
        return jnp.log(d_d / d_dt)

    def log_prob(self, value):
        a1, b1, a2, b2 = self.box
        lo, hi = _d_dt_bounds(value, self.box)
        return value + jnp.log(hi**2 - lo**2) - math.log(2.0 * (b1 - a1) * (b2 - a2))


def _d_dt_bounds(s, box):
    """[lo(s), hi(s)]: the D_dt inside its range whose D_d = D_dt e^s is inside its own."""
    a1, b1, a2, b2 = box
    e = jnp.exp(-s)
    return jnp.maximum(a1, a2 * e), jnp.minimum(b1, b2 * e)


def distances(log_ratio, frac, box):
    """(D_dt, D_d) [Mpc] from s = ``log_ratio`` = ln(D_d / D_dt) and ``frac`` in (0, 1), the
    conditional CDF of D_dt given s (see ``DistanceRatio``); ``box`` = (*D_dt_range,
    *D_d_range). JAX, traceable."""
    lo, hi = _d_dt_bounds(log_ratio, box)
    d_dt = jnp.sqrt(lo**2 + (hi**2 - lo**2) * frac)
    return d_dt, d_dt * jnp.exp(log_ratio)


def distance_latents(D_dt, D_d, box):
    """The inverse of ``distances``: (ln(D_d / D_dt), D_dt_frac)."""
    s = jnp.log(jnp.asarray(D_d) / jnp.asarray(D_dt))
    lo, hi = _d_dt_bounds(s, box)
    return s, (jnp.asarray(D_dt) ** 2 - lo**2) / (hi**2 - lo**2)


@dataclasses.dataclass(frozen=True)
class Priors:
    """Prior settings of the models (see the module docstring for the full table)."""

    centre: tuple[float, float] = (0.0, 0.0)
    centre_half_width: float = 0.5
    D_dt_range: tuple[float, float] = (0.5 * cv.D_DT, 2.0 * cv.D_DT)
    D_d_range: tuple[float, float] = (0.5 * cv.D_D, 2.0 * cv.D_D)
    shear_max: float = 0.2
    source_half_width: float = 1.0
    R_sersic_src_range: tuple[float, float] = (0.02, 1.0)
    n_sersic_src_range: tuple[float, float] = (0.5, 6.0)
    amplitude_decades: float = 3.0
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("D_dt_range", "D_d_range", "R_sersic_src_range", "n_sersic_src_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"priors.{name} = ({lo}, {hi}) must satisfy 0 < low < high")
        for name in ("centre_half_width", "shear_max", "source_half_width", "amplitude_decades"):
            if not getattr(self, name) > 0:
                raise ValueError(f"priors.{name} = {getattr(self, name)} must be > 0")
        known = (set(GALAXY_SITES) | set(LENS_NUISANCE)
                 | {"R_sersic_frac", "inclination_frac", "log_D_ratio", "D_dt_frac",
                    "x_src", "y_src", "gamma1_ext",
                    "gamma2_ext"})
        for name in self.overrides:
            if name not in known:
                raise ValueError(f"priors.overrides: unknown site {name!r}; known: {sorted(known)}")

    @property
    def distance_box(self) -> tuple[float, float, float, float]:
        """(*D_dt_range, *D_d_range) [Mpc], as ``distances`` takes it."""
        return tuple(float(v) for v in (*self.D_dt_range, *self.D_d_range))

    def site(self, name, default):
        """numpyro.sample of ``name`` from its override or ``default``."""
        return numpyro.sample(name, self.overrides.get(name, default))


def _bounds(name):
    return cv._FIXED_BOUNDS[name]


def _inclination_min(q_mass, q_light):
    # jkin.conventions.inclination_min, in JAX
    return jnp.degrees(jnp.arccos(jnp.minimum(q_mass, q_light))) + cv.INCLINATION_MARGIN


def _r_sersic(theta_E, frac):
    return theta_E * frac


def _inclination(q_mass, q_light, frac):
    i_min = _inclination_min(q_mass, q_light)
    return i_min + (90.0 - i_min) * frac


def _phi(vec):
    return 0.5 * jnp.rad2deg(jnp.arctan2(vec[..., 1], vec[..., 0]))


def phi_branch(phi, centre=None) -> np.ndarray:
    """Draws of the position angle phi [deg] (defined mod 180) on the branch
    (c - 90, c + 90] around ``centre`` c, by default their circular mean (of 2 phi).

    The sampler returns phi in (-90, 90]; a posterior near +-90 deg is then split between
    the two ends, and its mean, sd, intervals and R-hat are wrong (two chains at 89 and -89
    deg read as far apart). On the branch they are those of the distribution on the circle,
    for any posterior narrower than 180 deg. Idempotent; draws far from the wrap keep their
    values."""
    phi = np.asarray(phi, dtype=float)
    if centre is None:
        z = np.exp(2j * np.deg2rad(phi)).mean()
        centre = 0.5 * np.rad2deg(np.angle(z)) if abs(z) > 0 else 0.0
    return phi + 180.0 * np.floor((centre + 90.0 - phi) / 180.0)


def galaxy_params(priors: Priors = Priors(), *, distance_ratio: bool = True) -> dict:
    """Sample the 13 shared parameters (NumPyro sites named as ``GALAXY_SITES``).

    ``distance_ratio``: the box prior on (D_dt, D_d) sampled through ``log_D_ratio`` =
    ln(D_d / D_dt) and ``D_dt_frac`` (for data that fix the ratio: kinematics, joint), or, if
    False, through D_dt and D_d themselves (lensing alone: D_dt fixed by the delays, D_d free,
    which in the ratio's coordinates is a curved ridge; the demo's lensing-only chains ended at
    R-hat 1.18 in D_d with it, 1.03 without)."""
    p = {}
    for name in ("theta_E", "gamma", "q_mass", "q_light"):
        p[name] = priors.site(name, ProbitUniform(*_bounds(name)))
    if "R_sersic" in priors.overrides:
        p["R_sersic"] = priors.site("R_sersic", None)
    else:
        frac = priors.site("R_sersic_frac", ProbitUniform(*cv.R_SERSIC_FRACTION))
        p["R_sersic"] = numpyro.deterministic("R_sersic", _r_sersic(p["theta_E"], frac))
    for name in ("n_sersic", "beta_z"):
        p[name] = priors.site(name, ProbitUniform(*_bounds(name)))
    if "inclination" in priors.overrides:
        p["inclination"] = priors.site("inclination", None)
    else:
        v = priors.site("inclination_frac", ProbitUniform(0.0, 1.0))
        p["inclination"] = numpyro.deterministic(
            "inclination", _inclination(p["q_mass"], p["q_light"], v))
    if "phi" in priors.overrides:
        p["phi"] = priors.site("phi", None)
    else:
        vec = numpyro.sample("phi_vec", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        # keep |phi_vec| near 1: the likelihood fixes only the angle, and with a bare N(0, I)
        # the posterior is a funnel (the MAP falls to |phi_vec| -> 0, where the angle's width
        # does too; NUTS then stalls, as it did on the lensing posterior: R-hat 1.4-3)
        r = jnp.sqrt(jnp.sum(vec**2) + 1e-12)
        numpyro.factor("phi_ring", -0.5 * ((r - 1.0) / PHI_RING_WIDTH) ** 2)
        p["phi"] = numpyro.deterministic("phi", _phi(vec))
    for name, c in zip(("x_c", "y_c"), priors.centre):
        w = priors.centre_half_width
        p[name] = priors.site(name, ProbitUniform(c - w, c + w))
    if not distance_ratio or "D_dt" in priors.overrides or "D_d" in priors.overrides:
        p["D_dt"] = priors.site("D_dt", ProbitUniform(*priors.D_dt_range))
        p["D_d"] = priors.site("D_d", ProbitUniform(*priors.D_d_range))
        return p
    # the box prior on (D_dt, D_d) sampled as (s = ln(D_d / D_dt), D_dt given s): the kinematics
    # pin s to a few per cent while the delays may leave D_dt wide, and in independently
    # probit-mapped D_dt, D_d that ridge curved and narrowed towards the box's edge (recovery
    # system 3: 40-55 leapfrog steps per draw, trees at the depth limit)
    s = priors.site("log_D_ratio", DistanceRatio(priors.D_dt_range, priors.D_d_range))
    frac = priors.site("D_dt_frac", ProbitUniform(0.0, 1.0))
    d_dt, d_d = distances(s, frac, priors.distance_box)
    p["D_dt"] = numpyro.deterministic("D_dt", d_dt)
    p["D_d"] = numpyro.deterministic("D_d", d_d)
    return p


def kinematics_model(kin_data, emulator, priors: Priors = Priors(), theta=None):
    """Binned IFU v_rms (``jkin.data.KinematicData``) given the galaxy parameters.

    The observation site ``vrms`` is a multivariate normal with the data's covariance."""
    theta = galaxy_params(priors) if theta is None else theta
    model = kin.predict_binned_vrms(theta, kin_data, emulator)
    numpyro.deterministic("vrms_model", model)
    numpyro.sample("vrms", dist.MultivariateNormal(model, scale_tril=jnp.asarray(
        kin_data.cov_cholesky, dtype=model.dtype)), obs=jnp.asarray(kin_data.vrms, model.dtype))
    return theta


def amplitude_scales(lens_data) -> dict:
    """Typical amplitudes measured on the image: the scales of the log-uniform priors.

    Surface brightness [electron/s/arcsec^2] from the 99th-percentile pixel, point-source flux
    [electron/s] from the brightest pixel over the PSF's peak fraction."""
    img = np.asarray(lens_data.image)
    area = lens_data.pixel_scale ** 2
    peak = float(np.max(img))
    sb = float(np.percentile(img, 99)) / area
    ps = peak / float(np.max(lens_data.psf_kernel))
    if not (sb > 0 and ps > 0):
        raise ValueError("lens_data.image: no positive pixels; cannot set amplitude priors")
    return {"amp_light": sb, "amp_src": sb, "amp_ps": ps}


def _image_plane_lsq(design, b, w):
    """argmin_u sum_i (b_i - D_i u)^T W_i (b_i - D_i u) for 2-vectors b_i, D_i (2 x k)."""
    dtw = jnp.einsum("...ji,...jk->...ik", design, w)
    lhs = jnp.sum(jnp.einsum("...ij,...jk->...ik", dtw, design), axis=0)
    return jnp.linalg.solve(lhs, jnp.sum(jnp.einsum("...ij,...j->...i", dtw, b), axis=0))


def _magnification_metric(jac):
    m = jnp.linalg.inv(jac)
    return jnp.einsum("...ki,...kj->...ij", m, m)


def source_reference(p, lens_data, *, with_shear: bool = False):
    """The source position (and, ``with_shear``, the external shear) that best fit the measured
    image positions theta_i for the mass model ``p``, to first order in the image-plane offsets.

    The lens equation beta = theta_i - alpha_EPL(theta_i) - S(theta_i) (gamma1, gamma2) is
    linear in the source beta and the shear, so both follow from weighted least squares on the
    back-traced images, with weights W_i = M_i^T M_i (M_i = A_i^-1 the magnification tensor at
    image i: an offset in the source plane moves image i by M_i times it, so the highly
    magnified images pin the solution hardest; with the shear, M_i is evaluated at the
    unweighted solution's shear, so that the result depends on the EPL parameters alone).
    Returns (x_ref, y_ref), or (x_ref, y_ref, gamma1_ref, gamma2_ref) ``with_shear``; these are
    the centres of the source-position (and shear) priors."""
    xy = jnp.stack([jnp.asarray(lens_data.x_image), jnp.asarray(lens_data.y_image)], axis=-1)
    eye = jnp.broadcast_to(jnp.eye(2, dtype=xy.dtype), xy.shape[:-1] + (2, 2))
    if not with_shear:
        beta_i, jac = lens._residual_jacobian(xy, lens._mass_kwargs(p), (0.0, 0.0))
        u = _image_plane_lsq(eye, beta_i, _magnification_metric(jac))
        return u[0], u[1]
    zero = jnp.zeros((), xy.dtype)
    epl = dict(p, gamma1_ext=zero, gamma2_ext=zero)
    b, jac_epl = lens._residual_jacobian(xy, lens._mass_kwargs(epl), (0.0, 0.0))
    x, y = xy[..., 0], xy[..., 1]
    # shear deflection = S (gamma1, gamma2), S = [[x, y], [-y, x]] (shear centred at the origin)
    shear = jnp.stack([jnp.stack([x, y], -1), jnp.stack([-y, x], -1)], -2)
    design = jnp.concatenate([shear, eye], axis=-1)  # unknowns (gamma1, gamma2, beta_x, beta_y)
    u0 = _image_plane_lsq(design, b, eye)
    g1, g2 = u0[0], u0[1]
    jac = jac_epl - jnp.stack([jnp.stack([g1, g2]), jnp.stack([g2, -g1])])
    u = _image_plane_lsq(design, b, _magnification_metric(jac))
    return u[2], u[3], u[0], u[1]


def _shear_and_source_position(priors, p, lens_data) -> dict:
    """The external shear and source-position sites (shared by the lensing models); ``p``: the
    galaxy parameters. Both are sampled as offsets from ``source_reference`` (the shear only
    when neither of its components is overridden; an overridden site is sampled directly)."""
    g, w = priors.shear_max, priors.source_half_width
    v = dict(p)
    shear_names = ("gamma1_ext", "gamma2_ext")
    direct = any(n in priors.overrides for n in shear_names)
    for name in shear_names:
        key = name if direct else name + "_offset"
        v[key] = priors.site(key, ProbitUniform(-g, g))
    for name in ("x_src", "y_src"):
        if name in priors.overrides:
            v[name] = priors.site(name, None)
        else:
            v[name + "_offset"] = priors.site(name + "_offset", ProbitUniform(-w, w))
    for name, value in _lens_deterministics(v, lens_data).items():
        v[name] = numpyro.deterministic(name, value)
    return {k: v[k] for k in shear_names + ("x_src", "y_src")}


def _log_uniform(scale, decades):
    return dist.LogUniform(scale * 10.0 ** -decades, scale * 10.0 ** decades)


def lensing_model(lens_data, priors: Priors = Priors(), theta=None, *,
                  config: lens.LensModelConfig = lens.DEFAULT_CONFIG, scales=None):
    """Imaging + time delays (``jkin.lensing_data.LensingData``) given the galaxy parameters.

    Adds the nuisance sites ``LENS_NUISANCE``; the log-likelihood enters as factor ``lensing``.
    ``scales``: ``amplitude_scales(lens_data)`` (computed if None; pass it when tracing)."""
    if config != lens.DEFAULT_CONFIG and (not config.share_light_center
                                          or not config.share_light_phi
                                          or config.elliptical_source):
        raise ValueError("lensing_model supports LensModelConfig with shared light centre and "
                         "angle and a circular source; write your own model for other choices")
    theta = galaxy_params(priors, distance_ratio=False) if theta is None else theta
    scales = amplitude_scales(lens_data) if scales is None else scales
    p = dict(theta, **_shear_and_source_position(priors, theta, lens_data))
    d = priors.amplitude_decades
    p["amp_light"] = priors.site("amp_light", _log_uniform(scales["amp_light"], d))
    p["amp_src"] = priors.site("amp_src", _log_uniform(scales["amp_src"], d))
    p["R_sersic_src"] = priors.site("R_sersic_src", ProbitUniform(*priors.R_sersic_src_range))
    p["n_sersic_src"] = priors.site("n_sersic_src", ProbitUniform(*priors.n_sersic_src_range))
    ps = _log_uniform(scales["amp_ps"], d)
    if config.point_source_amplitudes == "free":
        ps = ps.expand([lens_data.n_images]).to_event(1)
    p["amp_ps"] = priors.site("amp_ps", ps)
    numpyro.factor("lensing", _lensing_log_likelihood(p, lens_data, config))
    return p


#: compiled once per data shape: numpyro evaluates models eagerly when it initialises them and
#: converts values (``initialize_model``, ``log_density``), and the imaging likelihood op by
#: op took ~16 s per evaluation; inside an outer jit this one is inlined
_lensing_log_likelihood = jax.jit(lens.lensing_log_likelihood, static_argnums=2)


def joint_model(kin_data, lens_data, emulator, priors: Priors = Priors(), *,
                config: lens.LensModelConfig = lens.DEFAULT_CONFIG, scales=None):
    """Kinematics x lensing under one prior: the product of the two likelihoods."""
    theta = galaxy_params(priors)
    kinematics_model(kin_data, emulator, priors, theta)
    lensing_model(lens_data, priors, theta, config=config, scales=scales)
    return theta


#: mode name -> (model, required data keys)
MODELS = {
    "kinematics": (kinematics_model, ("kin_data", "emulator")),
    "lensing": (lensing_model, ("lens_data",)),
    "joint": (joint_model, ("kin_data", "lens_data", "emulator")),
}


# --------------------------------------------------------------------------------------------
# blind start


def _latent_values(model, kwargs, key) -> dict:
    tr = handlers.trace(handlers.seed(model, key)).get_trace(**kwargs)
    return {k: s["value"] for k, s in tr.items()
            if s["type"] == "sample" and not s["is_observed"]}


@jax.jit
def _amplitude_basis(params, lens_data):
    """The model image of each linear component with unit amplitude (lens light, source, each
    quasar image), stacked: (2 + n_images, n_pix, n_pix)."""
    n_img = lens_data.x_image.shape[0]
    units = jnp.eye(2 + n_img, dtype=jnp.result_type(float))

    def render(u):
        q = dict(params, amp_light=u[0], amp_src=u[1], amp_ps=u[2:])
        return lens.lens_image_model(q, lens_data)

    return jax.vmap(render)(units)


def _prior_draws(model, kwargs, seed, n) -> list[dict]:
    """``n`` draws of the latent sites from the prior (one compiled, vectorised trace: an eager
    trace would evaluate the imaging likelihood op by op, ~20 s each)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), n)
    stacked = jax.jit(jax.vmap(lambda k: _latent_values(model, kwargs, k)))(keys)
    return [{k: np.asarray(v[i]) for k, v in stacked.items()} for i in range(n)]


def _lensing_start(values, lens_data, priors, scales):
    """The amplitudes of one start by non-negative weighted least squares on the image (each
    component rendered with unit amplitude), kept inside their priors."""
    from scipy.optimize import nnls

    p = {k: np.asarray(v) for k, v in values.items()}
    full = dict(p)
    full.update({k: float(v) for k, v in _galaxy_deterministics(p, priors).items()})
    full.update({k: float(v) for k, v in _lens_deterministics(full, lens_data).items()})
    dtype = jnp.result_type(float)
    full = {k: jnp.asarray(v, dtype) for k, v in full.items()
            if k not in ("amp_light", "amp_src", "amp_ps")}
    basis = np.asarray(_amplitude_basis(full, lens_data), dtype=float)
    basis = basis.reshape(len(basis), -1).T
    w = (np.asarray(lens_data.mask) / np.asarray(lens_data.noise_map)).ravel()
    a, _ = nnls(basis * w[:, None], np.asarray(lens_data.image).ravel() * w)
    d = priors.amplitude_decades
    clip = lambda v, s: float(np.clip(v, s * 10 ** -d * 1.01, s * 10 ** d * 0.99))  # noqa: E731
    p["amp_light"] = clip(a[0], scales["amp_light"])
    p["amp_src"] = clip(a[1], scales["amp_src"])
    p["amp_ps"] = np.array([clip(v, scales["amp_ps"]) for v in a[2:]])
    return p


def _latent_distributions(model, kwargs) -> dict:
    trace = handlers.trace(handlers.seed(model, jax.random.PRNGKey(0))).get_trace(**kwargs)
    return {k: s["fn"] for k, s in trace.items()
            if s["type"] == "sample" and not s["is_observed"]}


def _potential(model, kwargs, with_transforms=False):
    """numpyro's potential energy of ``model`` (its data closed over), the post-processing
    (constrained values and deterministic sites; compiled), an initial point (uniform in (-2, 2)
    in unconstrained space) and, ``with_transforms``, the latent sites' bijections.

    Without numpyro's ``initialize_model``, which runs the model eagerly, op by op, twice (the
    recovery's joint model: 14 s on this CPU, mostly compiling ~330 single operations): the
    latent sites' distributions come out of one trace under ``jax.jit`` (1.4 s), where the
    likelihood, which they do not depend on, is never compiled."""
    sites = jax.jit(functools.partial(_latent_distributions, model, kwargs))()
    transforms = {k: biject_to(d.support) for k, d in sites.items()}
    keys = jax.random.split(jax.random.PRNGKey(0), len(sites))
    z0 = {k: jax.random.uniform(key, transforms[k].inverse_shape(sites[k].shape()),
                                minval=-2.0, maxval=2.0)
          for k, key in zip(sorted(sites), keys)}
    potential_fn = functools.partial(potential_energy, model, (), kwargs)
    postprocess_fn = jax.jit(functools.partial(constrain_fn, model, (), kwargs,
                                               return_deterministic=True))
    out = (potential_fn, postprocess_fn, z0)
    return out + (transforms,) if with_transforms else out


def image_position_model(lens_data, priors: Priors = Priors(), *, sigma: float = 0.003,
                         image_plane: bool = True):
    """Stage 1 of the blind lensing start: the mass, shear, source position and D_dt fitted to
    the measured image positions and delays only (no image rendering, no lens-equation solve).
    Position term: the image-plane offsets A_i^-1 (beta_i - beta) implied by the back-traced
    images beta_i (A_i the lens-equation Jacobian at image i), with error ``sigma`` arcsec, or,
    with ``image_plane=False``, the source-plane offsets beta_i - beta themselves (smoother far
    from the solution: the blind start runs that first); delays at the measured positions."""
    theta = galaxy_params(priors, distance_ratio=False)
    p = dict(theta, **_shear_and_source_position(priors, theta, lens_data))
    xy = jnp.stack([jnp.asarray(lens_data.x_image), jnp.asarray(lens_data.y_image)], axis=-1)
    f, jac = lens._residual_jacobian(xy, lens._mass_kwargs(p), (p["x_src"], p["y_src"]))
    offset = lens._solve2(jac, f) if image_plane else f  # image-plane offset to first order
    numpyro.factor("positions", -0.5 * jnp.sum(offset**2) / sigma**2)
    x, y = xy[:, 0], xy[:, 1]
    dt = lens.time_delays(x, y, p, p["x_src"], p["y_src"])
    r = (dt[1:] - jnp.asarray(lens_data.time_delays)[1:]) / jnp.asarray(
        lens_data.time_delay_errors)[1:]
    numpyro.factor("time_delays", -0.5 * jnp.sum(r * r))


def _adam(potential_fn, z0, n_steps, learning_rate, desc, progress):
    """Minimise ``potential_fn`` from a batch of unconstrained starts (leading axis) at once;
    returns each start's best iterate, its potential at the start and at that iterate."""
    from tqdm.auto import tqdm

    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, n_steps, alpha=0.05))
    batched = jax.vmap(jax.value_and_grad(potential_fn))

    @jax.jit
    def step(z, state, z_best, u_best):
        u, g = batched(z)
        u = jnp.where(jnp.isfinite(u), u, jnp.inf)
        better = u < u_best
        z_best = jax.tree.map(
            lambda b, a: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), z_best, z)
        u_best = jnp.where(better, u, u_best)
        g = jax.tree.map(lambda a: jnp.where(jnp.isfinite(a), a, 0.0), g)
        upd, state = opt.update(g, state, z)
        return optax.apply_updates(z, upd), state, z_best, u_best, u

    dtype = jnp.result_type(float)
    # strongly typed leaves: weakly typed ones would change type after one step and recompile
    z0 = jax.tree.map(lambda a: jnp.asarray(a, dtype), z0)
    n = len(jax.tree.leaves(z0)[0])
    z, state, z_best, u_best = z0, opt.init(z0), z0, jnp.full((n,), jnp.inf, dtype)
    u_first = None
    for _ in tqdm(range(n_steps), desc=desc, unit="step", disable=not progress):
        z, state, z_best, u_best, u = step(z, state, z_best, u_best)
        u_first = u if u_first is None else u_first
    _, _, _, _, u_last = step(z, state, z_best, u_best)  # the potential at the final z
    better = u_last < u_best
    z_best = jax.tree.map(
        lambda b, a: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), z_best, z)
    return z_best, np.asarray(u_first), np.asarray(jnp.minimum(u_last, u_best))


def _stack(trees):
    dtype = jnp.result_type(float)
    return jax.tree.map(lambda *a: jnp.stack([jnp.asarray(x, dtype) for x in a]), *trees)


def _use_x64(kwargs, x64):
    """float64 by default whenever there is imaging: its chi^2 valley is too narrow for float32
    (measured: L-BFGS in float32 stops at -log p = 7.2e3 on the demo quad, float64 goes on to
    2.54e3, below the truth's 2.55e3)."""
    # default: always float64, so that one process never mixes the two modes (JAX's eager op
    # cache then fails with "expected f64, got f32" on arrays made in float32 mode)
    return True if x64 is None else bool(x64)


class _Float32Emulator:
    """``emulator`` evaluated in float32, its outputs cast back to the input dtype."""

    _jkin_float32 = True

    def __init__(self, emulator):
        self.emulator = emulator
        if hasattr(emulator, "vrms2"):  # keep the signed <v^2> (kin.emulator_v2)
            self.vrms2 = self._vrms2

    @staticmethod
    def _args(params, x, y):
        return (jnp.result_type(params, x, y),
                *(jnp.asarray(a, jnp.float32) for a in (params, x, y)))

    def _vrms2(self, params, x, y):
        dtype, *args = self._args(params, x, y)
        return tuple(a.astype(dtype) for a in self.emulator.vrms2(*args))

    def __call__(self, params, x, y):
        dtype, *args = self._args(params, x, y)
        return self.emulator(*args).astype(dtype)


def float32_emulator(emulator):
    """The emulator evaluated in float32 whatever the input dtype, its output cast back: in a
    float64 (imaging) fit the network's own error (~0.5 km/s) dwarfs float32 rounding, and the
    network is 2-3x cheaper in float32 on a CPU. Keeps the emulator's ``vrms2`` (signed <v^2>)."""
    if getattr(emulator, "_jkin_float32", False):
        return emulator
    return _Float32Emulator(emulator)


def _x64_kwargs(kwargs, use_x64):
    if not use_x64:
        return kwargs
    kwargs = dict(kwargs)
    if kwargs.get("emulator") is not None:
        kwargs["emulator"] = float32_emulator(kwargs["emulator"])
    if kwargs.get("kin_data") is not None:
        # device arrays made in float32 mode (e.g. by an earlier float32 fit) trip JAX's eager
        # op cache inside enable_x64 ("expected f64, got f32"); host copies do not
        kwargs["kin_data"] = jax.tree.map(np.asarray, kwargs["kin_data"])
    return kwargs


class _FlatPotential:
    """The potential on the flattened unconstrained latents, compiled once per potential
    function: value and gradient, and the exact Hessian (forward over reverse mode), which the
    MAP polish and NUTS need up to three times.

    The Hessian is built column by column from one compiled Hessian-vector product (the
    recovery's joint potential, 26 parameters, on this CPU: 24 s to trace and compile, 26
    products 0.6 s) rather than by ``jax.hessian``, whose batched program took 35 s to compile
    for 0.35 s per call; the columns are the same up to rounding."""

    def __init__(self, potential_fn, z_like):
        flat, self.unravel = ravel_pytree(z_like)
        self.dtype = flat.dtype
        self.treedef = jax.tree.structure(z_like)

        def u(x):
            return potential_fn(self.unravel(x))

        self.value_and_grad = jax.jit(jax.value_and_grad(u))
        self._hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(u), (x,), (v,))[1])

    def hessian(self, x):
        x = jnp.asarray(x, self.dtype)
        eye = jnp.eye(x.size, dtype=self.dtype)
        return jnp.stack([self._hvp(x, eye[i]) for i in range(x.size)], axis=1)


_FLAT_POTENTIALS: list = []  # (potential_fn, _FlatPotential), the few most recent


def _flat_potential(potential_fn, z_like) -> _FlatPotential:
    dtype = ravel_pytree(z_like)[0].dtype
    for k, (fn, fp) in enumerate(_FLAT_POTENTIALS):
        if fn is potential_fn and fp.treedef == jax.tree.structure(z_like) and fp.dtype == dtype:
            _FLAT_POTENTIALS.insert(0, _FLAT_POTENTIALS.pop(k))
            return fp
    fp = _FlatPotential(potential_fn, z_like)
    _FLAT_POTENTIALS.insert(0, (potential_fn, fp))
    del _FLAT_POTENTIALS[4:]
    return fp


class _Objective:
    """A ``_FlatPotential`` as a scipy objective (optionally whitened: x = x0 + L y, gradient
    L^T g, in numpy around the compiled value and gradient: a whitened copy of the potential
    would be a second compilation, 10 s for the demo's joint one): non-finite values become a
    large finite penalty so that the line search backs off, and the best finite point ever
    evaluated is remembered."""

    def __init__(self, flat_potential: _FlatPotential, whitening=None):
        self.fp = flat_potential
        self.dtype = flat_potential.dtype
        self.whitening = None if whitening is None else \
            tuple(np.asarray(a, dtype=float) for a in whitening)
        self.reset()

    def reset(self):
        self.best_u, self.best_x, self.n_eval = np.inf, None, 0

    def __call__(self, x):
        x_flat = x if self.whitening is None else self.whitening[0] + self.whitening[1] @ x
        u, g = self.fp.value_and_grad(jnp.asarray(x_flat, self.dtype))
        u, g = float(u), np.asarray(g, dtype=float)
        if self.whitening is not None:
            g = self.whitening[1].T @ g
        self.n_eval += 1
        if not (np.isfinite(u) and np.all(np.isfinite(g))):
            return 1e30, np.zeros_like(g)
        if u < self.best_u:
            self.best_u, self.best_x = u, np.array(x, dtype=float)
        return u, g


def _lbfgs(objective: _Objective, x0, max_iter):
    """L-BFGS-B (scipy) from the flat point ``x0``; returns (best x, its potential, potential at
    x0), x None (and potentials inf) if no finite point was met."""
    from scipy.optimize import minimize

    x0 = np.asarray(x0, dtype=float)
    objective.reset()
    u0, _ = objective(x0)
    if max_iter > 0 and np.isfinite(objective.best_u):
        minimize(objective, x0, jac=True, method="L-BFGS-B",
                 options=dict(maxiter=int(max_iter), maxcor=30, ftol=1e-12, gtol=1e-8))
    if objective.best_x is None:
        return None, np.inf, np.inf
    return objective.best_x, objective.best_u, u0 if u0 < 1e30 else np.inf


def find_map(model, kwargs: dict, *, seed: int = 0, n_starts: int = 8, n_steps: int = 1000,
             position_steps: int = 1000, position_learning_rate: float = 0.05,
             position_starts: int = 32, priors: Priors | None = None, x64: bool | None = None,
             init: Mapping | None = None, chi2_limit: float | None = None, restarts: int = 1,
             progress: bool = True) -> dict:
    """Blind MAP: ``n_starts`` prior draws, each optimised by L-BFGS; returns the best.

    Each start runs at most ``n_steps`` L-BFGS iterations (scipy's L-BFGS-B on the exact JAX
    gradient in numpyro's unconstrained space; a curved, narrow valley such as the imaging
    chi^2's is where quasi-Newton steps beat Adam by orders of magnitude), then L-BFGS again in
    coordinates whitened by its Laplace approximation (``_polish``), and the best polished start
    is kept. With lensing data,
    ``position_starts`` prior draws are first fitted to the image positions and delays
    (``image_position_model``: cheap, no image rendering; all at once by Adam, then each by
    L-BFGS), the best half get amplitudes by least squares, and the ``n_starts`` of those with
    the best full posterior go on (at both selections, different optima before repeats).
    ``x64`` (default: True with lensing data) runs everything in float64 but the emulator's
    network (``float32_emulator``). ``init``: constrained
    values of (some of) the latent sites, e.g. the ``values`` of an earlier fit's MAP, as the one
    start (the sites it lacks drawn from the prior; no image-position stage): a joint fit started
    at the lensing-only MAP only has to move the kinematic parameters.

    With lensing data the image's chi^2 per unmasked pixel at the MAP is checked (~1.00 at a
    good fit): above ``chi2_limit`` the search was probably caught in a wrong optimum (recovery
    system 2 with 2 starts: 3.58, gamma 1.62 against 1.84), and up to ``restarts`` further
    rounds of ``n_starts`` blind starts (new seeds; ``init`` is not reused) run until one is
    below it; the best log density of all rounds is kept.

    Returns a dict: ``z`` (unconstrained latent values of the best start; ``x`` the same
    flattened, as ``potential``'s input), ``values`` (constrained), ``log_density_start`` /
    ``log_density`` of every start (before / after the optimisation) of the kept round,
    ``best``, ``potential_fn``, ``postprocess_fn``,
    ``transforms`` (site -> bijection onto its support), ``potential`` (the ``Potential`` these
    come from: ``potential.x(values)`` is the MAP as its flat vector), ``wall_s`` (all rounds);
    with lensing data also ``imaging_chi2_per_pixel`` (of the kept MAP), ``restarts`` (rounds
    run after the first) and ``round_log_density`` (each round's best)."""
    use = _use_x64(kwargs, x64)
    t0 = time.perf_counter()
    pot = Potential(model, kwargs, x64=use)  # one compilation for all rounds
    with jax.enable_x64(use):
        kw = pot.kwargs
        args = (n_steps, position_steps, position_learning_rate, position_starts, priors)
        potentials = (pot.potential_fn, pot.postprocess_fn, None, pot.transforms)
        m = _find_map(model, kw, seed, n_starts, *args, init, progress, potentials)
        lens_data = kwargs.get("lens_data")
        if lens_data is None:
            m["potential"] = pot
            return m
        m["imaging_chi2_per_pixel"] = map_imaging_chi2(m["values"], lens_data)
        rounds = [float(m["log_density"][m["best"]])]
        while (chi2_limit is not None and m["imaging_chi2_per_pixel"] > chi2_limit
               and len(rounds) <= restarts):
            if progress:
                print(f"MAP: image chi^2 per pixel {m['imaging_chi2_per_pixel']:.2f} > "
                      f"{chi2_limit}: {n_starts} new blind starts")
            new = _find_map(model, kw, seed + 7919 * len(rounds), n_starts, *args, None,
                            progress, potentials)
            new["imaging_chi2_per_pixel"] = map_imaging_chi2(new["values"], lens_data)
            rounds.append(float(new["log_density"][new["best"]]))
            if rounds[-1] > max(rounds[:-1]):
                m = new
    m.update(restarts=len(rounds) - 1, round_log_density=rounds,
             wall_s=time.perf_counter() - t0, potential=pot)
    return m


def map_imaging_chi2(values: Mapping, lens_data) -> float:
    """The image's chi^2 per unmasked pixel (float64, ``lensing.imaging_chi2``) at ``values``,
    e.g. a MAP's (sites of other sizes than the model's parameters, such as a pixelated source,
    are ignored)."""
    with jax.enable_x64(True):
        chi2, n = lens.imaging_chi2({k: np.asarray(v, float) for k, v in values.items()
                                     if np.size(v) <= 16}, jax.tree.map(np.asarray, lens_data))
    return float(chi2) / n


def _find_map(model, kwargs, seed, n_starts, n_steps, position_steps, position_learning_rate,
              position_starts, priors, init, progress, potentials):
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    priors = kwargs.get("priors", Priors()) if priors is None else priors
    potential_fn, postprocess_fn, _, transforms = potentials
    lens_data = kwargs.get("lens_data")
    if init is not None:
        draw = _prior_draws(model, kwargs, seed, 1)[0]
        init = with_distance_latents(init, priors)
        unknown = set(init) - set(draw) - {"R_sersic", "inclination", "phi", "D_dt", "D_d"}
        known = {k: np.asarray(v) for k, v in init.items() if k in draw}
        draw.update(known)
        if not known:
            raise ValueError(f"init: none of its sites {sorted(unknown)} is a latent site of "
                             f"the model ({sorted(draw)})")
        lens_data, n_starts, position_starts = None, 1, 0  # no lensing stage: start from init
        draws = [draw]
    n_draws = max(n_starts, position_starts) if lens_data is not None else n_starts
    if init is None:
        draws = _prior_draws(model, kwargs, seed, n_draws)
    if lens_data is not None and "gamma" not in priors.overrides:
        # the image positions do not constrain the slope: spread it evenly over its prior so
        # that the image-based selection below can pick the one the arcs want
        lo, hi = _bounds("gamma")
        for k, d in enumerate(np.random.default_rng(seed).permutation(n_draws)):
            draws[k]["gamma"] = np.asarray(lo + (hi - lo) * (d + 0.5) / n_draws)
    if lens_data is not None:
        draws = _lensing_starts(kwargs, draws, potential_fn, transforms, n_starts, priors,
                                position_steps, position_learning_rate, progress)
    fp = _flat_potential(potential_fn, _unconstrain(transforms, draws[0]))
    objective = _Objective(fp)
    zs, u_start, u_final = [], [], []
    bar = tqdm(draws, desc="MAP (L-BFGS)", unit="start", disable=not progress)
    for v in bar:
        z = _unconstrain(transforms, v)
        x, u, u0 = _lbfgs(objective, ravel_pytree(z)[0], n_steps)
        zs.append(z if x is None else fp.unravel(jnp.asarray(x, fp.dtype)))
        u_start.append(u0)
        u_final.append(u)
        bar.set_postfix(best_log_density=f"{-min(u_final):.6g}")
    # every start is polished before they are compared: with the extended light in float32
    # (LensModelConfig.light_precision) plain L-BFGS stalls where the light's rounding noise
    # defeats its line search, far from the mode and at values that do not rank the starts
    # (demo quad, 4 starts: stalled at log density -23530 to -49150, float64 light reaches
    # -2532 to -2624); whitened, each start then converges in ~1 s (all four to -2532.55)
    bar = tqdm(range(len(zs)), desc="MAP (polish)", unit="start",
               disable=not progress or len(zs) == 1)
    for k in bar:
        if np.isfinite(u_final[k]):  # a start that met no finite point stays out
            zs[k], u_final[k] = _polish(potential_fn, zs[k], u_final[k], n_steps,
                                        progress and len(zs) == 1)
        bar.set_postfix(best_log_density=f"{-min(u_final):.6g}")
    u_final = np.asarray(u_final)
    best = int(np.argmin(u_final))
    return {"z": zs[best], "x": np.asarray(ravel_pytree(zs[best])[0]),
            "values": postprocess_fn(zs[best]), "best": best,
            "log_density_start": -np.asarray(u_start), "log_density": -u_final,
            "potential_fn": potential_fn, "postprocess_fn": postprocess_fn,
            "transforms": transforms, "wall_s": time.perf_counter() - t0}


def _polish(potential_fn, z, u, n_steps, progress, rounds: int = 4):
    """L-BFGS again in coordinates whitened by the Laplace approximation at the current best
    (z = z_best + L y, L L^T = H^-1): the imaging posterior's curvature spans ~11 decades, which
    plain L-BFGS resolves only slowly; whitened, it converges in tens of iterations. Up to
    ``rounds`` rounds, until one gains < 0.01 in log density (a start far from the mode needs
    3-4: demo quad, from a stall at -49150, 2 rounds reached -2580.8, 4 the mode's -2532.55)."""
    fp = _flat_potential(potential_fn, z)
    flat = np.asarray(ravel_pytree(z)[0], dtype=float)
    for k in range(rounds):
        cov = laplace(potential_fn, fp.unravel(jnp.asarray(flat, fp.dtype)))
        if cov is None:
            break
        L = np.linalg.cholesky(cov)
        y, u_new, _ = _lbfgs(_Objective(fp, (flat, L)), np.zeros_like(flat),
                             max(n_steps // 4, 1))
        if y is None or not u_new < u:
            break
        flat, u, gain = flat + L @ y, u_new, u - u_new
        if progress:
            print(f"MAP polish {k + 1}: log density {-u:.6g}")
        if gain < 1e-2:
            break
    return fp.unravel(jnp.asarray(flat, fp.dtype)), u


def _position_starts(lens_data, draws, priors, position_steps, learning_rate, progress):
    """The image-position stage of the blind lensing start (``image_position_model``) from each
    of ``draws``: Adam on the source-plane offsets and then on the image-plane ones (all starts
    at once), then L-BFGS per start on the image-plane potential. Returns the starts' flat
    unconstrained values, their potentials, the unravel function and the sites' transforms.

    Adam at these rates leaves every start short of a position optimum; L-BFGS takes each to
    one. Held-out recovery system 10 (theta_E 0.52", a fold whose bright pair lies 0.04"
    apart): after Adam the 32 starts' potentials were 60-5400 against 22 at the truth and no
    blind MAP reached the mode (16 full starts: imaging chi^2 per pixel >= 2.6); L-BFGS from the
    same 32 points ended on seven optima, seven of the starts at 20.05, 0.001" from the true
    theta_E."""
    from tqdm.auto import tqdm

    pos_kw = dict(lens_data=lens_data, priors=priors, sigma=0.005, image_plane=False)
    pos_pot, _, _, pos_tr = _potential(image_position_model, pos_kw, True)
    # the position stage samples D_dt and D_d themselves (galaxy_params' distance_ratio=False)
    z_pos = _stack([_unconstrain(pos_tr, with_distance_latents(d, priors)) for d in draws])
    z_pos, _, _ = _adam(pos_pot, z_pos, position_steps, learning_rate, "MAP (source plane)",
                        progress)
    pos_kw = dict(pos_kw, sigma=0.003, image_plane=True)
    pos_pot, _, _ = _potential(image_position_model, pos_kw)
    z_pos, _, u_pos = _adam(pos_pot, z_pos, position_steps // 2, learning_rate / 5,
                            "MAP (image plane)", progress)
    fp = _flat_potential(pos_pot, jax.tree.map(lambda a: a[0], z_pos))
    objective = _Objective(fp)
    flats = np.array(jax.vmap(lambda z: ravel_pytree(z)[0])(z_pos), dtype=float)
    u_pos = np.array(u_pos, dtype=float)
    for k in tqdm(range(len(flats)), desc="MAP (image plane, L-BFGS)", unit="start",
                  disable=not progress):
        x, u, _ = _lbfgs(objective, flats[k], position_steps)
        if x is not None and u < u_pos[k]:
            flats[k], u_pos[k] = x, u
    return flats, u_pos, fp.unravel, pos_tr


def _distinct_first(order, flats, tol: float = 1e-3) -> list:
    """``order`` (indices into ``flats``) with every point that repeats an earlier one (all
    coordinates within ``tol``) moved to the end, in order: optimised starts fall on a few
    optima, and the next stage should get as many different ones as there are."""
    kept, repeats = [], []
    for k in order:
        same = any(np.max(np.abs(flats[k] - flats[j])) < tol for j in kept)
        (repeats if same else kept).append(int(k))
    return kept + repeats


def _lensing_starts(kwargs, draws, potential_fn, transforms, n_starts, priors, position_steps,
                    position_learning_rate, progress):
    """Stage 1 of the blind lensing start: image positions and delays, then amplitudes."""
    lens_data = kwargs["lens_data"]
    scales = kwargs.get("scales") or amplitude_scales(lens_data)
    flats, u_pos, unravel, pos_tr = _position_starts(lens_data, draws, priors, position_steps,
                                                     position_learning_rate, progress)
    # the half that fits the positions best (different optima first) get amplitudes by least
    # squares; the n_starts of those with the best full posterior (again different ones first)
    # go on
    order = _distinct_first(np.argsort(u_pos), flats)[:max(n_starts, len(draws) // 2)]
    fitted = []
    for k in order:
        zk = unravel(jnp.asarray(flats[k]))
        v = dict(draws[k])
        v.update({name: np.asarray(pos_tr[name](val)) for name, val in zk.items()})
        v = with_distance_latents({n: a for n, a in v.items()
                                   if n not in ("log_D_ratio", "D_dt_frac")}, priors)
        fitted.append(_lensing_start(v, lens_data, priors, scales))
    z_fit = [_unconstrain(transforms, v) for v in fitted]
    fp = _flat_potential(potential_fn, z_fit[0])  # compiled once, reused by L-BFGS
    x_fit = [np.asarray(ravel_pytree(z)[0], dtype=float) for z in z_fit]
    u_fit = np.array([float(fp.value_and_grad(jnp.asarray(x, fp.dtype))[0]) for x in x_fit])
    u_fit = np.where(np.isfinite(u_fit), u_fit, np.inf)
    return [fitted[k] for k in _distinct_first(np.argsort(u_fit), x_fit)[:n_starts]]


def with_distance_latents(values: Mapping, priors: Priors | None = None) -> dict:
    """``values`` with the distances in both parametrisations (``galaxy_params``'
    ``distance_ratio``): ``log_D_ratio`` and ``D_dt_frac`` added from ``D_dt`` and ``D_d``
    where it lacks them (e.g. a truth, or a lensing-only fit's MAP), or the reverse;
    ``priors``: the ranges (default ``Priors()``)."""
    out = dict(values)
    has_d = "D_dt" in out and "D_d" in out
    has_ratio = "log_D_ratio" in out and "D_dt_frac" in out
    if has_d == has_ratio:
        return out
    box = (Priors() if priors is None else priors).distance_box
    with jax.enable_x64(True):
        if has_d:
            s, frac = distance_latents(np.asarray(out["D_dt"], float),
                                       np.asarray(out["D_d"], float), box)
            out["log_D_ratio"], out["D_dt_frac"] = np.asarray(s), np.asarray(frac)
        else:
            d_dt, d_d = distances(np.asarray(out["log_D_ratio"], float),
                                  np.asarray(out["D_dt_frac"], float), box)
            out["D_dt"], out["D_d"] = np.asarray(d_dt), np.asarray(d_d)
    return out


def _unconstrain(transforms, values) -> dict:
    """Unconstrained latents from constrained ``values`` (extra keys ignored) by the sites'
    bijections: ``numpyro.infer.util.unconstrain_fn`` would re-run the model eagerly."""
    dtype = jnp.result_type(float)
    return {k: t.inv(jnp.asarray(values[k], dtype)) for k, t in transforms.items()}


def laplace(potential_fn, z, min_curvature: float = 1e-3) -> np.ndarray | None:
    """Inverse Hessian of the potential at ``z`` (flattened unconstrained order), or None
    when the Hessian is not finite. The Hessian is exact (forward over reverse mode). Where it is
    not positive definite (a start short of the optimum), its eigenvalues are replaced by their
    absolute values, floored at ``min_curvature``: the result still scales each direction by
    its curvature, which is what NUTS needs from a mass matrix. The floor is absolute, not
    relative to the largest eigenvalue: a lensing posterior spans ten decades of curvature
    (theta_E known to 1e-5, beta_z only through its prior), and a relative floor would squeeze
    the prior-only directions."""
    flat = ravel_pytree(z)[0]
    h = np.asarray(_flat_potential(potential_fn, z).hessian(flat), dtype=float)
    h = 0.5 * (h + h.T)
    if not np.all(np.isfinite(h)):
        return None
    lam, vec = np.linalg.eigh(h)
    lam = np.maximum(np.abs(lam), min_curvature)
    cov = (vec / lam) @ vec.T
    return 0.5 * (cov + cov.T)


class Potential:
    """A model's potential energy U(x) = -log p(latents | data) - log|det J| as a function of
    one flat vector ``x`` of numpyro's unconstrained latents: what the MAP search and NUTS work
    on here, for an external optimiser or sampler, a Laplace approximation or a gradient scan.

        pot = inf.Potential(inf.joint_model, kwargs)        # or fitting.config_potential(cfg)
        x = pot.x(fit_map)                                   # constrained values -> flat x
        u, g = pot.value_and_grad(x)
        cov = pot.laplace(x)                                 # inverse Hessian (flat x order)
        draws = pot.values(x + L @ eps)                      # back to the 13 parameters

    ``x`` is the sites in sorted name order, each raveled (``jax.flatten_util.ravel_pytree`` of
    the latent dict); ``labels`` names each element. Every uniform prior is a ``ProbitUniform``,
    so a site's prior with its Jacobian is N(0, 1) in x. ``x64`` as in ``find_map`` (default
    float64, the emulator's network in float32): the methods switch JAX's float64 mode on
    themselves; ``fn``, the traceable x -> U, must be traced inside ``jax.enable_x64(pot.x64)``.
    The value and gradient, and the Hessian-vector product the Hessian is built from, are
    compiled once per ``Potential`` (the recovery's joint potential on this CPU: ~12 and ~24 s)."""

    def __init__(self, model: Callable, kwargs: dict, *, x64: bool | None = None):
        self.x64 = _use_x64(kwargs, x64)
        with jax.enable_x64(self.x64):
            kw = _x64_kwargs(kwargs, self.x64)
            self.potential_fn, self.postprocess_fn, z0, self.transforms = _potential(
                model, kw, True)
            self._flat = _flat_potential(self.potential_fn, z0)
            #: numpyro's initial point (uniform in (-2, 2) in x), a valid point of the support
            self.x_init = np.asarray(ravel_pytree(z0)[0])
        #: the model and the keyword arguments it is evaluated with (``x64``: the emulator
        #: wrapped by ``float32_emulator``), e.g. for numpyro's ``log_density`` per site
        self.model, self.kwargs = model, kw
        self._shapes = {k: np.shape(z0[k]) for k in sorted(z0)}
        self._lens_data = kwargs.get("lens_data")
        self.labels = [k if not shape else f"{k}[{i}]" for k, shape in self._shapes.items()
                       for i in range(int(np.prod(shape)) if shape else 1)]

    @property
    def size(self) -> int:
        return len(self.labels)

    def fn(self, x):
        """U(x), traceable (jit, grad, vmap), inside ``jax.enable_x64(self.x64)``."""
        return self.potential_fn(self.latents(x))

    def latents(self, x) -> dict:
        """``x`` as numpyro's dict of unconstrained latents (traceable)."""
        return self._flat.unravel(x)

    def _check(self, x):
        x = jnp.asarray(x, self._flat.dtype)
        if x.shape != (self.size,):
            raise ValueError(f"x: expected shape ({self.size},) (the sites {self.labels}), got "
                             f"{x.shape}")
        return x

    def __call__(self, x) -> float:
        with jax.enable_x64(self.x64):
            return float(self._flat.value_and_grad(self._check(x))[0])

    def value_and_grad(self, x) -> tuple[float, np.ndarray]:
        with jax.enable_x64(self.x64):
            u, g = self._flat.value_and_grad(self._check(x))
            return float(u), np.asarray(g)

    def hessian(self, x) -> np.ndarray:
        """The exact Hessian of U (forward over reverse mode)."""
        with jax.enable_x64(self.x64):
            return np.asarray(self._flat.hessian(self._check(x)))

    def laplace(self, x, min_curvature: float = 1e-3) -> np.ndarray | None:
        """``laplace`` at ``x``: the inverse Hessian (eigenvalues' absolute values, floored)."""
        with jax.enable_x64(self.x64):
            return laplace(self.potential_fn, self._flat.unravel(self._check(x)), min_curvature)

    def x(self, values: Mapping) -> np.ndarray:
        """Flat unconstrained x from constrained ``values`` of every latent site (extra keys,
        e.g. the deterministic R_sersic or a fit's derived masses, are ignored). Leading batch
        axes are kept: values of shape (n, ...) per site give x of shape (n, size)."""
        values = with_distance_latents(values, self.kwargs.get("priors"))
        missing = [k for k in self._shapes if k not in values]
        if missing:
            raise ValueError(f"values: missing latent site(s) {missing} (the model's: "
                             f"{list(self._shapes)})")
        parts, batch = [], None
        with jax.enable_x64(self.x64):
            for k, shape in self._shapes.items():
                v = jnp.asarray(values[k], self._flat.dtype)
                b = v.shape[: v.ndim - len(shape)]
                if v.shape[v.ndim - len(shape):] != shape or (batch is not None and b != batch):
                    raise ValueError(f"values[{k!r}]: shape {v.shape}, expected (..., *{shape}) "
                                     f"with the same leading axes as the other sites")
                batch = b
                parts.append(self.transforms[k].inv(v).reshape(b + (-1,)))
            return np.asarray(jnp.concatenate(parts, axis=-1))

    def values(self, x) -> dict:
        """Constrained values at ``x`` (leading batch axes kept): the latent sites and the
        deterministic R_sersic, inclination, phi (and with imaging the shear and source
        position), without re-running the model."""
        post = _cheap_postprocess(self.transforms, self._lens_data, self.kwargs.get("priors"))
        with jax.enable_x64(self.x64):
            x = jnp.asarray(x, self._flat.dtype)
            if x.shape[-1:] != (self.size,):
                raise ValueError(f"x: last axis must have length {self.size}, got {x.shape}")
            one = lambda v: post(self._flat.unravel(v))  # noqa: E731
            for _ in range(x.ndim - 1):
                one = jax.vmap(one)
            return {k: np.asarray(v) for k, v in one(x).items()}


def chain_method_for(num_chains: int) -> str:
    """numpyro's chain method for ``chain_method="auto"``: on an accelerator "vectorized" (one
    batched computation); on a CPU "parallel" when there is a host device per chain (see
    ``numpyro.set_host_device_count``; ``jkin fit`` sets one per core), else "sequential".
    On a CPU a vmapped batch of chains costs as much per step as the chains one by one (joint
    potential, 2 chains: 183 against 91 ms) and each iteration lasts as long as the longest
    tree, so "vectorized" is the slowest: recovery system 2's joint posterior, 30 + 30 draws, 2
    cores: vectorized 106 s, sequential 75 s, parallel 47 s (benchmarks/sampler_speed.py).
    But "parallel" holds on to memory as it runs: ~150 MB per minute of sampling on the demo's
    joint posterior (~37 kB per leapfrog step), never returned, against none for "sequential"
    and "vectorized" (benchmarks/sampler_memory.py; jax 0.10.2, numpyro 0.22.0). For runs of an
    hour or more pass ``chain_method="sequential"``."""
    if jax.default_backend() != "cpu":
        return "vectorized"
    return "parallel" if num_chains > 1 and jax.local_device_count() >= num_chains \
        else "sequential"


MASS_MATRICES = ("auto", "laplace", "pooled", "adapt")


def run_nuts(model, kwargs: dict, map_result: dict, *, seed: int = 0, num_warmup: int = 300,
             num_samples: int = 500, num_chains: int = 2, max_tree_depth: int = 8,
             target_accept: float = 0.8, chain_method: str = "auto", mass_matrix: str = "auto",
             edge_reparam: bool = True, curve_reparam: bool = True, x64: bool | None = None,
             progress: bool = True):
    """NUTS (dense mass matrix) with chains started from the Laplace approximation at the MAP.

    The chains start at independent draws of N(z_MAP, H^-1) in unconstrained space (the MAP
    itself if the Hessian is not finite). ``mass_matrix`` chooses the (dense) mass matrix:
    - "laplace": H^-1, fixed; warm-up adapts the step size only.
    - "pooled": H^-1 for the first half of the warm-up (a quarter adapting the step size, a
      quarter of draws), then re-estimated once from those draws, pooled over all chains
      (``pooled_mass_matrix``), for the second half (step size re-adapted) and the sampling.
      It corrects the directions in which the posterior is wider than its curvature at the
      MAP says: a parameter against its prior bound (R_sersic near theta_E), a distance known
      to 20% only.
    - "adapt": numpyro's windowed re-estimation, per chain, starting from H^-1. From a few
      hundred correlated warm-up draws of a ~25-parameter lensing posterior it made chains
      stall (demo quad, 150 + 150 draws: max R-hat 2.3 with it, 1.2 laplace); on the broad,
      curved kinematics-only posterior it helped (demo: max R-hat 1.59 laplace, 1.10 adapted).
    - "auto" (default): "pooled" with imaging, "adapt" without.
    Under a fixed matrix ("laplace", both stages of "pooled") the step size is adapted over the
    whole warm-up (``one_adaptation_window``).
    ``edge_reparam`` (with "pooled"): between the two stages, every uniform parameter whose
    first-stage draws press on a prior bound (``edge_priors``) is given a sampler coordinate
    fitted to those draws (``EdgeUniform``; same prior density), the draws, the chains' states
    and the Laplace matrix carried over; the sites and their (loc, scale) are in
    ``mcmc.jkin_edge_sites``.
    ``curve_reparam`` (with "pooled"): then, every scalar latent whose first-stage draws bend
    around another's (``curve_shifts``) is sampled as its offset from a cubic in the other
    (``CurveShift``; unit Jacobian, same density), carried over likewise; in
    ``mcmc.jkin_curve_sites``.
    ``target_accept``: the mean acceptance probability the step size is adapted to (numpyro's
    0.8). At 0.8 the joint fits of recovery systems 3, 6, 9 had 5-15 divergences in 600 draws,
    in the tails of the lensing parameters; system 6 at 0.9 had none for 10% more leapfrog
    steps, but the demo's lensing and joint fits needed 1.8x more (trees one doubling deeper).
    ``chain_method``: numpyro's, or "auto" (``chain_method_for``).
    ``x64`` as in ``find_map`` (default: float64 with lensing data)."""
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"mass_matrix = {mass_matrix!r} must be one of {MASS_MATRICES}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept = {target_accept} must be in (0, 1)")
    use = _use_x64(kwargs, x64)
    if chain_method == "auto":
        chain_method = chain_method_for(num_chains)
    if mass_matrix == "auto":
        mass_matrix = "pooled" if "lens_data" in kwargs else "adapt"
    with _callback_x64(use and progress and chain_method == "parallel"), jax.enable_x64(use):
        return _run_nuts(model, _x64_kwargs(kwargs, use), map_result, seed, num_warmup,
                         num_samples, num_chains, max_tree_depth, target_accept,
                         chain_method, mass_matrix, edge_reparam, curve_reparam, progress)


@contextlib.contextmanager
def _callback_x64(on: bool):
    """float64 as the process-wide default while ``on``. ``jax.enable_x64`` sets it for the
    calling thread only, and numpyro's progress bars of parallel chains report from XLA's
    callback threads: there a Python int became int32 against the int64 traced, and the run
    failed ("Incorrect output dtype for return value #0: Expected: int64, Actual: int32").
    Enter it outside ``jax.enable_x64``, which would hide the process-wide value."""
    if not on or jax.config.jax_enable_x64:
        yield
        return
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)


# numpyro adapts the step size in Stan's windows even when the mass matrix is fixed: at the end
# of each middle window it restarts dual averaging, so the final step size is the average of the
# last window alone (10% of the warm-up: 5 iterations of the 50 of "pooled"'s first stage). On a
# 25-d Gaussian with its exact mass matrix, 50 warm-up iterations, 8 chains: final step sizes
# 0.34-1.03 (acceptance 0.59-0.96) with the windows, 0.55-0.68 (0.83-0.89) in one window. In the
# recovery's joint fits the two chains of a fit ended 2x apart in leapfrog steps per draw (7 and
# 15, 31 and 63), and parallel chains wait for the slower one.
_adaptation = threading.local()


_numpyro_adaptation_schedule = hmc_util.build_adaptation_schedule


def _build_adaptation_schedule(num_steps):
    if getattr(_adaptation, "one_window", False):
        return [hmc_util.AdaptWindow(0, num_steps - 1)]
    return _numpyro_adaptation_schedule(num_steps)


# warmup_adapter looks the schedule up in its module at each call; outside
# one_adaptation_window this is numpyro's own
hmc_util.build_adaptation_schedule = _build_adaptation_schedule


@contextlib.contextmanager
def one_adaptation_window(on: bool = True):
    """Within it (in this thread), NUTS warm-ups adapt the step size by dual averaging over the
    whole warm-up, without numpyro's restarts at Stan's window ends (which only serve a mass
    matrix being adapted). For a fixed mass matrix."""
    before = getattr(_adaptation, "one_window", False)
    _adaptation.one_window = on
    try:
        yield
    finally:
        _adaptation.one_window = before


def pooled_mass_matrix(draws, laplace_cov: np.ndarray) -> np.ndarray:
    """Inverse mass matrix from warm-up ``draws`` (n x d, unconstrained, all chains pooled) and
    the Laplace covariance ``laplace_cov``: in coordinates whitened by the Laplace covariance
    (y = L^-1 z, L L^T = laplace_cov) the draws' covariance has eigenvalues lambda_k; those above
    1 are kept, the others raised to 1, and the result is mapped back. Only widening: a short
    run of correlated draws under-covers every direction, so a sample variance below the
    curvature's is noise, while one above it is a posterior wider than its Gaussian
    approximation (a tail against a prior bound, a poorly constrained distance)."""
    draws = np.asarray(draws, float)
    chol = np.linalg.cholesky(laplace_cov)
    y = np.linalg.solve(chol, (draws - draws.mean(axis=0)).T).T
    lam, vec = np.linalg.eigh(np.atleast_2d(np.cov(y, rowvar=False)))
    widened = (vec * np.maximum(lam, 1.0)) @ vec.T
    out = chol @ widened @ chol.T
    return 0.5 * (out + out.T)


def edge_priors(model, kwargs, transforms, warm, *, near: float = 3.0,
                max_width: float = 0.1) -> dict:
    """``EdgeUniform`` overrides for the ``ProbitUniform`` sites whose warm-up draws (``warm``:
    unconstrained, by site, chains first) sit against a bound: median m and half the 16-84%
    range s with s < ``max_width`` of the prior's width and m within ``near`` s of a bound. Their
    loc and scale are m and s, the sign of the scale putting the nearer bound on top (see
    ``_EdgeInterval``). Prior-dominated or interior sites are left to the probit."""
    sites = jax.jit(functools.partial(_latent_distributions, model, kwargs))()
    out = {}
    for name, d in sorted(sites.items()):
        if type(d) is not ProbitUniform or d.batch_shape or d.event_shape:
            continue
        low, high = float(d.low), float(d.high)
        x = np.asarray(transforms[name](warm[name]), float).ravel()
        q16, m, q84 = np.quantile(x, [0.16, 0.5, 0.84])
        s = 0.5 * (q84 - q16)
        if not 0 < s < max_width * (high - low) or not low < m < high:
            continue
        if min(m - low, high - m) < near * s:
            out[name] = EdgeUniform(low, high, m, s if high - m < m - low else -s)
    return out


class _replace_priors(numpyro.primitives.Messenger):
    """The model with the distributions of some latent sites replaced ({name: distribution}),
    for any model (a ``Priors`` override needs one of jkin's)."""

    def __init__(self, fn, dists: Mapping):
        self.dists = dict(dists)
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in self.dists:
            msg["fn"] = self.dists[msg["name"]]


def _recoordinate(old, new, names, z) -> dict:
    """Unconstrained latents ``z`` moved from the bijections ``old`` to ``new`` for ``names``."""
    return {k: new[k].inv(old[k](v)) if k in names else v for k, v in z.items()}


@dataclasses.dataclass(frozen=True)
class CurveShift:
    """A sampler coordinate that follows a curved degeneracy: the unconstrained latent of the
    target site is sampled as y = z - f(z_source), f the cubic ``coef`` (highest power first)
    fitted to warm-up draws of the target against the ``source`` site, continued by its tangent
    outside the draws' range [``lo``, ``hi``] of the source. A shear along the source axis: unit
    Jacobian, so the density in z is unchanged. ``gain``: the fraction of the target's variance
    left by a straight line that the cubic explains."""

    source: str
    coef: tuple
    lo: float
    hi: float
    gain: float

    def __call__(self, t):
        c = jnp.asarray(self.coef)
        tc = jnp.clip(t, self.lo, self.hi)
        return jnp.polyval(c, tc) + jnp.polyval(jnp.polyder(c), tc) * (t - tc)


def curve_shifts(warm: Mapping, *, min_gain: float = 0.2, degree: int = 3,
                 min_draws: int = 100, exclude: Iterable[str] = ()) -> dict:
    """``CurveShift``s for the scalar latents whose warm-up draws (``warm``: unconstrained, by
    site, chains first) bend around another's: for each ordered pair (source, target) the cubic
    of the target in the source is fitted by least squares; where it explains at least
    ``min_gain`` of the variance a straight line leaves (a straight degeneracy is the dense mass
    matrix's), the pair is kept, best first, a site being the target of one shift at most and
    never both a source and a target (so the shifts commute and invert exactly). Recovery
    system 7's inclination-anisotropy degeneracy: probit(beta_z) climbs to its bound as the
    inclination falls, an L in the probit coordinates (docs/inference.md).
    With fewer than ``min_draws`` draws (all chains) nothing is shifted: from the demo's 2 x 38
    first-stage draws, prior-only D_d "explained" 0.17-0.24 of the source offsets' variance,
    and the lensing-only fit so shifted ended with 44 divergences (0 in session 23's runs).
    ``exclude``: sites neither shifted nor shifted on, e.g. those no likelihood term touches
    (``prior_only_sites``): their draws follow the prior whatever the others do, and a curve
    between one and another site is noise. Recovery system 3's lensing-only fit, from 2 x 75
    draws, shifted the prior-only inclination_frac on a shear offset and beta_z on gamma (gains
    0.21-0.23) and ended with 337 divergences and R-hat 1.18."""
    exclude = set(exclude)
    x = {k: np.asarray(v, float).ravel() for k, v in warm.items()
         if np.ndim(v) == 2 and k not in exclude}
    if not x or min(v.size for v in x.values()) < min_draws:
        return {}
    x = {k: v for k, v in x.items() if np.all(np.isfinite(v)) and np.ptp(v) > 0}
    found = []
    for b, y in x.items():
        for a, t in x.items():
            if a == b:
                continue
            r1 = y - np.polyval(np.polyfit(t, y, 1), t)
            coef = np.polyfit(t, y, degree)
            gain = 1.0 - np.var(y - np.polyval(coef, t)) / np.var(r1)
            if gain >= min_gain:
                found.append((gain, a, b, coef))
    out, sources = {}, set()
    for gain, a, b, coef in sorted(found, key=lambda f: -f[0]):
        if b in out or b in sources or a in out:
            continue
        out[b] = CurveShift(a, tuple(float(c) for c in coef), float(x[a].min()),
                            float(x[a].max()), float(gain))
        sources.add(a)
    return out


def prior_only_sites(model, kwargs, z: Mapping, z_grad: Mapping) -> tuple[str, ...]:
    """The scalar ``ProbitUniform`` sites that no likelihood term depends on: at every point
    given (``z``, unconstrained latents by site, any leading axes, e.g. the chains' states, and
    ``z_grad``, the potential's gradient there) the gradient in the site equals its value, the
    gradient of its N(0, 1) prior in the probit coordinate, and nothing else. In a lensing-only
    fit: beta_z, inclination_frac, D_d; in a kinematics-only fit: D_dt_frac."""
    sites = jax.jit(functools.partial(_latent_distributions, model, kwargs))()
    out = []
    for k, d in sorted(sites.items()):
        if type(d) is not ProbitUniform or d.batch_shape or d.event_shape or k not in z:
            continue
        v, g = np.asarray(z[k], float), np.asarray(z_grad[k], float)
        if np.all(np.abs(g - v) <= 1e-6 * np.maximum(1.0, np.abs(v))):
            out.append(k)
    return tuple(out)


def _shift(shifts: Mapping, z: Mapping, sign: float) -> dict:
    """z -> y (``sign`` -1) or y -> z (+1) under ``curve_shifts``' shifts."""
    return {k: v + sign * shifts[k](z[shifts[k].source]) if k in shifts else v
            for k, v in z.items()}


def _carry(convert, potential_fn, z, cov, warm, last_z, num_chains):
    """The first stage moved into new sampler coordinates by ``convert`` (latents -> latents):
    the MAP ``z``, the Laplace covariance ``cov`` (linearised at the MAP), the draws ``warm`` and
    the chains' last states ``last_z``, with the chains' start for ``potential_fn``."""
    flat, unravel = ravel_pytree(z)
    z_new = convert(z)
    jac = np.asarray(jax.jacfwd(lambda f: ravel_pytree(convert(unravel(f)))[0])(flat))
    warm = jax.vmap(jax.vmap(convert))(warm)
    zs = last_z if num_chains > 1 else jax.tree.map(lambda a: a[None], last_z)
    zs = jax.vmap(convert)(zs)
    starts = jax.vmap(lambda v: ravel_pytree(v)[0])(zs)
    init = _start(potential_fn, z_new, np.asarray(starts).reshape(num_chains, -1))
    if num_chains == 1:
        init = jax.tree.map(lambda a: a[0], init)
        zs = jax.tree.map(lambda a: a[0], zs)
    return z_new, jac @ cov @ jac.T, warm, zs, init


def _galaxy_deterministics(v, priors: Priors | None = None) -> dict:
    """R_sersic, inclination, phi, D_dt, D_d from the reparametrised latents (JAX; as in
    galaxy_params; the distances need the ``priors``' ranges, default ``Priors()``)."""
    out = {}
    if "log_D_ratio" in v:
        box = (Priors() if priors is None else priors).distance_box
        out["D_dt"], out["D_d"] = distances(v["log_D_ratio"], v["D_dt_frac"], box)
    if "R_sersic_frac" in v:
        out["R_sersic"] = _r_sersic(v["theta_E"], v["R_sersic_frac"])
    if "inclination_frac" in v:
        out["inclination"] = _inclination(v["q_mass"], v["q_light"], v["inclination_frac"])
    if "phi_vec" in v:
        out["phi"] = _phi(v["phi_vec"])
    return out


def _lens_deterministics(v, lens_data) -> dict:
    """Shear and source position from their offsets and ``source_reference`` (JAX; as in
    ``_shear_and_source_position``); ``v`` holds the galaxy parameters."""
    out = {}
    with_shear = "gamma1_ext_offset" in v
    if not (with_shear or "x_src_offset" in v or "y_src_offset" in v):
        return out
    ref = source_reference(v, lens_data, with_shear=with_shear)
    if with_shear:
        out["gamma1_ext"] = ref[2] + v["gamma1_ext_offset"]
        out["gamma2_ext"] = ref[3] + v["gamma2_ext_offset"]
    for k, name in enumerate(("x_src", "y_src")):
        if name + "_offset" in v:
            out[name] = ref[k] + v[name + "_offset"]
    return out


def _cheap_postprocess(transforms, lens_data=None, priors=None):
    """The samples' constrained values and galaxy deterministics (and, with ``lens_data``, the
    shear and source position) without re-running the model: numpyro's default post-processing
    evaluates the whole model (the imaging likelihood included) once per draw, which took
    minutes per lensing fit."""

    def postprocess(z):
        v = {k: transforms[k](a) for k, a in z.items()}
        v.update(_galaxy_deterministics(v, priors))
        if lens_data is not None:
            v.update(_lens_deterministics(v, lens_data))
        return v

    return postprocess


def curve_sites(mcmc) -> dict:
    """``run_nuts``' curve shifts as plain data: {target: {source, coef, lo, hi, gain}}."""
    return {k: dataclasses.asdict(v) for k, v in getattr(mcmc, "jkin_curve_sites", {}).items()}


def _compose(f, g, x):
    return f(g(x))


def _start(potential_fn, z_like, draws) -> ParamInfo:
    """The chains' starting points (``draws``, flat, one row per chain) with their potential
    energies and gradients from the MAP search's compiled value and gradient: given them,
    numpyro's NUTS programs do not contain a copy of the potential for the start, which took a
    third of each program's compilation (~10 of ~30 s for the recovery's joint fits)."""
    fp = _flat_potential(potential_fn, z_like)
    x = jnp.asarray(draws, fp.dtype)
    vg = [fp.value_and_grad(row) for row in x]
    return ParamInfo(jax.vmap(fp.unravel)(x), jnp.stack([u for u, _ in vg]),
                     jax.vmap(fp.unravel)(jnp.stack([g for _, g in vg])))


def _run_nuts(model, kwargs, map_result, seed, num_warmup, num_samples, num_chains,
              max_tree_depth, target_accept, chain_method, mass_matrix, edge_reparam,
              curve_reparam, progress):
    z = map_result["z"]
    flat = ravel_pytree(z)[0]
    potential_fn = map_result["potential_fn"]
    cov = laplace(potential_fn, z)
    rng = np.random.default_rng(seed)
    if cov is not None:
        draws = rng.multivariate_normal(np.asarray(flat, float), cov, size=num_chains)
    else:
        draws = np.repeat(np.asarray(flat, float)[None], num_chains, axis=0)
    transforms = map_result.get("transforms") or _potential(model, kwargs, True)[3]
    postprocess = _cheap_postprocess(transforms, kwargs.get("lens_data"), kwargs.get("priors"))
    init = _start(potential_fn, z, draws)
    if num_chains == 1:  # numpyro takes one chain's start unbatched
        init = jax.tree.map(lambda a: a[0], init)

    # NUTS on the potential (the data closed over), not on the model: numpyro would run and
    # differentiate the whole model eagerly, op by op, to set each MCMC up (the demo's joint
    # model: ~20 s, twice per fit)
    def nuts(inverse_mass_matrix, adapt):
        return NUTS(potential_fn=potential_fn, dense_mass=True, max_tree_depth=max_tree_depth,
                    target_accept_prob=target_accept,
                    inverse_mass_matrix=None if inverse_mass_matrix is None
                    else jnp.asarray(inverse_mass_matrix, flat.dtype),
                    adapt_mass_matrix=adapt or inverse_mass_matrix is None)

    key = jax.random.PRNGKey(seed)
    first = num_warmup // 2
    edges, shifts = {}, {}
    if mass_matrix == "pooled" and cov is not None and first >= 20:
        # first half of the warm-up under the Laplace matrix: a quarter adapting the step size,
        # a quarter of draws, kept unconstrained, for the pooled estimate
        mcmc = MCMC(nuts(cov, False), num_warmup=first // 2, num_samples=first - first // 2,
                    num_chains=num_chains, chain_method=chain_method, progress_bar=progress,
                    postprocess_fn=lambda v: v)
        key, k1 = jax.random.split(key)
        with one_adaptation_window():
            mcmc.run(k1, init_params=init)
        warm = mcmc.get_samples(group_by_chain=True)
        last = mcmc.last_state
        init = ParamInfo(last.z, last.potential_energy, last.z_grad)
        edges = edge_priors(model, kwargs, transforms, warm) if edge_reparam else {}
        last_z = last.z
        if edges:
            # the sites against a bound re-mapped (EdgeUniform): the draws, the start and the
            # Laplace covariance carried into the new coordinates
            model = _replace_priors(model, edges)
            potential_fn, _, _, new = _potential(model, kwargs, True)
            convert = functools.partial(_recoordinate, transforms, new, tuple(edges))
            transforms = new
            postprocess = _cheap_postprocess(transforms, kwargs.get("lens_data"),
                                             kwargs.get("priors"))
            z, cov, warm, last_z, init = _carry(convert, potential_fn, z, cov, warm, last_z,
                                                num_chains)
        shifts = curve_shifts(warm, exclude=prior_only_sites(model, kwargs, init.z, init.z_grad)
                              ) if curve_reparam else {}
        if shifts:
            # a curved degeneracy straightened (CurveShift): the sampler's coordinates are y,
            # the model's z = y + f(y_source)
            to_z = functools.partial(_shift, shifts, sign=1.0)
            potential_fn = functools.partial(_compose, potential_fn, to_z)
            postprocess = functools.partial(_compose, postprocess, to_z)
            z, cov, warm, last_z, init = _carry(functools.partial(_shift, shifts, sign=-1.0),
                                                potential_fn, z, cov, warm, last_z, num_chains)
        flat_draws = jax.vmap(jax.vmap(lambda v: ravel_pytree(v)[0]))(warm)
        cov = pooled_mass_matrix(np.asarray(flat_draws).reshape(-1, flat.size), cov)
        num_warmup = num_warmup - first
    adapt = mass_matrix == "adapt" or cov is None
    mcmc = MCMC(nuts(cov, adapt), num_warmup=num_warmup,
                num_samples=num_samples, num_chains=num_chains, chain_method=chain_method,
                progress_bar=progress, postprocess_fn=postprocess)
    with one_adaptation_window(not adapt):
        mcmc.run(key, init_params=init, extra_fields=("diverging", "num_steps", "accept_prob"))
    # without progress bars numpyro runs the chains as one asynchronously dispatched loop: wait
    # for it here, so that timings measure the sampling
    jax.block_until_ready((mcmc.get_samples(), mcmc.get_extra_fields()))
    #: the sites re-mapped by ``edge_priors``: {name: (loc, scale)}
    mcmc.jkin_edge_sites = {k: (d.loc, d.scale) for k, d in edges.items()}
    #: the sites whose coordinate followed a curve (``curve_shifts``): {target: CurveShift}
    mcmc.jkin_curve_sites = shifts
    return mcmc


# --------------------------------------------------------------------------------------------
# derived quantities


_C_KM_S = 299792.458
_G_MPC_MSUN = 4.30091727e-9  # G [Mpc (km/s)^2 / M_sun] (IAU nominal; astropy gives the same)


def mass_within(R, theta_E, gamma, D_dt, z_lens=cv.Z_D):
    """Projected lens mass [M_sun] inside the isodensity ellipse of (intermediate-axis) radius
    ``R`` [arcsec] of a power law of slope ``gamma``: M(<theta_E) (R/theta_E)^(3-gamma), with
    M(<theta_E) = pi Sigma_crit (D_d theta_E)^2 = c^2 D_dt theta_E^2 / (4 G (1 + z_lens)).
    Depends on the distances through D_dt only."""
    arc = math.pi / 648000.0
    m_e = _C_KM_S**2 * D_dt * (theta_E * arc) ** 2 / (4.0 * _G_MPC_MSUN * (1.0 + z_lens))
    return m_e * (R / theta_E) ** (3.0 - gamma)


#: the sites ``derived_quantities`` reads
DERIVED_FROM = ("theta_E", "gamma", "D_dt", "R_sersic")


def derived_quantities(samples: Mapping, z_lens: float = cv.Z_D) -> dict:
    """log10 of the projected mass inside theta_E and inside R_sersic [M_sun] from samples
    (of the sites ``DERIVED_FROM``)."""
    tE, g, Ddt = (np.asarray(samples[k]) for k in ("theta_E", "gamma", "D_dt"))
    return {
        "log10_M_thetaE": np.log10(mass_within(tE, tE, g, Ddt, z_lens)),
        "log10_M_Rsersic": np.log10(mass_within(np.asarray(samples["R_sersic"]), tE, g, Ddt,
                                                z_lens)),
    }


# --------------------------------------------------------------------------------------------
# one call


@dataclasses.dataclass
class FitResult:
    idata: Any  # arviz.InferenceData
    map: dict
    mcmc: Any
    timings: dict

    def summary(self, var_names=GALAXY_SITES):
        import arviz as az

        # round_to="none": None still rounds
        return az.summary(self.idata, var_names=list(var_names), round_to="none")


def fit(model: Callable, kwargs: dict, *, seed: int = 0, n_starts: int = 8, map_steps: int = 500,
        num_warmup: int = 300, num_samples: int = 500, num_chains: int = 2,
        max_tree_depth: int = 8, target_accept: float = 0.8, chain_method: str = "auto",
        z_lens: float = cv.Z_D,
        position_steps: int = 1000, mass_matrix: str = "auto", edge_reparam: bool = True,
        curve_reparam: bool = True,
        x64: bool | None = None,
        init: Mapping | None = None, map_chi2_limit: float | None = None,
        map_restarts: int = 1,
        progress: bool = True) -> FitResult:
    """Blind MAP start (or L-BFGS from ``init``; with imaging, restarted above
    ``map_chi2_limit``: see ``find_map``) then NUTS; an arviz InferenceData with the 13
    parameters, the reparametrised latents, the derived masses (where the model has theta_E,
    gamma, D_dt and R_sersic) and sampler statistics."""
    import arviz as az

    t0 = time.perf_counter()
    m = find_map(model, kwargs, seed=seed, n_starts=n_starts, n_steps=map_steps,
                 position_steps=position_steps, x64=x64, init=init, chi2_limit=map_chi2_limit,
                 restarts=map_restarts, progress=progress)
    t1 = time.perf_counter()
    mcmc = run_nuts(model, kwargs, m, seed=seed, num_warmup=num_warmup, num_samples=num_samples,
                    num_chains=num_chains, max_tree_depth=max_tree_depth,
                    target_accept=target_accept, chain_method=chain_method,
                    mass_matrix=mass_matrix, edge_reparam=edge_reparam,
                    curve_reparam=curve_reparam, x64=x64,
                    progress=progress)
    t2 = time.perf_counter()
    samples = mcmc.get_samples(group_by_chain=True)
    keep = {k: np.asarray(v) for k, v in samples.items()
            if k not in ("vrms_model",) and np.asarray(v).ndim <= 3}
    if all(k in keep for k in DERIVED_FROM):  # a model of your own may lack them
        keep.update(derived_quantities(keep, z_lens))
    if "phi" in keep:
        keep["phi"] = phi_branch(keep["phi"])
    extra = mcmc.get_extra_fields(group_by_chain=True)
    names = {"diverging": "diverging", "num_steps": "n_steps", "accept_prob": "acceptance_rate"}
    stats = {names[k]: np.asarray(v) for k, v in extra.items() if k in names}
    idata = az.from_dict(posterior=keep, sample_stats=stats)
    idata.posterior.attrs["jkin_map_log_density"] = float(m["log_density"][m["best"]])
    idata.posterior.attrs["jkin_edge_sites"] = json.dumps(getattr(mcmc, "jkin_edge_sites", {}))
    idata.posterior.attrs["jkin_curve_sites"] = json.dumps(curve_sites(mcmc))
    timings = {"map_s": t1 - t0, "nuts_s": t2 - t1, "total_s": t2 - t0}
    return FitResult(idata, m, mcmc, timings)
