#!/usr/bin/env bash
# Runs the pingpong pair: starts pong, starts ping pointed at it (they meet through XenStore),
# waits for ping to finish and prints both consoles. Needs `swift build -c release`.
set -euo pipefail
cd "$(dirname "$0")/../.."
xl=${XL:-.build/release/xl}
$xl create -q examples/pingpong/pong.cfg
pong=$($xl domid pong)
$xl create -q examples/pingpong/ping.cfg "extra=\"role=ping peer=$pong\""
log="$($xl info | awk -F': ' '/^control_socket/ {print $2}' | sed 's|/control$||')/console/guest-ping.log"
for _ in $(seq 300); do $xl domid ping >/dev/null 2>&1 || break; sleep 0.1; done
cat "$log"
cat "${log%ping.log}pong.log"
