#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md: run on a machine with one GPU and jax[cuda].
#
#   bash benchmarks/gpu.sh OUT_DIR [MODE]      # MODE: full (default) | tiny
#
# Each part runs in its own process under its own time limit, most wanted first, so a
# slow part costs only itself; after each part OUT_DIR/res.tgz holds everything so far
# and OUT_DIR/log.txt the whole log.
set -o pipefail
out=${1:?usage: gpu.sh OUT_DIR [MODE]}
mode=${2:-full}
flag=$([ "$mode" = tiny ] && echo --tiny)
res=$(mktemp -d)
log=$out/log.txt
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name start $(date +%T)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "== $name rc=$? end $(date +%T)" | tee -a "$log"
    tar czf "$out/res.tgz" -C "$res" .
}

bench() {  # part, time limit
    step "$1" "$2" python3 benchmarks/run.py $flag --peers jax --parts "$1" --out "$res/$1"
}

{ nvidia-smi -L; nproc; python3 -c "import jax, equinox, optax, numpyro, blackjax
print('jax', jax.__version__, jax.devices(), 'equinox', equinox.__version__,
      'optax', optax.__version__, 'numpyro', numpyro.__version__,
      'blackjax', blackjax.__version__)"; } 2>&1 | tee -a "$log" || exit 4

bench gpu 150
bench core 130
step example 100 python3 -m caskax.examples.sn_lightcurve --no-figures \
    $([ "$mode" = tiny ] && echo --quick) --out "$res/example" --cache-dir "$res/jax-cache"
rm -rf "$res/jax-cache"
bench sampling 70
bench scaling 120
# batch inference (cx.batch) at the GPU sizes; its JSON is batch/batch.json (batch-quick.json
# in tiny mode): copied to benchmarks/batch-gpu.json, run.py --render-only publishes it. The loop and the hand-written fits are timed on a
# subset, as on the CPU; chunks of 4096 (16 chunks at 65,536).
if [ "$mode" = tiny ]; then
    step batch 120 python3 benchmarks/batch.py --quick --no-memory --out "$res/batch"
else
    step batch 420 python3 benchmarks/batch.py --sizes 4096,65536 --no-memory \
        --caskade-datasets 0 --loop-max 16 --hand-max 256 --batch-size 4096 --out "$res/batch"
fi
