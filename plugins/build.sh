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
#   plugins/build.sh --test     run the host-side unit tests (cargo test; the C example's, the C
#                               SDK's and the C template's tests, natively)
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
RUST_PLUGINS=(host-rewrite headers path-rewrite request-id key-auth ip-restriction cors json-validator grant-probe json-redact canary rate-limit)
C_PLUGINS=(c-example)
# Proxy-Wasm filters (core modules built on the proxy-wasm SDK crate, as for Envoy): the tests run
# them through the gateway beside the components. Not embedded in the gateway.
FILTERS=(filter-headers filter-body filter-shared)
# Proxy-Wasm filters written in AssemblyScript (a second SDK, from the npm registry; needs npm).
AS_FILTERS=(filter-as)
# The C example stays a contract 0.1.0 component: the gateway loads both versions.
C_WIT_DIR=wit/0.1.0
WIT_BINDGEN_VERSION=0.63.0
# The bindings give borrowed handles back after each export returns (the canonical ABI requires it).
C_BINDGEN_FLAGS=(--world plugin --autodrop-borrows yes)

# The tools, their installation and the compiler invocations: shared with `gatehouse plugin build`.
TOOLCHAIN_NAME=build.sh GATEHOUSE_TOOLCHAIN_SOURCED=1
# shellcheck source=plugins/toolchain.sh
source "$PLUGINS_DIR/toolchain.sh"

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
    echo "plugins/$name" "$(wit_files "$C_WIT_DIR")" plugins/build.sh plugins/toolchain.sh
  elif [[ " ${AS_FILTERS[*]} " == *" $name "* ]]; then
    echo "plugins/$name" plugins/build.sh plugins/toolchain.sh
  elif [[ " ${FILTERS[*]} " == *" $name "* ]]; then
    echo "plugins/$name" plugins/Cargo.toml plugins/Cargo.lock plugins/build.sh plugins/toolchain.sh
  else
    echo "plugins/$name" plugins/sdk "$(wit_files wit)" plugins/Cargo.toml plugins/Cargo.lock plugins/build.sh plugins/toolchain.sh
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
    find "$@" -type f ! -path '*/target/*' ! -path '*/node_modules/*' -print0 | LC_ALL=C sort -z |
      xargs -0 sha256sum
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
  for name in "${RUST_PLUGINS[@]}" "${C_PLUGINS[@]}" "${FILTERS[@]}" "${AS_FILTERS[@]}"; do
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
  if ! c_bindings_fresh; then
    say "the C bindings (c-example/bindings, sdk-c/bindings) were generated from other contracts"
    stale+=(c-bindings)
  fi
  if ((${#stale[@]})); then
    say "stale components: ${stale[*]}"
    say "rebuild them with: plugins/build.sh   (plugins/build.sh --install on a machine without the tools)"
    say "then commit plugins/dist/"
    exit 1
  fi
  say "plugins/dist is up to date with its sources (${#RUST_PLUGINS[@]} Rust + ${#C_PLUGINS[@]} C components, ${#FILTERS[@]} + ${#AS_FILTERS[@]} Proxy-Wasm filters)"
}

# --- tools ---------------------------------------------------------------------------------------

wit_bindgen_ready() {
  command -v wit-bindgen >/dev/null && [[ "$(wit-bindgen --version)" == *" $WIT_BINDGEN_VERSION"* ]]
}

install_all_tools() {
  install_tools c
  if ! command -v npm >/dev/null && command -v apt-get >/dev/null; then
    say "installing npm (the AssemblyScript filters' compiler comes from the npm registry)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq npm >/dev/null
  fi
  if ! c_bindings_fresh && ! wit_bindgen_ready; then
    say "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (the C bindings must be regenerated)"
    cargo install wit-bindgen-cli --version "$WIT_BINDGEN_VERSION" --locked
  fi
}

require_tools() {
  require_rust
  require_zig
  command -v npm >/dev/null || die "npm not found (the AssemblyScript filters need it): install npm, or run plugins/build.sh --install"
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
  cargo fetch --locked --target "$TARGET" >/dev/null
  CARGO_ENCODED_RUSTFLAGS="$(rust_flags)" cargo_wasm --locked --workspace
  local name
  for name in "${RUST_PLUGINS[@]}"; do
    wasm-tools component new "$CARGO_TARGET_DIR/$TARGET/release/${name//-/_}.wasm" -o "$DIST_DIR/$name.wasm"
  done
  # filters stay core modules
  for name in "${FILTERS[@]}"; do
    cp "$CARGO_TARGET_DIR/$TARGET/release/${name//-/_}.wasm" "$DIST_DIR/$name.wasm"
  done
}

# The generated C bindings, each `folder:contract folder` (relative to plugins/ and to the
# repository): the C example's (contract 0.1.0) and the C SDK's (the current contract).
C_BINDINGS=("c-example/bindings:$C_WIT_DIR" "sdk-c/bindings:wit")

# What bindings are generated from; kept beside them in STAMP.
bindings_stamp() {
  # shellcheck disable=SC2046 # the paths have no spaces
  echo "wit-bindgen $WIT_BINDGEN_VERSION ${C_BINDGEN_FLAGS[*]}; $1/ sha256 $(tree_hash $(wit_files "$1"))"
}

c_bindings_fresh() {
  local entry stamp
  for entry in "${C_BINDINGS[@]}"; do
    stamp="$PLUGINS_DIR/${entry%%:*}/STAMP"
    [[ -f "$stamp" && "$(cat "$stamp")" == "$(bindings_stamp "${entry#*:}")" ]] || return 1
  done
}

# Regenerates the C bindings when wit-bindgen is installed; otherwise the committed ones must have
# been generated from the current contracts.
c_bindings() {
  local entry out wit
  if ! wit_bindgen_ready; then
    c_bindings_fresh ||
      die "the C bindings were generated from other contracts: install wit-bindgen-cli $WIT_BINDGEN_VERSION (plugins/build.sh --install does) and rerun"
    return 0
  fi
  for entry in "${C_BINDINGS[@]}"; do
    out="plugins/${entry%%:*}" wit="${entry#*:}"
    local args=(c "$wit" "${C_BINDGEN_FLAGS[@]}" --out-dir "$out")
    (cd "$REPO_DIR" && wit-bindgen "${args[@]}" >/dev/null 2>&1) ||
      die "wit-bindgen failed; see why with: wit-bindgen ${args[*]}"
    bindings_stamp "$wit" >"$REPO_DIR/$out/STAMP"
  done
}

# The AssemblyScript filters: their compiler and SDK at the versions package-lock.json pins.
build_as() {
  local name
  for name in "${AS_FILTERS[@]}"; do
    (
      cd "$PLUGINS_DIR/$name"
      npm ci --no-audit --no-fund --silent >/dev/null
      npx --no-install asc assembly/index.ts -b "$DIST_DIR/$name.wasm" --use abort=abort_proc_exit \
        --optimize 2>/dev/null
    ) || die "$name: the AssemblyScript build failed; see why with: (cd plugins/$name && npm ci && npx asc assembly/index.ts --use abort=abort_proc_exit)"
  done
}

build_c() {
  local name dir out
  for name in "${C_PLUGINS[@]}"; do
    dir="$PLUGINS_DIR/$name"
    out="$PLUGINS_DIR/target/c/$name"
    mkdir -p "$out"
    (
      cd "$dir"
      ZIG_CACHE="$PLUGINS_DIR/target/zig-cache" c_wasm -Ibindings -Isrc \
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
  # a filter built for wasm32-unknown-unknown imports the Proxy-Wasm ABI (module env) only
  for name in "${FILTERS[@]}"; do
    imports=$(wasm-tools print "$DIST_DIR/$name.wasm" | grep -o '(import "[^"]*"' | sort -u)
    if grep -qv '^(import "env"$' <<<"$imports"; then
      die "$name imports more than the Proxy-Wasm ABI: $(tr '\n' ' ' <<<"$imports")"
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
    echo "# plugins/Cargo.toml, plugins/Cargo.lock, plugins/build.sh, plugins/toolchain.sh; of a C plugin: its"
    echo "# folder, $C_WIT_DIR/*.wit, plugins/build.sh, plugins/toolchain.sh. The .wasm hashes hold for the toolchain below."
    echo "# toolchain: $(toolchain_line)"
    echo "# Sources of a Proxy-Wasm filter: its folder, plugins/Cargo.toml, plugins/Cargo.lock, plugins/build.sh,"
    echo "# plugins/toolchain.sh; of an AssemblyScript filter: its folder (without node_modules), plugins/build.sh,"
    echo "# plugins/toolchain.sh."
    echo "# name source-sha256 wasm-sha256 bytes"
    for name in "${RUST_PLUGINS[@]}" "${C_PLUGINS[@]}" "${FILTERS[@]}" "${AS_FILTERS[@]}"; do
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
  c_bindings
  build_c
  build_as
  check_imports
  write_manifest
  say "wrote $(realpath --relative-to="$PWD" "$DIST_DIR" 2>/dev/null || echo "$DIST_DIR"):"
  awk '!/^#/ { printf "  %-15s %7d bytes  %s\n", $1, $4, substr($3, 1, 16) }' "$MANIFEST" >&2
}

run_tests() {
  add_pip_scripts_to_path
  # the filters' SDK links only inside a Proxy-Wasm host: they are tested through the gateway
  local exclude=()
  for name in "${FILTERS[@]}"; do exclude+=(--exclude "$name"); done
  (cd "$PLUGINS_DIR" && cargo test --locked --workspace "${exclude[@]}")
  local cc out="$PLUGINS_DIR/target/c/tests" sanitize=()
  mkdir -p "$out"
  if command -v cc >/dev/null; then cc=(cc); elif zig_ready; then cc=(python3 -m ziglang cc); else
    die "no C compiler for the C tests (install build-essential, or zig)"
  fi
  # memory errors and leaks fail the C tests where the compiler has the sanitizers
  if echo 'int main(void){return 0;}' | "${cc[@]}" -x c - -fsanitize=address,undefined -o "$out/probe" 2>/dev/null &&
    "$out/probe"; then
    sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
  fi
  local flags=(-std=c11 -Wall -Wextra -Werror -g "${sanitize[@]}")
  (
    cd "$PLUGINS_DIR/c-example"
    "${cc[@]}" "${flags[@]}" -Isrc src/policy.c tests/test_policy.c -o "$out/test_policy"
  )
  echo "c-example policy tests:"
  "$out/test_policy"
  (
    cd "$PLUGINS_DIR/sdk-c"
    "${cc[@]}" "${flags[@]}" -I. tests/test_sdk.c gatehouse_plugin_common.c gatehouse_plugin_double.c \
      -o "$out/test_sdk"
    # the C template's plugin and tests, against this SDK
    "${cc[@]}" "${flags[@]}" -I. ../templates/c/src/plugin.c ../templates/c/tests/test_plugin.c \
      gatehouse_plugin_common.c gatehouse_plugin_double.c -o "$out/test_c_template"
  )
  echo "C SDK tests:"
  "$out/test_sdk"
  echo "C template tests:"
  "$out/test_c_template"
}

case "${1:-}" in
  "") build ;;
  --install) install_all_tools; build ;;
  --tools) install_all_tools; say "the tools are installed (nothing was built)" ;;
  --check) check ;;
  --test) run_tests ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
