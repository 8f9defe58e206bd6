"""Recovery of the 13 parameters on JAM-truth mocks: coverage, R-hat, widths, wall time.

    python benchmarks/recovery.py --out /work/data/recovery              # 10 systems x 3 fits
    python benchmarks/recovery.py --out OUT --systems 2 --modes joint --quick   # a smoke run

Each system is a JAM-truth mock in the SKiNN paper's Sect. 5.2 setting (kinematics:
``jkin.mocks.make_mock_ifu``, JAM truth; imaging and delays: ``jkin.lensing.make_mock_lensing``)
of a galaxy drawn from the emulator's training space (q_mass <= 0.9 so that a quad exists),
with a random position angle, a centre offset of up to 0.05", and D_dt, D_d within +-15% of the
fiducial ones. System 0 is the zero-valued-pixel case (beta_z = 0.38, q_light = 0.97). Each is
fitted with ``jkin fit`` configurations (blind MAP start, NUTS) in the requested modes; finished
fits are kept (the run resumes), the fits fan out on Dask when ``--workers`` > 1.

Reported (``OUT/recovery.txt``, ``OUT/recovery_hist.png``, ``OUT/recovery_pulls.png``): per
parameter and mode the fraction of systems whose truth lies inside the central 68% and 95%
intervals, the median posterior sd; per system the max R-hat, D_d error, wall time; and the
stacked (sample - truth) histograms of all 13 parameters (the paper's Fig. 9), in the
parameters' units and in units of each fit's posterior sd.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


#: the issue's requirement: every joint fit's D_d within this fraction of its truth
D_D_TOL = 0.1
#: the issue's goal for a joint fit's CPU wall time [s]
WALL_GOAL_S = 600.0

#: the galaxy parameters the imaging + delays mock is made from (the rest come from its seed)
LENS_NAMES = ("theta_E", "gamma", "q_mass", "phi", "x_c", "y_c", "q_light", "R_sersic",
              "n_sersic", "D_dt")


def system_truths(n: int, seed: int = 2023) -> list[dict]:
    from jkin import conventions as cv
    from jkin.kinematics import THETA_NAMES

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        p = cv.sample_params(rng, 1)[0]
        if p[2] > 0.9:
            continue
        t = dict(zip(cv.PARAM_NAMES, map(float, p)))
        if not out:  # the zero-valued-pixel system
            t.update(beta_z=0.38, q_light=0.97)
            i_min = float(cv.inclination_min(t["q_mass"], 0.97))
            t["inclination"] = max(t["inclination"], i_min + 1)
        t["phi"] = float(rng.uniform(-90, 90))
        t["x_c"], t["y_c"] = (float(v) for v in rng.uniform(-0.05, 0.05, 2))
        t["D_dt"] = float(cv.D_DT * rng.uniform(0.85, 1.15))
        t["D_d"] = float(cv.D_D * rng.uniform(0.85, 1.15))
        cv.validate_params(np.array([t[k] for k in cv.PARAM_NAMES]))
        out.append({k: t[k] for k in THETA_NAMES})
    return out


def lens_mock(k: int, truth: dict):
    """System ``k``'s lens mock (``make_mock_lensing`` on seed 100 + k with the lens part of
    its ``truth``): the imaging and delays the fits see, and the full truth (source, shear,
    amplitudes) that the seed draws."""
    from jkin import lensing

    return lensing.make_mock_lensing(seed=100 + k, truth={n: truth[n] for n in LENS_NAMES})


def write_lens(out: Path, k: int, truth: dict) -> Path:
    """System ``k``'s ``lens_mock`` as ``OUT/systemKK/lens.fits``, written once."""
    from jkin.lensing_data import save_lensing_data

    d = Path(out) / f"system{k:02d}"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "lens.fits").exists():
        mock = lens_mock(k, truth)
        save_lensing_data(d / "lens.fits", mock.data, truth=mock.truth)
    return d / "lens.fits"


