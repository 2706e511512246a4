#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a fresh venv, and run `tessq --help` and `tessq demo`
# from a folder outside the repository: what every `pip install .` user gets. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/run"
cp pyproject.toml README.md alembic_free_schema.sql batch_tesselate.py enhanced_tesselate.py "$work/src/"  # schema.sql links here
cp -a tessq "$work/src/tessq"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
python -m pip wheel --no-deps -q -w "$work/dist" "$work/src"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$work"/dist/tessq-*.whl
cd "$work/run"
env -u TESSQ_WORKSPACE -u TESSQ_DB_URL -u TESSQ_QUEUE_URL "$work/venv/bin/tessq" --help >/dev/null
env -u TESSQ_WORKSPACE -u TESSQ_DB_URL -u TESSQ_QUEUE_URL "$work/venv/bin/tessq" demo demo-from-wheel
# the seed's module names, as its README imports them
"$work/venv/bin/python" -c "from batch_tesselate import BatchTesselator, BatchJob; \
from enhanced_tesselate import verify_images_identical"
echo "wheel check: ok"
