#!/usr/bin/env bash
# Stop only the Ray instance started with --temp-dir DIR (unlike `ray stop`, which stops every
# Ray instance of this user on the machine).
#
#   clusters/local/stop_head.sh --temp-dir DIR
set -uo pipefail

temp_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --temp-dir) temp_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$temp_dir" ] || { echo "error: --temp-dir is required" >&2; exit 2; }

# The head's processes carry the temp dir in their command line; their children (dashboard
# modules, workers, job drivers) are found through the parent links.
table=$(ps -eww -o pid=,ppid=,args=)  # -ww: never cut the command line (COLUMNS)
roots=$(echo "$table" | awk -v d="$temp_dir" 'index($0, d) > 0 && $3 !~ /awk|stop_head/ {print $1}')
all="$roots"
frontier="$roots"
while [ -n "$frontier" ]; do
  next=""
  for p in $frontier; do
    kids=$(echo "$table" | awk -v p="$p" '$2 == p {print $1}')
    next="$next $kids"
  done
  frontier=$(echo $next)
  all="$all $frontier"
done
all=$(echo $all | tr ' ' '\n' | grep -v "^$$\$" | sort -u)
[ -n "$all" ] || { echo "no Ray processes found for $temp_dir"; exit 0; }
kill -TERM $all 2>/dev/null
for _ in $(seq 1 20); do
  alive=""
  for p in $all; do kill -0 "$p" 2>/dev/null && alive="$alive $p"; done
  [ -z "$alive" ] && break
  sleep 0.25
done
[ -n "${alive:-}" ] && kill -KILL $alive 2>/dev/null
echo "stopped $(echo $all | wc -w) process(es) of the Ray instance in $temp_dir"
