"""Assemble the lensing-only and joint recovery set of session 27 for recovery.py --report-only:
lensing-only fits from here (ta80/, ta90/: each system at target acceptance 0.8 where its 0.8 fit
has max R-hat < 1.01 and divergences in at most 1% of its draws, else at 0.9) and the joint fits
of session 26 (recovery-s26, by the same rule). The only kinematics-only set (sessions 5-6,
recovery/, not converged) kept no posteriors, so it cannot join the report.

    python benchmarks/results/recovery-s27/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes lensing joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

out, truths = Path(sys.argv[1]), recovery.system_truths(10)
s26 = here.parent / "recovery-s26"
for mode, roots in (("lensing", (here / "ta80", here / "ta90")),
                    ("joint", (s26 / "ta80", s26 / "ta90"))):
    recovery.link_fits(out, recovery.choose_fits(roots, mode), truths, mode=mode)
