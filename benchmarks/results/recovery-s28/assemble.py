"""Assemble the three-mode recovery set of session 28 for recovery.py --report-only: the
kinematics-only fits from here (ta80/, one fit per system, not converged: kept as they are), the
lensing-only fits of session 27 and the joint fits of session 26 (each system at target acceptance
0.8 where its 0.8 fit passes ``recovery.fit_passes``, else at 0.9).

    python benchmarks/results/recovery-s28/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes kinematics lensing joint \
        --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

out, truths = Path(sys.argv[1]), recovery.system_truths(10)
s26, s27 = here.parent / "recovery-s26", here.parent / "recovery-s27"
for mode, roots in (("kinematics", (here / "ta80",)),
                    ("lensing", (s27 / "ta80", s27 / "ta90")),
                    ("joint", (s26 / "ta80", s26 / "ta90"))):
    recovery.link_fits(out, recovery.choose_fits(roots, mode), truths, mode=mode)
