"""Training the CIPS emulator on a JAM training set (optax; resumable, deterministic).

    jkin train RUN_DIR --data DIR [--steps N] [--max-minutes M] [--width 128 --layers 8 ...]
    jkin emulator export RUN_DIR --out weights/NAME [--test DIR]

Loss. The network predicts the signed <v^2> (see network.py); the loss is the mean square of
(v2_pred - v2_true) / (2 max(v_true, V_FLOOR)), i.e. the squared error in km/s where v_rms is
well above V_FLOOR (d(v^2) = 2 v dv; the paper's MSE on v), smoothly turning into a v^2 error on
the zero-valued pixels, where v_true = 0 and JAM's negative <v^2> still teaches the network the
shape of the field.

Determinism and resumption. The batch at step t is a pure function of (seed, t): epoch
e = t // steps_per_epoch draws its own permutation from default_rng([seed, e]). A checkpoint
(flax msgpack of params, optimiser state and step; never pickle) is written atomically every
``checkpoint_minutes`` and when a chunk ends (``max_minutes``), so a killed run loses at most
that much and a resumed run continues with the same batches and learning rate. The learning-rate
schedule (linear warm-up, cosine decay) is fixed by the total ``steps`` given at the start.

Warm starts. ``init_from`` names an earlier run directory whose weights (same architecture)
initialise a new run with a fresh optimiser and its own warm-up + cosine schedule: a second,
lower cosine cycle on the same or a larger training set is how the bundled weights were refined.

Hardware. JAX uses a GPU when one is visible; on a 2-core CPU a chunk of <= 2 hours is
``--max-minutes 110``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jkin import conventions as cv
from jkin.emulator.network import CIPS, CIPSConfig, predict

__all__ = ["TrainConfig", "train", "evaluate_maps", "export", "V_FLOOR"]

#: Below this v_rms [km/s] the loss weights errors in v^2 rather than in v.
V_FLOOR = 30.0
RUN_CONFIG = "run.json"
CHECKPOINT = "checkpoint.msgpack"
LOG = "log.csv"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: str
    n_maps: int | None = None  # use the first n_maps samples (None: all; they must be done)
    network: CIPSConfig = CIPSConfig()
    steps: int = 100_000
    batch_maps: int = 32
    points_per_map: int = 128
    peak_lr: float = 2e-3
    end_lr: float = 1e-5
    warmup_steps: int = 1000
    clip_norm: float = 1.0
    val_maps: int = 256
    seed: int = 0
    init_from: str | None = None  # start from this run directory's weights (fresh optimiser)

    def __post_init__(self):
        checks = [
            ("steps", self.steps >= 1, ">= 1"),
            ("warmup_steps", 0 <= self.warmup_steps < self.steps, f"in [0, steps = {self.steps})"),
            ("batch_maps", self.batch_maps >= 1, ">= 1"),
            ("points_per_map", self.points_per_map >= 1, ">= 1"),
            ("peak_lr", self.peak_lr > 0, "> 0"),
            ("end_lr", 0 <= self.end_lr <= self.peak_lr, "in [0, peak_lr]"),
            ("n_maps", self.n_maps is None or self.n_maps >= 1, ">= 1 or None"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} = {getattr(self, name)} must be {allowed}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["network"] = CIPSConfig(**d["network"])
        return cls(**d)


def _schedule(cfg: TrainConfig):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.peak_lr, warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.steps, end_value=cfg.end_lr,
    )


def _optimizer(cfg: TrainConfig):
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(_schedule(cfg)))


def _loss(network, params, theta, x, y, v2_true):
    _, v2 = predict(network, params, theta, x, y)
    v_true = jnp.sqrt(jnp.clip(v2_true, 0.0, None))
    scale = 2.0 * jnp.maximum(v_true, V_FLOOR)
    return jnp.mean(((v2 - v2_true) / scale) ** 2)


def _make_step(cfg: TrainConfig):
    opt = _optimizer(cfg)
    network = cfg.network

    @jax.jit
    def step(params, opt_state, theta, x, y, v2):
        loss, grads = jax.value_and_grad(lambda p: _loss(network, p, theta, x, y, v2))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def init_params(network: CIPSConfig, seed: int = 0):
    z = jnp.zeros((1, cv.N_PARAMS))
    feats = jnp.zeros((1, 2, 4))
    return CIPS(network).init(jax.random.PRNGKey(seed), z, feats)["params"]


def _batch_indices(cfg: TrainConfig, n_train: int, step: int) -> np.ndarray:
    per_epoch = max(1, n_train // cfg.batch_maps)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([cfg.seed, epoch]).permutation(n_train)
    return perm[k * cfg.batch_maps:(k + 1) * cfg.batch_maps]


def _split(data: dict, cfg: TrainConfig):
    n = len(data["params"])
    n_val = min(cfg.val_maps, n // 10)
    if n - n_val < cfg.batch_maps:
        raise ValueError(f"the training set has {n} maps; at least {cfg.batch_maps + n_val} needed")
    train = {k: v[: n - n_val] for k, v in data.items()}
    val = {k: v[n - n_val:] for k, v in data.items()}
    return train, val


def evaluate_maps(network, params, theta, x, y, v2_true, batch: int = 64) -> dict:
    """Per-map mean error eps and mean |eps| [km/s] of v_rms (the paper's Eqs. 9-10)."""
    fwd = jax.jit(lambda p, t, xx, yy: predict(network, p, t, xx, yy)[0])
    eps, abs_eps = [], []
    for i in range(0, len(theta), batch):
        sl = slice(i, i + batch)
        v = np.asarray(fwd(params, jnp.asarray(theta[sl]), jnp.asarray(x[sl]), jnp.asarray(y[sl])))
        v_true = np.sqrt(np.clip(v2_true[sl], 0, None))
        eps.append((v - v_true).mean(axis=1))
        abs_eps.append(np.abs(v - v_true).mean(axis=1))
    return {"eps": np.concatenate(eps), "abs_eps": np.concatenate(abs_eps)}


def load_prefix(path, n_maps: int | None) -> dict:
    """The first ``n_maps`` samples of a training set (all if None); they must be finished.

    Samples are deterministic by index, so a prefix is a fixed dataset even while the set is
    still being generated or extended."""
    from jkin.dataset import load

    if n_maps is None:
        return load(path)
    data = load(path, allow_incomplete=True)
    keep = data["index"] < n_maps
    if keep.sum() != n_maps:
        raise ValueError(f"only {int(keep.sum())} of the first {n_maps} samples of {path} are "
                         "finished; generate more or lower n_maps")
    order = np.argsort(data["index"][keep])
    return {k: v[keep][order] for k, v in data.items()}


def _save_checkpoint(run: Path, params, opt_state, step: int) -> None:
    from flax import serialization

    blob = serialization.to_bytes({"params": params, "opt_state": opt_state, "step": step})
    tmp = run / (CHECKPOINT + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, run / CHECKPOINT)


def _load_checkpoint(run: Path, params, opt_state):
    from flax import serialization

    target = {"params": params, "opt_state": opt_state, "step": 0}
    state = serialization.from_bytes(target, (run / CHECKPOINT).read_bytes())
    return state["params"], state["opt_state"], int(state["step"])


def load_run(run) -> tuple[TrainConfig, dict, int]:
    """(config, params, step) of a training run directory."""
    run = Path(run)
    cfg = TrainConfig.from_json(json.loads((run / RUN_CONFIG).read_text())["config"])
    params = init_params(cfg.network, cfg.seed)
    opt_state = _optimizer(cfg).init(params)
    params, _, step = _load_checkpoint(run, params, opt_state)
    return cfg, params, step


def train(run, cfg: TrainConfig | None = None, *, max_minutes: float | None = None,
          max_steps: int | None = None, checkpoint_minutes: float = 5.0,
          progress: bool = True) -> dict:
    """Start or resume the training run in directory ``run``; returns a summary dict.

    A new run needs ``cfg``; an existing one continues with its stored config (a different
    ``cfg`` is an error). Stops at ``cfg.steps``, after ``max_minutes`` or after ``max_steps``
    more steps, whichever comes first, writing a checkpoint each time.
    """
    from tqdm.auto import tqdm

    run = Path(run)
    cfg_path = run / RUN_CONFIG
    if cfg_path.exists():
        stored = TrainConfig.from_json(json.loads(cfg_path.read_text())["config"])
        if cfg is not None and cfg != stored:
            raise ValueError(f"{run} is a run with other settings; use another run directory "
                             "or the same settings")
        cfg = stored
    elif cfg is None:
        raise ValueError(f"{run} holds no training run; give a configuration to start one")
    else:
        run.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(json.dumps({"config": cfg.to_json()}, indent=2) + "\n")

    data = load_prefix(cfg.data, cfg.n_maps)
    if data["x"].shape[1] < cfg.points_per_map:
        raise ValueError(f"points_per_map = {cfg.points_per_map} exceeds the "
                         f"{data['x'].shape[1]} points per map of {cfg.data}")
    train_set, val_set = _split(data, cfg)
    n_train = len(train_set["params"])
    P = cfg.points_per_map

    params = init_params(cfg.network, cfg.seed)
    if cfg.init_from is not None:
        parent_cfg, params, _ = load_run(cfg.init_from)
        if parent_cfg.network != cfg.network:
            raise ValueError(f"init_from = {cfg.init_from} has network {parent_cfg.network}, "
                             f"not {cfg.network}")
    opt_state = _optimizer(cfg).init(params)
    start = 0
    if (run / CHECKPOINT).exists():
        params, opt_state, start = _load_checkpoint(run, params, opt_state)
    step_fn = _make_step(cfg)
    end = cfg.steps if max_steps is None else min(cfg.steps, start + max_steps)

    t0 = time.perf_counter()
    last_ckpt = t0
    log = open(run / LOG, "a")
    if log.tell() == 0:
        log.write("step,loss,lr,val_median_abs_eps,val_p95_abs_eps,wall_s\n")
    schedule = _schedule(cfg)
    step = start
    losses = []
    bar = tqdm(total=cfg.steps, initial=start, unit="step", desc="training", disable=not progress)
    try:
        while step < end:
            idx = _batch_indices(cfg, n_train, step)
            batch = [jnp.asarray(train_set[k][idx][:, :P]) for k in ("params", "x", "y", "v2")]
            params, opt_state, loss = step_fn(params, opt_state, *batch)
            step += 1
            losses.append(float(loss))
            bar.update(1)
            now = time.perf_counter()
            if step % 1000 == 0 or step == end:
                m = evaluate_maps(cfg.network, params, val_set["params"], val_set["x"],
                                  val_set["y"], val_set["v2"])
                med, p95 = np.median(m["abs_eps"]), np.percentile(m["abs_eps"], 95)
                log.write(f"{step},{np.mean(losses[-1000:]):.6g},{float(schedule(step)):.3e},"
                          f"{med:.4f},{p95:.4f},{now - t0:.1f}\n")
                log.flush()
                bar.set_postfix(loss=f"{np.mean(losses[-1000:]):.3g}", val_med=f"{med:.2f}")
            if now - last_ckpt > 60 * checkpoint_minutes:
                _save_checkpoint(run, params, opt_state, step)
                last_ckpt = now
            if max_minutes is not None and now - t0 > 60 * max_minutes:
                break
    finally:
        _save_checkpoint(run, params, opt_state, step)
        bar.close()
        log.close()
    return {"run": str(run), "step": step, "steps": cfg.steps, "done": step >= cfg.steps,
            "wall_s": time.perf_counter() - t0,
            "loss": float(np.mean(losses[-100:])) if losses else float("nan")}


def export(run, out_stem, *, test: str | None = None, extra: dict | None = None) -> Path:
    """Write the run's current weights + manifest to ``out_stem``.{safetensors,json}."""
    from jkin.dataset import load, status
    from jkin.emulator.io import save_weights
    from jkin.emulator.network import SOFTPLUS_TAU, V_SCALE, _R_SOFT, _Z_RANGES

    cfg, params, step = load_run(run)
    data_status = status(cfg.data)
    n_used = cfg.n_maps if cfg.n_maps is not None else data_status["n"]
    manifest = {
        "config": cfg.network.to_json(),
        "param_names": list(cv.PARAM_NAMES),
        "input_normalisation": {
            "features": ["theta_E", "gamma", "q_mass", "q_light", "R_sersic/theta_E", "n_sersic",
                         "beta_z", "inclination"],
            "ranges": _Z_RANGES.tolist(),
            "map": "z = 2 (f - lo) / (hi - lo) - 1",
            "coordinate_softening_arcsec": _R_SOFT,
        },
        "output": {"v2": f"theta_E * {V_SCALE}^2 * network output [(km/s)^2]",
                   "vrms": f"sqrt({SOFTPLUS_TAU} * softplus(v2 / {SOFTPLUS_TAU})) [km/s]"},
        "training_space": "jkin.conventions (SKiNN's): theta_E [0.5, 2], gamma [1.5, 2.5], "
                          "q_mass, q_light [0.6, 1], R_sersic [0.5, 1] theta_E, n_sersic [2, 4], "
                          "beta_z [-0.4, 0.4], inclination [arccos(min q) + 2 deg, 90 deg]",
        "units": "v_rms km/s at D_d = 1215.739 Mpc, D_dt = 2886.54 Mpc; x, y arcsec",
        "dataset": {"path": str(cfg.data), "n_maps_used": n_used,
                    "spec": data_status["manifest"]["spec"],
                    "versions": data_status["manifest"]["versions"]},
        "training": {**cfg.to_json(), "steps_done": step},
    }
    if test is not None:
        t = load(test)
        m = evaluate_maps(cfg.network, params, t["params"], t["x"], t["y"], t["v2"])
        manifest["test"] = {
            "path": str(test), "n_maps": len(t["params"]),
            "median_abs_eps": float(np.median(m["abs_eps"])),
            "p95_abs_eps": float(np.percentile(m["abs_eps"], 95)),
            "mean_eps": float(np.mean(m["eps"])), "std_eps": float(np.std(m["eps"])),
        }
    if extra:
        manifest.update(extra)
    return save_weights(out_stem, params, manifest)
