#!/usr/bin/env bash
# The whole test suite, from nothing: a virtualenv with the project and pytest, the local
# Kafka broker (scripts/kafka-dev.sh), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${RECSYS_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "test.sh: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q -e ".[test]" >&2

# A headless browser for the report test (tests/test_compare.py): Debian's chromium. Where
# this script can install it (root with apt), the test must find it: it fails, not skips.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium (apt)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export RECSYS_REQUIRE_BROWSER=1
fi

# One broker for the whole session; stop it afterwards only if this script started it.
export RECSYS_KAFKA_PYTHON="$VENV/bin/python"
started=0
if ! scripts/kafka-dev.sh status >/dev/null 2>&1; then
    started=1
fi
RECSYS_KAFKA_BOOTSTRAP=$(scripts/kafka-dev.sh start | tail -n 1)
export RECSYS_KAFKA_BOOTSTRAP
if [ "$started" = 1 ]; then
    trap 'scripts/kafka-dev.sh stop >/dev/null 2>&1 || true' EXIT
fi
echo "test.sh: Kafka at $RECSYS_KAFKA_BOOTSTRAP" >&2

"$VENV/bin/python" -m pytest "$@"