def write_system(out: Path, k: int, truth: dict) -> dict:
    """System ``k``'s IFU mock (JAM truth, seed 100 + k) and ``lens_mock``, written once."""
    from jkin import mocks
    from jkin.data import DEFAULT_SUPERSAMPLING, DEFAULT_SUPERSAMPLING_RADII

    lens_path = write_lens(out, k, truth)
    kin_path = lens_path.parent / "ifu.fits"
    if not kin_path.exists():
        # the truth at mocks.TRUTH_SUPERSAMPLING; the fits at the default model sampling (until
        # session 19 the truth's, 4836 points: see results/recovery-s19)
        mocks.make_mock_ifu(truth, seed=100 + k, path=kin_path,
                            model_supersampling=DEFAULT_SUPERSAMPLING,
                            model_supersampling_radii=DEFAULT_SUPERSAMPLING_RADII)
    return {"kinematics": kin_path, "lensing": lens_path}


def run_system(configs, echo=False) -> list[str]:
    """The fits of one system, in order (configs are read only when their turn comes, so that
    ``init_from`` can point at a fit of the same run)."""
    import jax

    from jkin.fitting import run_fit

    lines = []
    for cfg in configs:
        r = run_fit(cfg, progress=False)
        # session 7: one process ran 5 joint fits (pooled mass matrix, parallel chains), then
        # LLVM failed to map memory for the 6th's compilation; drop the compiled programs
        jax.clear_caches()
        lines.append(f"{r['name']}: {r['wall_s']:.0f} s, max R-hat {r['max_rhat']:.3f}")
        if echo:
            print(lines[-1], flush=True)
    return lines


