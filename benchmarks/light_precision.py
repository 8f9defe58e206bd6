"""The extended light (lens light + lensed source) in float32 against float64
(``jkin.lensing.LensModelConfig.light_precision``): what it changes in the imaging likelihood and
its gradient, in units of the posterior's width, and what it saves per NUTS step.

    python benchmarks/light_precision.py [--systems 10] [--timing-system 7] [--threads 1]

On the recovery benchmark's lens mocks (``benchmarks/recovery.py``: ``make_mock_lensing(seed=100
+ k)`` with system k's truth), at the truth and at a point drawn 2 sd away along a random
direction of the Fisher covariance, per system:

- the largest change of the model image, over its peak and over the pixel's noise;
- the change of log L (float32 light minus float64);
- ``shift``: sqrt(dg^T F^-1 dg), with dg the change of the gradient of log L and F the float64
  Fisher matrix (the Hessian of -log L at the truth for noiseless data): the displacement, in
  posterior standard deviations (Mahalanobis), that the gradient change moves a MAP by, and the
  order of the change it makes to a NUTS trajectory's direction.

Then, on one system (``--timing-system``), the value + gradient time of the lensing-only and joint
potentials (``jkin.fitting.config_potential``, the recovery fit's settings) in each precision,
on ``--threads`` XLA CPU threads (1, the default: what each of two parallel chains gets on a
2-core CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", type=int, default=10, help="0: timing only")
    ap.add_argument("--timing-system", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="XLA CPU threads (0: XLA's default)")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--weights", default="jkin-cips-compact")
    args = ap.parse_args(argv)
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                                   "=false intra_op_parallelism_threads=1").strip()

    import jax

    jax.config.update("jax_enable_x64", True)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import recovery

    truths = recovery.system_truths(max(args.systems, args.timing_system + 1))
    if args.systems > 0:
        accuracy(args, truths)
    timing(args, truths)


def accuracy(args, truths):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    import recovery
    from jkin import lensing as L

    configs = {p: L.LensModelConfig(light_precision=p) for p in ("float64", "float32")}
    rng = np.random.default_rng(0)

    def loglike(p, data, cfg):
        return L.lensing_log_likelihood(p, data, cfg)

    vg = jax.jit(jax.value_and_grad(loglike), static_argnums=2)
    image = jax.jit(L.lens_image_model, static_argnames="config")

    print(f"Extended light in float32 against float64 on {args.systems} recovery lens mocks "
          "(benchmarks/light_precision.py)")
    print(f"{'system':>6s} {'point':>6s} {'max |dI|/peak':>13s} {'max |dI|/noise':>14s} "
          f"{'d log L':>9s} {'shift [sd]':>10s}")
    worst = dict(peak=0.0, noise=0.0, dlogl=0.0, shift=0.0)
    for k in range(args.systems):
        mock = recovery.lens_mock(k, truths[k])
        data = mock.data
        p0 = {n: jnp.asarray(v, jnp.float64) for n, v in mock.truth.items()}
        flat0, unravel = ravel_pytree(p0)
        # the Fisher matrix: the Hessian at the truth of noiseless data (image and delays)
        exact = data.replace(image=image(p0, data, config=configs["float64"]),
                             time_delays=mock.images["time_delays"])
        hess = jax.jit(jax.hessian(lambda f: -loglike(unravel(f), exact, configs["float64"])))
        h = np.asarray(hess(flat0))
        w, v = np.linalg.eigh(0.5 * (h + h.T))
        if w.min() <= 0:
            raise RuntimeError(f"system {k}: the Fisher matrix is not positive definite "
                               f"(smallest eigenvalue {w.min():.3g})")
        cov = (v / w) @ v.T
        step = v @ (rng.normal(size=w.size) / np.sqrt(w))
        step *= 2.0 / np.sqrt(step @ h @ step)
        points = {"truth": p0, "2 sd": unravel(flat0 + step)}
        for label, p in points.items():
            out = {}
            for prec, cfg in configs.items():
                val, grad = vg(p, data, cfg)
                out[prec] = (float(val), np.asarray(ravel_pytree(grad)[0]),
                             np.asarray(image(p, data, config=cfg)))
            (v64, g64, i64), (v32, g32, i32) = out["float64"], out["float32"]
            di = np.abs(i32 - i64)
            dg = g32 - g64
            row = dict(peak=di.max() / np.abs(i64).max(),
                       noise=(di / np.asarray(data.noise_map)).max(),
                       dlogl=v32 - v64, shift=float(np.sqrt(dg @ cov @ dg)))
            for key in worst:
                worst[key] = max(worst[key], abs(row[key]))
            print(f"{k:6d} {label:>6s} {row['peak']:13.2e} {row['noise']:14.2e} "
                  f"{row['dlogl']:9.4f} {row['shift']:10.2e}", flush=True)
    print(f"{'worst':>13s} {worst['peak']:13.2e} {worst['noise']:14.2e} {worst['dlogl']:9.4f} "
          f"{worst['shift']:10.2e}")
    print()


def timing(args, truths):
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    import recovery
    from jkin import inference as inf
    from jkin.fitting import fit_inputs, load_config, write_config
    from jkin.lensing import LensModelConfig

    k = args.timing_system
    with tempfile.TemporaryDirectory() as tmp:
        paths = recovery.write_system(Path(tmp), k, truths[k])
        cfg_path = Path(tmp) / "joint.toml"
        write_config(cfg_path, mode="joint", data={n: str(p) for n, p in paths.items()},
                     output="joint", inference={}, weights=args.weights,
                     name=f"system{k:02d}-joint")
        cfg = load_config(cfg_path)
        print(f"value + gradient of the posterior potential, system {k}, weights {args.weights}; "
              f"XLA CPU threads: {args.threads or 'default'}")
        print(f"{'mode':>8s} {'float64 light':>13s} {'float32 light':>13s} {'ratio':>6s}  "
              "[ms / call: medians of calls alternating between the two]")
        for mode in ("lensing", "joint"):
            fns = {}
            for prec in ("float64", "float32"):
                model, kwargs = fit_inputs(dataclasses.replace(cfg, mode=mode))
                kwargs["config"] = LensModelConfig(light_precision=prec)
                pot = inf.Potential(model, kwargs, x64=True)
                with jax.enable_x64(True):
                    x0 = jnp.asarray(pot.x_init)
                    fns[prec] = jax.jit(jax.value_and_grad(pot.fn))
                    jax.block_until_ready(fns[prec](x0))
            ts = {prec: [] for prec in fns}
            with jax.enable_x64(True):
                for _ in range(args.repeats):  # alternating: the machine's drift hits both
                    for prec, fn in fns.items():
                        t0 = time.perf_counter()
                        jax.block_until_ready(fn(x0))
                        ts[prec].append(time.perf_counter() - t0)
            ms = {prec: 1e3 * float(np.median(t)) for prec, t in ts.items()}
            print(f"{mode:>8s} {ms['float64']:13.2f} {ms['float32']:13.2f} "
                  f"{ms['float64'] / ms['float32']:6.2f}", flush=True)


if __name__ == "__main__":
    main()
