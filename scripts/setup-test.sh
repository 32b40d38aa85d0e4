#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Debian packages for the
# tools tests build and cross-check images with. Run as root on Debian 12.
set -euo pipefail
pkgs=(qemu-utils ntfs-3g e2fsprogs fdisk libvhdi-utils python3-libvhdi restic mtools xfsprogs dosfstools bzip2 ca-certificates time chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup-test: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "setup-test: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
