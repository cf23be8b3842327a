#!/usr/bin/env bash
# Installs what building and testing Periphery needs on Debian, only what is missing.
# Debian packages with apt-get; cargo tools with `cargo install --locked`.
set -euo pipefail

# Debian packages the build and the tests need (Mesa: the tablet's wgpu presenter runs on the
# lavapipe/llvmpipe software adapters where there is no GPU; libx*: what winit loads at run time;
# restic: the persistence tests restore with the standard CLI).
want_debs=(build-essential pkg-config iproute2 ca-certificates
  xvfb xterm openbox x11-utils x11-xserver-utils xfonts-base
  qemu-system-x86 busybox-static linux-image-amd64
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libavfilter-dev libavdevice-dev clang
  mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri
  libxkbcommon-x11-0 libx11-xcb1 libxcursor1 libxrandr2 libxi6
  xinput blender restic)
# Where a command may come from a backport under another package name, the command decides.
declare -A by_command=([qemu-img]=qemu-utils)
install_debs() {
  echo "setup: installing Debian packages: $*"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}
missing=()
for p in "${want_debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  install_debs "${missing[@]}"
fi
# Commands are checked after the packages above: installing those may remove a backport
# that provided one (qemu-system-x86 from Debian removes a backported qemu-utils).
missing=()
for c in "${!by_command[@]}"; do
  command -v "$c" >/dev/null 2>&1 || missing+=("${by_command[$c]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  install_debs "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing: install Rust (https://rustup.rs), then run make again" >&2
  exit 1
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done

# The S3-compatible server the persistence tests start (buckets are directories).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "setup: installing s3s-fs"
  cargo install --locked s3s-fs --version 0.14.1 --features binary
fi

if [ "${1:-}" = "fuzz" ] && ! cargo fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
