"""Write the three notebooks (without outputs) from the cell sources below.

    python notebooks/build_notebooks.py

The notebooks are the deliverable; this script only keeps their sources reviewable as code.
Each notebook reads its sizes from environment variables (``JKIN_NB_*``); CI runs them with tiny
values (tests/test_notebooks.py).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

NB1 = [
    ("md", """# 1. The jkin emulator: JAM v_rms maps in milliseconds, with gradients

jkin's CIPS network (a Flax reimplementation of SKiNN's emulator, trained on jkin's own JAM maps)
maps the 8 parameters of a power-law lens + Sersic tracer to the line-of-sight v_rms in km/s at
any galaxy-frame position. Here: load it, render a map, compare it with JAM itself (`jkin.jam`),
and take a gradient."""),
    ("code", """import os, time
import numpy as np
import jax, jax.numpy as jnp
import matplotlib.pyplot as plt
from jkin import conventions as cv
from jkin.emulator import Emulator
from jkin.jam import jam_vrms

# sizes (CI runs this notebook with tiny values)
NPIX = int(os.environ.get("JKIN_NB_NPIX", "40"))        # JAM comparison grid per quadrant side
MAP_NPIX = int(os.environ.get("JKIN_NB_MAP_NPIX", "551"))"""),
    ("code", """emu = Emulator.load()               # the bundled default weights (sha256-checked)
print(cv.PARAM_NAMES)
m = emu.manifest
print(m["config"], "\\ntest:", m.get("test"))"""),
    ("md", """Parameters in `PARAM_NAMES` order: theta_E ["], gamma, q_mass, q_light, R_sersic ["],
n_sersic, beta_z, inclination [deg]. Outside the training space an eager call raises an error
naming the field and its allowed range."""),
    ("code", """params = jnp.array([1.2, 2.05, 0.8, 0.85, 0.9, 3.5, 0.1, 70.0])
print("in domain:", emu.in_domain(params))
try:
    emu(jnp.array([1.2, 2.05, 0.8, 0.85, 0.9, 3.5, 0.6, 70.0]), jnp.zeros(1), jnp.zeros(1))
except ValueError as e:
    print("ValueError:", e)"""),
    ("code", """t = time.perf_counter()
image = np.asarray(emu.map(params, npix=MAP_NPIX, pixel_scale=11.0 / MAP_NPIX))
print(f"{MAP_NPIX}x{MAP_NPIX} map in {time.perf_counter() - t:.2f} s (first call includes compilation)")
plt.imshow(image, origin="lower", extent=[-5.5, 5.5, -5.5, 5.5], cmap="magma")
plt.colorbar(label="v_rms [km/s]"); plt.xlabel("x [arcsec]"); plt.ylabel("y [arcsec]");"""),
    ("md", """## Against JAM

JAM (`jkin.jam.jam_vrms`: MGE + Cappellari 2008's line-of-sight integral) on a grid over the
quadrant 0-5.5", the emulator on the same points."""),
    ("code", """g = (np.arange(NPIX) + 0.5) * 5.5 / NPIX
X, Y = np.meshgrid(g, g)
t = time.perf_counter()
v_jam = jam_vrms(np.asarray(params), X.ravel(), Y.ravel()).reshape(X.shape)
t_jam = time.perf_counter() - t
v_emu = np.asarray(emu(params, jnp.asarray(X.ravel()), jnp.asarray(Y.ravel()))).reshape(X.shape)
print(f"JAM {t_jam:.2f} s for {X.size} points; mean |error| {np.abs(v_emu - v_jam).mean():.2f} km/s")
fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
for a, img, title in zip(ax, (v_jam, v_emu, v_emu - v_jam), ("JAM", "emulator", "emulator - JAM")):
    im = a.imshow(img, origin="lower", extent=[0, 5.5, 0, 5.5],
                  cmap="RdBu_r" if "-" in title else "magma")
    a.set_title(title); plt.colorbar(im, ax=a, label="km/s")"""),
    ("md", """## Gradients

The emulator is a pure JAX function of its parameters: `jax.grad` of any summary of a map.
Here the light-unweighted mean v_rms inside 1", checked against a central finite difference."""),
    ("code", """r = np.hypot(X, Y).ravel()
xs, ys = jnp.asarray(X.ravel()[r < 1]), jnp.asarray(Y.ravel()[r < 1])
summary = jax.jit(lambda p: emu(p, xs, ys).mean())
grad = jax.grad(summary)(params)
h = 1e-3 * jnp.abs(params)
fd = np.array([(summary(params.at[k].add(h[k])) - summary(params.at[k].add(-h[k]))) / (2 * h[k])
               for k in range(8)])
for name, g_, f_ in zip(cv.PARAM_NAMES, np.asarray(grad), fd):
    print(f"{name:>12s}  grad {g_:10.3f}   finite difference {f_:10.3f}")"""),
]

