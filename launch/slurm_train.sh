#!/usr/bin/env bash
# Multi-worker training on a SLURM cluster: one ft_keras worker per node,
# each with all GPUs of its node, MultiWorkerMirroredStrategy over the srun
# step (cluster.resolver = 'slurm'). In the spirit of MMRazor's
# tools/slurm_train.sh:
#
#   [NODES=2] [GPUS_PER_NODE=8] launch/slurm_train.sh PARTITION JOB_NAME GIN_FILE WORKDIR [ft_keras flags...]
#   NODES=4 GPUS_PER_NODE=4 launch/slurm_train.sh gpu ft-r56 gin/paper/cifar100_resnet56_resnet20.gin /shared/runs/r56
#
# By default srun runs in the foreground (inside or outside an allocation);
# with SUBMIT=sbatch the same command is submitted as a batch job instead
# (its output goes to slurm-<jobid>.out in the current directory).
# WORKDIR must be on a filesystem shared by the nodes. Rerun the same
# command to resume an interrupted run from its checkpoints.
#
# Preemption and time limits (SUBMIT=sbatch): the job asks SLURM for
# SIGUSR1 PREEMPT_SECONDS before its end (--signal=B:USR1@...) and may be
# requeued (--requeue). The batch script passes the signal to the workers:
# one worker saves a checkpoint after its current step and exits with
# status 75 (ft_keras.preemption.EXIT_CODE); several workers stop and
# resume from the last periodic checkpoint (experiment.checkpoint_every).
# Either way the script requeues the job, which continues where it stopped.
#
# Environment (defaults):
#   NODES=1 GPUS_PER_NODE=8 (0 for CPU-only nodes) CPUS_PER_TASK=8
#   PORT_BASE=8888 (port of the worker on each node)
#   SRUN_ARGS="" (more srun/sbatch options, e.g. "--time=24:00:00 --qos=high")
#   PYTHON=python MODULE=ft_keras.train (or ft_keras.evaluate, ft_keras.export)
#   SUBMIT=srun (or sbatch)
#   PREEMPT_SECONDS=120 (sbatch: how long before the end SIGUSR1 comes)
set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: $0 PARTITION JOB_NAME GIN_FILE WORKDIR [ft_keras flags...]" >&2
  exit 2
fi
PARTITION=$1
JOB_NAME=$2
GIN_FILE=$3
WORKDIR=$4
shift 4
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-8}
PORT_BASE=${PORT_BASE:-8888}
SRUN_ARGS=${SRUN_ARGS:-}
PYTHON=${PYTHON:-python}
MODULE=${MODULE:-ft_keras.train}
SUBMIT=${SUBMIT:-srun}
PREEMPT_SECONDS=${PREEMPT_SECONDS:-120}
# The exit status of a preempted run (ft_keras.preemption.EXIT_CODE).
PREEMPTED_STATUS=75
for name in NODES GPUS_PER_NODE CPUS_PER_TASK PORT_BASE PREEMPT_SECONDS; do
  if [[ ! "${!name}" =~ ^[0-9]+$ ]]; then
    echo "$name must be a non-negative integer; received: '${!name}'" >&2
    exit 2
  fi
done
if [[ "$SUBMIT" != srun && "$SUBMIT" != sbatch ]]; then
  echo "SUBMIT must be 'srun' or 'sbatch'; received: '$SUBMIT'" >&2
  exit 2
fi
# sbatch runs a copy of this script: remember where the checkout is.
REPO=${FT_KERAS_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

RESOURCES=(--partition="$PARTITION" --job-name="$JOB_NAME" --nodes="$NODES"
           --ntasks-per-node=1 --cpus-per-task="$CPUS_PER_TASK")
if ((GPUS_PER_NODE > 0)); then
  RESOURCES+=(--gres="gpu:$GPUS_PER_NODE")
fi

if [[ "$SUBMIT" == sbatch ]]; then
  # shellcheck disable=SC2086  # SRUN_ARGS holds several options.
  exec sbatch "${RESOURCES[@]}" $SRUN_ARGS \
    --signal="B:USR1@$PREEMPT_SECONDS" --requeue \
    --export="ALL,SUBMIT=srun,FT_KERAS_REPO=$REPO,FT_KERAS_BATCH=1" \
    "${BASH_SOURCE[0]}" "$PARTITION" "$JOB_NAME" "$GIN_FILE" "$WORKDIR" "$@"
fi

COMMAND=(srun "${RESOURCES[@]}" --ntasks="$NODES" --kill-on-bad-exit=1)
# shellcheck disable=SC2206  # SRUN_ARGS holds several options.
COMMAND+=($SRUN_ARGS
  "$PYTHON" -u -m "$MODULE"
  --gin_file="$GIN_FILE" --workdir="$WORKDIR"
  --strategy=multi_worker --cluster=slurm
  --gin_bindings="cluster.slurm_port_base = $PORT_BASE"
  --gin_bindings="cluster.gpus_per_node = $GPUS_PER_NODE"
  "$@")
if [[ -z "${FT_KERAS_BATCH:-}" ]]; then
  exec "${COMMAND[@]}"
fi

# The batch job: srun in the background, so that SLURM's SIGUSR1 reaches
# this shell, which passes it on (srun forwards it to every task).
SIGNALLED=0
"${COMMAND[@]}" &
SRUN_PID=$!
trap 'SIGNALLED=1; kill -USR1 "$SRUN_PID" 2>/dev/null || true' USR1
while true; do
  STATUS=0
  wait "$SRUN_PID" || STATUS=$?
  # `wait` also returns (status > 128) when a trapped signal arrives.
  if ((STATUS <= 128)) || ! kill -0 "$SRUN_PID" 2>/dev/null; then
    break
  fi
done
if [[ $STATUS -eq $PREEMPTED_STATUS || $SIGNALLED -eq 1 ]]; then
  echo "[ft_keras] job $SLURM_JOB_ID stopped (status $STATUS): requeued to continue" >&2
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$STATUS"
