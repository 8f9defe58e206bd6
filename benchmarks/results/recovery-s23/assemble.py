"""Assemble the ten joint fits for recovery.py --report-only (session 23): each system's latest
fit - those re-run here (ta80/: target acceptance 0.8; ta90/: 0.9), else the session-22 set's
(0, 3, 7 from recovery-s22/ta90; 1 recovery-s21/ta90; 2 recovery-s20; 4, 5, 6, 8 recovery-s19;
9 recovery-s19/ta90). Then

    python benchmarks/results/recovery-s23/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import importlib.util
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

spec = importlib.util.spec_from_file_location("s22", here.parent / "recovery-s22/assemble.py")
s22 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s22)  # the session-22 set's sources (no linking: not run as __main__)
sources, j = dict(s22.sources), s22.j
for k in range(10):  # this session's re-runs replace them
    for sub in ("ta80", "ta90"):
        if (here / sub / j[k] / "fit.json").exists():
            sources[k] = here / sub / j[k]
recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
