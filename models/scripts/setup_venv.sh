#!/usr/bin/env bash
# Creates (or refreshes) models/.venv from models/requirements.txt. Idempotent: a venv whose
# recorded requirements hash matches is left as it is, so `npm test` can call this every time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python="${PYTHON:-python3}"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$req"
"$venv/bin/python" -m pip install --quiet --no-deps -e "$here"
echo "$want" > "$stamp"
echo "models/.venv ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
