"""The ``jkin`` command: ``jkin fit`` end to end on a tiny configuration and one-line errors for
bad configuration files. (``jkin demo``'s three fits run in notebooks/03_joint_inference.ipynb,
which tests/test_notebooks.py executes with tiny settings.)"""

import json
import subprocess
import sys

import numpy as np
import pytest

from jkin import cli, fitting, mocks

TINY = dict(seed=0, n_starts=2, map_steps=5, num_warmup=5, num_samples=5, num_chains=2,
            max_tree_depth=2, position_steps=20)


@pytest.fixture(scope="module")
def tiny_ifu(tmp_path_factory):
    from jkin.emulator import Emulator

    d = tmp_path_factory.mktemp("ifu")
    emu = Emulator.load()
    mocks.make_mock_ifu(seed=0, truth="emulator", emulator=emu, n_pix=11, pixel_scale=0.1,
                        exposure=600.0, supersampling=1, path=d / "ifu.fits")
    return d / "ifu.fits"


def test_fit_cli_end_to_end(tiny_ifu, tmp_path):
    cfg = fitting.write_config(tmp_path / "tiny.toml", mode="kinematics",
                               data={"kinematics": str(tiny_ifu)}, output="out", inference=TINY)
    cache = tmp_path / "xla"
    res = subprocess.run([sys.executable, "-m", "jkin.cli", "fit", str(cfg), "--quiet",
                          "--compile-cache", str(cache)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kinematics fit in" in res.stdout
    # 5 draws per chain do not converge, and jkin says so, naming the parameters
    assert "chains not converged: R-hat" in res.stderr
    # the programs that took over a second to compile (NUTS's loop at least) were kept
    assert any(p.name.endswith("-cache") for p in cache.iterdir())
    out = tmp_path / "out"
    for name in ("posterior.nc", "summary.csv", "corner.png", "fit.json"):
        assert (out / name).stat().st_size > 0
    rec = json.loads((out / "fit.json").read_text())
    assert rec["mode"] == "kinematics"
    assert rec["truth"]["theta_E"] == mocks.PAPER_MOCK_THETA["theta_E"]
    import pandas as pd

    rhat = pd.read_csv(out / "summary.csv", index_col=0)["r_hat"].to_dict()
    assert rec["not_converged"] and all(not rhat[k] < fitting.RHAT_WARN
                                        for k in rec["not_converged"])
    assert all(rhat[k] < fitting.RHAT_WARN for k in rhat
               if k not in rec["not_converged"] and k in rec["map"])
    # one fit in the jkin process: a host device per core, so "auto" runs the 2 chains in parallel
    import os

    assert rec["chain_method"] == ("parallel" if (os.cpu_count() or 1) >= 2 else "sequential")
    import arviz as az

    post = az.from_netcdf(str(out / "posterior.nc")).posterior
    assert post["theta_E"].shape == (2, 5)
    assert np.all(np.isfinite(post["log10_M_thetaE"]))

    # a chain (run_many): a fit, then one started at its MAP (init_from names a fit that does
    # not exist until the first has run); the second starts at that MAP, so its optimised log
    # density cannot be worse
    cfg_a = fitting.write_config(tmp_path / "a.toml", mode="kinematics",
                                 data={"kinematics": str(tiny_ifu)}, output="a",
                                 inference=dict(TINY, mass_matrix="laplace"))
    cfg_b = fitting.write_config(tmp_path / "b.toml", mode="kinematics",
                                 data={"kinematics": str(tiny_ifu)}, output="b",
                                 inference=dict(TINY, init_from="a"))
    ra, rb = fitting.run_many([[cfg_a, cfg_b]], progress=False)
    rec_a = json.loads((tmp_path / "a" / "fit.json").read_text())
    rec_b = json.loads((tmp_path / "b" / "fit.json").read_text())
    assert (ra["name"], rb["name"]) == ("a", "b")
    assert rec_b["map_log_density"] >= rec_a["map_log_density"] - 1e-3
    assert set(rec["map_latent"]) >= {"theta_E", "phi_vec", "R_sersic_frac"}

    # the configured fit's potential at its recorded MAP is the log density the fit recorded
    pot = fitting.config_potential(cfg_a)
    assert -pot(pot.x(fitting.load_map(tmp_path / "a" / "fit.json"))) == pytest.approx(
        rec_a["map_log_density"], rel=1e-9)
    with pytest.raises(ValueError, match="data.lensing: a joint potential needs it"):
        fitting.config_potential(cfg_a, mode="joint")


def test_light_precision_reaches_the_lens_model(tmp_path):
    """``inference.light_precision`` (default "float32") becomes the lens model's
    ``LensModelConfig.light_precision`` in lensing and joint fits."""
    from jkin import lensing
    from jkin.lensing_data import save_lensing_data

    mock = lensing.make_mock_lensing(3, settings=lensing.MockSettings(n_pix=20, psf_size=5))
    save_lensing_data(tmp_path / "lens.fits", mock.data, truth=mock.truth)
    for inference, want in (({}, "float32"), ({"light_precision": "float64"}, "float64")):
        cfg = fitting.write_config(tmp_path / f"{want}.toml", mode="lensing",
                                   data={"lensing": "lens.fits"}, output=want,
                                   inference=inference)
        _, kwargs = fitting.fit_inputs(fitting.load_config(cfg))
        assert kwargs["config"] == lensing.LensModelConfig(light_precision=want)


@pytest.mark.parametrize("body, key", [
    ('mode = "joint"\n[data]\nkinematics = "ifu.fits"\n', "data.lensing"),
    ('mode = "kinematic"\n', "mode"),
    ('mode = "kinematics"\n[data]\nkinematics = "nope.fits"\n', "data.kinematics"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\nnum_sample = 3\n',
     "inference.num_sample"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\nnum_chains = "2"\n',
     "inference.num_chains"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[priors]\nD_d_range = [5, 1]\n',
     "D_d_range"),
    ('mode = "kinematics"\nfoo = 1\n', "'foo'"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\nmass_matrix = "diag"\n',
     "inference.mass_matrix"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\ntarget_accept = 1\n',
     "inference.target_accept"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\n'
     'light_precision = "half"\n', "inference.light_precision"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\nedge_reparam = 1\n',
     "inference.edge_reparam"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\nnum_chains = true\n',
     "inference.num_chains"),
    ('mode = \n', "not valid TOML"),
    ('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n[inference]\ninit_from = "lens"\n',
     "inference.init_from"),
])
def test_bad_config_one_line_error(body, key, tmp_path, capsys):
    (tmp_path / "ifu.fits").write_bytes(b"")
    path = tmp_path / "bad.toml"
    path.write_text(body)
    assert cli.main(["fit", str(path), "--compile-cache", "off"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and key in err and str(path) in err


def test_compile_cache_bad_path_one_line_error(tmp_path, capsys):
    (tmp_path / "ifu.fits").write_bytes(b"")
    (tmp_path / "cfg.toml").write_text('mode = "kinematics"\n[data]\nkinematics = "ifu.fits"\n')
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "xla"
    assert cli.main(["fit", str(tmp_path / "cfg.toml"), "--compile-cache", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "compile cache" in err and str(bad) in err


def test_version():
    res = subprocess.run([sys.executable, "-m", "jkin.cli", "--version"], capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stdout.startswith("jkin ")


def test_corner_plot_with_a_partial_truth(tmp_path, recwarn):
    # a lensing mock's truth lacks the kinematic parameters: reference lines for the others,
    # and no arviz warning about the missing ones reaches the user
    import arviz as az

    rng = np.random.default_rng(0)
    idata = az.from_dict(posterior={k: rng.normal(size=(2, 50)) for k in ("a", "b", "c")})
    fitting.corner_plot(idata, tmp_path / "c.png", truth={"a": 0.0, "b": 1.0},
                        names=["a", "b", "c"])
    assert (tmp_path / "c.png").stat().st_size > 0
    assert not [w for w in recwarn if "reference_values" in str(w.message)]
