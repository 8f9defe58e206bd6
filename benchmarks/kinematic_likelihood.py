"""Speed of the kinematic log-likelihood: value + gradient w.r.t. all 13 parameters.

For the paper's mock IFU data (55x55 pixels at 0.05", ~30 Voronoi bins, Gaussian PSF 0.1"),
times ``jax.value_and_grad(kinematic_log_likelihood)`` (jit once, median of many calls) with

* the trained emulators in weights/ (``--weights``; default: jkin-cips-default, 128 x 8, and
  jkin-cips-compact, 64 x 6), and optionally (``--arch``) random-weight stand-ins of other
  sizes: a plain MLP, a CIPS-like network, jkin's CIPS -- their cost is the real one;
* the operator alone (an analytic v_rms map in place of the network), to separate the cost of
  the transform, light, PSF and binning from that of the network;
* JAM (``jkin.kinematics.JamEmulator``: jkin.jam / jampy via a callback, value only) in
  place of the emulator -- the ratio is the speed-up of the emulator route.

    python benchmarks/kinematic_likelihood.py                       # the paper's mock
    python benchmarks/kinematic_likelihood.py --n-pix 9 --pixel-scale 0.2 --n-calls 3 \
        --arch mlp --width 16 --depth 2 --supersampling 1 --jam-calls 0 --quick   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import platform
import time

import numpy as np


def make_standin_emulator(arch="mlp", width=128, depth=8, n_freq=16, seed=0):
    """A stand-in emulator emu(params (..., 8), x (M,), y (M,)) -> v_rms (..., M) [km/s].

    ``arch``: "mlp", a per-pixel MLP on Fourier features of (|x|, |y|) concatenated with the
    8 parameters; "cips", CIPS-like, the per-pixel layers' inputs scaled by styles that a
    mapping network computes from the parameters once per call; "jkin", jkin.emulator's own
    CIPS network (its default config) with random weights, if that module is importable.
    Returns (emulator, number of weights, description).
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    if arch == "jkin":
        from jkin.emulator import CIPSConfig, Emulator
        from jkin.emulator.network import CIPS

        cfg = CIPSConfig()
        weights = CIPS(cfg).init(jax.random.PRNGKey(seed), jnp.zeros((1, 8)),
                                 jnp.zeros((1, 4, 4)))["params"]
        n_weights = sum(np.size(w) for w in jax.tree_util.tree_leaves(weights))
        return Emulator(params=weights, config=cfg), n_weights, f"jkin.emulator CIPS {cfg}"

    class StandIn(nn.Module):
        width: int
        depth: int
        n_freq: int
        modulated: bool

        @nn.compact
        def __call__(self, params, x, y):
            xy = jnp.stack([jnp.abs(x), jnp.abs(y)], axis=-1) / 5.5
            freqs = nn.Dense(self.n_freq, use_bias=False)(xy) * jnp.pi
            h = jnp.concatenate([jnp.sin(freqs), jnp.cos(freqs)], axis=-1)
            if self.modulated:  # mapping network: parameters -> a style per layer, once
                s = nn.leaky_relu(nn.Dense(self.width)(params), 0.2)
                styles = 1.0 + 0.1 * nn.Dense(self.depth * self.width)(s).reshape(
                    self.depth, self.width)
            else:
                h = jnp.concatenate([h, jnp.broadcast_to(params, h.shape[:-1] + (8,))], -1)
            for layer in range(self.depth):
                if self.modulated and layer:
                    h = h * styles[layer]
                h = nn.leaky_relu(nn.Dense(self.width)(h), 0.2)
            return 200.0 + 50.0 * jnp.tanh(nn.Dense(1)(h)[..., 0])

    if arch not in ("mlp", "cips"):
        raise ValueError(f"unknown arch {arch!r}")
    net = StandIn(width, depth, n_freq, arch == "cips")
    z = jnp.zeros(4)
    weights = net.init(jax.random.PRNGKey(seed), jnp.zeros(8), z, z)

    def emulator(params, x, y):
        params = jnp.asarray(params)
        if params.ndim == 1:
            return net.apply(weights, params, x, y)
        flat = params.reshape(-1, 8)
        out = jax.vmap(lambda p: net.apply(weights, p, x, y))(flat)
        return out.reshape(params.shape[:-1] + x.shape[-1:])

    n_weights = sum(np.size(w) for w in jax.tree_util.tree_leaves(weights))
    kind = ("MLP (Fourier features + parameters in)" if arch == "mlp"
            else "CIPS-like (style-modulated layers)")
    return emulator, n_weights, f"{kind}, {depth} x {width}"


