"""Assemble the ten joint fits of session 24 (all re-run on the EdgeUniform sampler; ta80/:
target acceptance 0.8, ta90/: 0.9, as each system's latest earlier fit) for recovery.py
--report-only:

    python benchmarks/results/recovery-s24/assemble.py OUT
    python benchmarks/recovery.py --out OUT --systems 10 --modes joint --report-only
"""
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

sources = {k: here / sub / f"system{k:02d}" / "joint" for k in range(10) for sub in ("ta80", "ta90")
           if (here / sub / f"system{k:02d}" / "joint" / "fit.json").exists()}
recovery.link_fits(Path(sys.argv[1]), sources, recovery.system_truths(10))
