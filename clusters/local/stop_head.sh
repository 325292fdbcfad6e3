#!/usr/bin/env bash
# Stop every process of the Ray head started by start_head.sh with --temp-dir DIR, and only
# those (unlike `ray stop`, which stops every Ray instance of this user on the machine).
#
#   clusters/local/stop_head.sh --temp-dir DIR
#
# Found three ways, then with all their descendants: the session start_head.sh gave the head
# (DIR/evomerge-head.sid; it includes Ray's client server, which is re-parented to PID 1 and
# does not name DIR), every process whose command line names DIR, and their children (dashboard
# modules, workers, job drivers). SIGTERM, then SIGKILL after 5 s; it returns once all have exited.
set -uo pipefail

temp_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --temp-dir) temp_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$temp_dir" ] || { echo "error: --temp-dir is required" >&2; exit 2; }
case "$temp_dir" in /*) ;; *) temp_dir="$PWD/$temp_dir" ;; esac

sid=""
if [ -s "$temp_dir/evomerge-head.sid" ]; then sid=$(tr -dc '0-9' < "$temp_dir/evomerge-head.sid"); fi

table=$(ps -eww -o pid=,ppid=,sid=,args=)  # -ww: never cut the command line (COLUMNS)
roots=$(echo "$table" | awk -v d="$temp_dir" -v s="${sid:--1}" -v me=$$ '
  $1 != me && ($3 == s || (index($0, d) > 0 && $0 !~ /stop_head/)) {print $1}')
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
all=$(echo $all | tr ' ' '\n' | grep -v -e "^$$\$" -e '^$' | sort -un)
[ -n "$all" ] || { echo "no Ray processes found for $temp_dir"; rm -f "$temp_dir/evomerge-head.sid"; exit 0; }
kill -TERM $all 2>/dev/null
still_alive() {  # the processes of "$@" that have not exited (a zombie has: it waits for its parent to reap it)
  local p out=""
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null && [ "$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$p/stat" 2>/dev/null)" != Z ]; then
      out="$out $p"
    fi
  done
  echo $out
}
wait_gone() {  # wait_gone TRIES PID...: poll every 0.25 s until all have exited; prints those left
  local tries=$1 left; shift
  left=$(still_alive "$@")
  while [ -n "$left" ] && [ "$tries" -gt 0 ]; do
    sleep 0.25; tries=$((tries - 1)); left=$(still_alive $left)
  done
  echo $left
}
alive=$(wait_gone 20 $all)
if [ -n "$alive" ]; then
  kill -KILL $alive 2>/dev/null
  # a killed process takes a moment to exit (its memory is freed first): return only when it has
  alive=$(wait_gone 40 $alive)
  [ -n "$alive" ] && echo "warning: processes still exiting after SIGKILL: $alive" >&2
fi
rm -f "$temp_dir/evomerge-head.sid"
echo "stopped $(echo $all | wc -w) process(es) of the Ray head in $temp_dir"
