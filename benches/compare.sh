#!/usr/bin/env bash
# Side-by-side benchmark of patron vs DuckDB and Polars (and lifetimes for the model fit) on
# the same generated exports. Installs the Python packages it needs into the current
# Python, builds patron in release mode, then runs benches/compare.py, which prints a table
# and writes bench-results/compare-<date>.json.
#
#   benches/compare.sh                          # 1M sales lines
#   benches/compare.sh --lines 1000000,10000000 # 1M and 10M (about 6 GB of scratch disk at 10M)
#   benches/compare.sh --keep --work /tmp/cmp   # keep the data and every system's output
#
# Honours CARGO_TARGET_DIR. PYTHON selects the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# Pinned so results stay comparable over time; bump deliberately.
"$PYTHON" -m pip install --quiet --disable-pip-version-check \
    "duckdb==2.0.1" "polars==2.1.0" "lifetimes==0.11.3"

cargo build --release --quiet --bin patron
PATRON="${CARGO_TARGET_DIR:-target}/release/patron"

exec "$PYTHON" benches/compare.py --patron "$PATRON" "$@"
