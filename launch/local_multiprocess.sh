#!/usr/bin/env bash
# N jax.distributed processes on this machine (127.0.0.1), each with D fake CPU devices: the
# multi-host code path (per-host shards, barriers, all-gathers, collective orbax saves) on a laptop.
#
#   launch/local_multiprocess.sh NUM_PROCESSES DEVICES_PER_PROCESS WORKDIR [--config.KEY=VALUE ...]
#   launch/local_multiprocess.sh 2 4 /tmp/ganinv_mp                       # the bundled sample
#
# Environment: PORT (coordinator port, default: a free one), PYTHON (default python),
# CONFIG (default configs/stylegan2.py). Logs: WORKDIR/logs/process_<i>.log. Exits non-zero if
# any process fails (the others are then stopped).
set -euo pipefail
if [[ $# -lt 3 ]]; then
  sed -n '2,9p' "$0"; exit 2
fi
NPROC=$1; NDEV=$2; WORKDIR=$3; shift 3
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-configs/stylegan2.py}
PORT=${PORT:-$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
cd "$(dirname "$0")/.."
mkdir -p "$WORKDIR/logs"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM
for ((i = 0; i < NPROC; i++)); do
  JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=$NDEV \
    "$PYTHON" -m ganinv_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
      --coordinator_address="127.0.0.1:$PORT" --num_processes="$NPROC" --process_id="$i" \
      "$@" >"$WORKDIR/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed (see $WORKDIR/logs/process_$i.log):" >&2
    tail -n 5 "$WORKDIR/logs/process_$i.log" >&2
    status=1; cleanup
  fi
done
exit $status
