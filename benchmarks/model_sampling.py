"""Accuracy and cost of the kinematic model's sample points (``supersampling`` specs).

    python benchmarks/model_sampling.py [--draws 40] [--threads 1] [--png OUT.png]

On the paper's IFU mock geometry (55 x 55 pixels of 0.05", PSF FWHM 0.1", its 32 Voronoi bins;
``jkin.mocks.make_mock_ifu``, seed 0), the binned v_rms of the compact emulator for ``--draws``
parameter vectors drawn uniformly over the training space (position angle uniform, lens centre
N(0, 0.02") around the sampling centre), under each sampling spec against uniform 8 x 8
sub-pixels (63504 points). The emulator stands in for a smooth v_rms field (the binned error of
the coarse outer levels is a property of the operator); the sampling of the central pixels,
where JAM's v_rms has a narrow dip the emulator smooths over, was chosen with JAM itself
(``benchmarks/kinematic_likelihood.py --accuracy``, 8 x 8 within 0.1"). Per spec it prints the
number of points, max and 99th percentile |dv| [km/s] over bins and draws, max |dv| over the
bin's error (the mock's 8-10%), and the value + gradient time of the kinematic log-likelihood
(float32, all 13 parameters; ``--threads 1``, the default, is what each of two parallel chains
gets on a 2-core CPU). ``--png`` plots the sample points of two specs.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

SPECS = [
    ((8,), ()),
    ((8, 2, 1), (0.1, 0.3)),
    ((8, 2, 1, "1/2"), (0.1, 0.3, 1.0)),
    ((8, 2, 1, "1/2"), (0.1, 0.3, 0.8)),
    ((8, 2, 1, "1/2"), (0.1, 0.3, 0.6)),
    ((8, 2, 1, "1/2"), (0.1, 0.3, 0.5)),
    ((8, 2, 1, "1/2", "1/3"), (0.1, 0.3, 0.6, 1.2)),
    ((8, 2, 1), (0.1, 100.0)),
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="XLA CPU threads (0: XLA's default)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--weights", default="jkin-cips-compact")
    ap.add_argument("--png", default=None)
    args = ap.parse_args(argv)
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                                   "=false intra_op_parallelism_threads=1").strip()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jkin import conventions as cv
    from jkin import data as kdata
    from jkin import kinematics as kin
    from jkin import mocks
    from jkin.emulator import Emulator

    emu = Emulator.load(args.weights)
    base = mocks.make_mock_ifu(seed=0, truth="emulator", emulator=emu)
    buf = io.BytesIO()
    kdata.save_kinematic_data(buf, base)

    rng = np.random.default_rng(1)
    n = args.draws
    thetas = np.column_stack([
        cv.sample_params(rng, n), rng.uniform(0.0, 180.0, n), rng.normal(0.0, 0.02, (n, 2)),
        np.full(n, cv.D_DT), np.full(n, cv.D_D)])
    err = np.diag(np.asarray(base.cov_cholesky))

    def data_for(factors, radii):
        buf.seek(0)
        return kdata.load_kinematic_data(buf, supersampling=factors, supersampling_radii=radii,
                                         supersampling_centre=(0.0, 0.0))

    def predict(d):
        f = jax.jit(lambda t: kin.predict_binned_vrms(t, d, emu))
        return np.stack([np.asarray(f(jnp.asarray(t, jnp.float32))) for t in thetas])

    def cost_ms(d):
        f = jax.jit(jax.value_and_grad(lambda t: kin.kinematic_log_likelihood(t, d, emu)))
        ts = [jnp.asarray(t, jnp.float32) for t in thetas[:10]]
        jax.block_until_ready(f(ts[0]))
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(ts[r % len(ts)]))
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))

    print(f"Model sampling on the paper's mock geometry ({base.n_bins} bins, bin errors "
          f"{err.min():.1f}-{err.max():.1f} km/s), {args.weights}, {n} draws over the training "
          f"space; reference uniform 8 x 8; XLA CPU threads: {args.threads or 'default'}")
    print(f"{'supersampling':>20s} {'radii [arcsec]':>20s} {'points':>7s} {'max|dv|':>8s} "
          f"{'p99|dv|':>8s} {'max|dv|/err':>11s} {'vs 8,2,1':>8s} {'v+g [ms]':>9s}")
    ref = old = None
    datas = {}
    for factors, radii in SPECS:
        d = data_for(factors, radii)
        datas[(factors, radii)] = d
        v = predict(d)
        if ref is None:
            ref = v
        dv = np.abs(v - ref)
        if factors == (8, 2, 1) and radii == (0.1, 0.3):
            old = v
        d_old = "" if old is None else f"{np.abs(v - old).max():8.4f}"
        spec = kin.format_supersampling(factors)
        rad = ",".join(f"{r:g}" for r in radii) or "-"
        print(f"{spec:>20s} {rad:>20s} {d.sample_ra.size:7d} {dv.max():8.4f} "
              f"{np.percentile(dv, 99):8.4f} {(dv / err).max():11.5f} {d_old:>8s} "
              f"{cost_ms(d):9.2f}", flush=True)
    print("(|dv| in km/s: binned v_rms minus the uniform 8 x 8 reference's, over all bins and "
          "draws; 'vs 8,2,1': max |dv| against the (8,2,1) spec, the coarse levels' own error; "
          "the last spec, 2 x 2 everywhere beyond 0.1\", is for scale)")

    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        show = [((8, 2, 1), (0.1, 0.3)), (kdata.DEFAULT_SUPERSAMPLING,
                                           kdata.DEFAULT_SUPERSAMPLING_RADII)]
        fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharey=True)
        for ax, (factors, radii) in zip(axes, show):
            d = data_for(factors, radii)
            ax.scatter(d.sample_ra, d.sample_dec, s=0.3, c="k")
            ax.set_title(f"({kin.format_supersampling(factors)}) at "
                         f"{', '.join(f'{r:g}' for r in radii)}\": {d.sample_ra.size} points")
            ax.set_aspect("equal")
            ax.set_xlabel("ra [arcsec]")
        axes[0].set_ylabel("dec [arcsec]")
        fig.tight_layout()
        fig.savefig(args.png, dpi=130)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
