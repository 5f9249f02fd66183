#!/usr/bin/env bash
# The test command of aiida-voltnet: bootstrap the environment, then run pytest over tests/.
#
#   bash scripts/test.sh                 # the whole suite; production tests run when PostgreSQL/RabbitMQ are up
#   bash scripts/test.sh -m 'not production' -x   # extra arguments go to pytest
#
# Exit code: pytest's, except that 5 ("no tests collected") counts as a failure (exit 1).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash "$ROOT/scripts/bootstrap.sh" || { echo '[test] bootstrap failed' >&2; exit 1; }
PY="${VOLTNET_VENV:-$ROOT/.venv}/bin/python"
# The daemon of the production tests must find `verdi`: put the venv's bin first on PATH.
export PATH="$(dirname "$PY"):$PATH"
# Two shared cores: keep torch/BLAS from oversubscribing them.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

# -ra: one line per skip/xfail/failure with its reason in the summary; --durations: the slowest tests;
# -p no:cacheprovider: a CI checkout stays clean; --strict-markers: a typo in a marker is an error.
echo "[test] $PY -m pytest tests -ra --strict-markers --durations=15 -p no:cacheprovider $*"
"$PY" -m pytest tests -ra --strict-markers --durations=15 -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo '[test] pytest collected no tests: treating as a failure' >&2
    exit 1
fi
exit "$rc"
