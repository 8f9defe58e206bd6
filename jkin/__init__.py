"""jkin: differentiable JAM-emulator kinematics for joint lensing + dynamics inference in JAX."""

__version__ = "0.1.0"

from jkin import conventions
from jkin.conventions import PARAM_NAMES

__all__ = ["__version__", "conventions", "PARAM_NAMES"]
