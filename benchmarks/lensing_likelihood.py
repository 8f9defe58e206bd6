"""Cost of jkin's lensing likelihood (value and value+gradient) on the Sect. 5.2 mock.

Builds the mock (default 70x70 pixels at 0.1", supersampling 2, 21x21 PSF), jits each function
once, then times ``--n-calls`` calls and prints the minimum, median and 90th percentile per call
(the minimum is the least disturbed by other jobs on a shared machine), the compile time, and the parts of the forward model (where the time goes). The issue's target is
value+grad of the total log-likelihood <= 15 ms on the CPU.

    python benchmarks/lensing_likelihood.py --n-pix 70 --supersampling 2 --n-calls 200
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import jax
import jax.numpy as jnp

from jkin import lensing as L

TARGET_MS = 15.0


def _time(fn, args, n_calls):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(fn(*args))
    ts = np.empty(n_calls)
    for i in range(n_calls):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts[i] = time.perf_counter() - t0
    return compile_s, 1e3 * ts.min(), 1e3 * np.median(ts), 1e3 * np.percentile(ts, 90)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-pix", type=int, default=70)
    ap.add_argument("--supersampling", type=int, default=2)
    ap.add_argument("--psf-size", type=int, default=21)
    ap.add_argument("--n-calls", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    settings = L.MockSettings(n_pix=args.n_pix, supersampling=args.supersampling,
                              mock_supersampling=args.supersampling, psf_size=args.psf_size)
    mock = L.make_mock_lensing(args.seed, settings=settings)
    p, d = mock.truth, mock.data
    params = {k: jnp.asarray(v) for k, v in p.items()}

    kw = L._mass_kwargs(params)
    li = L._herculens_image(d)
    xs, ys = (jnp.asarray(a) for a in li.ImageNumerics.coordinates_evaluate)
    kw_light, kw_src = L._light_kwargs(params, L.DEFAULT_CONFIG)
    kernel = jnp.asarray(d.psf_kernel)
    image = jnp.zeros((d.n_pix, d.n_pix))
    sersic = L.SersicQPhi()

    cases = [
        ("lensing_log_likelihood value+grad", jax.jit(L.lensing_value_and_grad)),
        ("lensing_log_likelihood value", jax.jit(L.lensing_log_likelihood)),
        ("imaging_log_likelihood value", jax.jit(L.imaging_log_likelihood)),
        ("time_delay_log_likelihood value", jax.jit(L.time_delay_log_likelihood)),
        ("lens_image_model", jax.jit(L.lens_image_model)),
        ("image_positions (Newton)", jax.jit(L.image_positions)),
    ]
    parts = [
        ("  deflection on supersampled grid", jax.jit(lambda kw: L._MASS.alpha(xs, ys, kw)), (kw,)),
        ("  2 Sersic evaluations on it", jax.jit(
            lambda a, b: sersic.function(xs, ys, **a) + sersic.function(xs, ys, **b)),
         (kw_light[0], kw_src[0])),
        ("  PSF convolution (FFT, n x n)", jax.jit(
            lambda im, k: jax.scipy.signal.fftconvolve(im, k, mode="same")), (image, kernel)),
    ]

    print(f"jkin lensing likelihood: {d.n_pix}x{d.n_pix} pixels at {d.pixel_scale:g}\", "
          f"supersampling {d.supersampling} ({(d.n_pix * d.supersampling) ** 2} ray-traced "
          f"points), PSF {args.psf_size}x{args.psf_size}, 4 quasar images")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
          f"jax {jax.__version__}, float32, {args.n_calls} timed calls each; load average "
          f"{os.getloadavg()[0]:.1f} (other jobs on the machine slow every row)\n")
    head = f"{'what':<40s} {'compile s':>9s} {'min ms':>7s} {'median ms':>9s} {'p90 ms':>8s}"
    print(head)
    print("-" * len(head))
    rows = []
    for what, fn, a in [(w, f, (params, d)) for w, f in cases] + parts:
        c, lo, med, p90 = _time(fn, a, args.n_calls)
        rows.append(dict(what=what, compile_s=c, min_ms=lo, median_ms=med, p90_ms=p90))
        print(f"{what:<40s} {c:9.2f} {lo:7.3f} {med:9.3f} {p90:8.3f}")

    vg = rows[0]["median_ms"]
    verdict = "meets" if vg <= TARGET_MS else "MISSES"
    print(f"\nvalue+grad {vg:.2f} ms per call: {verdict} the {TARGET_MS:g} ms target")
    ll = jax.jit(L.imaging_log_likelihood)(params, d)
    print(f"at the truth: imaging chi^2/N = {-2 * float(ll) / d.image.size:.3f} "
          f"(N = {d.image.size}), time-delay log L = "
          f"{float(jax.jit(L.time_delay_log_likelihood)(params, d)):.3f}")
    return rows


if __name__ == "__main__":
    main()
