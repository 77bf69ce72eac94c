#!/usr/bin/env bash
# xnatfs installer for Debian/Ubuntu (run as root or with sudo available).
#   bash scripts/install.sh demo [MOUNTPOINT]   install everything, then run the demo mount
#   bash scripts/install.sh test [PYTEST ARGS]  install everything, then run the whole test suite
#   bash scripts/install.sh install             install only
# It installs the apt packages xnatfs needs (fuse3, python3-venv, attr, rsync, systemd for
# systemd-analyze), creates the
# virtualenv .venv next to this checkout and installs xnatfs into it with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-install}"; shift || true

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(fuse3 python3 python3-venv python3-pip attr rsync systemd nginx)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "xnatfs install: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

case "$action" in
  install)
    echo "xnatfs installed: $(pwd)/.venv/bin/xnatfs (try: .venv/bin/xnatfs demo)";;
  demo)
    exec .venv/bin/xnatfs demo "${1:-$PWD/xnat-demo}";;
  test)
    if [ ! -e /dev/fuse ]; then
      echo "!!! /dev/fuse is missing: every test that mounts will be SKIPPED !!!" >&2
    fi
    set +e
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
    rc=$?
    # pytest exits 5 when it collected no test: that is a failure of the suite, not a pass
    exit "$rc";;
  *)
    echo "usage: bash scripts/install.sh [install|demo [MOUNTPOINT]|test [PYTEST ARGS]]" >&2
    exit 2;;
esac
