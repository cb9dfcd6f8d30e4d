#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need (PostgreSQL server
# binaries for the throwaway clusters, Python 3 for the fixture generator, xmllint), then
# runs every test of the workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# sqlx must never try to reach a database at build time.
export SQLX_OFFLINE=true

need_pkgs=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  need_pkgs+=(postgresql)
fi
command -v psql >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
command -v python3 >/dev/null 2>&1 || need_pkgs+=(python3)
# libxml2's xmllint: the independent XSD validator the XML tests compare snodo's against.
command -v xmllint >/dev/null 2>&1 || need_pkgs+=(libxml2-utils)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl) # certificates of tests/pg_tls.rs
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  fi
fi

cargo fmt --all -- --check
# Release mode: the crash tests push 200k rows through the binary several times, and the
# optimised build is both faster overall and the build users run.
cargo test --workspace --release --locked "$@"
