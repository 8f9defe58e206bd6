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

    python benchmarks/lensing_calibration.py --pool results/lensing_calibration/system*.json

pools the realisations of such files (several systems) instead of fitting: the same table over
``POOL_NAMES`` (the lens mass and D_dt, valid in every system so far), with a 95% interval on
the rms (chi^2 with N degrees of freedom, as for N draws of N(0, s^2)), and per file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# NAMES: the mock's lens parameters
from recovery import LENS_NAMES as NAMES, delay_only, lens_mock, system_truths

#: The parameters ``--pool`` reports: the light's (q_light, R_sersic, n_sersic) are left out,
#: being invalid where R_sersic presses on its bound (system 8, above).
POOL_NAMES = ("theta_E", "gamma", "q_mass", "phi", "x_c", "y_c", "D_dt")


def system_base(k: int) -> dict:
    """Recovery system ``k``'s full lens truth (its mock's source, shear and amplitudes)."""
    return lens_mock(k, system_truths(k + 1)[k]).truth


def delays_alone_pull(base, data) -> float:
    """(D_dt - D_dt,delays) / sd: where the truth lies against the D_dt that the measured delays
    alone give at the *true* lens model (``lensing.delay_distance``), in its sd. It measures the
    realisation's delay noise, nothing of the inference: over realisations it is N(0, 1) exactly,
    and where the delays dominate D_dt's error the posterior's D_dt pull follows it draw by
    draw, so a sample's rms of the one is to be read against the other's. The sign of a pull
    here (truth above: +), so minus ``recovery.delay_only``'s."""
    return -float(delay_only(base, data)["pull"])


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
            "delays_alone_pull": delays_alone_pull(base, data),
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
    ap.add_argument("--pool", nargs="+", default=None, metavar="JSON",
                    help="fit nothing: pool the realisations of these --out files and print "
                         "the statistics of POOL_NAMES")
    args = ap.parse_args()
    if args.pool:
        return pool(args.pool)
    if args.n_noise < 2 and not (args.n_noise == 0 and args.stored):
        ap.error(f"--n-noise must be >= 2, or 0 with --stored (got {args.n_noise})")

    from jkin import lensing
    from jkin.lensing_data import load_lensing_data

    t_all = time.perf_counter()
    base = system_base(args.system)
    print(f"system {args.system}: " + ", ".join(f"{k} {base[k]:.4g}" for k in NAMES))
    print(f"{args.n_noise} noise realisations, lensing-only MAP from the truth + Laplace\n")
    print("pull = Phi^-1(quantile of the truth in the Laplace posterior)")
    print("  seed  chi2/px     s  " + " ".join(f"{k:>8}" for k in NAMES)
          + "  D_dt(delays alone, true lens)")

    def show(label, r, t0):
        print(f"{label:>6} {r['chi2_per_pixel']:8.3f} {time.perf_counter() - t0:5.0f}  "
              + " ".join(f"{r['pulls'][k]:+8.2f}" for k in NAMES)
              + f"  {r['delays_alone_pull']:+8.2f}", flush=True)

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
    print()
    summarise(rows, NAMES, width=21)
    print(delays_alone_line(rows))
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")


def delays_alone_line(rows) -> str:
    """The delays-alone pulls' rms against the posterior's D_dt pulls, and their correlation."""
    a = np.array([r["pulls"]["D_dt"] for r in rows])
    b = np.array([r["delays_alone_pull"] for r in rows])
    r = np.corrcoef(a, b)[0, 1] if len(rows) > 2 else float("nan")
    return (f"D_dt pulls rms {np.sqrt(np.mean(a**2)):.2f}; the same realisations' delays alone at "
            f"the true lens model: rms {np.sqrt(np.mean(b**2)):.2f}, correlation {r:.2f}")


def summarise(rows, names, width, rms_interval=False):
    """Mean pull (+- its standard error), rms, and the fractions of truths inside the central
    68% and 95% of each parameter's posterior, over the realisations ``rows``."""
    from scipy import stats

    n = len(rows)
    p = np.array([[r["pulls"][k] for k in names] for r in rows])
    print(f"{'mean':>{width}}  " + " ".join(f"{v:+8.2f}" for v in p.mean(0))
          + f"   (standard error {1 / np.sqrt(n):.2f})")
    rms = np.sqrt((p**2).mean(0))
    print(f"{'rms':>{width}}  " + " ".join(f"{v:8.2f}" for v in rms) + "   (1 expected)")
    if rms_interval:  # n * rms^2 / s^2 ~ chi^2_n for n draws of N(0, s^2)
        lo, hi = (np.sqrt(n * rms**2 / stats.chi2.ppf(a, n)) for a in (0.975, 0.025))
        for label, v in (("rms, 95% lower", lo), ("rms, 95% upper", hi)):
            print(f"{label:>{width}}  " + " ".join(f"{x:8.2f}" for x in v))
    q = np.array([[r["quantile"][k] for k in names] for r in rows])
    for level in (0.68, 0.95):
        inside = (np.abs(q - 0.5) < level / 2).mean(0)
        print(f"{f'in {level:.0%}':>{width}}  " + " ".join(f"{v:8.2f}" for v in inside))


def pool(paths):
    """``--pool``: the realisations of several ``--out`` files, per file and all together."""
    runs = [(Path(f).name, json.loads(Path(f).read_text())) for f in paths]
    for name, run in runs:
        if not run["realisations"]:
            raise SystemExit(f"{name}: no realisations")
        missing = [r for r in run["realisations"] if "delays_alone_pull" not in r]
        if missing:  # files written before session 29: the realisations re-made (noise only)
            from jkin import lensing

            base = system_base(run["system"])
            for r in missing:
                data = lensing.make_mock_lensing(seed=r["seed"], truth=base).data
                r["delays_alone_pull"] = delays_alone_pull(base, data)
    labels = [f"{name} (system {run['system']}, N = {len(run['realisations'])})"
              for name, run in runs]
    width = max(21, *map(len, labels))
    print("pull = Phi^-1(quantile of the truth in the Laplace posterior)\n")
    print(f"{'':>{width}}  " + " ".join(f"{k:>8}" for k in POOL_NAMES))
    for label, (_, run) in zip(labels, runs):
        p = np.array([[r["pulls"][k] for k in POOL_NAMES] for r in run["realisations"]])
        print(f"{label:>{width}}  " + " ".join(f"{v:+8.2f}" for v in p.mean(0)) + "   mean")
    print()
    for label, (_, run) in zip(labels, runs):
        print(f"{label:>{width}}  {delays_alone_line(run['realisations'])}")
    rows = [r for _, run in runs for r in run["realisations"]]
    systems = sorted({run["system"] for _, run in runs})
    print(f"\nall {len(rows)} realisations, systems {', '.join(map(str, systems))}:")
    summarise(rows, POOL_NAMES, width, rms_interval=True)
    print(delays_alone_line(rows))


if __name__ == "__main__":
    main()
