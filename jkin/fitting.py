"""``jkin fit CONFIG.toml``: a configured fit, its outputs, and ``jkin demo``.

A configuration file (TOML; paths relative to the file)::

    mode = "joint"                    # "kinematics", "lensing" or "joint"
    output = "fit-out"                # directory for the results

    [data]
    kinematics = "ifu.fits"           # KINDATA file (jkin.data); needed by kinematics / joint
    lensing = "lens.fits"             # LENSDATA file (jkin.lensing_data); lensing / joint

    [emulator]
    weights = "jkin-cips-default"     # a name in weights/ or the path of a weights manifest

    [priors]                          # jkin.inference.Priors; all optional
    centre = [0.0, 0.0]               # arcsec
    centre_half_width = 0.5           # arcsec
    D_dt_range = [1443.3, 5773.1]     # Mpc
    D_d_range = [607.9, 2431.5]       # Mpc

    [inference]                       # all optional; defaults shown
    seed = 0
    n_starts = 8                      # MAP starts drawn from the prior
    map_steps = 1000                  # L-BFGS iterations per start
    num_warmup = 300
    num_samples = 500
    num_chains = 2
    max_tree_depth = 8
    target_accept = 0.8               # NUTS's target acceptance probability (step size), in
                                      # (0, 1): higher, smaller steps, fewer divergences
    chain_method = "auto"             # or numpyro's "vectorized", "sequential", "parallel";
                                      # auto: parallel with a host device per chain, else
                                      # sequential on a CPU, vectorized on a GPU
    z_lens = 0.5                      # for the derived masses
    position_steps = 1000             # blind lensing start: image-position fit steps
    map_restarts = 1                  # with imaging: rounds of n_starts new blind starts when
                                      # the MAP's image chi^2 per pixel exceeds CHI2_WARN (1.5)
    init_from = ""                    # optional: start at an earlier fit's MAP instead (its
                                      # output directory or fit.json; e.g. a joint fit started at
                                      # the lensing-only MAP); sites it lacks come from the prior
    mass_matrix = "auto"              # "laplace", "pooled", "adapt" (inference.run_nuts)
    edge_reparam = true               # with the pooled mass matrix: a parameter whose warm-up
                                      # draws press on a prior bound is sampled in coordinates
                                      # fitted to them (inference.EdgeUniform)
    curve_reparam = true              # with the pooled mass matrix: a parameter whose warm-up
                                      # draws bend around another's is sampled as its offset
                                      # from a cubic in it (inference.CurveShift)

Outputs in ``output``: ``posterior.nc`` (arviz InferenceData, netcdf), ``summary.csv`` (arviz
summary: mean, sd, HDI, R-hat, ESS of the 13 parameters and the derived masses),
``corner.png`` (the 13 parameters; truths marked when the data files carry them),
``fit.json`` (settings, MAP, timings, truth).
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from pathlib import Path

import numpy as np

__all__ = ["FitConfig", "load_config", "fit_inputs", "config_potential", "load_map",
           "use_host_devices", "use_compile_cache", "run_fit", "run_many", "demo"]

_MODES = ("kinematics", "lensing", "joint")
_TOP_KEYS = {"mode", "output", "data", "emulator", "priors", "inference", "name"}
_INFERENCE_DEFAULTS = dict(seed=0, n_starts=8, map_steps=1000, num_warmup=300, num_samples=500,
                           num_chains=2, max_tree_depth=8, target_accept=0.8,
                           chain_method="auto", z_lens=0.5, position_steps=1000, map_restarts=1,
                           init_from="", mass_matrix="auto", edge_reparam=True,
                           curve_reparam=True,
                           precision="float64", light_precision="float32")
#: inference.MASS_MATRICES, repeated: importing jkin.inference here would fix the XLA device
#: count before ``use_host_devices`` could set it
MASS_MATRICES = ("auto", "laplace", "pooled", "adapt")
#: the ``chain_method`` values a configuration may give ("auto" or numpyro's)
CHAIN_METHODS = ("auto", "vectorized", "sequential", "parallel")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    mode: str
    output: Path
    kinematics: Path | None = None
    lensing: Path | None = None
    weights: str | None = None
    priors: dict = dataclasses.field(default_factory=dict)
    inference: dict = dataclasses.field(default_factory=dict)
    name: str = "fit"


def _err(where, msg):
    raise ValueError(f"{where}: {msg}")


def load_config(path) -> FitConfig:
    """Read and check a fit configuration; errors name the file and the key."""
    from jkin.inference import Priors

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such configuration file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        _err(path, f"not valid TOML ({e})")
    for key in raw:
        if key not in _TOP_KEYS:
            _err(path, f"unknown key {key!r}; allowed: {sorted(_TOP_KEYS)}")
    mode = raw.get("mode", None)
    data = raw.get("data", {})
    if not isinstance(data, dict):
        _err(path, "[data] must be a table")
    for key in data:
        if key not in ("kinematics", "lensing"):
            _err(path, f"unknown key data.{key}; allowed: kinematics, lensing")
    if mode is None:
        mode = ("joint" if {"kinematics", "lensing"} <= set(data) else
                "kinematics" if "kinematics" in data else "lensing" if "lensing" in data else None)
    if mode not in _MODES:
        _err(path, f"mode = {mode!r} must be one of {_MODES}")
    base = path.parent

    def data_path(key):
        if key not in data:
            _err(path, f"mode {mode!r} needs data.{key} (a file path)")
        if not isinstance(data[key], str):
            _err(path, f"data.{key} must be a string path")
        p = (base / data[key]).resolve()
        if not p.exists():
            _err(path, f"data.{key} = {data[key]!r}: no such file ({p})")
        return p

    kin = data_path("kinematics") if mode in ("kinematics", "joint") else None
    lns = data_path("lensing") if mode in ("lensing", "joint") else None
    emu = raw.get("emulator", {})
    for key in emu:
        if key != "weights":
            _err(path, f"unknown key emulator.{key}; allowed: weights")
    weights = emu.get("weights")
    if weights is not None and (base / weights).exists():
        weights = str((base / weights).resolve())

    priors = dict(raw.get("priors", {}))
    fields = {f.name for f in dataclasses.fields(Priors)} - {"overrides"}
    for key, value in priors.items():
        if key not in fields:
            _err(path, f"unknown key priors.{key}; allowed: {sorted(fields)}")
        if isinstance(value, list):
            priors[key] = tuple(float(v) for v in value)
    try:
        Priors(**priors)
    except (TypeError, ValueError) as e:
        _err(path, str(e))
    inference = dict(_INFERENCE_DEFAULTS)
    for key, value in raw.get("inference", {}).items():
        if key not in _INFERENCE_DEFAULTS:
            _err(path, f"unknown key inference.{key}; allowed: {sorted(_INFERENCE_DEFAULTS)}")
        want = type(_INFERENCE_DEFAULTS[key])
        if want is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            _err(path, f"inference.{key} = {value!r} must be {want.__name__}")
        inference[key] = value
    for key in ("n_starts", "map_steps", "num_samples", "num_chains", "max_tree_depth",
                "position_steps"):
        if inference[key] < 1:
            _err(path, f"inference.{key} = {inference[key]} must be >= 1")
    if not 0 < inference["target_accept"] < 1:
        _err(path, f"inference.target_accept = {inference['target_accept']} must be in (0, 1)")
    for key in ("num_warmup", "map_restarts"):
        if inference[key] < 0:
            _err(path, f"inference.{key} = {inference[key]} must be >= 0")
    if inference["chain_method"] not in CHAIN_METHODS:
        _err(path, f"inference.chain_method = {inference['chain_method']!r} must be one of "
             f"{list(CHAIN_METHODS)}")
    if inference["mass_matrix"] not in MASS_MATRICES:
        _err(path, f"inference.mass_matrix = {inference['mass_matrix']!r} must be one of "
             f"{list(MASS_MATRICES)}")
    for key in ("precision", "light_precision"):
        if inference[key] not in ("float64", "float32"):
            _err(path, f"inference.{key} = {inference[key]!r} must be 'float64' or 'float32'")
    if inference["init_from"]:
        p = (base / inference["init_from"]).resolve()
        p = p / "fit.json" if p.is_dir() else p
        if not p.is_file():
            _err(path, f"inference.init_from = {inference['init_from']!r}: no fit.json there "
                 "(run that fit first)")
        inference["init_from"] = str(p)
    output = raw.get("output", f"{path.stem}-out")
    return FitConfig(mode=mode, output=(base / output).resolve(), kinematics=kin, lensing=lns,
                     weights=weights, priors=priors, inference=inference,
                     name=str(raw.get("name", path.stem)))


def _truth(cfg: FitConfig) -> dict:
    from jkin.data import load_truth
    from jkin.lensing_data import load_lensing_truth

    truth = {}
    if cfg.lensing is not None:
        truth.update(load_lensing_truth(cfg.lensing) or {})
    if cfg.kinematics is not None:
        truth.update(load_truth(cfg.kinematics) or {})
    return truth


def use_host_devices(n: int | None = None) -> bool:
    """Give XLA ``n`` host devices (default: one per CPU core), so that ``chain_method = "auto"``
    runs the chains in parallel (2 cores, 2 chains of a joint fit: 1.6x faster than one after
    the other). Only possible before JAX's first computation - so before importing
    jkin.lensing or jkin.inference (herculens computes when imported): returns False (and
    changes nothing) after it."""
    import os

    import jax

    try:
        jax.config.update("jax_num_cpu_devices", int(n or os.cpu_count() or 1))
    except RuntimeError:
        return False
    return True


#: Where ``jkin fit`` and ``jkin demo`` keep compiled XLA programs unless told otherwise.
DEFAULT_COMPILE_CACHE = "~/.cache/jkin/xla"


def use_compile_cache(path=DEFAULT_COMPILE_CACHE, min_compile_s: float = 1.0) -> Path | None:
    """Keep the XLA programs that took more than ``min_compile_s`` to compile in ``path`` (JAX's
    persistent compilation cache), for this process and the Dask workers it starts later (by the
    environment). A fit compiles its potential, Hessian and NUTS loop afresh in every process
    (10-30 s each for an imaging model); a repeated fit of the same data and settings, or the
    second of two chains run one after the other, loads them instead. ``path`` None or "off":
    no cache (returns None). Call before the first compilation."""
    import os

    import jax

    if path is None or str(path).lower() == "off":
        return None
    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compile cache {path}: cannot create it ({err.strerror})") from None
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_s)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
    return path


def fit_inputs(cfg: FitConfig):
    """The configured fit's NumPyro model and its keyword arguments (data, emulator, priors):
    the data files its mode uses."""
    from jkin import inference as inf

    kwargs = {"priors": inf.Priors(**cfg.priors)}
    if cfg.kinematics is not None and cfg.mode in ("kinematics", "joint"):
        from jkin.data import load_kinematic_data
        from jkin.emulator import Emulator

        kwargs["kin_data"] = load_kinematic_data(cfg.kinematics)
        kwargs["emulator"] = Emulator.load(cfg.weights)
    if cfg.lensing is not None and cfg.mode in ("lensing", "joint"):
        from jkin.lensing import LensModelConfig
        from jkin.lensing_data import load_lensing_data

        kwargs["lens_data"] = load_lensing_data(cfg.lensing)
        kwargs["scales"] = inf.amplitude_scales(kwargs["lens_data"])
        kwargs["config"] = LensModelConfig(light_precision=cfg.inference["light_precision"])
    return inf.MODELS[cfg.mode][0], kwargs


def config_potential(cfg: FitConfig | str | Path, *, mode: str | None = None):
    """The configured fit's ``inference.Potential`` (its model, data, emulator and priors, in
    the precision the fit uses), optionally for another ``mode`` on the same data files; with
    ``load_map`` it puts a finished fit's MAP in the potential's coordinates:

        pot = config_potential("joint.toml")
        x_map = pot.x(load_map("joint/fit.json"))
    """
    from jkin import inference as inf

    if not isinstance(cfg, FitConfig):
        cfg = load_config(cfg)
    if mode is not None and mode != cfg.mode:
        if mode not in _MODES:
            raise ValueError(f"mode: must be one of {_MODES}, got {mode!r}")
        need = {"kinematics": ("kinematics",), "lensing": ("lensing",),
                "joint": ("kinematics", "lensing")}[mode]
        for key in need:
            if getattr(cfg, key) is None:
                raise ValueError(f"data.{key}: a {mode} potential needs it; {cfg.name} has none")
        cfg = dataclasses.replace(cfg, mode=mode)
    model, kwargs = fit_inputs(cfg)
    return inf.Potential(model, kwargs, x64=cfg.inference["precision"] == "float64")


def run_fit(cfg: FitConfig | str | Path, *, progress: bool = True) -> dict:
    """Run one configured fit and write its outputs; returns a short summary dict."""
    from jkin import inference as inf

    if not isinstance(cfg, FitConfig):
        cfg = load_config(cfg)
    t0 = time.perf_counter()
    model, kwargs = fit_inputs(cfg)
    opts = dict(cfg.inference)
    init = load_map(opts["init_from"]) if opts["init_from"] else None
    res = inf.fit(model, kwargs, seed=opts["seed"], n_starts=opts["n_starts"],
                  map_steps=opts["map_steps"], num_warmup=opts["num_warmup"],
                  num_samples=opts["num_samples"], num_chains=opts["num_chains"],
                  max_tree_depth=opts["max_tree_depth"], target_accept=opts["target_accept"],
                  chain_method=opts["chain_method"], z_lens=opts["z_lens"],
                  position_steps=opts["position_steps"], init=init,
                  map_chi2_limit=CHI2_WARN, map_restarts=opts["map_restarts"],
                  mass_matrix=opts["mass_matrix"], edge_reparam=opts["edge_reparam"],
                  curve_reparam=opts["curve_reparam"],
                  x64=opts["precision"] == "float64",
                  progress=progress)
    # the MAP's sites, without per-pixel ones (e.g. a source grid)
    map_values = {k: np.asarray(v) for k, v in res.map["values"].items() if np.size(v) <= 16}
    quality = _map_imaging_quality(res.map, cfg.name) if cfg.lensing is not None else {}
    truth = _truth(cfg)
    out = cfg.output
    out.mkdir(parents=True, exist_ok=True)
    res.idata.to_netcdf(str(out / "posterior.nc"))
    names = list(inf.GALAXY_SITES) + ["log10_M_thetaE", "log10_M_Rsersic"]
    summary = res.summary(names)
    summary.to_csv(out / "summary.csv")
    corner_plot(res.idata, out / "corner.png", truth=truth,
                title=f"{cfg.name}: {cfg.mode} ({res.timings['total_s']:.0f} s)")
    wall = time.perf_counter() - t0
    record = {
        "name": cfg.name, "mode": cfg.mode,
        "data": {"kinematics": str(cfg.kinematics) if cfg.kinematics else None,
                 "lensing": str(cfg.lensing) if cfg.lensing else None},
        "weights": cfg.weights, "priors": cfg.priors, "inference": cfg.inference,
        "map": {k: np.asarray(v).tolist() for k, v in res.map["values"].items()
                if k in inf.GALAXY_SITES},
        "map_latent": {k: v.tolist() for k, v in map_values.items()},
        "map_log_density": float(res.map["log_density"][res.map["best"]]),
        **quality,
        "timings_s": {**res.timings, "wall": wall},
        "chain_method": res.mcmc.chain_method,  # as run ("auto" resolved)
        # sites whose sampler coordinate followed their posterior against a bound (loc, scale)
        "edge_sites": getattr(res.mcmc, "jkin_edge_sites", {}),
        # sites sampled as offsets from a cubic in another (inference.curve_shifts)
        "curve_sites": inf.curve_sites(res.mcmc),
        "max_rhat": float(summary["r_hat"].loc[list(inf.GALAXY_SITES)].max()),
        "min_ess_bulk": float(summary["ess_bulk"].loc[list(inf.GALAXY_SITES)].min()),
        "divergences": int(np.asarray(res.idata.sample_stats["diverging"]).sum())
        if "diverging" in res.idata.sample_stats else None,
        "truth": {k: np.asarray(v).tolist() for k, v in truth.items()},
        "not_converged": _convergence_warning(summary, cfg.name),
    }
    (out / "fit.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"name": cfg.name, "mode": cfg.mode, "output": str(out), "wall_s": wall,
            "max_rhat": record["max_rhat"], "min_ess_bulk": record["min_ess_bulk"],
            "summary": summary}


#: A MAP image chi^2 per pixel above this is reported as a probable wrong optimum.
CHI2_WARN = 1.5
#: Split R-hat at or above this (on any of the 13 parameters) is reported as not converged.
RHAT_WARN = 1.01


def _convergence_warning(summary, name) -> list[str]:
    """The galaxy parameters whose split R-hat is >= RHAT_WARN (or not finite), worst first;
    a warning on stderr naming them. Their intervals are not to be trusted yet."""
    import sys

    from jkin.inference import GALAXY_SITES

    rhat = summary["r_hat"].loc[list(GALAXY_SITES)]
    slow = rhat[~(rhat < RHAT_WARN)].sort_values(ascending=False, na_position="first")
    if len(slow):
        worst = ", ".join(f"{k} {v:.3f}" for k, v in slow.head(4).items())
        more = f" and {len(slow) - 4} more" if len(slow) > 4 else ""
        print(f"warning: {name}: chains not converged: R-hat {worst}{more} (>= {RHAT_WARN}); "
              "their intervals are not reliable: sample longer (inference.num_warmup, "
              "num_samples) or, where the posterior presses on a prior edge, raise "
              "inference.target_accept", file=sys.stderr, flush=True)
    return list(slow.index)


def _map_imaging_quality(map_result, name) -> dict:
    """The image's chi^2 per unmasked pixel at the MAP (``inference.find_map`` restarts the blind
    search above CHI2_WARN) and the restarts it took; a warning when it is still > CHI2_WARN (on
    a recovery mock a 2-start blind fit ended at 3.58 with gamma 1.62 against 1.84, its chains
    stuck there; a good fit gives ~1.00)."""
    import sys

    per_pixel = map_result["imaging_chi2_per_pixel"]
    if per_pixel > CHI2_WARN:
        print(f"warning: {name}: image chi^2 per pixel at the MAP is {per_pixel:.2f} (> "
              f"{CHI2_WARN}) after {map_result['restarts']} restart(s): probably a wrong "
              "optimum; try more inference.n_starts or inference.map_restarts",
              file=sys.stderr, flush=True)
    return {"map_imaging_chi2_per_pixel": per_pixel, "map_restarts": map_result["restarts"],
            "map_round_log_density": map_result["round_log_density"]}


def load_map(fit_json) -> dict:
    """The MAP recorded by an earlier fit (its fit.json): constrained values of its latent sites
    (those of up to 16 elements) and of the deterministic R_sersic, inclination, phi."""
    rec = json.loads(Path(fit_json).read_text())
    if "map_latent" not in rec:
        raise ValueError(f"inference.init_from: {fit_json} has no 'map_latent' (written by an "
                         "older jkin: run that fit again)")
    return rec["map_latent"]


def corner_plot(idata, path, *, truth=None, names=None, title=None):
    """Pair plot of the 13 parameters (arviz), truths as reference lines for those that have
    one (a lensing mock's truth has no inclination, beta_z or D_d: those panels have none, and
    arviz's warning that says so is not passed on)."""
    import warnings

    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jkin.inference import GALAXY_SITES

    names = list(GALAXY_SITES) if names is None else list(names)
    az.rcParams["plot.max_subplots"] = max(az.rcParams["plot.max_subplots"], len(names) ** 2)
    ref = {k: float(np.asarray(truth[k]).ravel()[0]) for k in names
           if truth and k in truth and np.size(truth[k]) == 1}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Argument reference_values does not include",
                                UserWarning)
        axes = az.plot_pair(idata, var_names=names, kind="scatter", marginals=True,
                            scatter_kwargs={"alpha": 0.15, "s": 2},
                            reference_values=ref or None, textsize=16,
                            figsize=(2 * len(names), 2 * len(names)))
    fig = np.ravel(axes)[0].figure
    if title:
        fig.suptitle(title, fontsize=28)
    fig.savefig(path, dpi=40)
    plt.close(fig)


