#!/usr/bin/env bash
# xnatfs installer for Debian/Ubuntu (run as root or with sudo available).
#   bash scripts/install.sh demo [MOUNTPOINT]   install everything, then run the demo mount
#   bash scripts/install.sh test [PYTEST ARGS]  install everything, then lint and run the whole test suite
#   bash scripts/install.sh lint                only the lint step of `test` (after an install)
#   bash scripts/install.sh install             install only
#   bash scripts/install.sh proxy               install, plus nginx for `xnatfs cache-proxy`
#   bash scripts/install.sh link                only put xnatfs on PATH (after an install)
# It installs the apt packages xnatfs needs (fuse3, python3-venv, attr, rsync, systemd for
# systemd-analyze), creates the
# virtualenv .venv next to this checkout and installs xnatfs into it with its test extras,
# then links xnatfs and mount.xnatfs into /usr/local/bin (as root) or ~/.local/bin (otherwise;
# XNATFS_BIN_DIR chooses another folder) so that `xnatfs` is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-install}"; shift || true

# Put the virtualenv's commands on PATH by symbolic links; says where, and whether that folder
# is on PATH. A file there that is not a link (another installation) is left alone.
link_commands() {
  local bin_dir tool target
  if [ -n "${XNATFS_BIN_DIR:-}" ]; then bin_dir="$XNATFS_BIN_DIR"
  elif [ "$(id -u)" -eq 0 ]; then bin_dir=/usr/local/bin
  else bin_dir="$HOME/.local/bin"; fi
  mkdir -p "$bin_dir"
  for tool in xnatfs mount.xnatfs; do
    target="$(pwd)/.venv/bin/$tool"
    if [ ! -x "$target" ]; then
      echo "xnatfs install: $target is missing (run: bash scripts/install.sh install)" >&2
      return 1
    fi
    if [ -e "$bin_dir/$tool" ] && [ ! -L "$bin_dir/$tool" ]; then
      echo "xnatfs install: $bin_dir/$tool exists and is not a link: left alone (use $target)" >&2
      continue
    fi
    ln -sfn "$target" "$bin_dir/$tool"
  done
  echo "xnatfs install: linked xnatfs and mount.xnatfs into $bin_dir"
  case ":$PATH:" in
    *":$bin_dir:"*) ;;
    *) echo "xnatfs install: $bin_dir is not on your PATH; add it:" \
         "export PATH=\"$bin_dir:\$PATH\"";;
  esac
}

# The lint step of `test`: ruff check, ruff format --check and mypy xnatfs, as pyproject.toml
# configures them. Runs all three, then names each one that failed (its findings are above).
run_lint() {
  local failed=()
  if [ ! -x .venv/bin/ruff ]; then
    echo "xnatfs lint: .venv/bin/ruff is missing (run: bash scripts/install.sh install)" >&2
    return 1
  fi
  echo "xnatfs lint: ruff check"
  .venv/bin/ruff check --no-cache . || failed+=("ruff check")
  echo "xnatfs lint: ruff format --check"
  .venv/bin/ruff format --no-cache --check . || failed+=("ruff format --check")
  if [ -x .venv/bin/mypy ]; then
    echo "xnatfs lint: mypy xnatfs"
    .venv/bin/mypy xnatfs || failed+=("mypy xnatfs")
  elif .venv/bin/python -c 'import sys; sys.exit(sys.version_info >= (3, 10))'; then
    echo "xnatfs lint: mypy skipped: mypy 2 needs Python 3.10 or later"
  else
    echo "xnatfs lint: .venv/bin/mypy is missing (run: bash scripts/install.sh install)" >&2
    failed+=("mypy xnatfs")
  fi
  if [ "${#failed[@]}" -gt 0 ]; then
    LINT_FAILED="$(IFS=,; echo "${failed[*]}")"
    echo "!!! lint FAILED: ${LINT_FAILED//,/, } !!! (ruff's fixes: .venv/bin/ruff check --fix;" \
         ".venv/bin/ruff format)" >&2
    return 1
  fi
  echo "xnatfs lint: clean (ruff check, ruff format --check, mypy xnatfs)"
}

case "$action" in
  link)
    link_commands
    exit $?;;
  lint)
    run_lint
    exit $?;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(fuse3 python3 python3-venv python3-pip attr rsync systemd)
# nginx runs `xnatfs cache-proxy` (a cluster's shared cache tier) and its tests; a workstation
# or the demo does not need it, and Debian's package starts a system nginx on port 80
case "$action" in
  test|proxy) APT_PACKAGES+=(nginx);;
esac
# git: a mount test runs a repository in a resource (lock files renamed over their targets)
if [ "$action" = test ]; then APT_PACKAGES+=(git); fi
# the BIDS validator the tests run on MNT/.bids (npm package, scripts/install-bids-validator.sh)
# (only when node or npm is missing: a NodeSource nodejs ships its own npm, and Debian's npm
# package cannot be installed beside it)
if [ "$action" = test ] && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  APT_PACKAGES+=(nodejs npm)
fi
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
# the editable install leaves xnatfs/ as source: byte-compile it here, because a Python that
# may not write __pycache__ (PYTHONDONTWRITEBYTECODE, as CI images and Dockerfiles set; a user
# running a tree root installed) compiled every module at every start: 0.3 s of each mount's
# 0.8 s and of every xnatfs command (measured 2026-12-06).  A source edited later is compiled
# afresh in memory (the stale .pyc is ignored), as without this.
.venv/bin/python -m compileall -q xnatfs >/dev/null
link_commands

case "$action" in
  install)
    echo "xnatfs installed: $(pwd)/.venv/bin/xnatfs (try: xnatfs demo)";;
  proxy)
    echo "xnatfs installed with nginx for xnatfs cache-proxy (Debian starts a system nginx on" \
         "port 80: systemctl disable --now nginx if you do not want it)";;
  demo)
    exec .venv/bin/xnatfs demo "${1:-$PWD/xnat-demo}";;
  test)
    if [ ! -e /dev/fuse ]; then
      echo "!!! /dev/fuse is missing: every test that mounts will be SKIPPED !!!" >&2
    fi
    bash scripts/install-bids-validator.sh
    set +e
    run_lint
    lint_rc=$?
    # one worker per CPU (XNATFS_TEST_WORKERS=N, or 0 for one process): the tests mostly wait
    # on mounts and timers, so 2 workers on 2 cores took the suite from ~23 to ~12 minutes;
    # loadgroup keeps the real-server checks (tests/real) on one worker, one at a time
    .venv/bin/python -m pytest -q -p no:cacheprovider -n "${XNATFS_TEST_WORKERS:-auto}" \
      --dist loadgroup "$@" tests
    rc=$?
    # pytest exits 5 when it collected no test: that is a failure of the suite, not a pass
    if [ "$lint_rc" -ne 0 ]; then
      # said again after pytest's summary, where a reader of the CI log looks
      echo "!!! lint FAILED (see above): ${LINT_FAILED//,/, } !!!" >&2
      [ "$rc" -ne 0 ] || rc=1
    fi
    exit "$rc";;
  *)
    echo "usage: bash scripts/install.sh [install|link|lint|proxy|demo [MOUNTPOINT]|test [PYTEST ARGS]]" >&2
    exit 2;;
esac
