#!/usr/bin/env bash
# Installs what is missing, builds everything (the integration tests run the built binaries), and
# runs the whole test suite: unit, integration, sandbox and stress tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build --build-tests
swift test --skip-build "$@"
