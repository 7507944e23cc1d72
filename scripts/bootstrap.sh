#!/usr/bin/env bash
# Install everything shardnet needs, from the package registries only. Idempotent and quick
# when nothing changed: each step is skipped while the hash of its lock/spec file matches.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[bootstrap] %s\n' "$*"; }
hash_of() { sha256sum "$@" | sha256sum | cut -c1-16; }

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "error: Python >= 3.11 is required (found $("$python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
command -v node >/dev/null || { echo "error: Node.js >= 20 is required on PATH" >&2; exit 1; }
node -e 'process.exit(parseInt(process.versions.node) >= 20 ? 0 : 1)' \
  || { echo "error: Node.js >= 20 is required (found $(node --version))" >&2; exit 1; }

# Python environment (.venv), torch pinned to the CPU build in pyproject.toml.
py_stamp=$(hash_of pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.shardnet-stamp 2>/dev/null)" != "$py_stamp" ]; then
  say "creating the Python environment in .venv"
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  echo "$py_stamp" > .venv/.shardnet-stamp
fi

# npm packages: Anvil, solc-js, the IPFS daemon, OpenZeppelin, Hardhat (package-lock.json).
npm_stamp=$(hash_of package.json package-lock.json)
if [ ! -d node_modules ] || [ "$(cat node_modules/.shardnet-stamp 2>/dev/null)" != "$npm_stamp" ]; then
  say "installing npm packages (a few minutes the first time)"
  # `npm install` (not `npm ci`): js-ipfs lists optional WebRTC packages that fetch from outside
  # the registry; install skips them as optional failures while keeping the locked versions.
  npm install --no-audit --no-fund --loglevel=error
  echo "$npm_stamp" > node_modules/.shardnet-stamp
fi

# Debian's chromium for the explorer's browser test (Playwright drives it; nothing downloaded).
if [ ! -x /usr/bin/chromium ]; then
  say "installing Debian's chromium (browser tests)"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium >/dev/null \
    || { echo "error: could not install chromium; run 'apt-get install chromium' (needed by the explorer browser test)" >&2; exit 1; }
fi

# Compile the contracts once so the first devnet start is quick (cached by source hash).
.venv/bin/shardnet contracts compile >/dev/null
say "ready"
