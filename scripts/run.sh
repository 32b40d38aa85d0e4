#!/usr/bin/env bash
# Lifeboat's main job on embedded defaults: build the binary, make a small
# qcow2 VM disk with a snapshot overlay, back it up into a local repository,
# back it up again after a change (an incremental), verify the repository
# and restore the newest point, flattened, as VHDX. Idempotent: it works in
# ./demo (or $LIFEBOAT_DEMO) and starts over each run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-img >/dev/null || bash scripts/setup-test.sh
demo=${LIFEBOAT_DEMO:-$PWD/demo}
rm -rf "$demo"; mkdir -p "$demo/vm"
go build -o "$demo/lifeboat" ./cmd/lifeboat
lb="$demo/lifeboat"
export LIFEBOAT_REPO="$demo/repo"
qemu-img create -q -f qcow2 "$demo/vm/base.qcow2" 256M
qemu-io -c "write -P 0x11 0 16M" -c "write -P 0x22 100M 8M" "$demo/vm/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$demo/vm/snap.qcow2"
qemu-io -c "write -P 0x33 4M 1M" "$demo/vm/snap.qcow2" >/dev/null
"$lb" repo init
"$lb" backup --name demo-vm "$demo/vm/snap.qcow2"
qemu-io -c "write -P 0x44 200M 2M" "$demo/vm/snap.qcow2" >/dev/null
"$lb" backup --name demo-vm "$demo/vm/snap.qcow2"
"$lb" points
"$lb" verify
point=$("$lb" points --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
"$lb" restore --point "$point" --to "$demo/restored" --merge-chain --format vhdx
qemu-img compare -F vhdx "$demo/vm/snap.qcow2" "$demo/restored/snap.vhdx"
echo "demo: restored point $point is identical to the source; repository at $LIFEBOAT_REPO"
