# Sourced by scripts/run, scripts/test and .ci/run: installs the system packages the
# build needs (on Debian, when missing) and keeps cargo's target directory outside the
# work tree, so the ~19 min RocksDB build survives fresh clones and sessions.
set -euo pipefail

tidegate_apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${missing[*]} (apt)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if command -v dpkg >/dev/null 2>&1; then
  # The rocksdb crate generates its bindings with libclang; its C++ needs a compiler.
  tidegate_apt_install libclang-dev g++
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidegate-target}"
mkdir -p "$CARGO_TARGET_DIR"