def _run_chain(paths, progress, devices=None, release=False):
    """Fits run in order in one process; each configuration is read when its turn comes, so
    that ``init_from`` may name an earlier fit of the chain. ``devices``: host devices to give
    XLA first (``use_host_devices``; a Dask worker process that has not computed yet).
    ``release``: drop JAX's compiled executables when the chain is done (a Dask task). Freeing
    them takes seconds (2 s for the demo's lensing-only fit): left to the worker process's
    exit, the demo's lensing-then-joint worker outlived the 4 s the nanny waits at
    ``cluster.close()`` and was killed with a WARNING; a worker of a long-lived cluster would
    hold them until it dies."""
    if devices:
        use_host_devices(devices)
    out = []
    for path in paths:
        r = run_fit(path, progress=progress)
        r.pop("summary")
        out.append(r)
    if release:
        import jax

        jax.clear_caches()
    return out


def run_many(paths, *, scheduler: str | None = None, n_workers: int | None = None,
             progress: bool = True, devices: list | None = None) -> list[dict]:
    """Fit several configurations: in this process if one, else on Dask (a LocalCluster with
    ``n_workers`` single-threaded workers, or the cluster at ``scheduler``). An item may also be
    a list of configurations, run in order in one task (e.g. a joint fit ``init_from`` the
    lensing fit before it); only the first of such a chain is checked before anything runs.
    ``devices``: per item, the host devices of the Dask worker that runs it (None: XLA's
    default, one), so that its chains can run in parallel."""
    chains = [list(p) if isinstance(p, (list, tuple)) else [p] for p in paths]
    if devices is not None and len(devices) != len(chains):
        raise ValueError(f"devices: {len(devices)} entries for {len(chains)} items")
    for chain in chains:  # every file that can be read now is checked before anything runs
        chain[0] = load_config(chain[0])
    if len(chains) == 1 and scheduler is None:
        return _run_chain(chains[0], progress)
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, dashboard_address=":0")
    client = Client(scheduler or cluster)
    try:
        devices = [None] * len(chains) if devices is None else devices
        futures = [client.submit(_run_chain, c, False, d, release=True, pure=False)
                   for c, d in zip(chains, devices)]
        results = []
        for fut in as_completed(futures):
            for r in fut.result():
                print(f"{r['name']}: {r['mode']} fit done in {r['wall_s']:.0f} s, "
                      f"max R-hat {r['max_rhat']:.3f} -> {r['output']}")
                results.append(r)
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------------------------
# jkin demo

