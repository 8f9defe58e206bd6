"""Assemble the ten joint fits of the session-26 set for recovery.py --report-only: each system
at target acceptance 0.8 (numpyro's and jkin's default) where its 0.8 fit has max R-hat < 1.01
and divergences in at most 1% of its draws, else its 0.9 fit (docs/inference.md: raise it when a
fit reports divergences). All fits are this session's, on the sampler with the curve shifts
(inference.curve_shifts): ta80/ and ta90/ here.

    python benchmarks/results/recovery-s26/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

recovery.link_fits(Path(sys.argv[1]), recovery.choose_fits((here / "ta80", here / "ta90")),
                   recovery.system_truths(10))
