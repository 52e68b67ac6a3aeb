#!/bin/sh
# Fetch Debian's cloud kernel (a stock bzImage) for vmm-monitor's real-kernel
# loader test, unpack it into DIR, and print the path of its vmlinuz.
#
#   usage: scripts/fetch-test-kernel.sh DIR
#   then:  VMD_TEST_BZIMAGE=$(scripts/fetch-test-kernel.sh DIR) cargo test -p vmm-monitor --test linux_boot
#
# Idempotent: if DIR already holds an unpacked kernel, nothing is downloaded.
# Progress goes to stderr; stdout carries only the vmlinuz path.
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

find_vmlinuz() {
    # The newest unpacked vmlinuz-*-cloud-amd64, if any.
    ls "$dir"/root/boot/vmlinuz-* 2>/dev/null | sort | tail -n 1
}

existing=$(find_vmlinuz || true)
if [ -n "$existing" ] && [ -s "$existing" ]; then
    echo "$existing"
    exit 0
fi

# apt-get download writes into the current directory.
debs="$dir/debs"
mkdir -p "$debs"
cd "$debs"

download() {
    apt-get download "$@" >&2
}

# The meta package only depends on the versioned image package; fetch the
# meta package, then the image package it names.
if ! download linux-image-cloud-amd64; then
    echo "apt-get download failed; running apt-get update first" >&2
    apt-get update >&2 || sudo apt-get update >&2
    download linux-image-cloud-amd64
fi
meta=$(ls linux-image-cloud-amd64_*.deb | sort | tail -n 1)
image=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*-cloud-amd64\).*/\1/p' | head -n 1)
if [ -z "$image" ]; then
    echo "cannot find the versioned image package in the Depends of $meta" >&2
    exit 1
fi
download "$image"
deb=$(ls "${image}"_*.deb | sort | tail -n 1)
dpkg -x "$deb" "$dir/root" >&2

vmlinuz=$(find_vmlinuz || true)
if [ -z "$vmlinuz" ]; then
    echo "no vmlinuz found in $deb" >&2
    exit 1
fi
echo "$vmlinuz"
