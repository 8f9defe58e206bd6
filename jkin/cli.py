"""The ``jkin`` command.

    jkin demo [--out DIR] [--full]            the main job on a bundled default
    jkin fit CONFIG.toml [...] [--scheduler ADDRESS]
        (both: --compile-cache DIR|off, compiled XLA programs kept for later runs)
    jkin data generate --n N --out DIR --seed S [--scheduler ADDRESS] ...
    jkin data status DIR
    jkin train RUN_DIR --data DIR [--steps N] [--max-minutes M] [--width W --layers L]
    jkin emulator export RUN_DIR --out weights/NAME [--test DIR]

Errors in the user's input are reported in one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


__all__ = ["main"]


def _cmd_data_generate(args) -> int:
    from jkin.dataset import GenerationSpec, generate

    spec = GenerationSpec(
        seed=args.seed, layout=args.layout, n_points=args.n_points, chunk_size=args.chunk_size
    )
    summary = generate(
        args.out, args.n, spec, scheduler=args.scheduler, n_workers=args.workers,
        progress=not args.quiet,
    )
    _print_summary(summary)
    return 0


def _print_summary(s: dict) -> None:
    rate = f"{s['maps_per_hour']:.0f} maps/hour" if s["made"] else "nothing left to do"
    print(
        f"{s['out']}: {s['n']} samples ({s['made']} made now, {s['resumed_from']} already there) "
        f"in {s['wall_s']:.1f} s, {rate}; {s['disk_bytes'] / 1e6:.2f} MB on disk"
    )


def _cmd_data_status(args) -> int:
    from jkin.dataset import status

    st = status(args.dir)
    spec = st["spec"]
    print(
        f"{args.dir}: {st['n_done']}/{st['n']} samples done; layout {spec.layout}, "
        f"{spec.n_points} points per map, seed {spec.seed}, chunks of {spec.chunk_size}"
    )
    return 0


def _cmd_train(args) -> int:
    from jkin.emulator.network import CIPSConfig
    from jkin.emulator.train import TrainConfig, train

    cfg = None
    if args.data is not None:
        cfg = TrainConfig(
            data=str(args.data), n_maps=args.n_maps,
            network=CIPSConfig(width=args.width, n_layers=args.layers,
                               mapping_width=args.width, n_fourier=args.width),
            steps=args.steps, batch_maps=args.batch_maps, points_per_map=args.points_per_map,
            peak_lr=args.lr, seed=args.seed, init_from=args.init_from,
            warmup_steps=(args.warmup_steps if args.warmup_steps is not None
                          else min(1000, args.steps // 20)),
        )
    s = train(args.run, cfg, max_minutes=args.max_minutes, progress=not args.quiet)
    state = "finished" if s["done"] else "paused (run the same command to resume)"
    print(f"{s['run']}: step {s['step']}/{s['steps']} {state}; {s['wall_s'] / 60:.1f} min this "
          f"chunk; loss {s['loss']:.4g}")
    return 0


def _cmd_export(args) -> int:
    from jkin.emulator.train import export

    path = export(args.run, args.out, test=args.test)
    print(f"wrote {path} and its weights")
    return 0


def _cmd_demo(args) -> int:
    from jkin.fitting import FULL_INFERENCE, demo, use_compile_cache

    use_compile_cache(args.compile_cache)
    inference = dict(FULL_INFERENCE, seed=args.seed) if args.full else None  # None: the demo's
    demo(args.out, seed=args.seed, inference=inference, progress=not args.quiet)
    return 0


def _cmd_fit(args) -> int:
    from jkin.fitting import run_many, use_compile_cache, use_host_devices

    use_compile_cache(args.compile_cache)
    if len(args.config) == 1 and args.scheduler is None:  # in this process: chains in parallel
        use_host_devices()
    t0 = time.perf_counter()
    results = run_many(args.config, scheduler=args.scheduler, n_workers=args.workers,
                       progress=not args.quiet)
    for r in results:
        print(f"{r['name']}: {r['mode']} fit in {r['wall_s']:.0f} s; max R-hat "
              f"{r['max_rhat']:.3f}, min bulk ESS {r['min_ess_bulk']:.0f}; results in {r['output']}")
    print(f"jkin fit: {len(results)} fit(s) in {time.perf_counter() - t0:.0f} s")
    return 0


def _compile_cache_option(p) -> None:
    from jkin.fitting import DEFAULT_COMPILE_CACHE

    default = os.environ.get("JKIN_COMPILE_CACHE", DEFAULT_COMPILE_CACHE)
    p.add_argument("--compile-cache", default=default, metavar="DIR",
                   help="keep compiled XLA programs here for later runs; 'off' for none "
                   f"(default: $JKIN_COMPILE_CACHE or {DEFAULT_COMPILE_CACHE})")


def _parser() -> argparse.ArgumentParser:
    from jkin import __version__

    p = argparse.ArgumentParser(prog="jkin", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"jkin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on a bundled default")
    demo.add_argument("--out", default="jkin-demo", help="output directory (default: jkin-demo)")
    demo.add_argument("--seed", type=int, default=0, help="mock and sampler seed (default 0)")
    demo.add_argument("--full", action="store_true",
                      help="paper-sized sampling (4 chains x 1000) instead of the quick default")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _compile_cache_option(demo)
    demo.set_defaults(func=_cmd_demo)

    fit = sub.add_parser(
        "fit", help="fit lens systems from configuration files (see jkin.fitting)",
        description="Each CONFIG.toml names data files, the mode (kinematics, lensing, joint) "
        "and sampler options; several configs fan out on Dask.")
    fit.add_argument("config", nargs="+", help="configuration file(s), TOML")
    fit.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="Dask scheduler address (default: a local cluster when > 1 config)")
    fit.add_argument("--workers", type=int, default=None, help="local Dask workers")
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    _compile_cache_option(fit)
    fit.set_defaults(func=_cmd_fit)

    data = sub.add_parser("data", help="JAM training sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    gen = data_sub.add_parser(
        "generate", help="generate, resume or extend a JAM training set (Dask)",
        description="Generate N JAM samples into DIR. Killed runs resume where they stopped; "
        "a larger --n with the same settings extends the set.",
    )
    gen.add_argument("--n", type=int, required=True, help="number of samples (maps)")
    gen.add_argument("--out", required=True, help="output directory")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    gen.add_argument("--layout", choices=("random", "grid"), default="random",
                     help="random points per map (training) or a pixel grid (test maps)")
    gen.add_argument("--n-points", type=int, default=128,
                     help="points per map; a square number for --layout grid (default: 128)")
    gen.add_argument("--chunk-size", type=int, default=16, help="samples per task and zarr chunk")
    gen.add_argument("--scheduler", default=None,
                     help="address of a running Dask scheduler (default: a LocalCluster)")
    gen.add_argument("--workers", type=int, default=None,
                     help="LocalCluster worker processes (default: all cores)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=_cmd_data_generate)
    st = data_sub.add_parser("status", help="progress and settings of a training set")
    st.add_argument("dir")
    st.set_defaults(func=_cmd_data_status)

    tr = sub.add_parser(
        "train", help="train (or resume training) the CIPS emulator",
        description="Start a run with --data, or resume RUN_DIR with its stored settings. "
        "Checkpoints every 5 minutes and at the end of a chunk; on a 2-core CPU use chunks of "
        "--max-minutes 110. A GPU is used when JAX sees one.",
    )
    tr.add_argument("run", help="run directory (checkpoints, log.csv)")
    tr.add_argument("--data", default=None, help="training set directory (to start a run)")
    tr.add_argument("--n-maps", type=int, default=None,
                    help="train on the first N maps of the set (default: all; they must be done)")
    tr.add_argument("--steps", type=int, default=100_000, help="total steps (fixes the schedule)")
    tr.add_argument("--max-minutes", type=float, default=None, help="stop this chunk after M minutes")
    tr.add_argument("--width", type=int, default=128, help="network width (default 128)")
    tr.add_argument("--layers", type=int, default=8, help="modulated layers (default 8)")
    tr.add_argument("--batch-maps", type=int, default=32, help="maps per step (default 32)")
    tr.add_argument("--points-per-map", type=int, default=128, help="points per map (default 128)")
    tr.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    tr.add_argument("--warmup-steps", type=int, default=None,
                    help="linear warm-up steps (default: min(1000, steps/20))")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--init-from", default=None, metavar="RUN_DIR",
                    help="start from this run's weights (same sizes) with a fresh schedule")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)

    em = sub.add_parser("emulator", help="emulator weights")
    em_sub = em.add_subparsers(dest="emulator_command", required=True)
    ex = em_sub.add_parser("export", help="write a run's weights + manifest (safetensors, JSON)")
    ex.add_argument("run", help="training run directory")
    ex.add_argument("--out", required=True, help="output path stem, e.g. weights/jkin-cips-default")
    ex.add_argument("--test", default=None, help="test set directory: metrics go in the manifest")
    ex.set_defaults(func=_cmd_export)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"jkin: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jkin: interrupted; finished chunks are kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
