#!/usr/bin/env bash
# Builds the release products and runs a benchmark suite: scripts/bench.sh SUITE [--json FILE] [--count N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release >&2
exec .build/release/procvisor-bench "$@"
