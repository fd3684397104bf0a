#!/usr/bin/env bash
# Runs every sluicegate test. On a fresh Debian machine it first installs what the tests need:
# redis-server (the shared-limits tests), a Python venv with the official OpenAI SDK (the SDK
# tests), and the rustfmt/clippy components (the lint gate).
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v python3 >/dev/null 2>&1 || apt_packages+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing: ${apt_packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi

venv=target/pyenv
if ! "$venv/bin/python" -c 'import openai' >/dev/null 2>&1; then
  echo "creating $venv with the openai package"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'openai>=1.40,<3'
fi
export SLUICEGATE_PYTHON="$PWD/$venv/bin/python"

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy -j2 --workspace --all-targets --locked -- -D warnings
cargo test -j2 --workspace --locked
