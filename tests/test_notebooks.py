"""The three notebooks run without error from a fresh kernel, with tiny sizes (nbclient).

Their numbers are not asserted here (the library tests and benchmarks do that); this proves a
user can follow them on a fresh install.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TINY = {
    "JKIN_NB_NPIX": "8", "JKIN_NB_MAP_NPIX": "33", "JKIN_NB_MAP_STEPS": "5",
    "JKIN_NB_WARMUP": "5", "JKIN_NB_SAMPLES": "5", "JKIN_NB_IFU_NPIX": "15",
    "JKIN_NB_STARTS": "2", "JKIN_NB_TREE_DEPTH": "3", "JKIN_NB_POSITION_STEPS": "20",
    "MPLBACKEND": "Agg",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_emulator.ipynb", "02_numpyro_model_building.ipynb",
                                  "03_joint_inference.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    for k, v in TINY.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("JKIN_NB_OUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "notebooks are committed without outputs"
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
