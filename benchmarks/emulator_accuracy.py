"""Emulator accuracy on JAM test maps never used in training (the paper's Eqs. 9-10).

Per test map: the mean error eps = <v_emu - v_JAM> and the mean absolute error
|eps| = <|v_emu - v_JAM|> over SKiNN's whole field (the quadrant 0-5.5", i.e. 11" x 11") and
inside r < 2". Reported: median and 95th percentile of |eps|, mean and spread of eps, the
zero-valued-pixel subset (maps where JAM has <v^2> <= 0 somewhere; high beta_z, high q_light)
and the worst maps. PNGs: error histograms (as the paper's Fig. 4) and truth / prediction /
residual panels of typical and worst maps (Fig. 2).

    jkin data generate --layout grid --n-points 1024 --n 500 --seed 1000 --out /work/data/test-grid
    python benchmarks/emulator_accuracy.py --test /work/data/test-grid [--weights NAME_OR_JSON]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SKINN = {"median_abs_eps": 0.6, "p95_abs_eps": 2.0, "mean_eps": 0.16, "std_eps": 0.88}
REQUIRED = {"median_abs_eps": 0.6, "p95_abs_eps": 2.0, "abs_mean_eps": 0.2}


def map_errors(v, v_true, mask=None):
    d = v - v_true
    if mask is not None:
        d = np.where(mask, d, np.nan)
    return np.nanmean(d, axis=1), np.nanmean(np.abs(d), axis=1)


def summarise(eps, abs_eps):
    return {
        "n": len(eps),
        "median_abs_eps": float(np.median(abs_eps)),
        "p95_abs_eps": float(np.percentile(abs_eps, 95)),
        "mean_eps": float(np.mean(eps)),
        "std_eps": float(np.std(eps)),
    }


def verdict(s):
    ok = (s["median_abs_eps"] <= REQUIRED["median_abs_eps"]
          and s["p95_abs_eps"] <= REQUIRED["p95_abs_eps"]
          and abs(s["mean_eps"]) <= REQUIRED["abs_mean_eps"])
    return "meets" if ok else "MISSES"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", required=True, help="JAM test set (layout grid), never trained on")
    ap.add_argument("--weights", default=None, help="weights name or manifest (default: bundled)")
    ap.add_argument("--out", default="benchmarks/out", help="folder for the PNGs")
    ap.add_argument("--max-maps", type=int, default=None)
    args = ap.parse_args(argv)

    import jax

    from jkin.dataset import load
    from jkin.emulator import Emulator

    emu = Emulator.load(args.weights)
    data = load(args.test)
    n = len(data["params"]) if args.max_maps is None else min(args.max_maps, len(data["params"]))
    params, x, y, v2 = (data[k][:n] for k in ("params", "x", "y", "v2"))
    v_true = np.sqrt(np.clip(v2, 0, None))
    if not np.all(x == x[0]):
        raise SystemExit("the test set must have one grid for all maps (--layout grid)")
    fwd = jax.jit(lambda p: emu(p, x[0].astype(np.float32), y[0].astype(np.float32)))
    v = np.concatenate([np.asarray(fwd(params[i:i + 50].astype(np.float32)))
                        for i in range(0, n, 50)])
    r = np.hypot(x[0], y[0])
    zero_map = (v2 <= 0).any(axis=1)

    rows = {}
    eps, abs_eps = map_errors(v, v_true)
    rows["full field"] = summarise(eps, abs_eps)
    eps2, abs_eps2 = map_errors(v, v_true, (r < 2.0)[None, :])
    rows["r < 2\""] = summarise(eps2, abs_eps2)
    if zero_map.any():
        rows["zero-valued maps, full"] = summarise(eps[zero_map], abs_eps[zero_map])
        rows["other maps, full"] = summarise(eps[~zero_map], abs_eps[~zero_map])
    m = emu.manifest
    print(f"emulator {m.get('weights_file')} ({m.get('n_parameters')} parameters, "
          f"{m.get('training', {}).get('steps_done')} steps"
          f"{', warm-started from ' + m['training']['init_from'] if m.get('training', {}).get('init_from') else ''}"
          f"); test set {args.test}: {n} maps, "
          f"{x.shape[1]} points each, 0 <= x, y <= 5.5\"\n")
    print(f"{'subset':24s} {'maps':>5s} {'median|eps|':>12s} {'p95|eps|':>9s} {'mean eps':>9s} "
          f"{'std eps':>8s}  requirement")
    for name, s in rows.items():
        req = verdict(s) if name in ("full field", "r < 2\"") else ""
        print(f"{name:24s} {s['n']:5d} {s['median_abs_eps']:12.3f} {s['p95_abs_eps']:9.3f} "
              f"{s['mean_eps']:9.3f} {s['std_eps']:8.3f}  {req}")
    print(f"{'SKiNN (paper)':24s} {'':5s} {SKINN['median_abs_eps']:12.3f} {SKINN['p95_abs_eps']:9.3f} "
          f"{SKINN['mean_eps']:9.3f} {SKINN['std_eps']:8.3f}")
    print("(required: median |eps| <= 0.6, p95 <= 2.0, |mean eps| <= 0.2 km/s; "
          "goal: median <= 0.3, p95 <= 1.0)\n")
    worst = np.argsort(abs_eps)[::-1][:5]
    print("worst maps (full field):")
    from jkin import conventions as cv
    print(f"{'map':>5s} {'|eps|':>7s} " + " ".join(f"{p:>11s}" for p in cv.PARAM_NAMES))
    for i in worst:
        print(f"{i:5d} {abs_eps[i]:7.2f} " + " ".join(f"{p:11.3f}" for p in params[i]))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _plots(out, v, v_true, x[0], y[0], eps, abs_eps, eps2, abs_eps2, params)
    print(f"\nwrote {out}/emulator_error_hist.png and {out}/emulator_maps.png")


def _plots(out, v, v_true, x, y, eps, abs_eps, eps2, abs_eps2, params):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for a, e, label in ((ax[0], eps, "mean error $\\epsilon$"), (ax[1], abs_eps, "mean $|\\epsilon|$")):
        a.hist(e, bins=40, histtype="step", lw=1.5, label="full field")
    ax[0].hist(eps2, bins=40, histtype="step", lw=1.5, label='r < 2"')
    ax[1].hist(abs_eps2, bins=40, histtype="step", lw=1.5, label='r < 2"')
    ax[0].set_xlabel("$\\epsilon$ per map [km/s]")
    ax[1].set_xlabel("$|\\epsilon|$ per map [km/s]")
    for a in ax:
        a.set_ylabel("maps")
        a.legend()
    ax[1].axvline(np.median(abs_eps), color="k", ls="--", lw=1)
    fig.tight_layout()
    fig.savefig(out / "emulator_error_hist.png", dpi=110)
    plt.close(fig)

    n_grid = int(round(np.sqrt(len(x))))
    order = np.argsort(abs_eps)
    picks = [("typical", order[len(order) // 2]), ("worst", order[-1])]
    fig, ax = plt.subplots(2, 3, figsize=(11, 7))
    extent = [0, 5.5, 0, 5.5]
    for row, (label, i) in enumerate(picks):
        t = v_true[i].reshape(n_grid, n_grid)
        p = v[i].reshape(n_grid, n_grid)
        vmin, vmax = t.min(), t.max()
        for col, (img, title) in enumerate(((t, "JAM"), (p, "emulator"))):
            im = ax[row, col].imshow(img, origin="lower", extent=extent, vmin=vmin, vmax=vmax)
            ax[row, col].set_title(f"{label} map {i}: {title}")
            plt.colorbar(im, ax=ax[row, col], label="v_rms [km/s]")
        res = p - t
        lim = np.abs(res).max()
        im = ax[row, 2].imshow(res, origin="lower", extent=extent, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax[row, 2].set_title(f"residual, |eps| = {abs_eps[i]:.2f} km/s")
        plt.colorbar(im, ax=ax[row, 2], label="km/s")
    for a in ax.ravel():
        a.set_xlabel('x ["]')
        a.set_ylabel('y ["]')
    fig.tight_layout()
    fig.savefig(out / "emulator_maps.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
