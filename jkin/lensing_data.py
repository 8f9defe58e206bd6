"""Imaging and time-delay data of a lensed quasar: the ``LensingData`` bundle and its file format.

File format (``JKINFMT = 'LENSDATA'``, ``FMTVER = 1``; the same conventions and header keys as the
kinematic ``KINDATA`` files of ``jkin.data``): one FITS file.

Primary HDU (no data), header keys:

==========  =====================================================================================
PIXM11..    ``PIXM11 PIXM12 PIXM21 PIXM22``: herculens' ``transform_pix2angle`` matrix M
            [arcsec/pixel]: (x, y) = M @ (i, j) + (RA0, DEC0) for pixel column i, row j. An
            RA-flipped grid (east left) has PIXM11 < 0.
RA0, DEC0   sky position [arcsec] of the centre of pixel (0, 0) (``ra_at_xy_0``, ``dec_at_xy_0``)
SUPERSAM    sub-pixels per pixel side of the forward model
BKGRMS      background noise rms (sky + read-out) [electron/s]
EXPTIME     exposure time [s]; a model image m has variance BKGRMS**2 + m / EXPTIME
ZEROPT      AB zero point: the magnitude of 1 electron/s
==========  =====================================================================================

Extensions (by name; images have shape (n, n), row = pixel y index, square):

==========  ==============  =====================================================================
IMAGE       float (n, n)    the data [electron/s per pixel], sky subtracted
NOISE       float (n, n)    1-sigma noise of every pixel [electron/s], > 0
PSF_KERNEL  float (k, k)    pixel PSF, k odd, centred on its central pixel, sampled at the image
                            pixels, normalised to sum 1 (within 1e-3)
MASK        uint8 (n, n)    optional: 1 = pixel used in the likelihood (default all ones)
IMAGES      binary table    one row per quasar image: ``LABEL`` (str), ``X``, ``Y`` [arcsec]
                            measured positions, ``DT`` [day] delay relative to the first row (0
                            there), ``DT_ERR`` [day] its 1-sigma error (> 0; 0 on the first row)
TRUTH       binary table    optional, 1 row: the true parameters of a mock (``load_lensing_truth``)
==========  ==============  =====================================================================

The angular frame (x, y) is the one every jkin model uses: the lens centre ``(x_c, y_c)`` and the
position angle ``phi`` (counter-clockwise from +x) are measured in it.

``load_lensing_data`` validates everything ``LensingData`` checks and raises ``ValueError`` whose
message begins with the offending field (e.g. ``noise_map:``) and names the file.
"""

from __future__ import annotations

import os

import flax.struct
import jax
import numpy as np

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LensingData",
    "load_lensing_data",
    "load_lensing_truth",
    "save_lensing_data",
]

FORMAT_NAME = "LENSDATA"
FORMAT_VERSION = 1

#: Largest allowed |sum(psf_kernel) - 1|.
PSF_NORM_TOL = 1e-3

_HEADER_KEYS = {
    # primary header key: (LensingData field, python type)
    "RA0": ("ra_at_xy_0", float),
    "DEC0": ("dec_at_xy_0", float),
    "SUPERSAM": ("supersampling", int),
    "BKGRMS": ("background_rms", float),
    "EXPTIME": ("exposure_time", float),
    "ZEROPT": ("zero_point", float),
}
_EXTENSIONS = {"IMAGE": "image", "NOISE": "noise_map", "PSF_KERNEL": "psf_kernel",
               "MASK": "mask"}


def _concrete(x) -> bool:
    """True for a value that can be checked now (not a tracer, not a placeholder)."""
    if isinstance(x, jax.core.Tracer):
        return False
    return isinstance(x, (np.ndarray, jax.Array, list, tuple, float, int))


