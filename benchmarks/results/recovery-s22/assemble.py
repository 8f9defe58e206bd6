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
from jkin import lensing  # noqa: E402
from jkin.lensing_data import save_lensing_data  # noqa: E402

results = here.parent
source = {0: here / "ta90", 3: here / "ta90", 7: here / "ta90", 1: results / "recovery-s21/ta90",
          2: results / "recovery-s20", 9: results / "recovery-s19/ta90"}
out = Path(sys.argv[1])
truths = recovery.system_truths(10)
for k in range(10):
    name = f"system{k:02d}"
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    src = source.get(k, results / "recovery-s19") / name / "joint"
    if (d / "joint").is_symlink():
        (d / "joint").unlink()
    (d / "joint").symlink_to(src)
    if not (d / "lens.fits").exists():  # the delays-alone D_dt of the report needs it
        mock = lensing.make_mock_lensing(seed=100 + k, truth={
            n: truths[k][n] for n in recovery.LENS_NAMES})
        save_lensing_data(d / "lens.fits", mock.data, truth=mock.truth)
    print(k, src.relative_to(results))
