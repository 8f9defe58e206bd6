"""Assemble the ten joint fits for recovery.py --report-only (session 20): each system's latest
fit with the settings it needs - 2 from here; 7 from ta90/ here (target acceptance 0.9); 3 from
long/ here (2 x (500 + 2400), 0.9, sequential chains) if present, else recovery-s12/long; 4, 5,
6, 8 from recovery-s19 (0.8) and 0, 1, 9 from recovery-s19/ta90 (0.9). Then

    python benchmarks/results/recovery-s20/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

s19, s12 = here.parent / "recovery-s19", here.parent / "recovery-s12"
j = {k: f"system{k:02d}/joint" for k in range(10)}
sources = {k: s19 / j[k] for k in (4, 5, 6, 8)}
sources.update({k: s19 / "ta90" / j[k] for k in (0, 1, 9)})
sources.update({2: here / j[2], 7: here / "ta90" / j[7], 3: here / "long" / j[3]})
if not (sources[3] / "fit.json").exists():
    sources[3] = s12 / "long" / j[3]
recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
