#!/usr/bin/env bash
# Before/after a change: benchmarks/ot_overhead.py and benchmarks/train_vs_peers.py at commit BASE against the
# working tree, as paired whole-process timings (farm-bench: A B A B ..., one warm-up each) plus each run's own
# figures. Each tree runs its own benchmark scripts on its own package (PYTHONPATH), on the same real MNIST
# images: _timing.py looks for shared/data/mnist two folders above benchmarks/, so the base tree gets a link.
#   bash benchmarks/before_after.sh 8665ea5 /tmp/before_after
set -euo pipefail
BASE=${1:?base commit}; OUT=${2:-/tmp/before_after}
HERE=$(cd "$(dirname "$0")/.." && pwd); PY="$HERE/.venv/bin/python"; TREE=/tmp/otrobust-base
mkdir -p "$OUT"
[ -d "$TREE" ] || git -C "$HERE" worktree add -f "$TREE" "$BASE"
[ -e /tmp/shared ] || ln -s "$(cd "$HERE/../shared" && pwd)" /tmp/shared
for bench in "ot_overhead --reps 5 --steps-per-rep 2" "train_vs_peers --reps 5 --skip-art"; do
    name=${bench%% *}; args=${bench#* }
    farm-bench -n 3 --timeout 2400 \
        --vs "sh -c 'cd $TREE && PYTHONPATH=$TREE/src exec $PY benchmarks/$name.py $args --out $OUT/${name}_before.json >>$OUT/${name}_before.log 2>&1'" \
        -- sh -c "cd $HERE && exec $PY benchmarks/$name.py $args --out $OUT/${name}_after.json >>$OUT/${name}_after.log 2>&1" \
        | tee "$OUT/${name}_farm_bench.txt"
done
