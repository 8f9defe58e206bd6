#!/bin/bash
# The GPU check for the next lease (session 13 ran this script before its compile-timing lines
# were added; session 12's version, which timed the emulator, is in git history; results in
# benchmarks/results/gpu/README.md), run as one prepared script
# from the repository root on a lent GPU machine whose image has CUDA jax but not the rest:
#   bash benchmarks/gpu_session.sh OUTDIR [quick]
# Expects, beside the checkout (git-ignored, carried to the machine):
#   .whl/   py3.12 wheels of herculens, objax, utax, jampy, capfit, mgefit, plotbin, vorbin,
#           astropy (+ pyerfa, astropy-iers-data), arviz (+ xarray-einstats, h5netcdf,
#           platformdirs), corner, parameterized
#   .whl2/  numpyro 0.22.0, flax 0.12.8, optax 0.2.8 (tried only when the image's own fail)
#   .devdata/ta08/systemNN/{ifu,lens}.fits, .devdata/ta09/system0{7,9}/...: the recovery mocks
#           of the CPU run (benchmarks/recovery.py makes the same ones, deterministically)
# Fits run one after another until DEADLINE seconds (default 500) of this script have passed;
# the finished ones are packed into OUTDIR/gpu_fits.tgz after each.
OUTD=${1:-$OUT}; QUICK=${2:-}
DEADLINE=${DEADLINE:-500}
export PYTHONUNBUFFERED=1
W=/tmp/w; rm -rf $W; mkdir -p $W; cp -r .devdata/ta08 .devdata/ta09 $W/
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site2 .whl2/*.whl || exit 3
  BASE=/tmp/site:$PWD
else
  BASE=$PWD
fi
smoke() {
  python3 - <<'EOF'
import jax, numpy as np, numpyro, flax, optax
print("jax", jax.__version__, "numpyro", numpyro.__version__, "flax", flax.__version__,
      "optax", optax.__version__, jax.devices(), flush=True)
import jkin.lensing, jkin.inference, jkin.kinematics
from jkin import emulator
print("imports ok", flush=True)
EOF
}
export PYTHONPATH=$BASE
if ! smoke; then echo "== image versions failed; carried numpyro/flax/optax =="; export PYTHONPATH=/tmp/site2:$BASE; smoke || exit 4; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
pack() { (cd $W && tar czf $OUTD/gpu_fits.tgz --exclude='*.fits' --exclude=corner.png .) ; }
if [ -n "$QUICK" ]; then S="--quick"; else S="--n-starts 4 --map-steps 2000 --num-warmup 300 --num-samples 1200 --max-tree-depth 6"; fi
COMMON="--systems 10 --modes joint --init-from benchmarks/results/recovery --workers 1 --weights jkin-cips-compact $S"
run() {  # out ta systems...
  local out=$1 ta=$2; shift 2
  local left=$((DEADLINE - SECONDS)); [ $left -lt 40 ] && { echo "skip $* (deadline)"; return; }
  echo "== joint, ta $ta, systems $* [$SECONDS s, $left s left]"
  timeout $left python3 benchmarks/recovery.py --out $W/$out --only "$@" --target-accept $ta $COMMON 2>&1 \
    | grep -v -E "Warning|warn\(" ; pack
}
run ta08 0.8 2
# the cost of one step's potential + gradient by chain count, and what the fit's programs take
# to compile, as is and without XLA's GPU autotuning (on the config the fit wrote)
PS="benchmarks/potential_speed.py $W/ta08/system02/joint.toml --modes joint --chains 2 8 --repeats 20 --compile"
timeout 240 python3 $PS 2>&1 | grep -v Warning | tee $OUTD/potential_speed_gpu.txt
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout 240 python3 $PS 2>&1 | grep -v Warning \
  | tee $OUTD/potential_speed_gpu_noautotune.txt
# the same fit with 8 vectorized chains of 300 draws (the same 2400 draws; a step's cost
# hardly grows with the chain count on a GPU)
S8=$(echo "$S" | sed 's/--num-samples 1200/--num-samples 300 --num-chains 8/')
COMMON8="--systems 10 --modes joint --init-from benchmarks/results/recovery --workers 1 --weights jkin-cips-compact $S8"
left=$((DEADLINE - SECONDS))
if [ $left -gt 60 ]; then
  echo "== joint, 8 chains, ta 0.8, system 2 [$SECONDS s, $left s left]"
  timeout $left python3 benchmarks/recovery.py --out $W/ta08c8 --only 2 --target-accept 0.8 $COMMON8 2>&1 \
    | grep -v -E "Warning|warn\(" ; pack
fi
run ta09 0.9 9 7
run ta08 0.8 1 3 4 5 6 8 0
echo "== done [$SECONDS s]"
nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null
pack
