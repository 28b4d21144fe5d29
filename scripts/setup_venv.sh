#!/usr/bin/env bash
# Installs one lock into a venv; `make setup` and `make speedrun` call it.
#
#   scripts/setup_venv.sh VENV PYTHON LOCK EXTRAS
#   scripts/setup_venv.sh .venv python3.11 requirements/speedrun.txt train
#
# 1. the venv, made by PYTHON unless VENV already has one (then its interpreter is the one checked);
# 2. the set-up's tools from requirements/tools.txt (pip, setuptools, uv), hash-checked by the
#    venv's own pip;
# 3. LOCK's packages, hash-checked, by uv: it downloads in parallel (PyPI's torch with its CUDA
#    packages is ~3 GB of wheels) and prints a line as each download starts and ends, so a log
#    shows progress where no progress bar can be drawn;
# 4. the project itself, editable and --no-deps (the lock brought its dependencies), built with
#    the locked setuptools rather than one fetched for an isolated build.
#
# The locks are resolved for CPython 3.11 on x86_64 glibc Linux (`make lock`). Another interpreter
# gets pyproject.toml's ranges plus requirements/constraints.in, unlocked, and a line that says
# so, rather than a lock whose wheels or markers may not fit it.
set -euo pipefail

if [ $# -ne 4 ]; then
  echo "usage: $0 VENV PYTHON LOCK EXTRAS" >&2
  exit 2
fi
venv=$1 python=$2 lock=$3 extras=$4
bin=$venv/bin

[ -x "$bin/python" ] || "$python" -m venv "$venv"
"$bin/python" -m pip install --disable-pip-version-check --require-hashes -r requirements/tools.txt
uv=("$bin/uv" pip install --python "$bin/python")

locked_for='import platform, sys
sys.exit(not (sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
              and sys.platform == "linux" and platform.machine() == "x86_64"
              and platform.libc_ver()[0] == "glibc"))'
if "$bin/python" -c "$locked_for"; then
  echo "installing $lock (hash-checked)"
  "${uv[@]}" --require-hashes -r "$lock"
  "${uv[@]}" --no-deps --no-build-isolation -e .
else
  echo "note: $("$bin/python" -V) on $(uname -sm): the locks are for CPython 3.11" \
    "on x86_64 Linux (glibc); installing pyproject.toml's ranges with requirements/constraints.in," \
    "unlocked. For the locked set-up: rm -rf $venv, then make ... PYTHON=python3.11"
  "${uv[@]}" -c requirements/constraints.in -e ".[$extras]"
fi