#: Sampler settings of ``jkin demo`` (sized for <= 10 minutes for all three fits, 2-core CPU).
DEMO_INFERENCE = dict(seed=0, n_starts=1, map_steps=2000, num_warmup=150, num_samples=150,
                      num_chains=2, max_tree_depth=6, position_steps=600)
#: Per-mode changes to ``DEMO_INFERENCE``: the kinematics-only posterior is broad and curved
#: (theta_E against the distances), its trees fill any depth (mean 60 of 63 steps at depth 6),
#: and each step costs ~4x a lensing one; depth 5 halves its time, float32 (its own process, so
#: no float32/float64 mixing) makes each step 1.4x cheaper (10.4 against 15.0 ms on recovery
#: system 2, benchmarks/potential_speed.py; 1.7x before session 12 fixed the network's float64
#: promotion, and the timings below predate that fix). The demo is
#: CPU-bound (1.9 of 2 cores busy): 2 x (150 + 150) kinematics-only draws took a third of its
#: CPU time (367 of 1152 s) for a chain that still does not converge at that length (R-hat 1.4);
#: 2 x (100 + 100) keeps the demo within 10 minutes. Shorter trees would cost less per draw but,
#: on trajectories that never turn, move less per leapfrog step.
DEMO_MODE_INFERENCE = {"kinematics": dict(max_tree_depth=5, precision="float32",
                                          num_warmup=100, num_samples=100),
                       # the joint fit starts at the lensing-only MAP: half the L-BFGS budget
                       "joint": dict(map_steps=1000)}
