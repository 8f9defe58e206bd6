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
from jkin import lensing  # noqa: E402
from jkin.lensing_data import save_lensing_data  # noqa: E402

s20, s19 = here.parent / "recovery-s20", here.parent / "recovery-s19"
out = Path(sys.argv[1])
truths = recovery.system_truths(10)
for k in range(10):
    name = f"system{k:02d}"
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    if k in (0, 1, 7):
        src = here / "ta90" / name / "joint"
    elif k == 2:
        src = s20 / name / "joint"
    elif k == 3:
        src = s20 / "long" / name / "joint"
    elif k == 9:
        src = s19 / "ta90" / name / "joint"
    else:
        src = s19 / name / "joint"
    if (d / "joint").is_symlink():
        (d / "joint").unlink()
    (d / "joint").symlink_to(src)
    if not (d / "lens.fits").exists():  # the delays-alone D_dt of the report needs it
        mock = lensing.make_mock_lensing(seed=100 + k, truth={
            n: truths[k][n] for n in recovery.LENS_NAMES})
        save_lensing_data(d / "lens.fits", mock.data, truth=mock.truth)
    print(k, src.relative_to(here.parent))