def main():
    from jkin.fitting import CHAIN_METHODS, use_host_devices, write_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--systems", type=int, default=10)
    ap.add_argument("--only", type=int, nargs="+", default=None, metavar="K",
                    help="run only these systems (0-based; the report covers all)")
    ap.add_argument("--modes", nargs="+", default=["kinematics", "lensing", "joint"])
    ap.add_argument("--weights", default=None, help="emulator weights (default: the bundled)")
    ap.add_argument("--workers", type=int, default=1, help="Dask workers (1: in this process)")
    ap.add_argument("--quick", action="store_true", help="tiny sampler settings (smoke test)")
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--num-chains", type=int, default=2)
    ap.add_argument("--max-tree-depth", type=int, default=7)
    ap.add_argument("--target-accept", type=float, default=0.8,
                    help="NUTS's target acceptance probability")
    ap.add_argument("--no-curve-reparam", action="store_true",
                    help="sample without inference.curve_shifts' coordinates (as before session "
                    "26)")
    ap.add_argument("--chain-method", default="auto",
                    choices=CHAIN_METHODS,
                    help="numpyro's (auto: parallel on a CPU with a core per chain); parallel "
                    "chains' memory grows as they run, so long fits want sequential")
    ap.add_argument("--n-starts", type=int, default=4, help="MAP starts per fit")
    ap.add_argument("--map-steps", type=int, default=3000, help="L-BFGS iterations per start")
    ap.add_argument("--kinematics-precision", choices=("float64", "float32"), default="float64",
                    help="float32: kinematics-only fits 1.4x cheaper per step; only when no "
                    "fit of another mode is left to run (one process must not mix the two)")
    ap.add_argument("--init-from", default=None, metavar="ROOT",
                    help="start each joint and lensing-only fit at the MAP of "
                    "ROOT/systemNN/lensing/fit.json (an earlier run's blind lensing-only fits; "
                    "default: joint fits at this run's, when 'lensing' is in --modes)")
    ap.add_argument("--report-only", action="store_true",
                    help="write the report from the finished fits; run nothing")
    args = ap.parse_args()

    if args.workers == 1:  # fits in this process: their chains in parallel, one per core
        use_host_devices()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    inference = dict(seed=0, n_starts=args.n_starts, map_steps=args.map_steps,
                     num_warmup=args.num_warmup, num_samples=args.num_samples,
                     num_chains=args.num_chains, max_tree_depth=args.max_tree_depth,
                     target_accept=args.target_accept, chain_method=args.chain_method,
                     curve_reparam=not args.no_curve_reparam)
    if args.quick:
        inference.update(n_starts=2, map_steps=20, num_warmup=20, num_samples=20,
                         max_tree_depth=3, position_steps=100)
    truths = system_truths(args.systems)
    if args.report_only:
        return report(out, truths, args.modes, None)
    jobs = []  # one list of configs per system, run in order (the joint fit starts at the
    for k, truth in enumerate(truths):  # lensing-only MAP when that fit is in the run)
        if args.only is not None and k not in args.only:
            continue
        paths = write_system(out, k, truth)
        d = out / f"system{k:02d}"
        todo = []
        for mode in args.modes:
            inf_mode = dict(inference)
            if mode in ("joint", "lensing") and args.init_from:
                src = Path(args.init_from).resolve() / f"system{k:02d}" / "lensing"
                if not (src / "fit.json").exists():
                    ap.error(f"--init-from: no {src / 'fit.json'}")
                inf_mode["init_from"] = str(src)
            elif mode == "joint" and "lensing" in args.modes:
                inf_mode["init_from"] = "lensing"
            if mode == "kinematics":
                inf_mode["precision"] = args.kinematics_precision
            cfg = d / f"{mode}.toml"
            if not (d / mode / "fit.json").exists():
                write_config(cfg, mode=mode, data={n: p.name for n, p in paths.items()},
                             output=mode, inference=inf_mode, weights=args.weights,
                             name=f"system{k:02d}-{mode}")
                todo.append(cfg)
        if todo:
            jobs.append(todo)
    if args.kinematics_precision == "float32" and any(
            "kinematics.toml" not in str(c) for todo in jobs for c in todo):
        ap.error("--kinematics-precision float32 needs every other fit finished (run the "
                 "other modes first): one process must not mix float32 and float64")
    print(f"{sum(map(len, jobs))} fits to run ({args.systems} systems x {args.modes}; "
          "finished ones kept)", flush=True)
    t0 = time.perf_counter()
    if jobs and args.workers > 1:
        from dask.distributed import Client, LocalCluster, as_completed

        with LocalCluster(n_workers=args.workers, threads_per_worker=1,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            futures = [client.submit(run_system, todo, pure=False) for todo in jobs]
            for fut in as_completed(futures):
                for line in fut.result():
                    print(line, flush=True)
    else:
        for todo in jobs:
            for line in run_system(todo, echo=True):
                pass
    report(out, truths, args.modes, time.perf_counter() - t0)


def report(out: Path, truths, modes, wall):
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")

    from jkin.inference import GALAXY_SITES, phi_branch

    names = list(GALAXY_SITES)
    lines = [""]  # the heading goes first once the systems with a fit are known
    inside = {m: {n: [] for n in names} for m in modes}
    widths = {m: {n: [] for n in names} for m in modes}
    resid = {m: {n: [] for n in names} for m in modes}
    pulls = {m: {n: [] for n in names} for m in modes}
    per_system = []
    for k, truth in enumerate(truths):
        row = {"system": k}
        for m in modes:
            d = out / f"system{k:02d}" / m
            if not (d / "fit.json").exists():
                continue
            rec = json.loads((d / "fit.json").read_text())
            post = az.from_netcdf(str(d / "posterior.nc")).posterior
            n_in95 = 0
            for n in names:
                s, t = np.asarray(post[n]).ravel(), truth[n]
                if n == "phi":  # mod 180: draws on their branch, the truth moved onto it
                    s = phi_branch(s)
                    t = float(phi_branch(t, centre=np.median(s)))
                lo68, hi68, lo95, hi95 = np.percentile(s, [16, 84, 2.5, 97.5])
                inside[m][n].append((lo68 <= t <= hi68, lo95 <= t <= hi95))
                n_in95 += int(lo95 <= t <= hi95)
                widths[m][n].append(float(np.std(s)))
                resid[m][n].append(s - t)
                pulls[m][n].append((s - t) / np.std(s))
            dd, ddt = np.asarray(post["D_d"]), np.asarray(post["D_dt"])
            row[m] = {"max_rhat": rec["max_rhat"], "wall_s": rec["timings_s"]["wall"],
                      "D_d_err": dd.mean() / truth["D_d"] - 1,
                      "D_d_pull": (dd.mean() - truth["D_d"]) / dd.std(),
                      "D_d_rel_sd": dd.std() / truth["D_d"],
                      "D_dt_rel_sd": ddt.std() / ddt.mean(),
                      "divergences": rec["divergences"], "min_ess": rec["min_ess_bulk"],
                      "in95": f"{n_in95}/{len(names)}",
                      "target_accept": rec.get("inference", {}).get("target_accept", 0.8)}
        lens_file = out / f"system{k:02d}" / "lens.fits"
        if "joint" in row and lens_file.exists():
            row["delays"] = delay_only_d_dt(lens_file)
        if any(m in row for m in modes):  # the table lists the systems with a fit
            per_system.append(row)
    for m in modes:
        lines.append(f"== {m} ==")
        lines.append(f"{'parameter':>12s} {'in 68%':>8s} {'in 95%':>8s} {'median sd':>10s}")
        total95 = []
        for n in names:
            if not inside[m][n]:
                continue
            a = np.array(inside[m][n])
            total95 += list(a[:, 1])
            lines.append(f"{n:>12s} {a[:, 0].mean():8.2f} {a[:, 1].mean():8.2f} "
                         f"{np.median(widths[m][n]):10.4g}")
        if total95:
            lines.append(f"{'all':>12s} {'':>8s} {np.mean(total95):8.2f}   "
                         f"({int(np.sum(total95))}/{len(total95)} (system, parameter) truths; "
                         "required >= 0.90 for joint)")
        lines.append("")
    if len(modes) > 1:  # what each data set constrains: the posterior widths side by side
        lines.append("== median posterior sd by mode ==")
        lines.append(f"{'parameter':>12s} " + " ".join(f"{m:>11s}" for m in modes))
        for n in names:
            lines.append(f"{n:>12s} " + " ".join(
                f"{np.median(widths[m][n]):11.4g}" if widths[m][n] else f"{'-':>11s}"
                for m in modes))
        lines.append("")
    lines.append(f"{'system':>7s} " + " ".join(
        f"{m[:5] + ' R-hat':>11s} {'ESS':>5s} {'div':>4s} {'s':>6s} {'ta':>4s} {'in 95%':>6s}"
        for m in modes)
        + f" {'joint D_d err':>14s} {'(sd)':>6s} {'D_dt sd':>8s} {'delays: D_dt err':>16s} "
        f"{'(sd)':>6s} {'D_dt sd':>8s}")
    empty = f"{'-':>11s} {'-':>5s} {'-':>4s} {'-':>6s} {'-':>4s} {'-':>6s}"  # no fit
    for row in per_system:
        cells = []
        for m in modes:
            r = row.get(m)
            cells.append(f"{r['max_rhat']:11.3f} {r['min_ess']:5.0f} {r['divergences']:4d} "
                         f"{r['wall_s']:6.0f} {r['target_accept']:4.2f} {r['in95']:>6s}"
                         if r else empty)
        j = row.get("joint")
        dl = row.get("delays")
        lines.append(f"{row['system']:7d} " + " ".join(cells) + (
            f" {j['D_d_err']:+14.3f} {j['D_d_pull']:+6.1f} {j['D_dt_rel_sd']:8.3f}" if j else "")
            + (f" {dl['err']:+16.3f} {dl['pull']:+6.1f} {dl['rel_sd']:8.3f}" if dl else ""))
    lines.append("(ta: NUTS target acceptance; in 95%: truths inside the 95% intervals. "
                 "D_d err: joint posterior mean / truth - 1, and in posterior sd; D_dt sd: the "
                 "joint posterior's relative sd of D_dt, which bounds D_d's, D_d = D_dt D_ds / "
                 "((1 + z_d) D_s) with the kinematics constraining D_s / D_ds. delays: the D_dt "
                 "that the mock's delays alone give at the true lens model "
                 "(jkin.lensing.delay_distance), its error and relative sd: the delays' own "
                 "noise draw and precision, which no lens or kinematic model improves)")
    lines.append("")
    for m in modes:
        rows = [row[m] for row in per_system if m in row]
        if not rows:
            continue
        rhat = np.array([r["max_rhat"] for r in rows])
        wall_s = np.array([r["wall_s"] for r in rows])
        line = (f"{m}: {len(rows)} fits; max R-hat < 1.01 (all 13 parameters) in "
                f"{int(np.sum(rhat < 1.01))}/{len(rows)} (required: all), median "
                f"{np.median(rhat):.3f}; wall per fit median {np.median(wall_s):.0f} s, max "
                f"{wall_s.max():.0f} s, within {WALL_GOAL_S / 60:.0f} min in "
                f"{int(np.sum(wall_s <= WALL_GOAL_S))}/{len(rows)} (goal: all)")
        if m == "joint":
            dd = np.array([r["D_d_err"] for r in rows])
            line += (f"; D_d within {D_D_TOL:.0%} in {int(np.sum(np.abs(dd) < D_D_TOL))}/"
                     f"{len(rows)} (required: all)")
        lines.append(line)
        if m == "joint":
            lines.append(_d_d_expectation([r["D_d_rel_sd"] for r in rows]))
    if wall is not None:
        lines.append(f"\nwall time of this run: {wall:.0f} s")
    fitted = [r["system"] for r in per_system]
    which = ("" if len(fitted) == len(truths)
             else f"systems {', '.join(map(str, fitted))} of {len(truths)}; ")
    lines.insert(0, f"Recovery on {len(fitted)} JAM-truth mocks ({which}benchmarks/recovery.py); "
                    f"modes {modes}")
    text = "\n".join(lines)
    (out / "recovery.txt").write_text(text + "\n")
    print(text)

    _residual_figure(out / "recovery_hist.png", resid, names, modes, len(fitted), pulls=False)
    _residual_figure(out / "recovery_pulls.png", pulls, names, modes, len(fitted), pulls=True)


def _d_d_expectation(rel_sd, tol=D_D_TOL) -> str:
    """What a calibrated inference gives on these data: with its posterior mean off the truth
    by N(0, sd^2) (a Gaussian posterior of relative sd ``rel_sd``), D_d lands within ``tol`` of
    the truth with probability erf(tol / (sd sqrt 2)); the expected count and the probability
    that every system does."""
    from math import erf, sqrt

    p = np.array([erf(tol / (s * sqrt(2.0))) for s in rel_sd])
    return (f"  a calibrated inference with these posterior widths (D_d relative sd "
            f"{np.min(rel_sd):.3f}-{np.max(rel_sd):.3f}, median {np.median(rel_sd):.3f}) puts "
            f"{p.sum():.1f} of {p.size} systems' D_d within {tol:.0%} on average, and all "
            f"{p.size} with probability {p.prod():.3f}")


def fit_passes(fit: Path) -> bool:
    """The set rule of ``results/recovery-s*/assemble.py``: a fit folder whose fit.json has max
    R-hat < 1.01 and divergences in at most 1% of its draws."""
    d = json.loads((Path(fit) / "fit.json").read_text())
    draws = d["inference"]["num_chains"] * d["inference"]["num_samples"]
    return d["max_rhat"] < 1.01 and d["divergences"] <= 0.01 * draws


def choose_fits(roots, mode: str = "joint", n_systems: int = 10) -> dict:
    """Per system the ``mode`` fit of the first of ``roots`` (run folders holding
    ``systemKK/MODE``) that passes ``fit_passes``, else the last root's as it is: {K: folder}."""
    out = {}
    for k in range(n_systems):
        for i, root in enumerate(roots):
            fit = Path(root) / f"system{k:02d}" / mode
            if (fit / "fit.json").exists() and (i == len(roots) - 1 or fit_passes(fit)):
                out[k] = fit
                break
    return out


def link_fits(out: Path, sources: dict, truths, mode: str = "joint") -> None:
    """Assemble a set for ``--report-only`` from fits made in several runs: ``OUT/systemKK/MODE``
    becomes a link to ``sources[K]`` (a fit folder holding fit.json and posterior.nc), and each
    system gets its ``lens.fits`` (remade from the seeded mock: the report's delays-alone D_dt
    needs it). Prints where each fit comes from. Used by ``results/recovery-s*/assemble.py``."""
    out = Path(out)
    for k, src in sorted(sources.items()):
        src = Path(src).resolve()
        if not (src / "fit.json").exists():
            raise FileNotFoundError(f"system {k}: no fit.json in {src}")
        d = out / f"system{k:02d}"
        d.mkdir(parents=True, exist_ok=True)
        if (d / mode).is_symlink():
            (d / mode).unlink()
        (d / mode).symlink_to(src)
        write_lens(out, k, truths[k])
        print(k, src)


def delay_only_d_dt(lens_file) -> dict:
    """The D_dt that a mock's delays alone give at its true lens model, against its truth."""
    from jkin.lensing_data import load_lensing_data, load_lensing_truth

    return delay_only(load_lensing_truth(lens_file), load_lensing_data(lens_file))


def delay_only(truth, data) -> dict:
    """``delay_only_d_dt`` for a lens truth and its data in memory: the relative error of the
    delays-alone D_dt, its pull (D_dt,delays - D_dt) / sd and its relative sd."""
    import jax

    from jkin import lensing

    with jax.enable_x64(True):
        d_dt, sd = lensing.delay_distance(truth, data)
    return {"err": d_dt / truth["D_dt"] - 1, "pull": (d_dt - truth["D_dt"]) / sd,
            "rel_sd": sd / d_dt}


def _residual_figure(path, resid, names, modes, n_systems, *, pulls):
    """Stacked posterior residuals per parameter, one curve per mode. ``pulls``: in units of
    each fit's posterior sd, with the N(0, 2) that calibrated posteriors give (draw and truth
    both distributed as the posterior); else in the parameter's units (the paper's Fig. 9), the
    x range the joint fits' 0.5-99.5 percentiles, widened x3 (the kinematics-only residuals
    reach past it: the curves are normalised to the draws inside)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 5, figsize=(17, 9))
    for ax, n in zip(axes.ravel(), names):
        ref = "joint" if resid.get("joint", {}).get(n) else modes[-1]
        if pulls:
            lo, hi = -5.0, 5.0
        else:
            lo, hi = np.percentile(np.concatenate(resid[ref][n]), [0.5, 99.5])
            lo, hi = min(lo, 0.0) * 3.0, max(hi, 0.0) * 3.0
        for m in modes:
            if resid[m][n]:
                ax.hist(np.concatenate(resid[m][n]), bins=np.linspace(lo, hi, 61),
                        histtype="step", density=True, label=m)
        if pulls:
            u = np.linspace(lo, hi, 200)
            ax.plot(u, np.exp(-u**2 / 4.0) / np.sqrt(4.0 * np.pi), "k:", lw=1,
                    label="N(0, 2)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"({n} - truth) / sd" if pulls else f"{n} - truth")
    axes.ravel()[0].legend(fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    what = ("in units of each fit's posterior sd" if pulls
            else "x range: 3x the joint fits' 99% range")
    fig.suptitle(f"Stacked posterior residuals, {n_systems} JAM-truth mocks ({what})")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

if __name__ == "__main__":
    main()
