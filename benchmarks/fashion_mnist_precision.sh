#!/usr/bin/env bash
# Fashion-MNIST, WRN-16-2 -> WRN-10-1, seed 0: the student alone and Factor
# Transfer, each in float32 and in bfloat16 (experiment.precision), from the
# committed float32 teacher (benchmarks/results/fashion_mnist/shared_teacher.keras),
# then the report of the four runs (issue 14: what bfloat16 does to a real
# run's wall time and accuracy). Resumable: run it again after a kill.
#
#   bash benchmarks/fashion_mnist_precision.sh [WORKDIR]   # default runs/fmnist_precision
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/fmnist_precision}
teacher=benchmarks/results/fashion_mnist/shared_teacher.keras
for method in alone ft; do
  for precision in mixed_bfloat16 float32; do
    if [ "$method" = alone ]; then
      stages="['teacher', 'baseline', 'evaluate']"
    else
      stages="['teacher', 'paraphraser', 'student', 'evaluate']"
    fi
    python -m ft_keras.train --gin_file=gin/fashion_mnist/wrn16_2_wrn10_1.gin \
      --workdir="$root/$precision/$method" \
      --gin_bindings="experiment.seed = 0" \
      --gin_bindings="distillation.method = 'ft'" \
      --gin_bindings="experiment.stages = $stages" \
      --gin_bindings="experiment.teacher_checkpoint = '$teacher'" \
      --gin_bindings="experiment.precision = '$precision'"
  done
done
python -m ft_keras.report "$root/float32/alone" "$root/mixed_bfloat16/alone" \
  "$root/float32/ft" "$root/mixed_bfloat16/ft" \
  --out benchmarks/results/fashion_mnist_precision
