#!/usr/bin/env bash
# Lifeboat's main job on embedded defaults: a server (SQLite catalog, local
# repository, its own TLS CA and admin token, all in one data folder) and a
# local agent that enrolls with a one-time token and protects the VMs in a
# VM folder: a protection group makes recovery points by itself, a restore
# job brings one back, and the repository is verified. Then the standalone
# data path (no server) backs up a qcow2 chain, restores it flattened as
# VHDX and proves it identical. Idempotent: it works in ./demo (or
# $LIFEBOAT_DEMO), starts over each run, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-img >/dev/null || bash scripts/setup-test.sh
demo=${LIFEBOAT_DEMO:-$PWD/demo}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$demo"; mkdir -p "$demo/vms/web1" "$demo/vms/db1"
go build -o "$demo/lifeboat" ./cmd/lifeboat
lb="$demo/lifeboat"

echo "== VMs to protect: two folders with qcow2 disks"
qemu-img create -q -f qcow2 "$demo/vms/web1/disk.qcow2" 256M
qemu-io -c "write -P 0x11 0 16M" -c "write -P 0x22 100M 8M" "$demo/vms/web1/disk.qcow2" >/dev/null
echo '<domain type="kvm"><name>web1</name></domain>' > "$demo/vms/web1/web1.xml"
qemu-img create -q -f qcow2 "$demo/vms/db1/disk.qcow2" 128M
qemu-io -c "write -P 0x33 4M 4M" "$demo/vms/db1/disk.qcow2" >/dev/null

echo "== server on embedded defaults (data folder $demo/data)"
export LIFEBOAT_DATA="$demo/data"
"$lb" server --json --listen 127.0.0.1:0 --tick 200ms --clock-speed 600 > "$demo/server.json" 2> "$demo/server.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$demo/server.json" ] && break; sleep 0.1; done
url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$demo/server.json")
fp=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_fingerprint"])' "$demo/server.json")
echo "   listening at $url, CA $fp"

echo "== a local agent enrolls with a one-time token"
token=$("$lb" token create --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$lb" agent --server "$url" --token "$token" --ca-fingerprint "$fp" --state "$demo/agent" --name local \
  --vm-dir "$demo/vms" --interval 500ms --wait 2s --restore-root "$demo" > "$demo/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$lb" vm list --json | grep -q web1 && break; sleep 0.2; done
"$lb" agent list

echo "== a protection group: points every 15 minutes (the demo clock runs 600x)"
"$lb" group create demo --incremental 15m --member web1 --member db1 >/dev/null
for _ in $(seq 150); do
  n=$("$lb" point list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin) or []))')
  [ "$n" -ge 4 ] && break; sleep 0.2
done
"$lb" point list
"$lb" job list --limit 10

echo "== restore web1's newest point through the agent"
point=$("$lb" point list --name web1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
job=$("$lb" point restore "$point" --node local --to "$demo/restored-web1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 100); do
  state=$("$lb" job show "$job" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("job",d)["state"])')
  [ "$state" = succeeded ] && break
  [ "$state" = failed ] && { "$lb" job show "$job"; exit 1; }
  sleep 0.2
done
qemu-img compare "$demo/vms/web1/disk.qcow2" "$demo/restored-web1/disk.qcow2"
cleanup; pids=()

echo "== the repository verifies"
"$lb" verify --repo "$demo/data/repo"

echo "== the standalone data path: a qcow2 chain backed up twice, restored flattened as VHDX"
export LIFEBOAT_REPO="$demo/repo"
mkdir -p "$demo/chain"
qemu-img create -q -f qcow2 "$demo/chain/base.qcow2" 256M
qemu-io -c "write -P 0x11 0 16M" "$demo/chain/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$demo/chain/snap.qcow2"
qemu-io -c "write -P 0x33 4M 1M" "$demo/chain/snap.qcow2" >/dev/null
"$lb" repo init
"$lb" backup --name chain "$demo/chain/snap.qcow2"
qemu-io -c "write -P 0x44 200M 2M" "$demo/chain/snap.qcow2" >/dev/null
"$lb" backup --name chain "$demo/chain/snap.qcow2"
"$lb" verify
p2=$("$lb" points --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[-1]["id"])')
"$lb" restore --point "$p2" --to "$demo/restored-chain" --merge-chain --format vhdx
qemu-img compare -F vhdx "$demo/chain/snap.qcow2" "$demo/restored-chain/snap.vhdx"
echo "demo: OK (server data in $demo/data, standalone repository in $demo/repo)"
