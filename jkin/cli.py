"""The ``jkin`` command.

    jkin demo                                 the main job on a bundled default
    jkin data generate --n N --out DIR --seed S [--scheduler ADDRESS] ...
    jkin data status DIR

Errors in the user's input are reported in one line, without a traceback, with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


class UserError(Exception):
    """An error the user can fix; reported in one line."""


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


def _cmd_demo(args) -> int:
    """Until the sampler exists: generate a tiny JAM set and show what it made."""
    from jkin import conventions as cv
    from jkin.dataset import GenerationSpec, generate, load

    t0 = time.perf_counter()
    spec = GenerationSpec(seed=args.seed, layout="grid", n_points=16 * 16, chunk_size=2)
    summary = generate(args.out, args.n, spec, n_workers=args.workers, progress=not args.quiet)
    _print_summary(summary)
    data = load(args.out)
    v = np.sqrt(np.clip(data["v2"], 0, None))
    header = " ".join(f"{n:>11s}" for n in cv.PARAM_NAMES)
    print(f"\n{'map':>4s} {header} {'vrms min/median/max [km/s]':>28s}")
    for i, (p, vi) in enumerate(zip(data["params"], v)):
        row = " ".join(f"{x:11.3f}" for x in p)
        print(f"{i:4d} {row} {vi.min():8.1f} {np.median(vi):8.1f} {vi.max():8.1f}")
    print(f"\njkin demo finished in {time.perf_counter() - t0:.1f} s; data in {args.out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    from jkin import __version__

    p = argparse.ArgumentParser(prog="jkin", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"jkin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the main job on a bundled default")
    demo.add_argument("--out", default="jkin-demo", help="output directory (default: jkin-demo)")
    demo.add_argument("--n", type=int, default=4, help="number of JAM maps (default: 4)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=None, help="Dask workers (default: all cores)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

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
    gen.add_argument("--n-points", type=int, default=256,
                     help="points per map; a square number for --layout grid (default: 256)")
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, UserError) as err:
        print(f"jkin: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jkin: interrupted; finished chunks are kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
