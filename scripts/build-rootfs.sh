#!/usr/bin/env bash
# `make rootfs`: a minimal Debian (debootstrap --variant=minbase) to use as the sandbox's
# base layer instead of the host's /usr. Built into a temp dir and renamed into place.
set -euo pipefail
target=${1:-rootfs/build/debian}
suite=${ROOTFS_SUITE:-bookworm}
mirror=${ROOTFS_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
if [ -f "$target/etc/debian_version" ]; then
    echo "rootfs image already built at $target"
    exit 0
fi
scripts/host-packages.sh debootstrap
staging="$target.partial"
rm -rf "$staging"
mkdir -p "$(dirname "$target")"
debootstrap --variant=minbase "$suite" "$staging" "$mirror"
rm -rf "$staging"/var/cache/apt/archives/*.deb "$staging"/var/lib/apt/lists/*
mv "$staging" "$target"
echo "rootfs image built at $target; select it with WONDERCRAFT_ROOTFS_IMAGE=$(realpath "$target")"
