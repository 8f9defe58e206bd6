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
from jkin import lensing  # noqa: E402
from jkin.lensing_data import save_lensing_data  # noqa: E402

new, old = here, here.parent / "recovery-s12"
out = Path(sys.argv[1])
truths = recovery.system_truths(10)
for k in range(10):
    d = out / f"system{k:02d}"
    d.mkdir(parents=True, exist_ok=True)
    if k in (0, 1, 9):
        src = new / "ta90" / f"system{k:02d}" / "joint"
    elif k == 3:
        src = old / "long" / f"system{k:02d}" / "joint"
    elif k == 7:
        src = old / "ta90" / f"system{k:02d}" / "joint"
    else:
        src = new / f"system{k:02d}" / "joint"
    if (d / "joint").is_symlink():
        (d / "joint").unlink()
    (d / "joint").symlink_to(src)
    if not (d / "lens.fits").exists():  # the delays-alone D_dt of the report needs it
        mock = lensing.make_mock_lensing(seed=100 + k, truth={
            n: truths[k][n] for n in recovery.LENS_NAMES})
        save_lensing_data(d / "lens.fits", mock.data, truth=mock.truth)
    print(k, src)
