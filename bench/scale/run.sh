#!/usr/bin/env bash
# One lifeboat server, 50 agents with 20 VMs each (1,000 VMs), one
# protection group: times the scheduling rounds, the catalog-backed API
# calls and the server's CPU and memory.
#
#   bash bench/scale/run.sh              # SQLite catalog (the default)
#   SCALE_DB=postgres bash bench/scale/run.sh   # $LIFEBOAT_PG_DSN, else scripts/postgres.sh
#                                               # (started, and stopped again if it was not running)
#
# Builds lifeboat and bench/scale, starts `lifeboat server` (a real
# process, fresh data folder) and runs bench/scale against it: the agents
# are the real agent package in the bench process (enrollment tokens,
# mutual TLS, heartbeats, inventory, long-poll jobs, tiny real backups).
# See bench/scale/main.go for what each round measures.
# It prints a markdown report; SCALE_RECORD=1 appends it, dated, to
# docs/PERFORMANCE.md.
#
# Environment: SCALE_DIR (/tmp/lifeboat-scale), SCALE_AGENTS (50),
# SCALE_VMS (20 per agent), SCALE_ARGS (more bench/scale flags, e.g. -run-round), SCALE_DB (sqlite | postgres),
# SCALE_CLOCK_SPEED (5: the 15 min incremental comes due 3 min after the
# first round, after its drain), SCALE_PORT (18443), SCALE_RECORD (0), SCALE_NOTE.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIR=${SCALE_DIR:-/tmp/lifeboat-scale}
AGENTS=${SCALE_AGENTS:-50}
VMS=${SCALE_VMS:-20}
DB=${SCALE_DB:-sqlite}
SPEED=${SCALE_CLOCK_SPEED:-5}
PORT=${SCALE_PORT:-18443}
RECORD=${SCALE_RECORD:-0}
DOC=$ROOT/docs/PERFORMANCE.md

log() { printf '[scale %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
command -v go >/dev/null || die "go is not installed"
command -v jq >/dev/null || die "jq is needed for the report"

mkdir -p "$DIR/bin"
log "building lifeboat and bench/scale"
go build -o "$DIR/bin/lifeboat" ./cmd/lifeboat
go build -o "$DIR/bin/scale" ./bench/scale

rm -rf "$DIR/data" "$DIR/agents"
dbflag=()
schema=""
pgstop=0
if [ "$DB" = postgres ]; then
	[ -n "${LIFEBOAT_PG_DSN:-}" ] || bash scripts/postgres.sh status || pgstop=1
	dsn=${LIFEBOAT_PG_DSN:-$(bash scripts/postgres.sh start)}
	schema=lbscale_$(date +%s)
	psql "$dsn" -qc "CREATE SCHEMA $schema" >/dev/null || die "cannot create schema $schema"
	case $dsn in *\?*) dsn="$dsn&search_path=$schema" ;; *) dsn="$dsn?search_path=$schema" ;; esac
	dbflag=(--db "$dsn")
fi

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u +%FT%TZ)
log "starting the server ($DB catalog, clock x$SPEED) on 127.0.0.1:$PORT"
"$DIR/bin/lifeboat" server --data "$DIR/data" --listen "127.0.0.1:$PORT" --clock-speed "$SPEED" \
	"${dbflag[@]}" --log-level warn >"$DIR/server.out" 2>"$DIR/server.log" &
spid=$!
cleanup() {
	kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null || true
	if [ -n "$schema" ]; then psql "${LIFEBOAT_PG_DSN:-$(bash scripts/postgres.sh dsn)}" -qc "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1 || true; fi
	if [ "$pgstop" = 1 ]; then bash scripts/postgres.sh stop || true; fi
}
trap cleanup EXIT
for _ in $(seq 100); do
	[ -s "$DIR/data/admin-token" ] && [ -s "$DIR/data/tls/ca.pem" ] && \
		curl -sk "https://127.0.0.1:$PORT/api/v1/health" >/dev/null 2>&1 && break
	kill -0 "$spid" 2>/dev/null || { cat "$DIR/server.log" >&2; die "the server exited"; }
	sleep 0.2
done

"$DIR/bin/scale" ${SCALE_ARGS:-} --server "https://127.0.0.1:$PORT" --data "$DIR/data" --pid "$spid" --work "$DIR/agents" \
	--agents "$AGENTS" --vms "$VMS" --out "$DIR/results.json"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

r=$DIR/results.json
cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -q . && echo " + uncommitted changes" || true)
report=$(
	echo "## $(date -u +%F) — scale: $AGENTS agents × $VMS VMs, $DB catalog (lifeboat $rev$dirty)"
	echo
	echo "- Started $started; $(nproc) cores ($cpu_model), $mem RAM; $(go env GOVERSION); server clock x$SPEED, tick 10 s (default), per-host limit 1 (default)."
	echo "- Load average (1, 5, 15 min) before: $load_before; after: $load_after. The $AGENTS agents run in the bench process on the same 2 cores as the server."
	echo "- Enrollment of all agents $(jq -r '.EnrollSeconds|.*100|round/100' "$r") s; all $(jq .VMs "$r") VMs in the catalog $(jq -r '.InventorySeconds|.*100|round/100' "$r") s after the first enrollment."
	[ -n "${SCALE_NOTE:-}" ] && echo "- $SCALE_NOTE"
	echo
	echo "| round | jobs | round: request → all jobs in the catalog | request latency | request → insert starts | insert (≤) | server CPU in round | drain (agents run the jobs) | drain CPU | server peak RSS after |"
	echo "|---|---|---|---|---|---|---|---|---|---|"
	jq -r 'def ms: (.*1000|round|tostring) + " ms"; .Rounds[] | "| \(.Name) | \(.Jobs) | \(if .Seconds > 0 then (.Seconds|ms) else "— (clock)" end) | \(if .HTTPSeconds > 0 then (.HTTPSeconds|ms) else "—" end) | \(if .Seconds > 0 then (.ToInsertSeconds|ms) else "—" end) | \(.InsertSeconds|ms) | \(if .Seconds > 0 then (.CPUSeconds|ms) else "—" end) | \(if .DrainSeconds > 0 then "\(.DrainSeconds*10|round/10) s | \(.DrainCPU*10|round/10) s" else "not drained | —" end) | \(.PeakRSSMiB|round) MiB |"' "$r"
	echo
	echo "| catalog query (GET, over TLS) | rows | median | p95 | max |"
	echo "|---|---|---|---|---|"
	jq -r '.Queries[] | "| `\(.Path)` | \(.Rows) | \(.MedianMs*10|round/10) ms | \(.P95Ms*10|round/10) ms | \(.MaxMs*10|round/10) ms |"' "$r"
	echo
	echo "- Server over the whole run: CPU $(jq -r '.ServerCPUSeconds*10|round/10' "$r") s; RSS at the end $(jq -r '.ServerRSSMiB|round' "$r") MiB, peak (VmHWM) $(jq -r '.ServerPeakRSSMiB|round' "$r") MiB ($(jq -r '.PeakRSSBeforeRounds|round' "$r") MiB before the first round). Points listed: $(jq .Points "$r"); failed jobs: $(jq .Failed "$r")."
)
echo "$report"
if [ "$RECORD" = 1 ]; then
	printf '\n%s\n' "$report" >>"$DOC"
	log "appended to $DOC"
fi
