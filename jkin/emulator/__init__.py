"""The CIPS emulator of JAM v_rms maps.

    from jkin.emulator import Emulator
    emu = Emulator.load()                 # bundled default weights in weights/
    v = emu(params, x, y)                 # km/s; params (..., 8), x, y (M,) arcsec, galaxy frame
    image = emu.map(params)               # (..., 551, 551) at 0.02"/pixel, as SKiNN renders
    emu.in_domain(params)                 # inside the training space?

``emu`` is a pytree (its weights are leaves), so it can be passed through jit, vmap and grad.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jkin import conventions as cv
from jkin.emulator.io import default_weights_dir, load_weights
from jkin.emulator.network import CIPSConfig, predict

__all__ = ["Emulator", "CIPSConfig", "DEFAULT_WEIGHTS"]

#: Name of the bundled default weights (weights/DEFAULT_WEIGHTS.json).
DEFAULT_WEIGHTS = "jkin-cips-default"


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


@struct.dataclass
class Emulator:
    """Network weights + architecture: a callable, jit/vmap/grad-able pytree."""

    params: dict
    config: CIPSConfig = struct.field(pytree_node=False)
    manifest_json: str = struct.field(pytree_node=False, default="{}")

    @classmethod
    def load(cls, name_or_path=None) -> "Emulator":
        """Load weights by name from weights/ (default: the bundled default) or by manifest path.

        The weights file's sha256 is checked against the manifest (``ValueError`` if not equal).
        """
        if name_or_path is None:
            name_or_path = DEFAULT_WEIGHTS
        path = Path(name_or_path)
        if path.suffix != ".json":
            path = default_weights_dir() / f"{name_or_path}.json"
        params, manifest = load_weights(path)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        config = CIPSConfig(**manifest["config"])
        return cls(params=params, config=config, manifest_json=json.dumps(manifest))

    @property
    def manifest(self) -> dict:
        return json.loads(self.manifest_json)

    def in_domain(self, params) -> np.ndarray:
        """Whether parameters (..., 8) lie in the training space (numpy bool, shape (...))."""
        return cv.in_domain(params)

    def vrms2(self, params, x, y):
        """(v_rms [km/s], signed <v^2> [(km/s)^2]) of shape (..., M); see ``__call__``."""
        params = jnp.asarray(params)
        x, y = jnp.asarray(x), jnp.asarray(y)
        if params.shape[-1:] != (cv.N_PARAMS,):
            raise ValueError(
                f"params must have a last axis of length {cv.N_PARAMS} in the order "
                f"{cv.PARAM_NAMES}; got shape {params.shape}"
            )
        if x.ndim != 1 or x.shape != y.shape:
            raise ValueError(f"x and y must be 1-D arrays of one length; got {x.shape}, {y.shape}")
        if not _is_traced(params):
            # float32 cannot hold the bounds exactly (-0.4 -> -0.40000001): allow its rounding.
            rtol = 1e-6 if params.dtype == jnp.float32 else 1e-9
            p = np.asarray(params, dtype=float)
            cv.validate_params(p if p.ndim <= 2 else p.reshape(-1, cv.N_PARAMS), rtol=rtol)
        batch = params.shape[:-1]
        flat = params.reshape(-1, cv.N_PARAMS)
        v, v2 = predict(self.config, self.params, flat, x[None, :], y[None, :])
        m = x.shape[0]
        return v.reshape(batch + (m,)), v2.reshape(batch + (m,))

    def __call__(self, params, x, y):
        """v_rms [km/s] at the fiducial distances, shape (..., M).

        ``params``: (..., 8) in ``PARAM_NAMES`` order; ``x``, ``y``: (M,) galaxy-frame arcsec.
        Called eagerly with parameters outside the training space, it raises ``ValueError``
        naming the parameter and its range. Under jit/grad tracing no check is possible: the
        network then extrapolates silently, so keep priors inside the space (jkin's priors are
        reparametrised to do so).
        """
        return self.vrms2(params, x, y)[0]

    def map(self, params, npix: int = 551, pixel_scale: float = 0.02):
        """A full (..., npix, npix) v_rms image centred on the galaxy, x along columns, as
        SKiNN renders it (551 x 551 at 0.02"/pixel spans 11" x 11")."""
        c = (jnp.arange(npix) - (npix - 1) / 2) * pixel_scale
        xx, yy = jnp.meshgrid(c, c)
        v = self(params, xx.ravel(), yy.ravel())
        return v.reshape(v.shape[:-1] + (npix, npix))
