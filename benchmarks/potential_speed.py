"""Cost of one NUTS step's work - value + gradient of the posterior potential - by fit mode and
number of chains evaluated together (vmapped, as ``chain_method="vectorized"`` does on a GPU).

    python benchmarks/potential_speed.py CONFIG.toml [--modes kinematics lensing joint]
        [--chains 1 2 8 32] [--repeats 20] [--precision float64]

CONFIG is a ``jkin fit`` configuration with both data files (e.g. a recovery system's
``OUT/system02/joint.toml`` written by ``benchmarks/recovery.py``); each mode's model is built
from it (``jkin.fitting.config_potential``) in the precision the fits use (float64, the emulator's
network in float32) and differentiated at the model's initial point, chains spread around it.
Prints per mode and chain count the median wall time of one call (compilation excluded) and per
chain, and the potential's sequential loop iterations (``lax.scan`` / ``fori_loop`` trip counts,
nested ones multiplied): on a GPU each iteration is at least one kernel launch, so that count,
not the arithmetic, bounds a step's latency there. One precision per process (JAX's eager op
cache must not see both).

``--compile`` adds, per mode, the compilation and one run of the other two programs a fit
compiles: the exact Hessian that ``inference.laplace`` takes (MAP polish, NUTS mass matrix) and
one NUTS transition (dense mass matrix, tree depth 6) on the potential.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np


def loop_iterations(jaxpr, mult: int = 1) -> tuple[int, int]:
    """(number of loops, sequential iterations) in a closed jaxpr, nested loops multiplied."""
    loops = iters = 0
    for eqn in jaxpr.eqns:
        inner = mult
        if eqn.primitive.name == "scan":  # an unrolled scan runs length / unroll iterations
            length, unroll = eqn.params["length"], eqn.params.get("unroll", 1)
            trips = 1 if unroll is True else -(-length // max(int(unroll), 1))
            loops, iters, inner = loops + 1, iters + mult * trips, mult * trips
        elif eqn.primitive.name == "while":  # trip count unknown: counted once
            loops, iters = loops + 1, iters + mult
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    n, k = loop_iterations(sub, inner)
                    loops, iters = loops + n, iters + k
    return loops, iters


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--modes", nargs="+", default=["kinematics", "lensing", "joint"])
    ap.add_argument("--chains", type=int, nargs="+", default=[1, 2, 8, 32])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--precision", choices=("float64", "float32"), default="float64")
    ap.add_argument("--compile", action="store_true",
                    help="also time compiling the Hessian and one NUTS transition")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp

    from jkin.fitting import config_potential, load_config

    cfg = load_config(args.config)
    if cfg.kinematics is None or cfg.lensing is None:
        ap.error(f"{args.config}: needs both data files ([data] kinematics and lensing)")
    cfg = dataclasses.replace(cfg, inference={**cfg.inference, "precision": args.precision})
    use = args.precision == "float64"
    dev = jax.devices()[0]
    print(f"device: {jax.default_backend()} ({getattr(dev, 'device_kind', dev)}); "
          f"{cfg.name}, weights {cfg.weights}, potential in {args.precision}"
          + (" (emulator network in float32)" if use else ""))
    print(f"{'mode':>10s} {'chains':>6s} {'ms / call':>10s} {'ms / chain':>10s} "
          f"{'compile s':>9s} {'loops':>5s} {'loop iterations':>15s}")
    for mode in args.modes:
        pot = config_potential(cfg, mode=mode)
        with jax.enable_x64(use):
            x0 = jnp.asarray(pot.x_init)
            vg = jax.value_and_grad(pot.fn)
            loops, iters = loop_iterations(jax.make_jaxpr(vg)(x0).jaxpr)
            for n in args.chains:
                xs = x0 + 1e-3 * jax.random.normal(jax.random.PRNGKey(0), (n, pot.size), x0.dtype)
                fn = jax.jit(jax.vmap(vg))
                t0 = time.perf_counter()
                jax.block_until_ready(fn(xs))
                compile_s = time.perf_counter() - t0
                ts = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    jax.block_until_ready(fn(xs))
                    ts.append(time.perf_counter() - t0)
                ms = 1e3 * float(np.median(ts))
                print(f"{mode:>10s} {n:6d} {ms:10.2f} {ms / n:10.2f} {compile_s:9.1f} "
                      f"{loops:5d} {iters:15d}", flush=True)
            if args.compile:
                for what, fn, arg in compile_targets(pot, x0):
                    compile_s, ms = _timed(fn, arg)
                    print(f"{mode:>10s} {what:>26s}: compile {compile_s:6.1f} s, then "
                          f"{ms:8.1f} ms", flush=True)


def _timed(fn, arg):
    """(compile + first call [s], second call [ms])."""
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    t1 = time.perf_counter()
    jax.block_until_ready(fn(arg))
    return t1 - t0, 1e3 * (time.perf_counter() - t1)


def compile_targets(pot, x0) -> list:
    """(name, function, argument): the potential's value + gradient for one chain (what the MAP
    stage runs), its exact Hessian, one NUTS transition (``pot``: an ``inference.Potential``)."""
    import jax
    from numpyro.infer import NUTS

    z0 = pot.latents(x0)
    kernel = NUTS(potential_fn=pot.potential_fn, dense_mass=True, max_tree_depth=6)
    state = kernel.init(jax.random.PRNGKey(0), 10, z0, model_args=(), model_kwargs={})
    return [("value + gradient (1 chain)", pot.value_and_grad, x0),
            ("Hessian (exact)", pot.hessian, x0),
            ("NUTS transition", jax.jit(lambda st: kernel.sample(st, (), {})), state)]


if __name__ == "__main__":
    main()
