"""Assemble the ten joint fits for recovery.py --report-only (session 22): each system's latest
fit - 0, 3, 7 from ta90/ here (the distance-ratio latents, target acceptance 0.9, 2 x (300 +
1200) parallel); 1 from recovery-s21/ta90; 2 from recovery-s20; 4, 5, 6, 8 from recovery-s19
(0.8) and 9 from recovery-s19/ta90 (0.9). Then

    python benchmarks/results/recovery-s22/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

results = here.parent
j = {k: f"system{k:02d}/joint" for k in range(10)}
sources = {k: results / "recovery-s19" / j[k] for k in (4, 5, 6, 8)}
sources.update({k: here / "ta90" / j[k] for k in (0, 3, 7)})
sources.update({1: results / "recovery-s21/ta90" / j[1], 2: results / "recovery-s20" / j[2],
                9: results / "recovery-s19/ta90" / j[9]})
if __name__ == "__main__":  # recovery-s23/assemble.py starts from these sources
    recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
