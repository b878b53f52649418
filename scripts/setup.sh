#!/usr/bin/env bash
# Set up a fresh machine: system libraries for headless MuJoCo rendering and open3d, a virtual environment in
# .venv with the CPU build of torch and this package with every extra. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}   # a local CPU wheel on our machines; an unpinned torch pulls a CUDA build

need_apt=()
for pkg in libusb-1.0-0 libosmesa6 libegl1 libgl1 libglib2.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing system packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[setup] missing system packages (install them as root): ${need_apt[*]}" >&2
  fi
fi

stamp="$VENV/.mfp-installed"
want="$(sha1sum pyproject.toml | cut -c1-40)-torch$TORCH_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
[ -d "$VENV" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install -q -e ".[all]"
echo "$want" > "$stamp"
echo "[setup] done: activate with 'source $VENV/bin/activate'"
