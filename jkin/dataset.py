"""JAM training sets: deterministic, chunked, resumable generation on Dask, and reading.

A training set is a directory::

    DIR/manifest.json     what was asked for (seed, size, layout, JAM settings, versions)
    DIR/data.zarr/        params (n, 8) float64, x and y (n, P) float32 [arcsec],
                          v2 (n, P) float32 signed <v_los^2> [(km/s)^2]
    DIR/done/chunk-K      one empty marker per finished chunk of ``chunk_size`` samples

What a sample stores. The CIPS emulator is coordinate-based, so a sample is a parameter vector
with v_rms at P points of the galaxy-frame quadrant 0 <= x, y <= 5.5": either P random points
(layout "random", the training default: half uniform in area, half with log-uniform radius in
[0.01, 5.5]" so that the steep centre is sampled) or a regular grid of pixel centres
(layout "grid", P = n_grid^2, for test maps). The signed <v^2> is stored rather than the clipped
v_rms, so that zero-valued regions keep their information.

Determinism and resumption. Sample i draws its parameters and points from
``numpy.random.default_rng([seed, i])`` alone, so a sample never depends on the chunking, the
number of workers or the order of completion. Each chunk writes only its own zarr chunks and then
its marker (by an atomic rename); a run killed at any point recomputes only chunks without a
marker, and the result is byte-identical to an uninterrupted run. Re-running with a larger ``n``
and otherwise the same settings extends the set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from jkin import conventions as cv
from jkin.jam import DEFAULT_SETTINGS, JamSettings, jam_vrms2

__all__ = [
    "GenerationSpec",
    "sample_points",
    "sample_spec_row",
    "generate",
    "load",
    "status",
]

MANIFEST = "manifest.json"
DATA = "data.zarr"
DONE = "done"
LAYOUTS = ("random", "grid")
# Smallest radius of the log-uniform half of the random points [arcsec].
R_MIN_POINTS = 0.01


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """Everything that determines a training set's content (not its size or the cluster)."""

    seed: int = 0
    layout: str = "random"
    n_points: int = 128
    chunk_size: int = 16
    jam: JamSettings = DEFAULT_SETTINGS

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {self.layout!r}")
        if self.layout == "grid":
            n_grid = int(round(np.sqrt(self.n_points)))
            if n_grid**2 != self.n_points:
                raise ValueError(f"n_points must be a square for layout 'grid'; got {self.n_points}")
        if not 1 <= self.n_points <= 1_000_000:
            raise ValueError(f"n_points must be in [1, 1000000]; got {self.n_points}")
        if not 1 <= self.chunk_size <= 100_000:
            raise ValueError(f"chunk_size must be in [1, 100000]; got {self.chunk_size}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2^63); got {self.seed}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "GenerationSpec":
        d = dict(d)
        d["jam"] = JamSettings(**d["jam"])
        return cls(**d)


def sample_points(rng: np.random.Generator, layout: str, n_points: int):
    """Galaxy-frame points (x, y) [arcsec] in the quadrant 0 <= x, y <= 5.5, as float32."""
    half = cv.FIELD_HALF_WIDTH
    if layout == "grid":
        n = int(round(np.sqrt(n_points)))
        c = (np.arange(n) + 0.5) * (half / n)
        x, y = np.meshgrid(c, c)  # image order: row = y, column = x
        return x.ravel().astype(np.float32), y.ravel().astype(np.float32)
    n_uniform = n_points // 2
    xy = rng.uniform(0.0, half, size=(n_uniform, 2))
    n_log = n_points - n_uniform
    r = np.exp(rng.uniform(np.log(R_MIN_POINTS), np.log(half), size=n_log))
    phi = rng.uniform(0.0, 0.5 * np.pi, size=n_log)
    x = np.concatenate([xy[:, 0], r * np.cos(phi)]).astype(np.float32)
    y = np.concatenate([xy[:, 1], r * np.sin(phi)]).astype(np.float32)
    return x, y


def sample_spec_row(spec: GenerationSpec, i: int):
    """Parameters, points and signed <v^2> of sample ``i`` (pure function of spec and i)."""
    rng = np.random.default_rng([spec.seed, i])
    params = cv.sample_params(rng, 1)[0]
    x, y = sample_points(rng, spec.layout, spec.n_points)
    v2 = jam_vrms2(params, x.astype(float), y.astype(float), spec.jam)
    return params, x, y, v2.astype(np.float32)


def _versions() -> dict:
    import jampy
    import mgefit

    import jkin

    return {"jkin": jkin.__version__, "jampy": jampy.__version__, "mgefit": mgefit.__version__}


def _open_arrays(out: Path, spec: GenerationSpec, n: int, mode: str):
    import zarr

    root = zarr.open_group(out / DATA, mode=mode)
    c, p = spec.chunk_size, spec.n_points
    shapes = {
        "params": ((n, cv.N_PARAMS), (c, cv.N_PARAMS), "float64"),
        "x": ((n, p), (c, p), "float32"),
        "y": ((n, p), (c, p), "float32"),
        "v2": ((n, p), (c, p), "float32"),
    }
    arrays = {}
    for name, (shape, chunks, dtype) in shapes.items():
        if name in root:
            arr = root[name]
            if arr.shape[0] < n:
                arr.resize(shape)
        else:
            arr = root.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        arrays[name] = arr
    return arrays


def _compute_chunk(out: str, spec_json: dict, n: int, k: int) -> int:
    """Compute and store chunk ``k``; runs on a Dask worker. Returns the number of samples."""
    import zarr

    spec = GenerationSpec.from_json(spec_json)
    out = Path(out)
    start, stop = k * spec.chunk_size, min(n, (k + 1) * spec.chunk_size)
    rows = [sample_spec_row(spec, i) for i in range(start, stop)]
    root = zarr.open_group(out / DATA, mode="r+")
    for j, name in enumerate(("params", "x", "y", "v2")):
        root[name][start:stop] = np.stack([r[j] for r in rows])
    marker = out / DONE / f"chunk-{k:06d}"
    tmp = marker.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"start": start, "stop": stop}))
    os.replace(tmp, marker)
    return stop - start


