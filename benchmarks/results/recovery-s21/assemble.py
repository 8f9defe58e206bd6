"""Assemble the ten joint fits for recovery.py --report-only (session 21): each system's latest
fit with the settings it needs - 0, 1, 7 from ta90/ here (target acceptance 0.9); 2 from
recovery-s20 and 3 from recovery-s20/long (2 x (500 + 2400), 0.9, sequential chains); 4, 5, 6,
8 from recovery-s19 (0.8) and 9 from recovery-s19/ta90 (0.9). Then

    python benchmarks/results/recovery-s21/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

s20, s19 = here.parent / "recovery-s20", here.parent / "recovery-s19"
j = {k: f"system{k:02d}/joint" for k in range(10)}
sources = {k: s19 / j[k] for k in (4, 5, 6, 8)}
sources.update({k: here / "ta90" / j[k] for k in (0, 1, 7)})
sources.update({2: s20 / j[2], 3: s20 / "long" / j[3], 9: s19 / "ta90" / j[9]})
recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
