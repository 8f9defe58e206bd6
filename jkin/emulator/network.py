"""The CIPS emulator network (Flax Linen).

Architecture (CIPS, Anokhin et al. 2020, as SKiNN used it, Gomer et al. 2023):

* a **mapping network**, an MLP from the normalised parameter vector z (8) to a style vector w;
* **coordinate features** of each point, passed through **Fourier features** sin(B f + b) with a
  learned linear map (B, b);
* a **generator** of modulated per-pixel ("1x1") layers: the style scales each input channel
  (modulation), the weights are renormalised per map (demodulation, as StyleGAN2), then a leaky
  ReLU; every ``skip_every`` layers a modulated (non-demodulated) **skip head** adds to the
  output, as CIPS' tRGB heads. No noise injection.

jkin's additions, each measured to help on this problem (see benchmarks/emulator_accuracy.py):

* quadrant symmetry by construction: the coordinate features are x^2, y^2 and the log radius,
  i.e. functions of |x| and |y| that are also smooth at x = 0 and y = 0 (|x| itself would put a
  kink in the gradient with respect to the lens centre);
* a log-radius feature, once in arcsec and once in units of R_sersic, for the steep centre;
* the network predicts the *signed* <v_los^2> in units of theta_E x (200 km/s)^2 (the virial
  scaling), which is smooth across the edges of SKiNN's zero-valued regions, where JAM has no
  positive solution.

Non-negative output: v_rms = sqrt(tau * softplus(v2 / tau) + eps^2) with tau = 1 (km/s)^2 and
eps = 1e-3 km/s. Where
v2 >> tau this is sqrt(v2) to machine precision; where JAM gives zero it gives <~1 km/s, and its
gradient is finite everywhere (unlike sqrt(max(v2, 0)), whose gradient is zero on the clipped
side and infinite at the edge), so HMC still feels the parameters there.

Why Linen rather than NNX: the emulator is used as a pure function ``apply(params, z, f)`` of a
parameter pytree inside jit/vmap/grad and NumPyro models; Linen gives exactly that with no
state splitting, and its params serialise directly to safetensors.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jkin import conventions as cv

__all__ = ["CIPSConfig", "CIPS", "normalise_params", "coordinate_features", "vrms_from_output",
           "predict", "V_SCALE", "SOFTPLUS_TAU"]

#: Velocity scale of the network's output [km/s]: v2 = theta_E * V_SCALE^2 * output.
V_SCALE = 200.0
#: Softness of the non-negative output [(km/s)^2].
SOFTPLUS_TAU = 1.0
#: Floor of the output [km/s], for finite gradients where softplus underflows.
V_EPS = 1e-3
# Normalisation ranges of the network inputs (smooth functions of the physical parameters).
_Z_RANGES = np.array(
    [
        (0.5, 2.0),  # theta_E
        (1.5, 2.5),  # gamma
        (0.6, 1.0),  # q_mass
        (0.6, 1.0),  # q_light
        (0.5, 1.0),  # R_sersic / theta_E
        (2.0, 4.0),  # n_sersic
        (-0.4, 0.4),  # beta_z
        (float(np.degrees(np.arccos(0.6)) + cv.INCLINATION_MARGIN), 90.0),  # inclination
    ]
)
# Softening of the log-radius features [arcsec] (well inside the 0.08" core).
_R_SOFT = 0.01


@dataclasses.dataclass(frozen=True)
class CIPSConfig:
    """Sizes of the network (all hashable, so a config can be a static jit argument)."""

    width: int = 128
    n_layers: int = 8
    mapping_width: int = 128
    mapping_layers: int = 4
    n_fourier: int = 128
    skip_every: int = 2

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def normalise_params(params):
    """Physical parameters (..., 8) -> network inputs z (..., 8), each about in [-1, 1]."""
    params = jnp.asarray(params)
    params = params.astype(jnp.promote_types(params.dtype, jnp.float32))
    feats = params.at[..., 4].set(params[..., 4] / params[..., 0])
    # in the parameters' dtype: numpy's float64 ranges would promote float32 parameters to
    # float64 under jax_enable_x64, and with them the whole network (the kinematic potential
    # + gradient then cost 1.9x: 27.9 against 15.0 ms, benchmarks/potential_speed.py)
    lo, hi = (jnp.asarray(_Z_RANGES[:, k], feats.dtype) for k in (0, 1))
    return 2.0 * (feats - lo) / (hi - lo) - 1.0


def coordinate_features(x, y, R_sersic):
    """Per-point features (..., M, 4) from galaxy-frame x, y (..., M) [arcsec] and R_sersic (...)."""
    L = cv.FIELD_HALF_WIDTH
    r2 = x**2 + y**2 + _R_SOFT**2
    log_r = 0.5 * jnp.log(r2 / L**2)
    log_rs = 0.5 * jnp.log(r2) - jnp.log(R_sersic)[..., None]
    x2, y2 = x**2 / L**2, y**2 / L**2
    log_rs = jnp.broadcast_to(log_rs, jnp.broadcast_shapes(log_rs.shape, x2.shape))
    x2, y2, log_r = (jnp.broadcast_to(a, log_rs.shape) for a in (x2, y2, log_r))
    return jnp.stack([2.0 * x2 - 1.0, 2.0 * y2 - 1.0, log_r / 3.0, log_rs / 3.0], axis=-1)


def vrms_from_output(out, theta_E):
    """Network output (..., M) -> (v_rms [km/s], signed v2 [(km/s)^2]).

    The floor V_EPS^2 under the square root keeps the gradient finite where softplus underflows
    (v2 <~ -100 (km/s)^2 in float32); it changes v_rms by < 1e-6 km/s wherever v_rms > 1 km/s.
    """
    v2 = out * (theta_E[..., None] * V_SCALE**2)
    return jnp.sqrt(SOFTPLUS_TAU * jax.nn.softplus(v2 / SOFTPLUS_TAU) + V_EPS**2), v2


class ModulatedDense(nn.Module):
    """A per-pixel linear layer whose input channels are scaled by a per-map style."""

    features: int
    demodulate: bool = True

    @nn.compact
    def __call__(self, h, w):
        # h: (B, P, C_in); w: (B, S)
        c_in = h.shape[-1]
        style = nn.Dense(c_in, bias_init=nn.initializers.ones, name="style")(w)  # (B, C_in)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (c_in, self.features))
        # Modulate the kernel per map (StyleGAN2): the backward pass is then plain GEMMs;
        # scaling the activations instead made XLA:CPU fuse the style gradient into a slow loop
        # (value+grad 14x the value; now ~3x).
        w_mod = style[:, :, None] * kernel[None]  # (B, C_in, C_out)
        if self.demodulate:
            w_mod = w_mod * jax.lax.rsqrt(jnp.sum(w_mod**2, axis=1, keepdims=True) + 1e-8)
        y = jnp.einsum("bpi,bio->bpo", h, w_mod)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return y + bias


class CIPS(nn.Module):
    """z (B, 8), coordinate features (B or 1, P, F) -> output (B, P)."""

    config: CIPSConfig

    @nn.compact
    def __call__(self, z, feats):
        cfg = self.config
        w = z
        for i in range(cfg.mapping_layers):
            w = nn.leaky_relu(nn.Dense(cfg.mapping_width, name=f"mapping_{i}")(w), 0.2)
        h = jnp.sin(nn.Dense(cfg.n_fourier, name="fourier")(feats))
        h = jnp.broadcast_to(h, (z.shape[0],) + h.shape[1:])
        out = jnp.zeros(h.shape[:2], h.dtype)
        for i in range(cfg.n_layers):
            h = nn.leaky_relu(ModulatedDense(cfg.width, name=f"layer_{i}")(h, w), 0.2)
            if (i + 1) % cfg.skip_every == 0 or i == cfg.n_layers - 1:
                out = out + ModulatedDense(1, demodulate=False, name=f"skip_{i}")(h, w)[..., 0]
        return out


def predict(config: CIPSConfig, params, theta, x, y):
    """The emulator's forward pass, shared by training and inference.

    theta (B, 8) physical parameters; x, y (B or 1, P) galaxy-frame arcsec ->
    (v_rms [km/s], signed v2 [(km/s)^2]), each (B, P).
    """
    z = normalise_params(theta)
    feats = coordinate_features(x, y, theta[:, 4])
    out = CIPS(config).apply({"params": params}, z, feats)
    return vrms_from_output(out, theta[:, 0])
