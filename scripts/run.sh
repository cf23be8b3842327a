#!/usr/bin/env bash
# `make run`: start the appliance with embedded defaults, pair a local tablet, list its
# workstations, and keep the appliance running until Ctrl-C.
#   PUBLIC=1 make run       listen on 0.0.0.0 (reachable from the LAN)
#   RUN_DIR=dir make run    where the appliance's and the tablet's state live
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir=${RUN_DIR:-$PWD/.periphery-run}
state=$run_dir/appliance
tablet_home=$run_dir/tablet
periphery=target/debug/periphery
tablet=target/debug/periphery-tablet
mkdir -p "$run_dir"

# The demo desktop runs top in a terminal, so the stream has something live to show.
mkdir -p "$state"
if [ ! -f "$state/periphery.toml" ]; then
  cat > "$state/periphery.toml" <<'TOML'
[workstations]
session = ["xterm", "-geometry", "100x32", "-e", "top", "-d", "1"]
TOML
fi
serve_args=(--state-dir "$state" serve)
[ -n "${PUBLIC:-}" ] && serve_args+=(--public)
"$periphery" "${serve_args[@]}" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; exit 0' INT TERM

# Wait for the daemon to answer on its admin socket (or to die).
for _ in $(seq 1 300); do
  "$periphery" --state-dir "$state" status >/dev/null 2>&1 && break
  kill -0 $daemon 2>/dev/null || { wait $daemon; exit 1; }
  sleep 0.1
done
port=$("$periphery" --state-dir "$state" status | awk '/listening/ {print $2}' | sed 's/.*://')

if ! "$periphery" --state-dir "$state" user list | grep -q '^demo '; then
  "$periphery" --state-dir "$state" user add demo --no-password
fi
if [ ! -f "$tablet_home/appliance.toml" ]; then
  code=$("$periphery" --state-dir "$state" device pair-code --user demo 2>/dev/null)
  "$tablet" --home "$tablet_home" pair "127.0.0.1:$port" --code "$code" --name local-tablet
fi
if ! "$periphery" --state-dir "$state" ws list | grep -q '^demo/desktop '; then
  "$periphery" --state-dir "$state" ws create --user demo --name desktop --monitors 1280x800 >/dev/null
fi
echo
echo "local tablet ($tablet_home):"
"$tablet" --home "$tablet_home" whoami
"$tablet" --home "$tablet_home" workstations
echo
echo "The appliance is running (state in $state). Try, in another terminal:"
echo "  $periphery --state-dir $state status"
echo "  $periphery --state-dir $state ws screenshot desktop out.png"
echo "  $periphery --state-dir $state device pair-code --user demo"
echo "  $periphery --state-dir $state render nodes          # the appliance's own render node"
echo "  $tablet --home $tablet_home render submit 'echo hi > out/hi.txt' --command"
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  echo "The local tablet now mirrors the demo desktop in a window (wgpu; it says which adapter it"
  echo "uses), prints a stats line per second, and saves $run_dir/tablet.png when you leave."
  view=()
else
  echo "No display here: the local tablet mirrors the demo desktop headless, prints a stats line"
  echo "per second, and saves $run_dir/tablet.png on Ctrl-C."
  view=(--headless)
fi
echo
trap 'kill -INT $viewer 2>/dev/null; wait $viewer 2>/dev/null; kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null; exit 0' INT TERM
"$tablet" --home "$tablet_home" attach desktop --mirror 0 "${view[@]}" --screenshot "$run_dir/tablet.png" &
viewer=$!
wait $daemon
