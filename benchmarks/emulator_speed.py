"""Emulator speed beside JAM (jampy via jkin.jam), measured in one run on this machine.

* a full 551 x 551 map (SKiNN's rendering, 0.02"/pixel);
* value + gradient of a scalar of v_rms over 55 x 55 points with respect to the 8 parameters
  (what a kinematic likelihood needs per HMC step);
* a batch of maps on 55 x 55 points;
each beside jkin.jam (jampy) on the same points, as a ratio. JAM is timed on a subset of the
points and scaled (its cost is proportional to the number of points; the MGE fits are counted
once per map).

    python benchmarks/emulator_speed.py [--weights NAME] [--repeats 20] [--jam-points 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _time(fn, repeats):
    fn()  # compile / warm up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64, help="maps in the batch test")
    ap.add_argument("--jam-points", type=int, default=200, help="points JAM is timed on")
    ap.add_argument("--jam-maps", type=int, default=3)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from jkin import conventions as cv
    from jkin.emulator import Emulator
    from jkin.jam import jam_vrms

    emu = Emulator.load(args.weights)
    rng = np.random.default_rng(0)
    P = cv.sample_params(rng, max(args.batch, args.jam_maps)).astype(np.float32)
    p0 = jnp.asarray(P[0])
    c = (np.arange(55) - 27) * 0.1 + 0.05  # 55 x 55 points at 0.1", off the singular centre
    xx, yy = (a.ravel().astype(np.float32) for a in np.meshgrid(c, c))

    f_map = jax.jit(lambda p: emu.map(p))
    t_map = _time(lambda: f_map(p0).block_until_ready(), max(3, args.repeats // 4))
    f_vg = jax.jit(jax.value_and_grad(lambda p: jnp.sum(emu(p, xx, yy) ** 2)))
    t_vg = _time(lambda: jax.block_until_ready(f_vg(p0)), args.repeats)
    f_batch = jax.jit(lambda p: emu(p, xx, yy))
    pb = jnp.asarray(P[: args.batch])
    t_batch = _time(lambda: f_batch(pb).block_until_ready(), max(3, args.repeats // 4))

    # JAM on a subset of points, scaled per point (+ its per-map MGE cost, measured separately).
    sub = rng.choice(xx.size, args.jam_points, replace=False)
    t0 = time.perf_counter()
    for p in P[: args.jam_maps]:
        jam_vrms(p.astype(float), xx[sub].astype(float), yy[sub].astype(float))
    t_jam_sub = (time.perf_counter() - t0) / args.jam_maps
    t0 = time.perf_counter()
    for p in P[: args.jam_maps]:
        jam_vrms(p.astype(float), xx[sub[:1]].astype(float), yy[sub[:1]].astype(float))
    t_jam_fixed = (time.perf_counter() - t0) / args.jam_maps
    per_point = max(t_jam_sub - t_jam_fixed, 0.0) / (args.jam_points - 1)
    t_jam_55 = t_jam_fixed + per_point * xx.size
    t_jam_551 = t_jam_fixed + per_point * 551 * 551 / 4  # JAM needs one quadrant only

    dev = jax.devices()[0]
    m = emu.manifest
    print(f"device: {dev.platform} ({dev.device_kind}); emulator {m.get('weights_file')} "
          f"({m.get('n_parameters')} parameters, width {emu.config.width}, "
          f"{emu.config.n_layers} layers)\n")
    print(f"{'task':46s} {'emulator':>12s} {'JAM (jampy)':>13s} {'speed-up':>9s}")
    rows = [
        ("551x551 map", t_map, t_jam_551),
        ("value+grad, 55x55 points, 8 parameters", t_vg, None),
        ("55x55 points, one map (value)", None, t_jam_55),
        (f"batch of {args.batch} maps, 55x55 points each", t_batch, t_jam_55 * args.batch),
    ]
    for name, te, tj in rows:
        se = f"{te * 1e3:10.2f}ms" if te is not None else f"{'-':>12s}"
        sj = f"{tj:11.2f} s" if tj is not None else f"{'-':>13s}"
        ratio = f"{tj / te:9.0f}" if (te and tj) else f"{'-':>9s}"
        print(f"{name:46s} {se} {sj} {ratio}")
    print(f"\nvalue+grad vs one JAM map of 55x55 (value only): {t_jam_55 / t_vg:.0f}x faster")
    print(f"JAM: {per_point * 1e3:.2f} ms per point + {t_jam_fixed:.2f} s per map (MGE fits), "
          f"timed on {args.jam_points} points x {args.jam_maps} maps")


if __name__ == "__main__":
    main()
