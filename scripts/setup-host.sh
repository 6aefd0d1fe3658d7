#!/usr/bin/env bash
# Prepares a Debian 12 machine, as root, for `make image`, `make demo` and `make test`:
#   - Debian packages: podman and runc (see below), python3-venv for the validation tools;
#   - /etc/containers/containers.conf with the two settings podman needs on these machines;
#   - the Rust musl target, for the static binaries the FROM-scratch image ships;
#   - a Python venv (build/venv) with the pinned manifest-validation tools;
#   - with --agents (what `make test` asks for): the agent CLIs the agent suite runs (Claude
#     Code, Codex, Gemini CLI), pinned, from the npm registry (about 270 MB to download), and
#     the nightly Rust toolchain and cargo-fuzz for the fuzzing stage (make test-fuzz).
# Idempotent: every step first checks whether it is already done, so running it again costs
# a few seconds and changes nothing. CI (.ci/run) calls it before `make test`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
readonly VENV="${OPENSHELL_VENV:-$REPO/build/venv}"
readonly REQUIREMENTS="$REPO/scripts/requirements-manifests.txt"
readonly MUSL_TARGET="x86_64-unknown-linux-musl"
readonly CONTAINERS_CONF="/etc/containers/containers.conf"

# podman: builds the images and plays the pod. runc: crun 1.8.1 (podman's default here)
# refuses the machines' mixed cgroup v1/v2 layout. catatonit is pulled in by podman's
# Recommends and is what podman builds its local pause image from (no registry to pull one).
# python3-venv: Debian's python refuses `pip install` outside a venv (PEP 668).
# The test suites also run, around the sandbox: setcap (libcap2-bin: capability re-acquire
# attempts), ip (iproute2: the proxy tests' upstream hosts in their own network namespaces),
# curl and wget (HTTP clients run inside the sandbox).
# Transparent egress tests (issue 10): real servers on the test host for clients that speak no
# HTTP, reached through `protocol: tcp` endpoints: sshd (openssh-server; git over ssh) and
# redis-server (with redis-cli, for upstream's redis fixture).
# L7 (issue 9): musl-tools gives musl-gcc, which builds ring's C and assembly for the static
# musl binaries (see supervisor/src/proxy/l7/tls.rs); python3-requests is a real client the
# L7 tests run in the sandbox; git runs `git http-backend` on the test host.
readonly APT_PACKAGES=(podman runc catatonit python3-venv libcap2-bin iproute2 curl wget
  openssh-server redis-server musl-tools python3-requests git)

# nofile/nproc: root here lacks CAP_SYS_RESOURCE, so podman's default limits of 1048576
# make every container fail in setrlimit; nproc must stay <= 32768. runtime: see runc above.
readonly CONTAINERS_CONF_TEXT='[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
[engine]
runtime = "runc"'

# Agent CLIs: npm packages and versions in scripts/agent-clis.txt, installed globally under
# this prefix: /usr/local is where node images (FROM node:20) put `npm install -g`, so the
# shipped policies/ are tested against the layout agents really run from.
readonly AGENTS_PREFIX="${OPENSHELL_AGENTS_PREFIX:-/usr/local}"
readonly AGENT_CLIS="$REPO/scripts/agent-clis.txt"
# Gemini CLI 0.61 requires Node.js 20 or later.
readonly NODE_MAJOR_MIN=20

say() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: error: %s\n' "$*" >&2; exit 1; }

WITH_AGENTS=false
case "${1:-}" in
  "") ;;
  --agents) WITH_AGENTS=true ;;
  *) die "usage: $0 [--agents]" ;;
esac
readonly WITH_AGENTS

[[ $(id -u) -eq 0 ]] || die "run as root (podman runs rootful here; apt-get installs packages)"
[[ -r /etc/debian_version ]] || die "this script knows Debian's packages only (Debian 12 expected)"

# apt_packages PRESENT INSTALLING APT_OPTION PACKAGE...: installs the packages dpkg does not
# list as installed (APT_OPTION, when not empty, passed to apt-get install); PRESENT and
# INSTALLING name them in the messages.
apt_packages() {
  local present="$1" installing="$2" option="$3" missing=() pkg
  shift 3
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    say "$present: $*"
    return
  fi
  say "$installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq ${option:+"$option"} "${missing[@]}" >/dev/null
}

install_packages() {
  apt_packages "Debian packages present" "installing Debian packages" "" "${APT_PACKAGES[@]}"
}

configure_podman() {
  if [[ -e $CONTAINERS_CONF ]]; then
    if grep -q '^runtime = "runc"' "$CONTAINERS_CONF" \
      && grep -q '^default_ulimits = \["nofile=20000:20000", "nproc=20000:20000"\]' \
        "$CONTAINERS_CONF"; then
      say "$CONTAINERS_CONF already has the runtime and ulimits podman needs here"
      return
    fi
    # Someone else's configuration: merging TOML by hand could break it, so say what to add.
    die "$CONTAINERS_CONF exists without the settings podman needs here; add them by hand:
$CONTAINERS_CONF_TEXT"
  fi
  say "writing $CONTAINERS_CONF (runc, nofile/nproc limits of 20000)"
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  printf '%s\n' "$CONTAINERS_CONF_TEXT" >"$CONTAINERS_CONF"
}

add_musl_target() {
  command -v rustup >/dev/null || die "rustup not found on PATH (the Rust toolchain comes from rustup)"
  if rustup target list --installed | grep -qx "$MUSL_TARGET"; then
    say "Rust target $MUSL_TARGET present"
  else
    say "adding Rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET"
  fi
}

