"""jkin: differentiable JAM-emulator kinematics for joint lensing + dynamics inference in JAX.

Modules (imported on demand, so that ``import jkin`` stays light):

    jkin.conventions   units, fiducial cosmology, parameter names/order/ranges
    jkin.jam           training-set physics: PEMD/Sersic -> MGE -> JAM (jampy)
    jkin.dataset       resumable JAM training sets on Dask
    jkin.emulator      the CIPS emulator (Emulator.load()), training, weights
    jkin.kinematics    sky->galaxy transform, PSF, luminosity-weighted binning, likelihood
    jkin.data          the kinematic (IFU) data format and loader
    jkin.mocks         mock IFU data (Gomer et al. 2023, Sect. 5.2)
    jkin.lensing       herculens lens model, time delays, lensing likelihoods, mock imaging
    jkin.lensing_data  the imaging + time-delay data format and loader
"""

__version__ = "0.1.0"

from jkin import conventions
from jkin.conventions import PARAM_NAMES

__all__ = ["__version__", "conventions", "PARAM_NAMES"]
