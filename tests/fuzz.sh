#!/usr/bin/env bash
# Fuzzes the parsers that face clients — the path canonicaliser, the bearer token
# check, the forwarding-header reader — each for SECONDS (default 60), with
# proptest on the stable toolchain (cargo fuzz needs nightly, which this machine
# does not have). Bounded: each target stops after its time.
#
#   tests/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
FUZZ_SECONDS=$seconds cargo test --release -p tower-gateway-tests --test fuzz -- --nocapture --test-threads 1 2>&1 \
  | grep -E 'cases in|panicked|test result'
