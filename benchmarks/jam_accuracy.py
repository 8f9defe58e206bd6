"""Accuracy and cost of jkin.jam against jampy's direct numerical evaluation.

For random draws over the training space, on a grid over the quadrant 0 <= x, y <= 5.5":

* jkin.jam.jam_vrms (jampy's analytic line-of-sight integral, evaluated at every point) against
  jampy.jam_axi_proj(interp=False, epsrel=1e-4) (its fully numerical double integral), on the
  same MGEs, with jampy's default internal grid for the intrinsic moments (nrad=20, nang=10)
  and a refined one (nrad=100, nang=40): the numerical path converges to jkin's values as its
  grid is refined. Pixels where either model is zero-valued (<v^2> <= 0) are counted
  separately, because jampy's numerical path is unstable there;
* jampy's default polar-grid interpolation (interp=True, nrad=20, nang=10), for comparison;
* convergence: doubling the number of Gaussians of both MGEs;
* cost per map of jkin.jam at the training layout (128 random points) and on a 64x64 grid.

    python benchmarks/jam_accuracy.py --n-maps 20 --n-grid 24
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from jkin import conventions as cv
from jkin.dataset import sample_points
from jkin.jam import DEFAULT_SETTINGS, jam_vrms, jam_vrms2, jam_vrms_jampy


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-maps", type=int, default=20)
    ap.add_argument("--n-grid", type=int, default=24, help="grid points per side of the quadrant")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    params = cv.sample_params(rng, args.n_maps)
    x, y = (a.astype(float) for a in sample_points(rng, "grid", args.n_grid**2))
    print(f"JAM accuracy: {args.n_maps} random draws (seed {args.seed}), {args.n_grid}x{args.n_grid} "
          f"grid over 0 <= x, y <= {cv.FIELD_HALF_WIDTH}\"; settings {DEFAULT_SETTINGS}\n")
    pair = f" {'mean|d|':>8s} {'max|d|':>7s}"
    head = f"{'map':>3s} {'zero%':>6s}" + pair * 4 + f" {'t_jkin':>7s} {'t_num':>6s}"
    print(f"{'':>3s} {'':>6s} {'jkin vs num 20x10':^16s} {'jkin vs num 100x40':^16s} "
          f"{'interp 20x10':^16s} {'2x Gaussians':^16s}")
    print(head)
    rows = []
    for i, p in enumerate(params):
        t0 = time.perf_counter()
        v2 = jam_vrms2(p, x, y)
        t_jkin = time.perf_counter() - t0
        v = np.sqrt(np.clip(v2, 0, None))
        t0 = time.perf_counter()
        num = jam_vrms_jampy(p, x, y, interp=False, epsrel=1e-4)
        t_num = time.perf_counter() - t0
        fine = jam_vrms_jampy(p, x, y, interp=False, epsrel=1e-4, nrad=100, nang=40)
        itp = jam_vrms_jampy(p, x, y, interp=True, nrad=20, nang=10)
        dbl = jam_vrms(p, x, y, DEFAULT_SETTINGS.doubled())
        has_zero = bool(np.any(v2 <= 0) or np.any(num <= 0) or np.any(fine <= 0))
        # Next to the edge of a zero-valued region v = sqrt(<v^2>) is steep and jampy's
        # numerical path unstable: on such maps compare only where all three exceed 50 km/s.
        floor = 50.0 if has_zero else 0.0
        good = (v > floor) & (num > floor) & (fine > floor)
        d = np.abs(v - num)[good]
        df = np.abs(v - fine)[good]
        di = np.abs(itp - fine)[good]
        dd = np.abs(dbl - v)
        r = dict(zero=float(np.mean(v2 <= 0)), has_zero=has_zero, mean=d.mean(), max=d.max(), fmean=df.mean(), fmax=df.max(),
                 imean=di.mean(), imax=di.max(),
                 dmean=dd.mean(), dmax=dd.max(), t_jkin=t_jkin, t_num=t_num)
        rows.append(r)
        cols = " ".join(f"{r[k + 'mean']:8.4f} {r[k + 'max']:7.3f}" for k in ("", "f", "i", "d"))
        print(f"{i:3d} {100 * r['zero']:6.1f} {cols} {t_jkin:7.2f} {t_num:6.2f}")
    all_rows = rows
    rows = [r for r in all_rows if not r["has_zero"]]
    agg = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    print(f"\nsummary over the {len(rows)} maps without zero-valued pixels [km/s]:")
    print(f"  jkin vs jampy numeric (nrad=20, nang=10):  mean |d| per map, averaged "
          f"{agg['mean'].mean():.4f} (worst map {agg['mean'].max():.4f}); max |d| {agg['max'].max():.3f}")
    print(f"  jkin vs jampy numeric (nrad=100, nang=40): mean |d| per map, averaged "
          f"{agg['fmean'].mean():.4f} (worst map {agg['fmean'].max():.4f}); max |d| {agg['fmax'].max():.3f}")
    print(f"  jampy interp=True 20x10 vs numeric 100x40: mean |d| per map, averaged "
          f"{agg['imean'].mean():.4f}; max |d| {agg['imax'].max():.3f}")
    print(f"  doubling the Gaussians:                    mean |d| per map, averaged {agg['dmean'].mean():.4f}; "
          f"max |d| {agg['dmax'].max():.3f}")
    zero_rows = [r for r in all_rows if r["has_zero"]]
    print(f"maps with zero-valued pixels: {len(zero_rows)} of {len(all_rows)}", end="")
    if zero_rows:
        z = {k: np.array([r[k] for r in zero_rows]) for k in ("mean", "max", "fmean", "fmax")}
        print(f"; on their pixels with v_rms > 50 km/s, jkin vs numeric 100x40: mean |d| "
              f"averaged {z['fmean'].mean():.4f}, max {z['fmax'].max():.3f} "
              f"(20x10: {z['mean'].mean():.4f}, max {z['max'].max():.3f})")
    else:
        print()

    # Cost per map (one core, after compilation) with the fast quadrature and with jampy's own
    # adaptive integration, on the training layout and on a 64 x 64 grid.
    jampy_settings = dataclasses.replace(DEFAULT_SETTINGS, method="jampy")
    for layout, npts in (("random", 128), ("grid", 64 * 64)):
        xs, ys = (a.astype(float) for a in sample_points(np.random.default_rng(0), layout, npts))
        jam_vrms2(params[0], xs, ys)  # compile for this shape
        t0 = time.perf_counter()
        for p in params[:3]:
            jam_vrms2(p, xs, ys)
        t_q = (time.perf_counter() - t0) / 3
        t0 = time.perf_counter()
        for p in params[:3]:
            jam_vrms2(p, xs, ys, jampy_settings)
        t_j = (time.perf_counter() - t0) / 3
        print(f"  cost per map, {layout} {npts} points: {t_q:.2f} s (quadrature), {t_j:.2f} s "
              f"(jampy's integration), one core")

if __name__ == "__main__":
    main()
