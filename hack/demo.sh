#!/usr/bin/env bash
# README's first command: set this machine up and run arkd's main job end to end on embedded
# defaults (a local control plane, a directory as the bucket, ark server and ark restic server as
# processes, a backup of an annotated pod's volumes with restic, deletion, a restore, a data check).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/envtest/setup.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[demo]"
exec .venv/bin/python hack/demo.py
