"""Calibration of the lensing-only posterior over noise realisations of one mock (Laplace pulls).

    python benchmarks/lensing_calibration.py --system 8 --n-noise 16

One recovery system's lens (``benchmarks/recovery.py``: truths of ``system_truths``, mock seed
100 + K, so the source position, shear and amplitudes are those of the committed mock) is
re-observed ``--n-noise`` times with new image and delay noise (``make_mock_lensing`` with the
full truth, so its random numbers go to the noise only). Each realisation is fitted
lensing-only: the MAP by jkin's L-BFGS started at the truth (this checks the posterior, not the
blind search), then the Laplace approximation there (exact Hessian in the sampler's
unconstrained space), pushed through the sites' transforms by ``--n-draws`` Gaussian draws.
The statistic is the truth's quantile q among those draws, printed as the pull Phi^-1(q)
(positive: the truth lies above the bulk of the posterior): for a calibrated posterior it is
N(0, 1) over realisations. The table prints each realisation's pulls, then per parameter the
mean (+- its standard error 1/sqrt(N)), the rms (1 expected) and the fraction of truths inside
the central 68% and 95%. A mean pull of a few standard errors, or an rms well above 1, would
mean the model and the mock disagree (a convention, the rendering, the noise model), which no
sampler can fix.

Valid only for parameters whose posterior lies many sd inside its prior bounds: the Laplace
approximation is taken in the sampler's unconstrained (probit) coordinates, and where the
posterior reaches a bound (system 8's R_sersic at 0.994 theta_E, 0.75 sd from the bound
theta_E) the Jacobian of that map shifts and narrows it, so the pulls of R_sersic and of the
light parameters correlated with it (n_sersic, q_light) measure the approximation, not the
model. ``--out`` also keeps each MAP's offset (MAP - truth) / sd.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from recovery import LENS_NAMES as NAMES, system_truths  # the mock's lens parameters


def laplace_pulls(data, base, n_steps, n_draws, seed) -> dict:
    """Lensing-only MAP of ``data`` started at the truth ``base``, its Laplace approximation,
    and the truth's quantile among ``n_draws`` draws of it, per parameter of ``NAMES``."""
    import jax
    from scipy import special

    from jkin import inference as inf

    init = {k: v for k, v in base.items() if np.size(v) <= 16}
    init["R_sersic_frac"] = base["R_sersic"] / base["theta_E"]
    init["phi_vec"] = np.array([np.cos(np.radians(2 * base["phi"])),
                                np.sin(np.radians(2 * base["phi"]))])
    init.update(gamma1_ext_offset=0.0, gamma2_ext_offset=0.0, x_src_offset=0.0,
                y_src_offset=0.0)  # the least-squares solution from the image positions
    m = inf.find_map(inf.lensing_model, dict(lens_data=data), init=init, n_steps=n_steps,
                     progress=False)
    pot, x = m["potential"], m["x"]
    draws = np.random.default_rng(seed).multivariate_normal(x, pot.laplace(x), size=n_draws)
    post = pot.values(draws)
    jax.clear_caches()
    q = {k: (np.sum(np.asarray(post[k]) < base[k]) + 0.5) / (n_draws + 1) for k in NAMES}
    sd = {k: float(np.std(np.asarray(post[k]))) for k in NAMES}
    return {"seed": seed, "chi2_per_pixel": m["imaging_chi2_per_pixel"],
            "quantile": {k: float(v) for k, v in q.items()},
            "pulls": {k: float(special.ndtri(q[k])) for k in NAMES}, "sd": sd,
            "map_offset": {k: float((np.asarray(m["values"][k]) - base[k]) / sd[k])
                           for k in NAMES}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", type=int, default=8, help="recovery system (0-based)")
    ap.add_argument("--n-noise", type=int, default=16, help="noise realisations")
    ap.add_argument("--noise-seed", type=int, default=5000, help="seed of the first realisation")
    ap.add_argument("--n-steps", type=int, default=2000, help="L-BFGS iterations")
    ap.add_argument("--n-draws", type=int, default=4000, help="Laplace draws per realisation")
    ap.add_argument("--stored", default=None, metavar="LENS.FITS",
                    help="also analyse this saved mock of the same system (e.g. the recovery "
                         "run's systemNN/lens.fits), reported apart from the statistics")
    ap.add_argument("--out", default=None, help="write the pulls here (JSON)")
    args = ap.parse_args()
    if args.n_noise < 2 and not (args.n_noise == 0 and args.stored):
        ap.error(f"--n-noise must be >= 2, or 0 with --stored (got {args.n_noise})")

    from jkin import lensing
    from jkin.lensing_data import load_lensing_data

    t_all = time.perf_counter()
    truth = system_truths(args.system + 1)[args.system]
    base = lensing.make_mock_lensing(seed=100 + args.system,
                                     truth={n: truth[n] for n in NAMES}).truth
    print(f"system {args.system}: " + ", ".join(f"{k} {base[k]:.4g}" for k in NAMES))
    print(f"{args.n_noise} noise realisations, lensing-only MAP from the truth + Laplace\n")
    print("pull = Phi^-1(quantile of the truth in the Laplace posterior)")
    print("  seed  chi2/px     s  " + " ".join(f"{k:>8}" for k in NAMES))

    def show(label, r, t0):
        print(f"{label:>6} {r['chi2_per_pixel']:8.3f} {time.perf_counter() - t0:5.0f}  "
              + " ".join(f"{r['pulls'][k]:+8.2f}" for k in NAMES), flush=True)

    stored, rows = None, []

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps({
                "system": args.system, "truth": {k: base[k] for k in NAMES},
                "stored": None if stored is None else dict(stored, path=str(args.stored)),
                "realisations": rows}, indent=1))

    if args.stored:
        t0 = time.perf_counter()
        stored = laplace_pulls(load_lensing_data(args.stored), base, args.n_steps,
                               args.n_draws, 0)
        show("stored", stored, t0)
        save()
    for i in range(args.n_noise):
        seed = args.noise_seed + i
        t0 = time.perf_counter()
        data = lensing.make_mock_lensing(seed=seed, truth=base).data
        rows.append(laplace_pulls(data, base, args.n_steps, args.n_draws, seed))
        show(str(seed), rows[-1], t0)
        save()  # after each realisation: an interrupted run keeps what it measured

    if not rows:
        return
    p = np.array([[r["pulls"][k] for k in NAMES] for r in rows])
    se = 1 / np.sqrt(len(rows))
    print(f"\n{'mean':>21}  " + " ".join(f"{v:+8.2f}" for v in p.mean(0))
          + f"   (standard error {se:.2f})")
    print(f"{'rms':>21}  " + " ".join(f"{v:8.2f}" for v in np.sqrt((p**2).mean(0)))
          + "   (1 expected)")
    q = np.array([[r["quantile"][k] for k in NAMES] for r in rows])
    for level in (0.68, 0.95):
        inside = (np.abs(q - 0.5) < level / 2).mean(0)
        print(f"{f'in {level:.0%}':>21}  " + " ".join(f"{v:8.2f}" for v in inside))
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
