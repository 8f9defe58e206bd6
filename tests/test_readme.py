"""README's quickstart runs as written on a fresh install, up to the gradient of the joint
log-likelihood (the NUTS fit after it takes tens of minutes: the notebooks and the CLI tests run
fits with tiny settings)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_until_fit() -> str:
    text = README.read_text()
    section = text[text.index("## Quickstart"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cut = code.index("# or sample the 13 parameters")
    return code[:cut]


@pytest.mark.slow
def test_readme_quickstart_gives_a_finite_joint_gradient():
    ns: dict = {}
    exec(compile(quickstart_until_fit(), str(README), "exec"), ns)
    v, image = np.asarray(ns["v"]), np.asarray(ns["image"])
    assert v.shape == (50,) and np.all(np.isfinite(v)) and np.all(v > 0)
    assert image.shape == (551, 551)
    assert np.isfinite(float(ns["value"]))
    grad = ns["grad"]
    for name in ("theta_E", "gamma", "q_mass", "beta_z", "inclination", "D_d", "D_dt"):
        g = np.asarray(grad[name])
        assert np.all(np.isfinite(g)) and np.any(g != 0), name
