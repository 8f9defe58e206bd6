"""Resident memory of a NUTS run by chain method: does it grow with the leapfrog steps?

    python benchmarks/sampler_memory.py OUT --samples 400 --warmup 40 --method parallel
    python benchmarks/sampler_memory.py --plot OUT_1 OUT_2 ... --png rss.png

Writes the demo's JAM-truth mock (``jkin.fitting.write_demo_data``, seed 0) once to
``OUT/../demo_data``, finds the joint MAP (one start, 100 L-BFGS steps: the point is the
sampler, not the fit), then runs ``jkin.inference.run_nuts`` with two chains under the chosen
chain method, sampling the process's resident set size (VmRSS) every second from a thread.
Writes ``OUT_trace.txt`` (seconds, GB) and ``OUT.json`` (peak and growth after the MAP, leapfrog
steps of the sampling phase, wall time). ``--plot`` draws RSS against time for several runs.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1e6
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def run(out: Path, samples: int, warmup: int, method: str, progress: bool,
        trim: float = 0.0) -> dict:
    from jkin.fitting import DEMO_WEIGHTS, use_host_devices

    if method == "parallel":
        use_host_devices(2)
    import numpy as np

    from jkin import fitting
    from jkin import inference as inf

    trace, stop = [], threading.Event()
    t_zero = time.time()

    libc = None
    if trim:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")

    def monitor():
        last_trim = time.time()
        while not stop.is_set():
            trace.append((time.time() - t_zero, _rss_gb()))
            if libc is not None and time.time() - last_trim >= trim:
                libc.malloc_trim(0)
                last_trim = time.time()
            time.sleep(1.0)

    threading.Thread(target=monitor, daemon=True).start()
    data = out.parent / "demo_data"
    if not (data / "lens.fits").exists():
        fitting.write_demo_data(data, 0)
    cfg_path = fitting.write_config(
        Path(f"{out}.toml"), mode="joint", output=out, weights=DEMO_WEIGHTS,
        data={"kinematics": data / "ifu.fits", "lensing": data / "lens.fits"},
        inference=dict(n_starts=1, map_steps=100))
    model, kwargs = fitting.fit_inputs(fitting.load_config(cfg_path))
    m = inf.find_map(model, kwargs, seed=0, n_starts=1, n_steps=100, progress=False)
    rss0, t0 = _rss_gb(), time.time()
    mcmc = inf.run_nuts(model, kwargs, m, num_warmup=warmup, num_samples=samples, num_chains=2,
                        chain_method=method, progress=progress)
    steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    wall = time.time() - t0
    time.sleep(2.0)
    stop.set()
    np.savetxt(f"{out}_trace.txt", np.array(trace), fmt="%.2f %.4f",
               header="seconds_since_start rss_GB")
    peak = max(r for _, r in trace)
    rec = dict(method=method, progress=progress, warmup=warmup, samples=samples,
               malloc_arena_max=os.environ.get("MALLOC_ARENA_MAX"), malloc_trim_s=trim or None,
               sampler_start_s=round(t0 - t_zero, 1), rss_after_map_gb=round(rss0, 3),
               peak_gb=round(peak, 3), growth_gb=round(peak - rss0, 3),
               sampling_leapfrog_steps=steps, nuts_wall_s=round(wall, 1))
    Path(f"{out}.json").write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps(rec))
    return rec


def plot(outs, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    for o in outs:
        rec = json.loads(Path(f"{o}.json").read_text())
        t, r = np.loadtxt(f"{o}_trace.txt", unpack=True)
        label = (f"{rec['method']}{' + progress' if rec['progress'] else ''}"
                 f"{' MALLOC_ARENA_MAX=' + rec['malloc_arena_max'] if rec['malloc_arena_max'] else ''}"
                 f"{' malloc_trim every %g s' % rec['malloc_trim_s'] if rec.get('malloc_trim_s') else ''}"
                 f": {rec['warmup']}+{rec['samples']} draws, {rec['sampling_leapfrog_steps']} steps")
        ax.plot(t - rec["sampler_start_s"], r, label=label)
    ax.set_xlabel("seconds since NUTS started (compilation included)")
    ax.set_ylabel("resident memory [GB]")
    ax.set_title("demo joint posterior, 2 chains, 2 CPU cores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="+", help="output prefix (several with --plot)")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--method", default="parallel",
                    choices=["parallel", "sequential", "vectorized"])
    ap.add_argument("--progress", action="store_true", help="numpyro's progress bars")
    ap.add_argument("--trim", type=float, default=0.0, metavar="S",
                    help="call glibc's malloc_trim(0) every S seconds (0: never)")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--png", default="rss.png")
    args = ap.parse_args()
    if args.plot:
        plot(args.out, args.png)
    else:
        if len(args.out) != 1:
            ap.error("one OUT prefix per run")
        run(Path(args.out[0]), args.samples, args.warmup, args.method, args.progress,
            args.trim)


if __name__ == "__main__":
    main()
