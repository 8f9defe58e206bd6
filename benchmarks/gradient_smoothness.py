"""Is the posterior potential's gradient continuous? A scan along the whitened principal
directions through a fit's MAP, and the model sites that hold any jump.

    python benchmarks/gradient_smoothness.py CONFIG.toml FIT.json [--points 201]
        [--halfwidth 1.0] [--directions N] [--sites 2] [--png FILE] [--posterior FILE.nc]

CONFIG is a ``jkin fit`` configuration (e.g. a recovery system's ``joint.toml``) and FIT.json
that fit's output (its ``map_latent`` is the point scanned). The potential is the one the fit
samples (float64, emulator network in float32). Directions are the eigenvectors of the exact
Hessian at the MAP, scaled to one Laplace sd (``e_k = v_k / sqrt(lambda_k)``), so that for a
Gaussian posterior the gradient along a direction, ``g(t) = e . grad U(z_MAP + t e)``, is t.

A jump J of g at one grid point shows as second differences of +-J, against ~``dt^2 g'''`` for a
smooth g: the table gives per direction the largest |second difference| and where. HMC's
leapfrog integrator assumes a smooth gradient: a step of size eps across a jump J errs in energy
by ~J eps^2 / 4 (against ~0.1-1 at the usual acceptance), and a finite-difference Hessian with
step h by ~J / h. For the ``--sites`` directions with the largest jump, the scan is repeated on a
20x finer grid around it, split by model site: the directional derivative of each site's log
density (the priors of the sample sites, the ``lensing`` and ``vrms`` likelihood factors), as
its largest |second difference| and that over its median: the site that holds the jump shows
it whole, the others show only float rounding.

``--posterior`` (the fit's ``posterior.nc``) adds how far the sampled posterior is from the
Laplace approximation the scan is built on: the draws' covariance in Laplace-whitened
coordinates, as sd ratios per principal direction (1: Laplace right; NUTS' "pooled" mass matrix
widens those above 1), and the distance of the posterior mean from the MAP in Laplace sd.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def second_difference_peak(values, ts):
    """(largest |second difference| along axis 0, the t where it sits, its median)."""
    d2 = np.abs(np.diff(np.asarray(values, dtype=float), 2, axis=0))
    j = np.argmax(d2, axis=0)
    return d2.max(axis=0), ts[1:-1][j], np.median(d2, axis=0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("fit_json")
    ap.add_argument("--points", type=int, default=201)
    ap.add_argument("--halfwidth", type=float, default=1.0, help="scan +- this many Laplace sd")
    ap.add_argument("--directions", type=int, default=None,
                    help="scan only the N least-constrained directions (default: all)")
    ap.add_argument("--posterior", default=None, help="the fit's posterior.nc (see above)")
    ap.add_argument("--sites", type=int, default=2,
                    help="directions (largest jumps first) to resolve by model site")
    ap.add_argument("--png", default=None, help="plot g(t) - t of those directions here")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import constrain_fn, log_density

    from jkin.fitting import config_potential, load_config, load_map

    cfg = load_config(args.config)
    pot = config_potential(cfg)
    print(f"{cfg.name} ({cfg.mode}), weights {cfg.weights}; MAP of {args.fit_json}")
    flat = pot.x(load_map(args.fit_json))
    h = pot.hessian(flat)
    lam, vec = np.linalg.eigh(0.5 * (h + h.T))
    if lam.min() <= 0:
        print(f"note: Hessian not positive definite at the MAP (min eigenvalue {lam.min():.3g});"
              " |eigenvalues| used")
    lam = np.maximum(np.abs(lam), 1e-3)
    dirs = vec / np.sqrt(lam)
    labels = pot.labels
    with jax.enable_x64(pot.x64):
        def g_along(e, ts):
            return np.array([float(pot.value_and_grad(flat + t * e)[1] @ e) for t in ts])

        ts = np.linspace(-args.halfwidth, args.halfwidth, args.points)
        dt = ts[1] - ts[0]
        t0 = time.perf_counter()
        print(f"\nscan: {args.points} points in t = +-{args.halfwidth} Laplace sd (dt {dt:.3g}); "
              "g(t) = t for a Gaussian")
        print(f"{'dir':>3s} {'curvature':>10s} {'largest component':>18s} {'max |d2 g|':>10s} "
              f"{'at t':>7s} {'median |d2 g|':>13s} {'mean slope':>10s}")
        rows, curves = [], []
        for k in range(dirs.shape[1] if args.directions is None else args.directions):
            g = g_along(dirs[:, k], ts)
            peak, where, med = second_difference_peak(g, ts)
            main_label = labels[int(np.argmax(np.abs(vec[:, k])))]
            slope = (g[-1] - g[0]) / (ts[-1] - ts[0])
            rows.append((k, float(peak), float(where)))
            curves.append(g)
            print(f"{k:3d} {lam[k]:10.3g} {main_label:>18s} {peak:10.3g} {where:+7.3f} {med:13.2g} "
                  f"{slope:10.3f}", flush=True)
        print(f"({time.perf_counter() - t0:.0f} s)")

        def site_log_densities(x):
            params = constrain_fn(pot.model, (), pot.kwargs, pot.latents(x))
            _, trace = log_density(pot.model, (), pot.kwargs, params)
            return {name: jnp.sum(site["fn"].log_prob(site["value"]))
                    for name, site in trace.items() if site["type"] == "sample"}

        @jax.jit
        def site_slopes(x, e):  # d/dt of each site's log density along e
            return jax.jvp(site_log_densities, (x,), (e,))[1]

        worst = sorted(rows, key=lambda r: -r[1])[: args.sites]
        for k, peak, where in worst:
            fine = np.linspace(where - 0.1, where + 0.1, 401)
            e = jnp.asarray(dirs[:, k])
            vals = [jax.tree.map(float, site_slopes(flat + t * e, e)) for t in fine]
            print(f"\ndirection {k} (jump {peak:.3g} at t = {where:+.3f}), split by site on "
                  f"t = {where:+.3f} +- 0.1 (dt {fine[1] - fine[0]:.1e}): largest |second "
                  "difference| of d(log p)/dt, where, and over its median")
            ranked = []
            for name in vals[0]:
                p, w, m = second_difference_peak([r[name] for r in vals], fine)
                ranked.append((float(p), name, float(w), float(p / max(m, 1e-300))))
            for p, name, w, ratio in sorted(ranked, reverse=True)[:5]:
                print(f"  {'log p(' + name + ')':>28s} {p:10.3g}  at t = {w:+.4f}  ({ratio:.3g} x median)")

        if args.posterior:
            import arviz as az

            post = az.from_netcdf(args.posterior).posterior
            n = post.sizes["chain"] * post.sizes["draw"]
            zs = pot.x({k: np.asarray(post[k]).reshape((n,) + post[k].shape[2:])
                        for k in post.data_vars})
            cov = dirs @ dirs.T  # inference.laplace's covariance
            chol = np.linalg.cholesky(cov)
            y = np.linalg.solve(chol, (zs - zs.mean(axis=0)).T).T
            mu, w = np.linalg.eigh(np.cov(y, rowvar=False))
            sd = np.sqrt(np.diag(cov))
            print(f"\nposterior ({n} draws) against the Laplace approximation: sd ratio per "
                  "principal direction of the draws' whitened covariance")
            for m_k, w_k in zip(mu, w.T):
                dz = chol @ w_k
                print(f"  {np.sqrt(m_k):7.3f}  {labels[int(np.argmax(np.abs(dz) / sd))]}")
            shift = np.linalg.solve(chol, zs.mean(axis=0) - np.asarray(flat))
            print(f"posterior mean - MAP: {np.linalg.norm(shift):.2f} Laplace sd")

        if args.png:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, len(worst), figsize=(5 * len(worst), 3.6), squeeze=False)
            for ax, (k, peak, where) in zip(axes[0], worst):
                ax.plot(ts, curves[k] - ts, lw=1)
                ax.axvline(where, color="0.6", ls=":")
                ax.set_xlabel("t [Laplace sd along direction %d]" % k)
                ax.set_ylabel("g(t) - t")
                ax.set_title(f"{cfg.name}: direction {k}, jump {peak:.2g}", fontsize=9)
            fig.tight_layout()
            fig.savefig(args.png, dpi=120)
            print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
