"""Training-set generation: content, determinism, kill-and-resume, extension, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jkin import conventions as cv
from jkin.dataset import GenerationSpec, generate, load, sample_points, status
from jkin.jam import jam_vrms2

SPEC = GenerationSpec(seed=11, layout="random", n_points=12, chunk_size=2)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "jkin.cli", *args], capture_output=True, text=True,
                          **kw)


@pytest.fixture(scope="module")
def reference_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "set"
    summary = generate(out, 6, SPEC, n_workers=2, progress=False)
    assert summary["made"] == 6
    return out


def test_samples_are_jam_at_their_points(reference_set):
    data = load(reference_set)
    assert data["params"].shape == (6, 8) and data["v2"].shape == (6, 12)
    cv.validate_params(data["params"])
    for i in (0, 5):
        v2 = jam_vrms2(data["params"][i], data["x"][i].astype(float), data["y"][i].astype(float))
        np.testing.assert_allclose(data["v2"][i], v2, rtol=1e-6)
    # sample i depends on (seed, i) only
    rng = np.random.default_rng([SPEC.seed, 3])
    np.testing.assert_array_equal(data["params"][3], cv.sample_params(rng, 1)[0])
    x, _ = sample_points(rng, "random", 12)
    np.testing.assert_array_equal(data["x"][3], x)


def test_points_cover_the_quadrant():
    x, y = sample_points(np.random.default_rng(0), "random", 4000)
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 5.5 and y.max() <= 5.5
    r = np.hypot(x, y)
    assert (r < 0.1).sum() > 100  # the log-radius half samples the centre
    gx, gy = sample_points(None, "grid", 16)
    np.testing.assert_allclose(np.unique(gx), (np.arange(4) + 0.5) * 5.5 / 4)


def test_kill_and_resume_is_byte_identical(reference_set, tmp_path):
    out = tmp_path / "killed"
    args = ["data", "generate", "--n", "6", "--out", str(out), "--seed", "11", "--n-points", "12",
            "--chunk-size", "2", "--workers", "1", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "jkin.cli", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "done").glob("chunk-*")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    st = status(out)
    assert 0 < st["n_done"] < 6, "the run was not interrupted part-way"
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"{6 - st['n_done']} made now, {st['n_done']} already there" in res.stdout
    assert _tree(out) == _tree(reference_set)


def test_extend_equals_direct(reference_set, tmp_path):
    out = tmp_path / "grown"
    generate(out, 3, SPEC, n_workers=1, progress=False)  # ends in a partial chunk
    summary = generate(out, 6, SPEC, n_workers=1, progress=False)
    assert summary["made"] == 4  # the partial chunk is redone
    assert _tree(out) == _tree(reference_set)
    again = generate(out, 6, SPEC, n_workers=1, progress=False)
    assert again["made"] == 0


def test_other_settings_are_refused(reference_set):
    other = GenerationSpec(seed=12, layout="random", n_points=12, chunk_size=2)
    with pytest.raises(ValueError, match=r"seed: 11 \(on disk\) != 12"):
        generate(reference_set, 6, other, n_workers=1, progress=False)
    with pytest.raises(ValueError, match="smaller than the 6 samples"):
        generate(reference_set, 4, SPEC, n_workers=1, progress=False)


def test_incomplete_set_is_not_loaded_silently(tmp_path):
    out = tmp_path / "partial"
    generate(out, 2, SPEC, n_workers=1, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["n"] = 4  # as if a run for 4 had been killed after the first chunk
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="incomplete"):
        load(out)
    assert len(load(out, allow_incomplete=True)["params"]) == 2


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "0"], "n must be in [1, 100000000]; got 0"),
        (["--n", "4", "--layout", "grid", "--n-points", "10"], "n_points must be a square for layout 'grid'; got 10"),
        (["--n", "4", "--n-points", "0"], "n_points must be in [1, 1000000]; got 0"),
        (["--n", "4", "--seed", "-1"], "seed must be in [0, 2^63); got -1"),
    ],
)
def test_cli_reports_bad_input_in_one_line(tmp_path, args, message):
    res = _cli("data", "generate", "--out", str(tmp_path / "x"), *args)
    assert res.returncode == 2
    assert res.stderr.strip() == f"jkin: error: {message}"
    assert "Traceback" not in res.stderr


def test_cli_status_of_missing_dir(tmp_path):
    res = _cli("data", "status", str(tmp_path / "nothing"))
    assert res.returncode == 2 and res.stderr.startswith("jkin: error: no training set")
