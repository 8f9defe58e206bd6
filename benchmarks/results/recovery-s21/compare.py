"""The table of README.md: each fit under ARG (recovery-s21/ta90) against the same system's
latest earlier fit with the same settings: from recovery-s20 (float32 light, the MAP stage
before session 21), else recovery-s19 (float64 light), else recovery-s12.

    python benchmarks/results/recovery-s21/compare.py benchmarks/results/recovery-s21/ta90

or against explicit earlier roots, the first that holds the system (start/ against ta90/: the
same code but the NUTS starts):

    python benchmarks/results/recovery-s21/compare.py benchmarks/results/recovery-s21/start \
        benchmarks/results/recovery-s21/ta90
"""
import json
import sys
from pathlib import Path

import arviz as az
import numpy as np

from jkin.kinematics import THETA_NAMES

new_root = Path(sys.argv[1]).resolve()
results = Path(__file__).resolve().parent.parent
sub = new_root.name if new_root.name in ("ta90", "long") else ""
old_roots = [results / f"recovery-s{n}" / sub for n in (20, 19, 12)]
if len(sys.argv) > 2:  # explicit "before" roots, the first holding the system wins
    old_roots = [Path(r).resolve() for r in sys.argv[2:]]
print("| system | target acc. | wall [s] (before) | MAP + NUTS | steps per draw (before) | NUTS s "
      "per 1000 sampled steps (before) | max R-hat (before) | min bulk ESS | divergences | "
      "truths in 95% | D_d error | before from |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def stats(d):
    f = json.loads((d / "fit.json").read_text())
    i = az.from_netcdf(d / "posterior.nc")
    ns = np.asarray(i.sample_stats.n_steps)
    per = ns.mean(axis=1)
    # parallel chains wait for the slower; sequential ones add up (warm-up included in nuts_s)
    steps = ns.sum() if f["chain_method"] == "sequential" else ns.sum(axis=1).max()
    ms = 1e3 * f["timings_s"]["nuts_s"] / steps
    truth = {k: v for k, v in f["truth"].items() if k in THETA_NAMES}
    inside = 0
    for k in truth:
        lo, hi = np.percentile(np.asarray(i.posterior[k]).ravel(), [2.5, 97.5])
        inside += int(lo <= truth[k] <= hi)
    dd = float(np.asarray(i.posterior["D_d"]).mean()) / truth["D_d"] - 1
    return f, per, ms, inside, len(truth), dd


for d in sorted(new_root.glob("system*/joint")):
    k = d.parent.name
    f, per, ms, ins, n, dd = stats(d)
    old = next(r / k / "joint" for r in old_roots if (r / k / "joint" / "fit.json").exists())
    fo, pero, mso, _, _, _ = stats(old)
    t = f["timings_s"]
    print(f"| {k[-1]} | {f['inference']['target_accept']} | {t['wall']:.0f} "
          f"({fo['timings_s']['wall']:.0f}) | {t['map_s']:.0f} + {t['nuts_s']:.0f} | "
          f"{per[0]:.1f}/{per[1]:.1f} ({pero[0]:.1f}/{pero[1]:.1f}) | {ms:.1f} ({mso:.1f}) | "
          f"{f['max_rhat']:.3f} ({fo['max_rhat']:.3f}) | {f['min_ess_bulk']:.0f} | "
          f"{f['divergences']} | {ins}/{n} | {100 * dd:+.1f}% | "
          f"{old.parent.parent.relative_to(results)} |")