python_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    say "creating the Python venv $VENV"
    python3 -m venv "$VENV"
  fi
  # pip compares the pins with what is installed and downloads only on a difference.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  say "Python venv $VENV has $(grep -c '==' "$REQUIREMENTS") pinned validation packages"
}

# FSVIEW (issue 12): a WebAssembly runtime from PyPI for the runtime tests, installed as a
# plain directory (pip --target) that Debian's /usr/bin/python3 imports: it maps memfds, which
# must keep working in the sandbox, where vm.memfd_noexec=2 forbids executing them.
readonly WASM_REQUIREMENTS="$REPO/scripts/requirements-wasm.txt"
readonly WASM_DIR="${OPENSHELL_WASM_DIR:-$REPO/build/wasmtime}"
wasm_runtime() {
  local want
  want="$(grep -Eo '^wasmtime==[0-9.]+' "$WASM_REQUIREMENTS")"
  if [[ -f $WASM_DIR/.installed ]] && [[ $(cat "$WASM_DIR/.installed") == "$want" ]]; then
    say "$want present in $WASM_DIR"
    return
  fi
  say "installing $want into $WASM_DIR"
  rm -rf "$WASM_DIR"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --target "$WASM_DIR" \
    -r "$WASM_REQUIREMENTS"
  printf '%s\n' "$want" >"$WASM_DIR/.installed"
}

# FSVIEW (issue 12): the kernel matrix (tests/kernels/) boots Debian's 6.1 kernel under QEMU
# with an initramfs of static binaries (busybox's among them), packed with cpio. Without
# recommends: QEMU's would add a desktop's worth of packages to every CI run.
readonly KERNEL_MATRIX_PACKAGES=(qemu-system-x86 busybox-static cpio)
kernel_matrix_packages() {
  apt_packages "kernel matrix packages present" "installing the kernel matrix's packages" \
    --no-install-recommends "${KERNEL_MATRIX_PACKAGES[@]}"
}

# The version an npm package installed under $AGENTS_PREFIX declares, or nothing.
installed_version() {
  sed -n 's/^  "version": "\(.*\)",\{0,1\}$/\1/p' \
    "$AGENTS_PREFIX/lib/node_modules/$1/package.json" 2>/dev/null | head -n1
}

# Claude Code's npm package ships a placeholder bin/claude.exe that its postinstall script
# replaces with the native program of the platform package (a hard link). An npm that skips
# install scripts leaves the placeholder; run the package's own script then.
claude_native() {
  local dir="$AGENTS_PREFIX/lib/node_modules/@anthropic-ai/claude-code"
  [[ -d $dir ]] || return 0
  if [[ $(head -c4 "$dir/bin/claude.exe" 2>/dev/null) != $'\x7fELF' ]]; then
    say "running Claude Code's postinstall (bin/claude.exe is not the native program)"
    (cd "$dir" && node install.cjs)
  fi
  [[ $(head -c4 "$dir/bin/claude.exe") == $'\x7fELF' ]] \
    || die "$dir/bin/claude.exe is still not a native program after its postinstall"
}

install_agent_clis() {
  command -v node >/dev/null && command -v npm >/dev/null \
    || die "node and npm are needed for the agent CLIs (Node.js $NODE_MAJOR_MIN or later)"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  ((major >= NODE_MAJOR_MIN)) \
    || die "Node.js $(node --version) is too old for the agent CLIs ($NODE_MAJOR_MIN or later)"
  local pkg version missing=() all=()
  while read -r pkg version; do
    [[ -z $pkg || $pkg == \#* ]] && continue
    all+=("$pkg@$version")
    [[ $(installed_version "$pkg") == "$version" ]] || missing+=("$pkg@$version")
  done <"$AGENT_CLIS"
  if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing agent CLIs under $AGENTS_PREFIX: ${missing[*]}"
    npm install --global --prefix "$AGENTS_PREFIX" --no-fund --no-audit --loglevel=error \
      "${missing[@]}"
  fi
  claude_native
  say "agent CLIs present under $AGENTS_PREFIX (node $(node --version)): ${all[*]}"
}

check_podman() {
  # The cheapest proof that the runtime works: `podman info` reads the configuration and
  # storage; a bad containers.conf fails here rather than in the middle of a test.
  podman info --format '{{.Host.OCIRuntime.Name}}' | grep -qx runc \
    || die "podman does not use runc; check $CONTAINERS_CONF"
  say "podman $(podman version --format '{{.Client.Version}}') uses runc"
}

# Fuzzing (scripts/fuzz.sh): cargo fuzz needs a nightly toolchain (libFuzzer's coverage
# instrumentation). The toolchain is whatever nightly rustup has (kept once installed);
# cargo-fuzz is pinned and built from crates.io, once.
readonly FUZZ_TOOLCHAIN="nightly"
readonly CARGO_FUZZ_VERSION="0.13.2"
fuzz_tools() {
  if rustup toolchain list | grep -q "^$FUZZ_TOOLCHAIN-"; then
    say "Rust toolchain $FUZZ_TOOLCHAIN present"
  else
    say "installing the Rust toolchain $FUZZ_TOOLCHAIN (for cargo fuzz)"
    rustup toolchain install "$FUZZ_TOOLCHAIN" --profile minimal
  fi
  if cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    say "cargo-fuzz $CARGO_FUZZ_VERSION present"
  else
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION (about 2 minutes)"
    cargo install --quiet --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  fi
}

install_packages
kernel_matrix_packages
configure_podman
check_podman
add_musl_target
python_venv
wasm_runtime
if $WITH_AGENTS; then
  install_agent_clis
  fuzz_tools
fi
say "done"
