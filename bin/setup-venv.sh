#!/usr/bin/env bash
# Create (or complete) the project's .venv: Python >= 3.12, pinned dependencies, detectron2, the package.
# Idempotent: a stamp file records the hash of the inputs, so a second run returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.deepdisc-setup-stamp"
inputs_hash=$(cat requirements.txt pyproject.toml bin/setup-venv.sh bin/install-detectron2.sh | sha256sum | cut -c1-16)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$inputs_hash" && -x "$VENV/bin/python" ]]; then
    exit 0
fi

find_python() {
    local cand
    for cand in "${PYTHON:-}" python3.12 python3.13 python3 /root/.pyenv/versions/3.12*/bin/python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 \
        "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13; do
        [[ -n "$cand" ]] || continue
        # Run it: a pyenv shim can be on PATH without a usable interpreter behind it.
        if "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
    if ! PY=$(find_python); then
        echo "ERROR: Python >= 3.12 not found (tried \$PYTHON, python3.12, python3.13, python3, pyenv 3.12/3.13)." >&2
        echo "       Install Python 3.12 or set PYTHON=/path/to/python3.12 and re-run 'make setup'." >&2
        exit 1
    fi
    echo "[setup] creating $VENV with $PY ($("$PY" --version))"
    "$PY" -m venv "$VENV"
fi
echo "[setup] installing pinned dependencies (first run: a few minutes, ~6 GB)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
echo "[setup] detectron2"
bin/install-detectron2.sh "$VENV/bin/python"
echo "[setup] installing meas_extensions_deepdisc (editable)"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
echo "$inputs_hash" > "$STAMP"
echo "[setup] done: $VENV"