@flax.struct.dataclass
class LensingData:
    """Imaging + time-delay data of one lens, a pytree.

    Array fields (pytree leaves): ``image``, ``noise_map``, ``mask`` (n, n); ``psf_kernel``
    (k, k); ``x_image``, ``y_image``, ``time_delays``, ``time_delay_errors`` (m,), one entry per
    quasar image in the order of ``labels``, delays relative to image 0. Static fields (hashable,
    part of the jit cache key): the pixel grid (``transform_pix2angle`` as a tuple of tuples,
    ``ra_at_xy_0``, ``dec_at_xy_0``; by default the grid is centred on (0, 0)), ``supersampling``, ``background_rms``, ``exposure_time``,
    ``zero_point``, ``labels``. Units as in the module docstring.

    Construction validates every field (when the arrays are concrete, i.e. not inside a jit
    trace) and raises ``ValueError`` naming the first bad one.
    """

    image: jax.Array
    noise_map: jax.Array
    psf_kernel: jax.Array
    mask: jax.Array
    x_image: jax.Array
    y_image: jax.Array
    time_delays: jax.Array
    time_delay_errors: jax.Array
    transform_pix2angle: tuple = flax.struct.field(pytree_node=False,
                                                   default=((0.1, 0.0), (0.0, 0.1)))
    ra_at_xy_0: float | None = flax.struct.field(pytree_node=False, default=None)
    dec_at_xy_0: float | None = flax.struct.field(pytree_node=False, default=None)
    supersampling: int = flax.struct.field(pytree_node=False, default=2)
    background_rms: float = flax.struct.field(pytree_node=False, default=1.0)
    exposure_time: float = flax.struct.field(pytree_node=False, default=1.0)
    zero_point: float = flax.struct.field(pytree_node=False, default=26.0)
    labels: tuple = flax.struct.field(pytree_node=False, default=("A", "B", "C", "D"))

    def __post_init__(self):
        if self.ra_at_xy_0 is None or self.dec_at_xy_0 is None:
            # default: the grid centred on (0, 0)
            c = (np.shape(self.image)[0] - 1) / 2.0
            m = np.asarray(self.transform_pix2angle, dtype=float)
            object.__setattr__(self, "ra_at_xy_0", float(-(m[0, 0] + m[0, 1]) * c))
            object.__setattr__(self, "dec_at_xy_0", float(-(m[1, 0] + m[1, 1]) * c))
        leaves = (self.image, self.noise_map, self.psf_kernel, self.mask, self.x_image,
                  self.y_image, self.time_delays, self.time_delay_errors)
        if all(_concrete(v) for v in leaves):
            _validate(self)

    @property
    def n_pix(self) -> int:
        """Pixels per side."""
        return int(np.shape(self.image)[0])

    @property
    def n_images(self) -> int:
        """Number of quasar images."""
        return len(self.labels)

    @property
    def pixel_scale(self) -> float:
        """sqrt(|det transform_pix2angle|) [arcsec]."""
        return float(np.sqrt(abs(np.linalg.det(np.asarray(self.transform_pix2angle)))))

    def pixel_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Angular coordinates (x, y) [arcsec] of the pixel centres, each (n, n) like ``image``."""
        n = self.n_pix
        j, i = np.mgrid[0:n, 0:n].astype(float)  # row, column
        m = np.asarray(self.transform_pix2angle)
        x = self.ra_at_xy_0 + m[0, 0] * i + m[0, 1] * j
        y = self.dec_at_xy_0 + m[1, 0] * i + m[1, 1] * j
        return x, y


def _fail(field: str, msg: str):
    raise ValueError(f"{field}: {msg}")


def _check_finite(field, a):
    bad = ~np.isfinite(a)
    if bad.any():
        _fail(field, f"{int(bad.sum())} non-finite value(s) (NaN or inf), first at index "
                     f"{tuple(int(i) for i in np.argwhere(bad)[0])}")


def _validate(d: LensingData) -> None:
    image = np.asarray(d.image, dtype=float)
    if image.ndim != 2 or image.shape[0] != image.shape[1] or image.shape[0] < 3:
        _fail("image", f"must be a square 2-D array of at least 3x3 pixels; "
                       f"got shape {image.shape}")
    _check_finite("image", image)
    shape = image.shape

    noise = np.asarray(d.noise_map, dtype=float)
    if noise.shape != shape:
        _fail("noise_map", f"shape {noise.shape} differs from the image's {shape}")
    _check_finite("noise_map", noise)
    if (noise <= 0).any():
        _fail("noise_map", f"{int((noise <= 0).sum())} pixel(s) with non-positive noise; every "
                           "pixel needs sigma > 0 (mask pixels out instead)")

    mask = np.asarray(d.mask, dtype=float)
    if mask.shape != shape:
        _fail("mask", f"shape {mask.shape} differs from the image's {shape}")
    if not np.isin(mask, (0.0, 1.0)).all():
        _fail("mask", "values must be 0 or 1")
    if mask.sum() == 0:
        _fail("mask", "masks every pixel out")

    psf = np.asarray(d.psf_kernel, dtype=float)
    if psf.ndim != 2 or psf.shape[0] != psf.shape[1] or psf.shape[0] % 2 == 0:
        _fail("psf_kernel", f"must be a square 2-D array with an odd side; got shape {psf.shape}")
    _check_finite("psf_kernel", psf)
    if abs(psf.sum() - 1.0) > PSF_NORM_TOL:
        _fail("psf_kernel", f"must be normalised to sum 1 (within {PSF_NORM_TOL}); sums to "
                            f"{psf.sum():.6g}")
    if psf.shape[0] > 2 * shape[0] + 1:
        _fail("psf_kernel", f"side {psf.shape[0]} is larger than twice the image's {shape[0]}")

    labels = tuple(d.labels)
    m = len(labels)
    if m < 2:
        _fail("labels", f"need at least 2 images for time delays; got {m}")
    if len(set(labels)) != m or not all(isinstance(s, str) and s for s in labels):
        _fail("labels", f"must be distinct non-empty strings; got {labels}")
    for name in ("x_image", "y_image", "time_delays", "time_delay_errors"):
        a = np.asarray(getattr(d, name), dtype=float)
        if a.shape != (m,):
            _fail(name, f"must have shape ({m},), one entry per image {labels}; got {a.shape}")
        _check_finite(name, a)
    if float(np.asarray(d.time_delays)[0]) != 0.0:
        _fail("time_delays", f"are relative to image {labels[0]}, whose entry must be 0; got "
                             f"{float(np.asarray(d.time_delays)[0])}")
    err = np.asarray(d.time_delay_errors, dtype=float)
    if (err[1:] <= 0).any():
        i = 1 + int(np.argmax(err[1:] <= 0))
        _fail("time_delay_errors", f"must be > 0; image {labels[i]} has {err[i]}")

    t = np.asarray(d.transform_pix2angle, dtype=float)
    if t.shape != (2, 2) or not np.isfinite(t).all() or abs(np.linalg.det(t)) < 1e-12:
        _fail("transform_pix2angle", f"must be a finite invertible 2x2 matrix; "
                                     f"got {d.transform_pix2angle}")
    if not isinstance(d.transform_pix2angle, tuple):
        _fail("transform_pix2angle", "must be a tuple of tuples (it is a static, hashable field)")
    for name in ("ra_at_xy_0", "dec_at_xy_0"):
        if not np.isfinite(getattr(d, name)):
            _fail(name, f"must be finite; got {getattr(d, name)}")
    if not isinstance(d.supersampling, (int, np.integer)) or d.supersampling < 1:
        _fail("supersampling", f"must be an integer >= 1; got {d.supersampling!r}")
    for name in ("background_rms", "exposure_time"):
        v = getattr(d, name)
        if not (np.isfinite(v) and v > 0):
            _fail(name, f"must be finite and > 0; got {v}")
    if not np.isfinite(d.zero_point):
        _fail("zero_point", f"must be finite; got {d.zero_point}")

    # every image must fall inside the field
    inv = np.linalg.inv(t)
    for k in range(m):
        dx = float(np.asarray(d.x_image)[k]) - d.ra_at_xy_0
        dy = float(np.asarray(d.y_image)[k]) - d.dec_at_xy_0
        i, j = inv @ np.array([dx, dy])
        if not (-0.5 <= i <= shape[1] - 0.5 and -0.5 <= j <= shape[0] - 0.5):
            _fail("x_image", f"image {labels[k]} at ({dx + d.ra_at_xy_0:.3f}, "
                             f"{dy + d.dec_at_xy_0:.3f}) arcsec lies outside the image")


def _tuple2(m) -> tuple:
    m = np.asarray(m, dtype=float)
    return ((float(m[0, 0]), float(m[0, 1])), (float(m[1, 0]), float(m[1, 1])))


def save_lensing_data(path, data: LensingData, *, truth: dict | None = None,
                      overwrite: bool = False) -> None:
    """Write ``data`` (and optionally a mock's ``truth`` parameters) to ``path`` in the
    ``LENSDATA`` FITS format (module docstring)."""
    from astropy.io import fits
    from astropy.table import Table

    primary = fits.PrimaryHDU()
    h = primary.header
    h["JKINFMT"] = (FORMAT_NAME, "jkin lensing data")
    h["FMTVER"] = (FORMAT_VERSION, "format version")
    t = np.asarray(data.transform_pix2angle, dtype=float)
    for a in range(2):
        for b in range(2):
            h[f"PIXM{a + 1}{b + 1}"] = (float(t[a, b]), "transform_pix2angle [arcsec/pixel]")
    h["RA0"] = (float(data.ra_at_xy_0), "x of the centre of pixel [0, 0] [arcsec]")
    h["DEC0"] = (float(data.dec_at_xy_0), "y of the centre of pixel [0, 0] [arcsec]")
    h["SUPERSAM"] = (int(data.supersampling), "sub-pixels per pixel side of the model")
    h["BKGRMS"] = (float(data.background_rms), "background noise rms [electron/s]")
    h["EXPTIME"] = (float(data.exposure_time), "exposure time [s]")
    h["ZEROPT"] = (float(data.zero_point), "AB magnitude of 1 electron/s")
    hdus = [primary]
    for ext, field in _EXTENSIONS.items():
        dtype = np.uint8 if ext == "MASK" else np.float64
        hdus.append(fits.ImageHDU(np.asarray(getattr(data, field), dtype=dtype), name=ext))
    table = Table(
        {
            "LABEL": np.array(data.labels, dtype=str),
            "X": np.asarray(data.x_image, dtype=np.float64),
            "Y": np.asarray(data.y_image, dtype=np.float64),
            "DT": np.asarray(data.time_delays, dtype=np.float64),
            "DT_ERR": np.asarray(data.time_delay_errors, dtype=np.float64),
        }
    )
    for col, unit in (("X", "arcsec"), ("Y", "arcsec"), ("DT", "d"), ("DT_ERR", "d")):
        table[col].unit = unit
    images = fits.table_to_hdu(table)
    images.name = "IMAGES"
    hdus.append(images)
    if truth is not None:
        row = {k: np.asarray(v, dtype=np.float64)[None] for k, v in truth.items()}
        tru = fits.table_to_hdu(Table(row))
        tru.name = "TRUTH"
        hdus.append(tru)
    fits.HDUList(hdus).writeto(os.fspath(path), overwrite=overwrite)


def load_lensing_data(path) -> LensingData:
    """Read and validate a ``LENSDATA`` FITS file; ``ValueError`` names the bad field first."""
    from astropy.io import fits

    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(name)
    try:
        hdul = fits.open(name, memmap=False)
    except Exception as exc:  # astropy raises OSError or its own errors on non-FITS input
        raise ValueError(f"{name}: not a readable FITS file ({exc})") from None
    with hdul:
        hdr = hdul[0].header
        if hdr.get("JKINFMT") != FORMAT_NAME:
            raise ValueError(f"{name}: not a jkin lensing-data file (primary header JKINFMT is "
                             f"{hdr.get('JKINFMT')!r}, expected {FORMAT_NAME!r})")
        try:
            version = int(hdr.get("FMTVER", -1))
        except (TypeError, ValueError):
            version = -1
        if version != FORMAT_VERSION:
            raise ValueError(f"{name}: format version (FMTVER) is {hdr.get('FMTVER')!r}; this "
                             f"reader reads version {FORMAT_VERSION}")
        present = {h.name.upper() for h in hdul[1:]}

        arrays = {}
        for ext, field in _EXTENSIONS.items():
            if ext not in present:
                if ext == "MASK":
                    continue
                raise ValueError(f"{field}: extension {ext} missing from {name}")
            h = hdul[ext]
            if not isinstance(h, fits.ImageHDU) or h.data is None:
                raise ValueError(f"{field}: extension {ext} of {name} must be an image with data")
            arrays[field] = np.asarray(h.data, dtype=np.float64)
        arrays.setdefault("mask", np.ones_like(arrays["image"]))

        def card(key, field, typ=float):
            if key not in hdr:
                raise ValueError(f"{field}: primary header key {key} missing from {name}")
            try:
                return typ(hdr[key])
            except (TypeError, ValueError):
                raise ValueError(f"{field}: primary header key {key} = {hdr[key]!r} of {name} "
                                 f"is not a {typ.__name__}") from None

        statics = {field: card(key, field, typ) for key, (field, typ) in _HEADER_KEYS.items()}
        t = tuple(tuple(card(f"PIXM{a}{b}", "transform_pix2angle") for b in (1, 2))
                  for a in (1, 2))

        if "IMAGES" not in present or not isinstance(hdul["IMAGES"], fits.BinTableHDU):
            raise ValueError(f"labels: binary-table extension IMAGES missing from {name}")
        tab = hdul["IMAGES"]
        cols = {}
        for col, field in (("LABEL", "labels"), ("X", "x_image"), ("Y", "y_image"),
                           ("DT", "time_delays"), ("DT_ERR", "time_delay_errors")):
            if col not in tab.columns.names:
                raise ValueError(f"{field}: column {col} missing from table IMAGES of {name}")
            cols[field] = np.asarray(tab.data[col])
        labels = tuple(str(s).strip() for s in cols.pop("labels"))

    try:
        return LensingData(**arrays, **{k: v.astype(float) for k, v in cols.items()},
                           transform_pix2angle=t, labels=labels, **statics)
    except ValueError as exc:
        raise ValueError(f"{exc} (in {name})") from None


def load_lensing_truth(path) -> dict | None:
    """The TRUTH table of a lensing-data file as {name: float or array}, or None if absent."""
    from astropy.io import fits

    with fits.open(os.fspath(path), memmap=False) as hdul:
        if "TRUTH" not in {h.name.upper() for h in hdul[1:]}:
            return None
        table = hdul["TRUTH"].data
        out = {}
        for col in table.columns.names:
            v = np.asarray(table[col][0], dtype=float)
            out[col] = float(v) if v.ndim == 0 else v
        return out
