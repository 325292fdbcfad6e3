#!/usr/bin/env bash
# Start a single-machine Ray head for evomerge, sized from this machine.
#
#   clusters/local/start_head.sh [--port 6379] [--dashboard-port 8265] [--temp-dir DIR]
#                                [--num-cpus N] [--num-gpus N] [--auth token|disabled]
#                                [--free-ports]
#
# --free-ports picks free ports for the head's helper services too (dashboard agent, runtime-env
# agent, metrics, Ray client), so a second Ray instance on a shared machine does not collide
# with the first one's defaults (52365, 10001, ...).
#
# Prints the address to submit jobs to. Stop it with:  ray stop  (or kill the PID it prints;
# `ray stop` stops every Ray instance of this user on the machine).
set -euo pipefail

port=6379
dash_port=8265
temp_dir="${TMPDIR:-/tmp}/ray-evomerge"
num_cpus=""
num_gpus=""
auth="${RAY_AUTH_MODE:-token}"
host="127.0.0.1"
free_ports=0

while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dashboard-port) dash_port="$2"; shift 2 ;;
    --temp-dir) temp_dir="$2"; shift 2 ;;
    --num-cpus) num_cpus="$2"; shift 2 ;;
    --num-gpus) num_gpus="$2"; shift 2 ;;
    --auth) auth="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --free-ports) free_ports=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done

# Resources: every core, every visible GPU (one population actor per GPU), and a custom
# `evomerge_node` resource so jobs can place one actor per node.
if [ -z "$num_cpus" ]; then num_cpus=$(nproc); fi
if [ -z "$num_gpus" ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    num_gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)
  else
    num_gpus=0
  fi
fi

extra=()
if [ "$free_ports" = 1 ]; then
  pick() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  extra+=(--dashboard-agent-listen-port="$(pick)" --dashboard-agent-grpc-port="$(pick)"
          --runtime-env-agent-port="$(pick)" --metrics-export-port="$(pick)" --ray-client-server-port="$(pick)"
          --node-manager-port="$(pick)" --object-manager-port="$(pick)")
fi

export RAY_AUTH_MODE="$auth"
ray start --head "${extra[@]}" \
  --node-ip-address="$host" \
  --port="$port" \
  --num-cpus="$num_cpus" \
  --num-gpus="$num_gpus" \
  --resources='{"evomerge_node": 1}' \
  --include-dashboard=true \
  --dashboard-host="$host" \
  --dashboard-port="$dash_port" \
  --temp-dir="$temp_dir" \
  --disable-usage-stats

echo
echo "Ray head up: cpus=$num_cpus gpus=$num_gpus auth=$RAY_AUTH_MODE"
echo "Submit jobs:  RAY_AUTH_MODE=$RAY_AUTH_MODE ray job submit --address http://$host:$dash_port --working-dir . -- python jobs/evolve.py --config CONFIG"
echo "Add a worker: ray start --address=$host:$port --resources='{\"evomerge_node\": 1}'"
