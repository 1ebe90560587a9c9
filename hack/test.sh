#!/usr/bin/env bash
# The test command of README.md and CI: installs what the tests need on a clean machine (apt
# packages, the kube-apiserver build from Debian's source package, tox), then runs tox: the whole
# test suite on the real apiserver, restic and moto S3, and the lint env (ruff, mypy, import-linter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/envtest/setup.sh
python3 -m pip install --quiet --disable-pip-version-check "tox>=4"
exec python3 -m tox -e py311,lint "$@"
