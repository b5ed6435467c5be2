#!/usr/bin/env bash
# Multi-worker training on one host: N worker processes of ft_keras.train
# (or another entry point) with a generated TF_CONFIG on 127.0.0.1 ports, to
# try MultiWorkerMirroredStrategy without a cluster.
#
#   launch/local_workers.sh NUM_WORKERS [ft_keras flags...]
#   launch/local_workers.sh 2 --gin_file=gin/quickstart.gin --workdir=runs/mw
#
# Worker 0 is the chief: its output goes to this terminal, the others' to
# $LOG_DIR/worker_<i>.log (their pids to worker_<i>.pid). If a worker fails,
# the others are stopped (as `srun --kill-on-bad-exit`) and the script exits
# with its status; rerun the same command to resume from the checkpoints. A
# worker preempted by SIGTERM/SIGUSR1 exits with 75 after all the workers
# saved at the same step; the script waits for the others and exits with 75.
#
# Environment:
#   MODULE           entry point (default ft_keras.train; e.g. ft_keras.evaluate)
#   PYTHON           interpreter (default python)
#   LOG_DIR          logs and pids (default: a new directory under $TMPDIR)
#   GPUS_PER_WORKER  give worker i GPUs [i*G, (i+1)*G) via CUDA_VISIBLE_DEVICES
#                    (default: leave CUDA_VISIBLE_DEVICES as it is)
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 NUM_WORKERS [--gin_file=... --workdir=... other flags]" >&2
  echo "NUM_WORKERS must be a positive integer; received: '${1:-}'" >&2
  exit 2
fi
NUM_WORKERS=$1
shift
MODULE=${MODULE:-ft_keras.train}
PYTHON=${PYTHON:-python}
LOG_DIR=${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ft_keras_workers.XXXXXX")}
mkdir -p "$LOG_DIR"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

# Free ports: bind all to port 0 at once, so that they differ, then release.
PORTS=$("$PYTHON" - "$NUM_WORKERS" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
)
WORKERS=$(printf '"127.0.0.1:%s",' $PORTS)
WORKERS="[${WORKERS%,}]"

PIDS=()
stop_workers() {
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap 'stop_workers; exit 130' INT
trap 'stop_workers; exit 143' TERM
trap stop_workers EXIT

echo "[local_workers] $NUM_WORKERS workers on $WORKERS, logs in $LOG_DIR" >&2
for ((i = 0; i < NUM_WORKERS; i++)); do
  export TF_CONFIG="{\"cluster\": {\"worker\": $WORKERS}, \"task\": {\"type\": \"worker\", \"index\": $i}}"
  if [[ -n "${GPUS_PER_WORKER:-}" ]]; then
    export CUDA_VISIBLE_DEVICES=$(seq -s, $((i * GPUS_PER_WORKER)) $(((i + 1) * GPUS_PER_WORKER - 1)))
  fi
  if ((i == 0)); then
    "$PYTHON" -u -m "$MODULE" --strategy=multi_worker "$@" \
      > >(tee "$LOG_DIR/worker_0.log") 2>&1 &
  else
    "$PYTHON" -u -m "$MODULE" --strategy=multi_worker "$@" \
      >"$LOG_DIR/worker_$i.log" 2>&1 &
  fi
  PIDS+=($!)
  echo $! >"$LOG_DIR/worker_$i.pid"
done
unset TF_CONFIG

# The first worker to fail stops the others.
status=0
preempted=0
running=("${PIDS[@]}")
while ((${#running[@]} > 0)); do
  done_pid=""
  wait -n -p done_pid "${running[@]}" || status=$?
  running=($(printf '%s\n' "${running[@]}" | grep -vx "$done_pid" || true))
  if ((status == 75)); then
    # Preempted: every worker stops at the same step and saves; wait for them.
    preempted=1
    status=0
    continue
  fi
  if ((status != 0)); then
    echo "[local_workers] worker pid $done_pid exited with status $status;" \
      "stopping the others" >&2
    stop_workers
    wait || true
    break
  fi
done
trap - EXIT
if ((preempted)); then
  exit 75
fi
exit $status
