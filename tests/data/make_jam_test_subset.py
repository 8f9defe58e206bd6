"""Make tests/data/jam_test_subset.npz: 40 JAM maps (jkin.jam, jampy) on a 16 x 16 grid over the
quadrant 0-5.5", with parameters from a seed never used for training sets (9_000_001).

    python tests/data/make_jam_test_subset.py
"""

from pathlib import Path

import numpy as np


def main():
    import jampy
    import mgefit

    import jkin
    from jkin.dataset import GenerationSpec, sample_spec_row

    spec = GenerationSpec(seed=9_000_001, layout="grid", n_points=256, chunk_size=1)
    rows = [sample_spec_row(spec, i) for i in range(40)]
    out = Path(__file__).with_name("jam_test_subset.npz")
    np.savez_compressed(
        out,
        params=np.stack([r[0] for r in rows]),
        x=rows[0][1], y=rows[0][2],
        v2=np.stack([r[3] for r in rows]),
        made_by=np.array(
            f"jkin.jam.jam_vrms2 via jkin.dataset.sample_spec_row({spec}) ; jkin {jkin.__version__}, "
            f"jampy {jampy.__version__}, mgefit {mgefit.__version__}"
        ),
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
