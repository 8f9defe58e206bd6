"""Assemble the ten joint fits for recovery.py --report-only (session 19): 2, 4, 5, 6, 8 at
target acceptance 0.8 and 0, 1, 9 at 0.9 on the new default model sampling; 3 (long) and 7 (0.9)
from recovery-s12 (the (8, 2, 1) sampling). Then

    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only

    python benchmarks/results/recovery-s19/assemble.py OUT
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

new, old = here, here.parent / "recovery-s12"
j = {k: f"system{k:02d}/joint" for k in range(10)}
sources = {k: new / j[k] for k in (2, 4, 5, 6, 8)}
sources.update({k: new / "ta90" / j[k] for k in (0, 1, 9)})
sources.update({3: old / "long" / j[3], 7: old / "ta90" / j[7]})
recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
