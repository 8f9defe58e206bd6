"""Assemble the ten held-out systems (10-19) for recovery.py --report-only: the joint fits of
session 30 (10-14; each at target acceptance 0.8 where that fit passes ``recovery.fit_passes``,
else its 0.9 re-run: system 11) and of session 31 (15-19, all at 0.8).

    python benchmarks/results/recovery-s31/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 20 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

out, truths = Path(sys.argv[1]), recovery.system_truths(20)
s30 = here.parent / "recovery-s30"
fits = recovery.choose_fits((s30, s30 / "ta90", here), "joint", n_systems=20)
recovery.link_fits(out, {k: f for k, f in fits.items() if k >= 10}, truths, mode="joint")