NB2 = [
    ("md", """# 2. Building a NumPyro model from jkin's pieces

A kinematics-only model of one IFU data set written by hand: your own priors, jkin's
differentiable forward model (`jkin.kinematics.predict_binned_vrms`: sky-to-galaxy transform,
emulator, PSF, luminosity-weighted Voronoi binning, distances), a Gaussian likelihood. Then a
gradient-based MAP with optax and NUTS."""),
    ("code", """import os
import numpy as np
import jax, jax.numpy as jnp
import optax, numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, init_to_value
from numpyro.infer.util import initialize_model
from jkin import conventions as cv, kinematics as kin, mocks
from jkin.emulator import Emulator

MAP_STEPS = int(os.environ.get("JKIN_NB_MAP_STEPS", "400"))
NUM_WARMUP = int(os.environ.get("JKIN_NB_WARMUP", "300"))
NUM_SAMPLES = int(os.environ.get("JKIN_NB_SAMPLES", "500"))
N_PIX = int(os.environ.get("JKIN_NB_IFU_NPIX", "55"))"""),
    ("md", """Mock IFU data as in the SKiNN paper (Sect. 5.2), with JAM as the truth: 0.05" pixels, PSF FWHM
0.1", Voronoi bins at S/N 15, 5-10% errors. Real data take the same path: `jkin.data.load_kinematic_data("ifu.fits")`."""),
    ("code", """truth = dict(mocks.PAPER_MOCK_THETA)
data = mocks.make_mock_ifu(truth, seed=0, n_pix=N_PIX)
emu = Emulator.load()
print(data.n_bins, "bins; truth:", truth)"""),
    ("md", """The model. The emulator only knows its training space, so the priors must stay inside it:
here R_sersic and the inclination are reparametrised onto their coupled bounds, the centre and
angle are taken as known from the imaging, D_dt is fixed (the kinematics constrain D_dt/D_d
only), and gamma gets an informative prior from, say, a lens model."""),
    ("code", """def my_model(data, emulator):
    theta_E = numpyro.sample("theta_E", dist.Uniform(0.5, 2.0))
    gamma = numpyro.sample("gamma", dist.TruncatedNormal(2.0, 0.1, low=1.5, high=2.5))
    q_mass = numpyro.sample("q_mass", dist.Uniform(0.6, 1.0))
    q_light = numpyro.sample("q_light", dist.Uniform(0.6, 1.0))
    R_sersic = theta_E * numpyro.sample("R_frac", dist.Uniform(0.5, 1.0))
    n_sersic = numpyro.sample("n_sersic", dist.Uniform(2.0, 4.0))
    beta_z = numpyro.sample("beta_z", dist.Uniform(-0.4, 0.4))
    i_min = jnp.degrees(jnp.arccos(jnp.minimum(q_mass, q_light))) + cv.INCLINATION_MARGIN
    inclination = i_min + (90.0 - i_min) * numpyro.sample("i_frac", dist.Uniform(0.0, 1.0))
    D_d = numpyro.sample("D_d", dist.Uniform(600.0, 2400.0))
    theta = dict(theta_E=theta_E, gamma=gamma, q_mass=q_mass, q_light=q_light, R_sersic=R_sersic,
                 n_sersic=n_sersic, beta_z=beta_z, inclination=inclination,
                 phi=30.0, x_c=0.0, y_c=0.0, D_dt=cv.D_DT, D_d=D_d)
    numpyro.deterministic("R_sersic", R_sersic)
    numpyro.deterministic("inclination", inclination)
    numpyro.factor("kinematics", kin.kinematic_log_likelihood(theta, data, emulator))"""),
    ("md", """## MAP with optax

numpyro gives the potential (minus the log posterior) in unconstrained space; optax minimises it
from a few prior draws at once (vmap)."""),
    ("code", """keys = jax.random.split(jax.random.PRNGKey(0), 4)
info = initialize_model(keys, my_model, model_args=(data, emu))   # one init per key
potential, postprocess = info.potential_fn, info.postprocess_fn
z = info.param_info.z
opt = optax.adam(optax.cosine_decay_schedule(0.03, MAP_STEPS, alpha=0.05))
state = opt.init(z)

@jax.jit
def step(z, state):
    u, g = jax.vmap(jax.value_and_grad(potential))(z)
    upd, state = opt.update(g, state, z)
    return optax.apply_updates(z, upd), state, u

for i in range(MAP_STEPS):
    z, state, u = step(z, state)
best = int(jnp.argmin(u))
z_map = jax.tree.map(lambda a: a[best], z)
map_values = postprocess(z_map)
print("-log posterior of the starts:", np.asarray(u))
print({k: round(float(v), 3) for k, v in map_values.items()})"""),
    ("md", """## NUTS from the MAP"""),
    ("code", """kernel = NUTS(my_model, dense_mass=True, init_strategy=init_to_value(values=map_values))
mcmc = MCMC(kernel, num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=2,
            chain_method="vectorized", progress_bar=False)
mcmc.run(jax.random.PRNGKey(1), data, emu)
mcmc.print_summary(exclude_deterministic=False)"""),
    ("code", """import arviz as az
idata = az.from_numpyro(mcmc)
az.plot_pair(idata, var_names=["theta_E", "gamma", "beta_z", "inclination", "D_d"],
             kind="kde" if NUM_SAMPLES >= 200 else "scatter", marginals=True,
             reference_values={k: truth[k] for k in ["theta_E", "gamma", "beta_z", "inclination", "D_d"]});"""),
]

