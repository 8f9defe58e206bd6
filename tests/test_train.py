"""Emulator training: exact resumption, export with a verified manifest, refusal of bad runs."""

import json

import jax
import numpy as np
import pytest

from jkin.dataset import GenerationSpec, generate
from jkin.emulator import Emulator
from jkin.emulator.network import CIPSConfig
from jkin.emulator.train import TrainConfig, export, load_run, train

TINY = CIPSConfig(width=16, n_layers=2, mapping_width=16, mapping_layers=2, n_fourier=16)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "set"
    generate(out, 40, GenerationSpec(seed=5, n_points=8, chunk_size=8), n_workers=2,
             progress=False)
    return out


def _cfg(data, **kw):
    base = dict(data=str(data), network=TINY, steps=6, batch_maps=4, points_per_map=8,
                warmup_steps=2, val_maps=4)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_exact(tiny_set, tmp_path):
    cfg = _cfg(tiny_set)
    whole = train(tmp_path / "whole", cfg, progress=False)
    assert whole["done"] and whole["step"] == 6
    train(tmp_path / "split", cfg, max_steps=3, progress=False)
    assert load_run(tmp_path / "split")[2] == 3
    again = train(tmp_path / "split", None, progress=False)  # resumes with the stored config
    assert again["step"] == 6
    a = jax.tree_util.tree_leaves(load_run(tmp_path / "whole")[1])
    b = jax.tree_util.tree_leaves(load_run(tmp_path / "split")[1])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_prefix_and_settings_are_checked(tiny_set, tmp_path):
    with pytest.raises(ValueError, match="only 40 of the first 50 samples"):
        train(tmp_path / "r", _cfg(tiny_set, n_maps=50), progress=False)
    train(tmp_path / "r2", _cfg(tiny_set, n_maps=32, steps=1, warmup_steps=0), progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train(tmp_path / "r2", _cfg(tiny_set, n_maps=32, steps=2, warmup_steps=0), progress=False)
    with pytest.raises(ValueError, match=r"warmup_steps = 6 must be in \[0, steps = 6\)"):
        _cfg(tiny_set, warmup_steps=6)
    with pytest.raises(ValueError, match="holds no training run"):
        train(tmp_path / "none", None, progress=False)


def test_export_round_trip(tiny_set, tmp_path):
    train(tmp_path / "run", _cfg(tiny_set), progress=False)
    manifest = export(tmp_path / "run", tmp_path / "w" / "tiny", test=str(tiny_set))
    m = json.loads(manifest.read_text())
    assert m["training"]["steps_done"] == 6 and m["test"]["n_maps"] == 40
    emu = Emulator.load(manifest)
    params = load_run(tmp_path / "run")[1]
    for x, y in zip(jax.tree_util.tree_leaves(emu.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    v = emu(np.array([1.2, 2.0, 0.8, 0.9, 0.9, 3.0, 0.1, 75.0]), np.ones(3), np.ones(3))
    assert v.shape == (3,) and np.all(np.isfinite(np.asarray(v)))