#: The demo samples with the compact emulator (64 x 6; 4x cheaper than the default, test median
#: error 0.63 km/s against 5-10% velocity errors in the data).
DEMO_WEIGHTS = "jkin-cips-compact"
#: The paper-sized settings ``jkin demo --full`` uses.
FULL_INFERENCE = dict(seed=0, n_starts=4, map_steps=3000, num_warmup=500, num_samples=1000,
                      num_chains=4, max_tree_depth=8)


def write_demo_data(out, seed: int = 0) -> dict:
    """The demo's JAM-truth mock: IFU kinematics + imaging and delays of one lens
    (``jkin.mocks.PAPER_MOCK_THETA``), as FITS files with their TRUTH tables."""
    from jkin import lensing, mocks
    from jkin.data import DEFAULT_SUPERSAMPLING, DEFAULT_SUPERSAMPLING_RADII
    from jkin.lensing_data import save_lensing_data

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kin_path, lens_path = out / "ifu.fits", out / "lens.fits"
    # the truth at mocks.TRUTH_SUPERSAMPLING, the model at the (coarser, cheaper) default
    mocks.make_mock_ifu(seed=seed, path=kin_path, overwrite=True,
                        model_supersampling=DEFAULT_SUPERSAMPLING,
                        model_supersampling_radii=DEFAULT_SUPERSAMPLING_RADII)
    # rendered (and fitted) without supersampling: 3x cheaper per likelihood call (3.3 against
    # 10 ms for value + gradient in float64), which is what lets the demo finish in minutes
    mock = lensing.make_mock_lensing(seed=seed, settings=lensing.MockSettings(
        supersampling=1, mock_supersampling=1))
    save_lensing_data(lens_path, mock.data, truth=mock.truth, overwrite=True)
    return {"kinematics": kin_path, "lensing": lens_path}