NB3 = [
    ("md", """# 3. Joint inference: lensing, kinematics, and both

The paper's test (Gomer et al. 2023, Sect. 5.2) on one JAM-truth mock: the same galaxy seen as a
quadruply imaged quasar with time delays (70x70 HST-like image) and as IFU kinematics (55x55,
0.05"). We fit the 13 parameters three times, lensing-only, kinematics-only and jointly, each from
a blind start (MAP from prior draws) followed by NUTS, and look at what the kinematics add."""),
    ("code", """import os, time
import numpy as np
import jax
import matplotlib.pyplot as plt
import arviz as az
from jkin import inference as inf, fitting
from jkin.data import load_kinematic_data, load_truth
from jkin.lensing_data import load_lensing_data, load_lensing_truth
from jkin.emulator import Emulator

SETTINGS = dict(
    n_starts=int(os.environ.get("JKIN_NB_STARTS", "4")),
    map_steps=int(os.environ.get("JKIN_NB_MAP_STEPS", "300")),
    num_warmup=int(os.environ.get("JKIN_NB_WARMUP", "300")),
    num_samples=int(os.environ.get("JKIN_NB_SAMPLES", "500")),
    num_chains=2,
    max_tree_depth=int(os.environ.get("JKIN_NB_TREE_DEPTH", "7")),
    position_steps=int(os.environ.get("JKIN_NB_POSITION_STEPS", "1000")),
)
OUT = os.environ.get("JKIN_NB_OUT", "joint-notebook")"""),
    ("code", """paths = fitting.write_demo_data(OUT)          # FITS files with TRUTH tables
kin_data = load_kinematic_data(paths["kinematics"])
lens_data = load_lensing_data(paths["lensing"])
truth = {**load_lensing_truth(paths["lensing"]), **load_truth(paths["kinematics"])}
emu = Emulator.load("jkin-cips-compact")     # the 4x cheaper network, for sampling on a CPU
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
ax[0].imshow(np.asarray(lens_data.image), origin="lower", cmap="gray_r", vmax=np.percentile(lens_data.image, 99.5))
ax[0].set_title("imaging (70x70, 0.1\\")")
vb = np.asarray(kin_data.vrms)[np.asarray(kin_data.bin_index)]
ax[1].imshow(np.where(np.asarray(kin_data.bin_index) >= 0, vb, np.nan), origin="lower")
ax[1].set_title(f"IFU v_rms, {kin_data.n_bins} Voronoi bins");"""),
    ("code", """fits = {}
models = {"lensing": (inf.lensing_model, dict(lens_data=lens_data)),
          "kinematics": (inf.kinematics_model, dict(kin_data=kin_data, emulator=emu)),
          "joint": (inf.joint_model, dict(kin_data=kin_data, lens_data=lens_data, emulator=emu))}
for mode, (model, kw) in models.items():
    t = time.perf_counter()
    fits[mode] = inf.fit(model, kw, progress=False, **SETTINGS)
    print(f"{mode}: {time.perf_counter() - t:.0f} s")"""),
    ("code", """names = list(inf.GALAXY_SITES)
fits["joint"].summary(names)"""),
    ("code", """ref = {k: float(truth[k]) for k in names}
az.plot_pair(fits["joint"].idata, var_names=names, kind="scatter", marginals=True,
             reference_values=ref, scatter_kwargs={"alpha": 0.2, "s": 2},
             figsize=(20, 20), textsize=14);"""),
    ("md", """## What the kinematics add

Lensing alone fixes theta_E, the ellipticity and D_dt (through the delays), but says nothing of
D_d, the anisotropy beta_z or the inclination; the kinematics alone constrain D_dt/D_d and the
mass profile only weakly. Together they measure D_d."""),
    ("code", """for name in ["gamma", "D_dt", "D_d", "beta_z", "inclination"]:
    row = "  ".join(f"{m}: {float(f.idata.posterior[name].mean()):8.3f} +- {float(f.idata.posterior[name].std()):7.3f}"
                    for m, f in fits.items())
    print(f"{name:>12s} (truth {truth[name]:8.3f})  {row}")"""),
]


def build(cells, path):
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


if __name__ == "__main__":
    build(NB1, HERE / "01_emulator.ipynb")
    build(NB2, HERE / "02_numpyro_model_building.ipynb")
    build(NB3, HERE / "03_joint_inference.ipynb")
    print("wrote", *sorted(p.name for p in HERE.glob("*.ipynb")))