def _n_chunks(n: int, chunk_size: int) -> int:
    return -(-n // chunk_size)


def _done_chunks(out: Path, n: int, chunk_size: int) -> set[int]:
    """Chunks with a marker whose recorded extent matches the current size ``n``."""
    done = set()
    for f in (out / DONE).glob("chunk-*"):
        if f.suffix:  # temporary file of a killed writer
            continue
        k = int(f.name.split("-")[1])
        extent = json.loads(f.read_text())
        if extent == {"start": k * chunk_size, "stop": min(n, (k + 1) * chunk_size)}:
            done.add(k)
    return done


def _prepare(out: Path, spec: GenerationSpec, n: int) -> None:
    """Create or check the directory; grow the arrays if ``n`` is larger than before."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        old_spec = GenerationSpec.from_json(old["spec"])
        if old_spec != spec:
            diff = [
                f"{f.name}: {getattr(old_spec, f.name)!r} (on disk) != {getattr(spec, f.name)!r}"
                for f in dataclasses.fields(GenerationSpec)
                if getattr(old_spec, f.name) != getattr(spec, f.name)
            ]
            raise ValueError(
                f"{out} holds a training set made with other settings ({'; '.join(diff)}); "
                "use another --out or the same settings"
            )
        if n < old["n"]:
            raise ValueError(f"n = {n} is smaller than the {old['n']} samples already in {out}")
        # Growing n: a last chunk that was partial no longer matches its marker and is redone.
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE).mkdir(exist_ok=True)
    for stale in (out / DONE).glob("chunk-*.tmp*"):  # markers of a killed writer
        stale.unlink()
    _open_arrays(out, spec, n, mode="a")
    manifest = {
        "format": "jkin-trainset-1",
        "n": n,
        "spec": spec.to_json(),
        "param_names": list(cv.PARAM_NAMES),
        "units": {"x": "arcsec", "y": "arcsec", "v2": "(km/s)^2, signed <v_los^2>"},
        "versions": _versions(),
    }
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)


def _client(scheduler: str | None, n_workers: int | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    cluster = LocalCluster(
        n_workers=n_workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    return Client(cluster), cluster


def generate(
    out,
    n: int,
    spec: GenerationSpec = GenerationSpec(),
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Generate (or resume, or extend) a training set of ``n`` samples in directory ``out``.

    Runs on a new ``dask.distributed.LocalCluster`` (one single-threaded process per core, or
    ``n_workers``) unless ``scheduler`` gives the address of a running one (whose workers must
    see ``out`` on a shared file system). Returns a summary dict.
    """
    from dask.distributed import as_completed
    from tqdm.auto import tqdm

    if not 1 <= n <= 100_000_000:
        raise ValueError(f"n must be in [1, 100000000]; got {n}")
    out = Path(out)
    _prepare(out, spec, n)
    n_chunks = _n_chunks(n, spec.chunk_size)
    done = _done_chunks(out, n, spec.chunk_size)
    todo = [k for k in range(n_chunks) if k not in done]
    t0 = time.perf_counter()
    made = 0
    if todo:
        client, cluster = _client(scheduler, n_workers)
        try:
            futures = [
                client.submit(_compute_chunk, str(out), spec.to_json(), n, k, key=f"jkin-chunk-{k}-{n}",
                              pure=False)
                for k in todo
            ]
            already = sum(min(n, (k + 1) * spec.chunk_size) - k * spec.chunk_size for k in done)
            with tqdm(total=n, initial=already, unit="map", desc="JAM maps",
                      disable=not progress, smoothing=0.1) as bar:
                for fut in as_completed(futures):
                    m = fut.result()
                    made += m
                    bar.update(m)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    wall = time.perf_counter() - t0
    return {
        "out": str(out),
        "n": n,
        "made": made,
        "resumed_from": n - made,
        "wall_s": wall,
        "maps_per_hour": made / wall * 3600 if made else float("nan"),
        "disk_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
    }


def status(out) -> dict:
    """Size, progress and settings of the training set in ``out``."""
    out = Path(out)
    manifest_path = out / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"no training set in {out} (missing {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    spec = GenerationSpec.from_json(manifest["spec"])
    n = manifest["n"]
    done = _done_chunks(out, n, spec.chunk_size)
    n_done = sum(min(n, (k + 1) * spec.chunk_size) - k * spec.chunk_size for k in done)
    return {"n": n, "n_done": n_done, "complete": n_done == n, "spec": spec, "manifest": manifest}


def load(out, *, allow_incomplete: bool = False) -> dict[str, np.ndarray]:
    """Read a training set into memory: params, x, y, v2 (finished samples only)."""
    import zarr

    st = status(out)
    if not st["complete"] and not allow_incomplete:
        raise ValueError(
            f"{out} is incomplete ({st['n_done']} of {st['n']} samples); resume it with "
            "`jkin data generate` or pass allow_incomplete=True"
        )
    spec, n = st["spec"], st["n"]
    done = sorted(_done_chunks(Path(out), n, spec.chunk_size))
    rows = np.concatenate(
        [np.arange(k * spec.chunk_size, min(n, (k + 1) * spec.chunk_size)) for k in done]
    ) if done else np.zeros(0, dtype=int)
    root = zarr.open_group(Path(out) / DATA, mode="r")
    data = {name: root[name][:][rows] for name in ("params", "x", "y", "v2")}
    data["index"] = rows
    return data
