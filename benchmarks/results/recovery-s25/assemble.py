"""Assemble the ten joint fits of the session-25 set for recovery.py --report-only: each system
at target acceptance 0.8 (numpyro's and jkin's default) where its 0.8 fit on the session-24
sampler has max R-hat < 1.01 and divergences in at most 1% of its draws, else its 0.9 fit (the
advice of docs/inference.md: raise it when a fit reports divergences). The 0.8 fits are this
session's (ta80/ here) or session 24's (recovery-s24/ta80: 2, 4, 5, 6); the 0.9 fits session 24's
(recovery-s24/ta90) or this session's (ta90/ here: 6). No jkin code changed between them
(e2f20a2's sampler).

    python benchmarks/results/recovery-s25/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

s24 = here.parent / "recovery-s24"
roots = [here / "ta80", s24 / "ta80", here / "ta90", s24 / "ta90"]

sources = {}
for k in range(10):
    for root in roots:
        fit = root / f"system{k:02d}" / "joint"
        if (fit / "fit.json").exists() and (root.name == "ta90" or recovery.fit_passes(fit)):
            sources[k] = fit
            break
recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
