"""NUTS wall time by chain method (vectorized / sequential / parallel) on one configured fit.

    python benchmarks/sampler_speed.py CONFIG.toml [--init FIT.json] [--warmup 40 --samples 40]

Runs the fit's MAP step once (from ``--init``'s recorded MAP when given, else as configured),
then the same short NUTS run - same initial points, same keys, hence the same trajectories up
to rounding - under each chain method, and prints its wall time (compilation included) and the
leapfrog steps per chain of the sampling phase. "vectorized" advances both chains in one
vmapped loop (each iteration lasts as long as the longer tree), "sequential" runs them one after
the other, "parallel" on separate XLA host devices (``jkin.fitting.use_host_devices``).
"""

from __future__ import annotations

import argparse
import os
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--init", default=None, help="fit.json whose MAP starts the L-BFGS")
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["vectorized", "sequential", "parallel"])
    args = ap.parse_args()
    from jkin.fitting import fit_inputs, load_config, load_map, use_host_devices

    if "parallel" in args.methods:
        use_host_devices(args.chains)

    import jax
    import numpy as np

    from jkin import inference as inf

    cfg = load_config(args.config)
    opts = cfg.inference
    model, kwargs = fit_inputs(cfg)
    init = load_map(args.init) if args.init else (
        load_map(opts["init_from"]) if opts["init_from"] else None)
    x64 = opts["precision"] == "float64"
    t0 = time.perf_counter()
    m = inf.find_map(model, kwargs, seed=opts["seed"], n_starts=opts["n_starts"],
                     n_steps=opts["map_steps"] if init is None else 200,
                     position_steps=opts["position_steps"], x64=x64, init=init, progress=False)
    print(f"{cfg.name} ({cfg.mode}): MAP in {time.perf_counter() - t0:.0f} s; "
          f"{jax.device_count()} host device(s), {os.cpu_count()} CPU(s); "
          f"{args.warmup} + {args.samples} draws, {args.chains} chains, "
          f"max tree depth {opts['max_tree_depth']}")
    print(f"{'method':>11s} {'wall s':>8s} {'/ first':>8s} {'sampled steps per chain':>24s}")
    first = None
    for method in args.methods:
        t0 = time.perf_counter()
        mcmc = inf.run_nuts(model, kwargs, m, seed=opts["seed"], num_warmup=args.warmup,
                            num_samples=args.samples, num_chains=args.chains,
                            max_tree_depth=opts["max_tree_depth"], chain_method=method,
                            mass_matrix=opts["mass_matrix"], x64=x64,
                            progress=False)
        wall = time.perf_counter() - t0
        steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]).sum(axis=1)
        first = first or wall
        print(f"{method:>11s} {wall:8.1f} {wall / first:8.2f} {str(steps.tolist()):>24s}",
              flush=True)


if __name__ == "__main__":
    main()
