#!/usr/bin/env bash
# Start a single-machine Ray head for evomerge, sized from this machine.
#
#   clusters/local/start_head.sh [--port 6379] [--dashboard-port 8265] [--temp-dir DIR]
#                                [--num-cpus N] [--num-gpus N] [--auth token|disabled]
#                                [--runs-dir DIR] [--free-ports] [--dry-run]
#
# --auth token (default; only --auth chooses the mode: a RAY_AUTH_MODE=disabled exported in the
#   shell, as advised for local tests, does NOT turn authentication off): Ray's token
#   authentication. The token is read from $RAY_AUTH_TOKEN,
#   the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, which this script creates (mode 600)
#   when none exists. Clients and worker nodes need the same token (see clusters/local/README.md).
# --auth disabled: no authentication at all. Ray's GCS, raylet and object manager listen on
#   EVERY network interface whatever --node-ip-address says (only the dashboard binds to
#   127.0.0.1), so anyone who can reach this machine can run code on it: use it only on a
#   machine that nobody else can reach, or firewall the ports (clusters/local/README.md).
# --runs-dir DIR: where jobs submitted without --out keep their runs (exported to the head's
#   processes as EVOMERGE_RUNS_DIR; default ~/evomerge-runs). Must be an absolute path.
# --free-ports: free ports for the head's helper services too (dashboard agent, runtime-env
#   agent, metrics, Ray client...), so a second Ray instance on a shared machine does not collide
#   with the first one's defaults (52365, 10001, ...).
# --dry-run: check --auth and --runs-dir, print the settings the head would start with (auth=..., ports,
#   folders) and exit, starting nothing and creating no token.
#
# Stop it with clusters/local/stop_head.sh --temp-dir DIR (stops every process this head
# started, and only those); `ray stop` stops EVERY Ray instance of this user on the machine.
set -euo pipefail

port=6379
dash_port=8265
temp_dir="${TMPDIR:-/tmp}/ray-evomerge"
num_cpus=""
num_gpus=""
auth=token  # never taken from $RAY_AUTH_MODE: an exported `disabled` must not silently open the head
auth_given=0
dry_run=0
runs_dir="${EVOMERGE_RUNS_DIR:-$HOME/evomerge-runs}"
free_ports=0

while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dashboard-port) dash_port="$2"; shift 2 ;;
    --temp-dir) temp_dir="$2"; shift 2 ;;
    --num-cpus) num_cpus="$2"; shift 2 ;;
    --num-gpus) num_gpus="$2"; shift 2 ;;
    --auth) auth="$2"; auth_given=1; shift 2 ;;
    --runs-dir) runs_dir="$2"; shift 2 ;;
    --free-ports) free_ports=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done

case "$auth" in token|disabled) ;; *) echo "error: --auth must be token or disabled, not '$auth'" >&2; exit 2 ;; esac
case "$runs_dir" in /*) ;; *) echo "error: --runs-dir '$runs_dir' must be an absolute path (jobs run in Ray's temporary package folder)" >&2; exit 2 ;; esac
case "$temp_dir" in /*) ;; *) temp_dir="$PWD/$temp_dir" ;; esac
if [ "$auth_given" = 0 ] && [ -n "${RAY_AUTH_MODE:-}" ] && [ "${RAY_AUTH_MODE}" != token ]; then
  echo "note: RAY_AUTH_MODE=${RAY_AUTH_MODE} in this shell does not choose the head's mode: starting it with token authentication (pass --auth disabled for none)" >&2
fi
if [ "$dry_run" = 1 ]; then
  echo "auth=$auth port=$port dashboard_port=$dash_port temp_dir=$temp_dir runs_dir=$runs_dir"
  exit 0
fi
command -v ray >/dev/null 2>&1 || { echo "error: the 'ray' command is not on PATH (pip install 'ray[default]')" >&2; exit 2; }

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

# Token authentication needs a token before `ray start` (Ray does not create one).
token_hint=""
if [ "$auth" = token ]; then
  if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
    token_hint="the token in \$RAY_AUTH_TOKEN"
  elif [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
    [ -s "$RAY_AUTH_TOKEN_PATH" ] || { echo "error: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2; exit 2; }
    token_hint="the token in $RAY_AUTH_TOKEN_PATH"
  else
    if [ ! -s "$HOME/.ray/auth_token" ]; then
      (umask 077; mkdir -p "$HOME/.ray"; ray get-auth-token --generate >/dev/null 2>&1) \
        || { echo "error: could not create a Ray token with 'ray get-auth-token --generate'" >&2; exit 2; }
      echo "created a Ray authentication token in $HOME/.ray/auth_token"
    fi
    chmod 600 "$HOME/.ray/auth_token"
    token_hint="the token in $HOME/.ray/auth_token"
  fi
fi

extra=()
if [ "$free_ports" = 1 ]; then
  pick() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
  extra+=(--dashboard-agent-listen-port="$(pick)" --dashboard-agent-grpc-port="$(pick)"
          --runtime-env-agent-port="$(pick)" --metrics-export-port="$(pick)" --ray-client-server-port="$(pick)"
          --node-manager-port="$(pick)" --object-manager-port="$(pick)")
fi

mkdir -p "$temp_dir" "$runs_dir"
export RAY_AUTH_MODE="$auth" EVOMERGE_RUNS_DIR="$runs_dir"
# A session of its own: every process of this head (GCS, raylet, dashboard, Ray client server,
# workers, job drivers) carries its id, so stop_head.sh can find them all, and only them.
sid_file="$temp_dir/evomerge-head.sid"
launch=()
if command -v setsid >/dev/null 2>&1; then
  launch=(setsid --wait bash -c 'echo $$ > "$0"; shift; exec "$@"' "$sid_file" --)
fi
"${launch[@]}" ray start --head "${extra[@]}" \
  --port="$port" \
  --num-cpus="$num_cpus" \
  --num-gpus="$num_gpus" \
  --resources='{"evomerge_node": 1}' \
  --include-dashboard=true \
  --dashboard-host=127.0.0.1 \
  --dashboard-port="$dash_port" \
  --temp-dir="$temp_dir" \
  --disable-usage-stats

# The address Ray really uses (the machine's own, even when asked for 127.0.0.1).
gcs=$(cat "$temp_dir/ray_current_cluster" 2>/dev/null || echo "THIS-MACHINE:$port")
echo
echo "Ray head up: cpus=$num_cpus gpus=$num_gpus auth=$auth; job runs without --out go to $runs_dir"
echo "Listening on every interface: GCS $gcs and the raylet/object-manager ports; dashboard and job API on 127.0.0.1:$dash_port only."
if [ "$auth" = disabled ]; then
  echo "WARNING: no authentication: anyone who can reach $gcs can run code here; firewall these ports (clusters/local/README.md)."
fi
echo "Submit a job (from this machine):"
echo "  RAY_AUTH_MODE=$auth ray job submit --address http://127.0.0.1:$dash_port --working-dir . -- \\"
echo "      python jobs/evolve.py --algo genome --config jobs/configs/evolve_small.yaml --out $runs_dir/evolve-1"
if [ "$auth" = token ]; then
  echo "Add a worker machine (give it $token_hint first, e.g. as ~/.ray/auth_token with mode 600):"
  echo "  RAY_AUTH_MODE=token ray start --address=$gcs --resources='{\"evomerge_node\": 1}'"
else
  echo "Add a worker machine:  RAY_AUTH_MODE=disabled ray start --address=$gcs --resources='{\"evomerge_node\": 1}'"
fi
echo "Stop:  clusters/local/stop_head.sh --temp-dir $temp_dir"
