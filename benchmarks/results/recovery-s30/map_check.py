"""The blind lensing MAP alone (no NUTS) on recovery systems, with the settings of the recovery
fits (4 blind starts, 2000 L-BFGS steps, 1000 image-position steps, one restart above image
chi^2 1.5 per pixel): the kept log density, the image chi^2 per unmasked pixel, the restarts, and
every start's final log density. Session 30 ran it on 27b0e8a (map_check.txt).

    python benchmarks/results/recovery-s30/map_check.py OUT 10 11 12 13 14 0 1 2 3 4 5 6 7 8 9
"""
import sys
import time
from pathlib import Path

import numpy as np

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parents[1]))
import recovery  # noqa: E402

from jkin import fitting  # noqa: E402
from jkin import inference as inf  # noqa: E402

out, systems = Path(sys.argv[1]), [int(k) for k in sys.argv[2:]]
truths = recovery.system_truths(max(systems) + 1)
for k in systems:
    d = recovery.write_lens(out, k, truths[k]).parent
    fitting.write_config(d / "lensmap.toml", mode="lensing", data={"lensing": "lens.fits"},
                         output="lensmap", inference=dict(seed=0, n_starts=4, map_steps=2000),
                         weights="jkin-cips-compact", name=f"system{k:02d}")
    model, kw = fitting.fit_inputs(fitting.load_config(d / "lensmap.toml"))
    t0 = time.perf_counter()
    m = inf.find_map(model, kw, seed=0, n_starts=4, n_steps=2000, position_steps=1000,
                     chi2_limit=fitting.CHI2_WARN, restarts=1, progress=False)
    starts = np.round(np.sort(m["log_density"])[::-1], 1).tolist()
    print(f"system {k}: log p {m['log_density'][m['best']]:.2f}, image chi2 per pixel "
          f"{m['imaging_chi2_per_pixel']:.3f}, restarts {m['restarts']}, starts {starts}, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
