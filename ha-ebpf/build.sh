#!/bin/sh
# Builds the eBPF object by hand, the way aya-build does from ha-user/build.rs; handy
# when iterating on verifier or linker errors. Output: target/ebpf/bpfel-unknown-none/release/hasync-ebpf
set -e
cd "$(dirname "$0")/.."
CARGO_ENCODED_RUSTFLAGS="$(printf -- '--cfg=bpf_target_arch="x86_64"\037-Cdebuginfo=2\037-Clink-arg=--btf')" \
  exec cargo +"${HASYNC_EBPF_TOOLCHAIN:-nightly-2026-07-01}" build --package ha-ebpf --bins --release \
  --target bpfel-unknown-none -Z build-std=core --target-dir target/ebpf "$@"