def analytic_map(params, x, y):
    """A smooth analytic v_rms map (power law in the elliptical radius): the operator alone."""
    import jax.numpy as jnp

    p = jnp.asarray(params)[..., None, :]
    r2 = p[..., 2] * x**2 + y**2 / p[..., 2] + 0.08**2
    return 250.0 * p[..., 0] ** 0.5 * r2 ** (-0.05 * (p[..., 1] - 1.0)) * (1.0 + 0.1 * p[..., 6])


def _median_time(fn, n_calls):
    """Median wall time, its 16-84% range, and the median process CPU time (all threads)."""
    import jax

    ts, cpu = [], []
    for _ in range(n_calls):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return (float(np.median(ts)), float(np.percentile(ts, 16)), float(np.percentile(ts, 84)),
            float(np.median(cpu)))


def accuracy(n_pix=3, specs=None):
    """Sampling convergence of the binned JAM v_rms on the central pixels (one bin each).

    JAM (jkin.jam) through the full operator, PSF FWHM 0.1", 0.05" pixels, for the lens on a
    pixel centre and off it; every sampling against uniform 16 x 16 sub-pixels.
    """
    import jax

    from jkin import data as kdata
    from jkin import kinematics as kin
    from jkin import mocks

    if specs is None:
        specs = [(1, ()), (2, ()), (4, ()), (8, ()),
                 (kdata.DEFAULT_SUPERSAMPLING, kdata.DEFAULT_SUPERSAMPLING_RADII), (16, ())]
    M, ra0, dec0 = mocks.mock_grid(n_pix, 0.05)
    bins = np.arange(n_pix * n_pix).reshape(n_pix, n_pix)
    print(f"\nSampling accuracy: JAM, central {n_pix}x{n_pix} pixels of 0.05\" (one bin each), "
          f"PSF 0.1\", float64; max |v / v(16x16) - 1| over the bins")
    print(f"{'lens (x_c, y_c)':>18s} {'sampling':>26s} {'points':>7s} {'time [s]':>9s} "
          f"{'max rel err':>11s}")
    rows = []
    for centre in ((0.0, 0.0), (0.013, -0.021)):
        theta = dict(mocks.PAPER_MOCK_THETA, x_c=centre[0], y_c=centre[1])
        res = {}
        for spec, radii in specs:
            d = kdata.make_kinematic_data(
                np.full(bins.size, 200.0), bins, M, ra0, dec0, vrms_err=np.full(bins.size, 10.0),
                psf_fwhm=0.1, supersampling=spec, supersampling_radii=radii)
            t0 = time.perf_counter()
            with jax.enable_x64(True):
                res[spec] = np.asarray(kin.predict_binned_vrms(theta, d, kin.jam_emulator))
            rows.append((centre, spec, radii, d.sample_ra.size, time.perf_counter() - t0))
        ref = res[16]
        for c, spec, radii, n, t in rows[-len(specs):]:
            err = np.abs(res[spec] / ref - 1).max()
            label = f"{spec} within {radii}\"" if radii else f"uniform {spec}x{spec}"
            print(f"{str(c):>18s} {label:>26s} {n:7d} {t:9.1f} {err:11.1e}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-pix", type=int, default=55)
    ap.add_argument("--pixel-scale", type=float, default=0.05)
    ap.add_argument("--exposure", type=float, default=None, help="default: jkin.mocks.EXPOSURE")
    ap.add_argument("--supersampling", nargs="+", default=["default", "1"],
                    help="model samplings to time: 'default' (jkin.data's adaptive one) or an "
                         "int s (uniform s x s sub-pixels per pixel)")
    ap.add_argument("--weights", nargs="*", default=["jkin-cips-default", "jkin-cips-compact"],
                    help="trained emulators to time (names in weights/ or manifest paths)")
    ap.add_argument("--arch", nargs="*", default=[], choices=["mlp", "cips", "jkin"],
                    help="random-weight stand-ins to time as well")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--n-calls", type=int, default=50)
    ap.add_argument("--jam-calls", type=int, default=1, help="0 skips JAM")
    ap.add_argument("--jam-supersampling", nargs="+", default=["default"],
                    help="samplings at which JAM is timed (it costs ~ms per point)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="value-and-gradient only, no operator-only row (smoke tests)")
    ap.add_argument("--accuracy", action="store_true",
                    help="also measure the sampling accuracy with JAM (about a minute)")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from jkin import data as kdata
    from jkin import kinematics as kin
    from jkin import mocks

    exposure = mocks.EXPOSURE if args.exposure is None else args.exposure
    mock = mocks.make_mock_ifu(seed=args.seed, truth="emulator", emulator=analytic_map,
                               n_pix=args.n_pix, pixel_scale=args.pixel_scale,
                               exposure=exposure)
    buf = io.BytesIO()
    kdata.save_kinematic_data(buf, mock)
    theta = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in mocks.PAPER_MOCK_THETA.items()}

    print(f"Kinematic log-likelihood timing: {args.n_pix}x{args.n_pix} pixels at "
          f"{args.pixel_scale}\", {mock.n_bins} bins, PSF FWHM {mock.psf_fwhm}\", "
          f"exposure {exposure} s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores, "
          f"{platform.machine()}, load average {load:.1f} at start), float32; "
          f"median of {args.n_calls} calls after jit")
    emulators = {}
    from jkin.emulator import Emulator

    for name in args.weights:
        emu = Emulator.load(name)
        n_weights = sum(np.size(w) for w in jax.tree_util.tree_leaves(emu.params))
        label = name.replace("jkin-cips-", "")
        emulators[label] = (emu, n_weights, f"{name}: trained, {emu.config}")
    for arch in args.arch:
        try:
            emulators[arch] = make_standin_emulator(arch, args.width, args.depth)
        except (ImportError, AttributeError, TypeError) as e:
            print(f"  ({arch}: not available: {e})")
    for arch, (_, n_weights, desc) in emulators.items():
        kind = "" if desc.startswith("jkin-") else ", random weights (stand-in)"
        print(f"  {arch}: {desc}, {n_weights} weights{kind}, evaluated at every model sub-pixel")
    print()
    print(f"{'s':>7s} {'evals':>6s} {'emulator':>8s} {'compile':>8s} {'v+g':>8s} {'16-84%':>13s} "
          f"{'v+g CPU':>8s} {'value':>7s} {'JAM value':>10s} {'JAM/(v+g)':>10s} {'finite':>6s}")
    print(f"{'':>7s} {'':>6s} {'':>8s} {'[s]':>8s} {'[ms]':>8s} {'[ms]':>13s} {'[ms]':>8s} "
          f"{'[ms]':>7s} {'[s]':>10s} {'':>10s} {'':>6s}")
    rows, jam_lines = [], []
    for s in args.supersampling:
        if s == "default":
            data = kdata.load_kinematic_data(buf, supersampling=kdata.DEFAULT_SUPERSAMPLING,
                                             supersampling_radii=kdata.DEFAULT_SUPERSAMPLING_RADII)
        else:
            data = kdata.load_kinematic_data(buf, supersampling=int(s))
        n_eval = data.sample_ra.shape[0]
        t_jam = t_quad = np.nan
        if args.jam_calls > 0 and s in args.jam_supersampling:
            from jkin.jam import DEFAULT_SETTINGS

            def time_jam(settings, d=data):
                emu = kin.JamEmulator(settings)
                jam = jax.jit(lambda th: kin.kinematic_log_likelihood(th, d, emu))
                ts = []
                for _ in range(args.jam_calls):
                    t0 = time.perf_counter()
                    jax.block_until_ready(jam(theta))
                    ts.append(time.perf_counter() - t0)
                return float(np.median(ts))

            t_jam = time_jam(dataclasses.replace(DEFAULT_SETTINGS, method="jampy"))
            t_quad = time_jam(dataclasses.replace(DEFAULT_SETTINGS, method="quadrature"))
            jam_lines.append(f"  s = {s}: JAM value {t_jam:.2f} s with jampy's adaptive "
                             f"line-of-sight integral, {t_quad:.2f} s with jkin.jam's JAX "
                             f"quadrature ({n_eval} points; one call each, MGE fits included)")
        cases = [(arch, emu) for arch, (emu, _, _) in emulators.items()]
        if not args.quick:
            cases.append(("operator", analytic_map))
        for arch, emu in cases:
            loglike = lambda th, e=emu, d=data: kin.kinematic_log_likelihood(th, d, e)  # noqa
            vg = jax.jit(jax.value_and_grad(loglike))
            t0 = time.perf_counter()
            val, grad = jax.block_until_ready(vg(theta))
            t_compile = time.perf_counter() - t0
            assert len(grad) == 13
            finite = bool(np.isfinite(float(val)) and all(np.isfinite(float(g))
                                                           for g in grad.values()))
            t_vg, lo, hi, cpu_vg = _median_time(lambda: vg(theta), args.n_calls)
            t_val = np.nan
            if not args.quick:
                value = jax.jit(loglike)
                jax.block_until_ready(value(theta))
                t_val, _, _, _ = _median_time(lambda: value(theta), args.n_calls)
            ratio = t_jam / t_vg
            print(f"{s:>7s} {n_eval:6d} {arch:>8s} {t_compile:8.2f} {1e3 * t_vg:8.2f} "
                  f"{f'{1e3 * lo:.1f}-{1e3 * hi:.1f}':>13s} {1e3 * cpu_vg:8.2f} {1e3 * t_val:7.2f} "
                  f"{t_jam:10.2f} {ratio:10.0f} {'yes' if finite else 'NO':>6s}")
            rows.append(dict(s=s, arch=arch, n_eval=n_eval, t_vg=t_vg, cpu_vg=cpu_vg, t_val=t_val,
                             t_jam=t_jam, t_jam_quadrature=t_quad, t_compile=t_compile,
                             finite=finite))
    print("\ns: model sampling (int: uniform s x s sub-pixels per pixel; 'default': "
          f"{kdata.DEFAULT_SUPERSAMPLING} within {kdata.DEFAULT_SUPERSAMPLING_RADII}\" of the "
          "lens); evals: emulator evaluations per likelihood;")
    print("v+g: value and gradient w.r.t. all 13 parameters (wall time; v+g CPU: CPU time of "
          "this process, all threads, which other jobs on the machine inflate less); "
          "value: the likelihood alone; "
          "operator: an analytic v_rms map in place of the network (the cost of transform, "
          "light, PSF, binning and likelihood); JAM value: the likelihood with jkin.jam "
          "(method 'jampy': jampy's surf_v2los_cyl) in place of the emulator, no gradient; "
          "JAM/(v+g) = JAM value time / emulator value-and-gradient time; finite: value and "
          "all 13 gradients finite (random weights can drive an emulator into its clipped "
          "region).")
    if jam_lines:
        print("\n".join(jam_lines))
    if args.accuracy:
        accuracy()
    return rows


if __name__ == "__main__":
    main()
