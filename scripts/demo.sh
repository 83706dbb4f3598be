#!/usr/bin/env bash
# Installs what is missing, builds Procvisor, starts a supervisor in a private run directory,
# creates the example domains from their xl.cfg files, shows them, their consoles and the
# sandbox at work, ballooning, two domains talking through a granted page and guests on a
# network bridge (echo, ping, a key-value store), then destroys them and stops the supervisor.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release

export PROCVISOR_RUNDIR="${PROCVISOR_RUNDIR:-/tmp/procvisor-demo-$$}"
xl=.build/release/xl
stop() {
    if [ -f "$PROCVISOR_RUNDIR/procvisord.pid" ]; then
        kill "$(cat "$PROCVISOR_RUNDIR/procvisord.pid")" 2>/dev/null || true
        for _ in $(seq 50); do [ -e "$PROCVISOR_RUNDIR/control" ] || break; sleep 0.1; done
    fi
    rm -rf "$PROCVISOR_RUNDIR"
}
trap stop EXIT
run() { printf '\n$ %s\n' "$*"; "$@"; }

run $xl create -c examples/hello/hello.cfg          # starts the supervisor, boots, shows the console
run $xl create examples/spinner/spinner.cfg
run $xl create examples/evil/evil.cfg               # tries to open /etc/passwd: crashed by the sandbox
sleep 0.5
run $xl list
printf '\n$ %s\n' "(sleep 1; echo 'hello spinner'; sleep 1; printf '\\035') | $xl console spinner"
(sleep 1; echo 'hello spinner'; sleep 1; printf '\035') | $xl console spinner
echo
run $xl dmesg
run $xl shutdown -w spinner
run $xl destroy evil
run $xl create -c examples/balloon-demo/balloon-demo.cfg  # gives memory back to the host and takes it again
run bash examples/pingpong/run.sh                       # two domains: a granted ring and an event channel
run $xl create examples/udp-echo/udp-echo.cfg           # 10.0.0.2 on bridge xenbr0; starts the netback driver domain
run $xl create -c examples/ping/ping.cfg                # pings it through netfront → netback → netfront
run $xl create -c examples/udp-echo/udp-echo-client.cfg # UDP datagrams echoed
run $xl create examples/kvstore/kvstore.cfg             # a key-value server at 10.0.0.20, its table in the RAM heap
run $xl create -c examples/kvstore/kvclient.cfg         # 200 PUTs, every acknowledged one read back
run $xl network-list udp-echo
run $xl list
run $xl info total_memory
