#!/usr/bin/env bash
# The Fashion-MNIST table's students (alone, KD, AT, FT, FT+KD; WRN-16-2 ->
# WRN-10-1) in float32 and in bfloat16 (experiment.precision), all from the
# float32 table's teacher (benchmarks/results/fashion_mnist/shared_teacher.keras),
# so that the two precisions differ in nothing else (what bfloat16 does to a
# real table's wall time and accuracy). The precisions alternate run
# by run, so that both see the same machine. Each precision's table, with its
# total wall time, goes to benchmarks/results/fashion_mnist_precision/<precision>/
# and to benchmarks/README.md's reproduce:fashion_mnist_<precision> block. Resumable: run
# it again after a kill; finished runs are kept in the results' summary.json.
#
#   bash benchmarks/fashion_mnist_precision.sh [SEED ...]   # default: seed 0
#   WORKDIR=runs/fmnist_precision (default) holds the runs' workdirs.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=("${@:-0}")
root=${WORKDIR:-runs/fmnist_precision}
results=benchmarks/results/fashion_mnist_precision
reproduce() {  # PRECISION [reproduce.py flags ...]
  local precision=$1
  shift
  python benchmarks/reproduce.py --gin_file=gin/fashion_mnist/wrn16_2_wrn10_1.gin \
    --gin_bindings="experiment.precision = '$precision'" \
    --teacher benchmarks/results/fashion_mnist/shared_teacher.keras \
    --seeds "${seeds[@]}" \
    --workdir "$root/$precision" --results_dir "$results/$precision" "$@"
}
for method in "student alone" KD AT FT FT+KD; do
  for precision in mixed_bfloat16 float32; do
    reproduce "$precision" --methods "$method"
  done
done
for precision in float32 mixed_bfloat16; do
  reproduce "$precision" --report_only --readme benchmarks/README.md \
    --name "fashion_mnist_$precision"
done
