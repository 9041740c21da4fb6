#!/usr/bin/env bash
# Checks the Grafana dashboard (packaging/grafana/gpuslice-dashboard.json) against Grafana's
# dashboard schema types from grafana-foundation-sdk (PyPI; installed once into a cached venv):
# see check_dashboard.py for exactly what is checked. Prints "grafana: skipped: <why>" when the
# SDK cannot be installed.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${GPUSLICE_GRAFANA_VENV:-/var/cache/gpuslice-grafana-venv}
sdk='grafana-foundation-sdk==1769699998!10.1.0'
if ! "$venv/bin/python" -c 'import grafana_foundation_sdk' 2>/dev/null; then
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q "$sdk"; } >"${TMPDIR:-/tmp}/gpuslice-grafana-pip.log" 2>&1; then
        printf 'grafana: skipped: cannot install %s (%s)\n' "$sdk" "$(tail -n 1 "${TMPDIR:-/tmp}/gpuslice-grafana-pip.log")"
        exit 0
    fi
fi
exec "$venv/bin/python" "$root/tests/grafana/check_dashboard.py" "$root/packaging/grafana/gpuslice-dashboard.json"