def _toml_value(v):
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_config(path, *, mode, data: dict, output, inference: dict, weights=None, name=None):
    """Write a ``jkin fit`` configuration file."""
    path = Path(path)
    lines = [f"name = {_toml_value(name or path.stem)}", f"mode = {_toml_value(mode)}",
             f"output = {_toml_value(str(output))}", "", "[data]"]
    for key in ("kinematics", "lensing"):
        if key in data and (key in mode or mode == "joint"):
            lines.append(f"{key} = {_toml_value(str(data[key]))}")
    if weights is not None:
        lines += ["", "[emulator]", f"weights = {_toml_value(weights)}"]
    lines += ["", "[inference]"] + [f"{k} = {_toml_value(v)}" for k, v in inference.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def demo(out="jkin-demo", *, seed: int = 0, inference: dict | None = None,
         parallel: bool = True, progress: bool = True) -> dict:
    """The main job on the bundled default: a JAM-truth mock, fitted kinematics-only,
    lensing-only and jointly; posteriors, corner plots, a comparison table and plot.
    ``parallel``: kinematics-only in one process, lensing-only then joint in another (Dask
    LocalCluster, 2 workers)."""
    import pandas as pd

    t0 = time.perf_counter()
    out = Path(out).resolve()
    per_mode = DEMO_MODE_INFERENCE if inference is None else {}
    if not parallel:  # one process: float64 throughout (no float32/float64 mixing)
        per_mode = {m: {k: v for k, v in d.items() if k != "precision"}
                    for m, d in per_mode.items()}
    inference = dict(DEMO_INFERENCE, seed=seed) if inference is None else dict(inference)
    print(f"jkin demo: writing the JAM-truth mock to {out}/data ...")
    paths = write_demo_data(out / "data", seed)
    t_data = time.perf_counter() - t0
    print(f"  mock written in {t_data:.1f} s")
    data = {k: Path("data") / p.name for k, p in paths.items()}
    cfgs = {mode: write_config(out / f"{mode}.toml", mode=mode, data=data, output=mode,
                               inference=dict(inference, **per_mode.get(mode, {})),
                               name=f"demo-{mode}", weights=DEMO_WEIGHTS)
            for mode in ("kinematics", "lensing")}
    cfgs["joint"] = write_config(out / "joint.toml", mode="joint", data=data, output="joint",
                                 inference=dict(inference, init_from="lensing",
                                                **per_mode.get("joint", {})),
                                 name="demo-joint", weights=DEMO_WEIGHTS)
    # two processes (Dask): kinematics-only in one, its chains one after the other; lensing-only
    # then the joint fit, started at the lensing-only MAP (so it only has to move the kinematic
    # parameters), in the other, its chains in parallel on two host devices: they share the
    # cores with the kinematics fit, then have them to themselves when it is done
    print("jkin demo: kinematics-only | lensing-only then joint, in two processes ...")
    chains = [[cfgs["kinematics"]], [cfgs["lensing"], cfgs["joint"]]]
    results = {}
    if parallel:
        runs = run_many(chains, n_workers=2, progress=False, devices=[1, 2])
    else:
        runs = [r for chain in chains for r in _run_chain(chain, progress)]
    for r in runs:
        results[r["mode"]] = r
    for mode in ("kinematics", "lensing", "joint"):
        r = results[mode]
        r["summary"] = pd.read_csv(Path(r["output"]) / "summary.csv", index_col=0)
        print(f"  {mode}: {r['wall_s']:.0f} s, max R-hat {r['max_rhat']:.3f}, "
              f"min bulk ESS {r['min_ess_bulk']:.0f}"
              + ("" if r["max_rhat"] < RHAT_WARN else
                 f"  (not converged at demo length: R-hat >= {RHAT_WARN})"))
    results = {m: results[m] for m in ("kinematics", "lensing", "joint")}
    truth = _truth(load_config(out / "joint.toml"))
    table = comparison_table(results, truth)
    (out / "comparison.txt").write_text(table + "\n")
    comparison_plot(results, truth, out / "comparison.png")
    wall = time.perf_counter() - t0
    print("\n" + table)
    print(f"\njkin demo finished in {wall:.0f} s ({wall / 60:.1f} min); results in {out}")
    return {"results": results, "wall_s": wall, "out": str(out)}


def comparison_table(results: dict, truth: dict) -> str:
    """Posterior mean +- sd of the 13 parameters per fit, beside the truth."""
    from jkin.inference import GALAXY_SITES

    modes = list(results)
    head = f"{'parameter':>14s} {'truth':>10s} " + " ".join(f"{m:>22s}" for m in modes)
    rows = [head]
    for name in list(GALAXY_SITES) + ["log10_M_thetaE", "log10_M_Rsersic"]:
        t = truth.get(name)
        ts = f"{float(np.ravel(t)[0]):10.4g}" if t is not None else f"{'':>10s}"
        cells = []
        for m in modes:
            s = results[m]["summary"]
            cells.append(f"{s.loc[name, 'mean']:11.4g} +- {s.loc[name, 'sd']:<8.3g}")
        rows.append(f"{name:>14s} {ts} " + " ".join(f"{c:>22s}" for c in cells))
    return "\n".join(rows)


def comparison_plot(results: dict, truth: dict, path) -> None:
    """Posterior (mean - truth)/truth-scale with 1 sd bars per parameter and fit: what the
    kinematics add to the lensing (D_d, beta_z, inclination, the mass-sheet-sensitive gamma)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jkin.inference import GALAXY_SITES

    names = [n for n in GALAXY_SITES if n in truth]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, (mode, r) in enumerate(results.items()):
        s = r["summary"]
        x = np.arange(len(names)) + (k - 1) * 0.25
        y = [s.loc[n, "mean"] - float(truth[n]) for n in names]
        scale = np.array([abs(float(truth[n])) if abs(float(truth[n])) > 1e-3 else 1.0
                          for n in names])
        ax.errorbar(x, np.array(y) / scale, yerr=np.array([s.loc[n, "sd"] for n in names]) / scale,
                    fmt="o", ms=4, capsize=2, label=mode)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("(posterior mean - truth) / |truth|, bars: 1 sd")
    ax.set_yscale("symlog", linthresh=0.05)
    ax.legend()
    ax.set_title("jkin demo: kinematics-only, lensing-only and joint fits of one JAM-truth mock")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
