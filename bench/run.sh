#!/usr/bin/env bash
# Lifeboat against restic, side by side in one run, on the same image.
#
#   bash bench/run.sh                 # from anywhere; needs root for apt-get
#
# Builds lifeboat and bench/mkimage, installs restic and GNU time with
# apt-get when missing, builds the 4 GiB test image (cached under
# $BENCH_DIR/img, rebuilt when mkimage changes), then for each of BENCH_RUNS
# runs (hot page cache for backups; restores start from a cold cache):
#   full backup     lifeboat (BLAKE3 repo), lifeboat (SHA-256 repo), restic
#   restore         lifeboat restore of the full point, restic restore latest,
#                   and cp --sparse=always of the raw image (the physical bound)
#   incremental     after BENCH_WRITES scattered 1 MiB random writes:
#                   lifeboat --changed MAP, lifeboat without a map (reads
#                   everything, stores new chunks), restic backup again
#   2 TiB sparse    lifeboat backup and restore of a 2 TiB sparse raw image
#                   with a few MiB of data
# Times are wall clock of the whole process; memory is the peak RSS from
# /usr/bin/time -v. The first run checks correctness: restored images equal
# their source byte for byte (cmp), and lifeboat verify passes.
# It prints a markdown report and appends it, dated, to docs/PERFORMANCE.md
# (BENCH_RECORD=0 to only print).
#
# Environment: BENCH_DIR (/tmp/lifeboat-bench), BENCH_RUNS (3),
# BENCH_WRITES (205 = 5% of 4 GiB), BENCH_SPARSE (1; 0 skips the 2 TiB
# test), BENCH_RECORD (1), BENCH_NOTE (free text added to the report).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR=${BENCH_DIR:-/tmp/lifeboat-bench}
RUNS=${BENCH_RUNS:-3}
WRITES=${BENCH_WRITES:-205}
SPARSE=${BENCH_SPARSE:-1}
RECORD=${BENCH_RECORD:-1}
DOC=$ROOT/docs/PERFORMANCE.md

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# --- tools -------------------------------------------------------------------
need_apt=()
command -v restic >/dev/null || need_apt+=(restic)
[ -x /usr/bin/time ] || need_apt+=(time)
command -v cmp >/dev/null || need_apt+=(diffutils)
if [ ${#need_apt[@]} -gt 0 ]; then
	log "installing ${need_apt[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y "${need_apt[@]}" >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y "${need_apt[@]}" >/dev/null; }
fi
command -v go >/dev/null || die "go is not installed"

mkdir -p "$BENCH_DIR"/{bin,img,src,log}
BIN=$BENCH_DIR/bin
log "building lifeboat and mkimage"
go build -o "$BIN/lifeboat" ./cmd/lifeboat
go build -o "$BIN/mkimage" ./bench/mkimage
LB=$BIN/lifeboat
MK=$BIN/mkimage

RESTIC_VERSION=$(restic version | awk '{print $2}')
restic_backup_flags=()
restic backup --help 2>&1 | grep -q -- '--no-scan' && restic_backup_flags+=(--no-scan)
restic_restore_flags=()
restic restore --help 2>&1 | grep -q -- '--sparse' && restic_restore_flags+=(--sparse)
export RESTIC_PASSWORD=lifeboat-bench
export RESTIC_CACHE_DIR=$BENCH_DIR/restic-cache

# --- images ------------------------------------------------------------------
BASE=$BENCH_DIR/img/base.img
stamp=$(cat bench/mkimage/main.go | sha256sum | cut -c1-16)
if [ ! -f "$BASE" ] || [ "$(cat "$BASE.stamp" 2>/dev/null)" != "$stamp" ]; then
	log "building the 4 GiB test image"
	rm -f "$BASE.stamp"
	"$MK" image "$BASE"
	echo "$stamp" >"$BASE.stamp"
fi
SRC=$BENCH_DIR/src/disk.img   # what the tools back up: base, then base + writes
CHANGES=$BENCH_DIR/img/changes.json
BIG=$BENCH_DIR/img/disk2t.img
if [ "$SPARSE" = 1 ]; then
	"$MK" sparse -size 2T "$BIG" >"$BIG.ranges"
fi

# --- measuring -----------------------------------------------------------------
RES=$BENCH_DIR/results.txt   # lines: label run wall_ms rss_kib cpu_ms
: >"$RES"
# measure LABEL CMD...: runs CMD under /usr/bin/time -v, records wall and RSS.
measure() {
	local label=$1; shift
	local out=$BENCH_DIR/log/$label.$run
	local t0 t1
	t0=$(date +%s%N)
	if ! /usr/bin/time -v -o "$out.time" "$@" >"$out.out" 2>"$out.err"; then
		cat "$out.out" "$out.err" >&2
		die "$label (run $run): $*"
	fi
	t1=$(date +%s%N)
	local rss cpu
	rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out.time")
	cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {printf "%d", s*1000}' "$out.time")
	echo "$label $run $(( (t1 - t0) / 1000000 )) $rss $cpu" >>"$RES"
	log "$label: $(awk -v ms=$(( (t1 - t0) / 1000000 )) -v c=$cpu 'BEGIN{printf "%.2f s wall, %.2f s CPU", ms/1000, c/1000}'), $((rss / 1024)) MiB"
}
# cold: restores are measured as they happen in practice, long after the
# backup: nothing of the repository (or, for cp, of the source) in the
# page cache, and no dirty data of earlier steps to write out. Without
# root the caches stay and only the dirty data is written.
cold() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
record() { echo "$1 $run $2 0 0" >>"$RES"; } # record LABEL VALUE (a size)
size_of() { du -sb "$1" | cut -f1; }
point_of() { sed -n 's/.*"point":"\([^"]*\)".*/\1/p' "$BENCH_DIR/log/$1.$run.out"; }

LOAD_BEFORE=$(uptime | sed 's/.*load average: //')
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
log "load before: $LOAD_BEFORE"
# Sample the 1-minute load every 5 s while the runs go on.
LOADS=$BENCH_DIR/loadavg.txt
: >"$LOADS"
( while :; do cut -d' ' -f1 /proc/loadavg >>"$LOADS"; sleep 5; done ) &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

for run in $(seq 1 "$RUNS"); do
	log "=== run $run of $RUNS"
	W=$BENCH_DIR/run
	rm -rf "$W" "$RESTIC_CACHE_DIR"
	mkdir -p "$W"
	rm -f "$SRC"
	cp --sparse=always "$BASE" "$SRC"
	sync -f "$SRC" # set-up: not for the first backup's sync to write out
	cat "$SRC" >/dev/null # hot cache

	# Full backups.
	"$LB" repo init --repo "$W/lb" >/dev/null
	"$LB" repo init --repo "$W/lbsha" --hash sha256 >/dev/null
	restic init --repo "$W/restic" >/dev/null 2>&1
	measure lb_full "$LB" backup --repo "$W/lb" --name disk --json "$SRC"
	measure lbsha_full "$LB" backup --repo "$W/lbsha" --name disk --json "$SRC"
	measure restic_full restic --repo "$W/restic" backup "${restic_backup_flags[@]}" -q "$SRC"
	record lb_repo "$(size_of "$W/lb")"
	record lbsha_repo "$(size_of "$W/lbsha")"
	record restic_repo "$(size_of "$W/restic")"
	full_point=$(point_of lb_full)

	# Restores of the full point, each from a cold cache (see cold).
	cold
	measure lb_restore "$LB" restore --repo "$W/lb" --point "$full_point" --to "$W/out-lb"
	cold
	measure restic_restore restic --repo "$W/restic" restore latest --target "$W/out-restic" "${restic_restore_flags[@]}"
	# The physical bound: a plain sparse copy of the raw image (no
	# repository, no decompression, no hashing), with and without the
	# fsync that lifeboat's restore does before it reports success.
	mkdir -p "$W/out-cp"
	cold
	measure cp_restore cp --sparse=always "$SRC" "$W/out-cp/disk.img"
	rm -f "$W/out-cp/disk.img"
	cold
	measure cp_sync_restore sh -c 'cp --sparse=always "$1" "$2" && sync -f "$2"' cp "$SRC" "$W/out-cp/disk.img"
	rm -rf "$W/out-cp"
	cat "$SRC" >/dev/null # backups are measured with a hot cache again
	if [ "$run" = 1 ]; then
		log "checking restored images against the source"
		cmp "$BASE" "$W/out-lb/disk.img" || die "lifeboat restore differs from the source"
		cmp "$BASE" "$W/out-restic$SRC" || die "restic restore differs from the source"
		record lb_restore_alloc "$(du -B1 "$W/out-lb/disk.img" | cut -f1)"
		record restic_restore_alloc "$(du -B1 "$W/out-restic$SRC" | cut -f1)"
		measure lb_verify "$LB" verify --repo "$W/lb"
	fi
	rm -rf "$W/out-lb" "$W/out-restic"

	# Incrementals after scattered writes. lb2 is the full repo's copy, for
	# the backup without a change map.
	cp -a "$W/lb" "$W/lb2"
	# The copy is set-up, not backup work: write it out now, or the next
	# backup's sync (syncfs of this file system) would pay for it.
	sync -f "$W/lb2"
	"$MK" change -writes "$WRITES" "$SRC" "$CHANGES"
	measure lb_incr_map "$LB" backup --repo "$W/lb" --name disk --json --changed "$CHANGES" "$SRC"
	measure lb_incr_nomap "$LB" backup --repo "$W/lb2" --name disk --json "$SRC"
	measure restic_incr restic --repo "$W/restic" backup "${restic_backup_flags[@]}" -q "$SRC"
	record lb_growth_map $(( $(size_of "$W/lb") - $(awk -v r=$run '$1=="lb_repo" && $2==r {print $3}' "$RES") ))
	record lb_growth_nomap $(( $(size_of "$W/lb2") - $(awk -v r=$run '$1=="lb_repo" && $2==r {print $3}' "$RES") ))
	record restic_growth $(( $(size_of "$W/restic") - $(awk -v r=$run '$1=="restic_repo" && $2==r {print $3}' "$RES") ))
	if [ "$run" = 1 ]; then
		log "checking restored incrementals against the changed source"
		for k in map nomap; do
			repo=$W/lb; [ $k = nomap ] && repo=$W/lb2
			p=$(point_of lb_incr_$k)
			"$LB" restore --repo "$repo" --point "$p" --to "$W/out-$k" >/dev/null
			cmp "$SRC" "$W/out-$k/disk.img" || die "lifeboat incremental ($k) restore differs from the source"
			rm -rf "$W/out-$k"
		done
	fi
	rm -rf "$W"

	# 2 TiB sparse image.
	if [ "$SPARSE" = 1 ]; then
		mkdir -p "$W"
		"$LB" repo init --repo "$W/big" >/dev/null
		measure lb_big_backup "$LB" backup --repo "$W/big" --name big --json "$BIG"
		measure lb_big_restore "$LB" restore --repo "$W/big" --point "$(point_of lb_big_backup)" --to "$W/out"
		[ "$(stat -c %s "$W/out/disk2t.img")" = "$(stat -c %s "$BIG")" ] || die "2 TiB restore has the wrong size"
		while read -r off len; do
			cmp -i "$off:$off" -n "$len" "$BIG" "$W/out/disk2t.img" || die "2 TiB restore differs at $off+$len"
		done <"$BIG.ranges"
		alloc=$(du -B1 "$W/out/disk2t.img" | cut -f1)
		[ "$alloc" -lt $((64 << 20)) ] || die "2 TiB restore is not sparse ($alloc bytes allocated)"
		record lb_big_repo "$(size_of "$W/big")"
		rm -rf "$W"
	fi
done
rm -f "$SRC"
LOAD_AFTER=$(uptime | sed 's/.*load average: //')
kill $SAMPLER 2>/dev/null || true
LOAD_DURING=$(sort -n "$LOADS" | awk '{v[NR]=$1; s+=$1} END {if (NR) printf "min %.1f, median %.1f, max %.1f", v[1], v[int((NR+1)/2)], v[NR]}')
log "load after: $LOAD_AFTER; 1-min load during the runs: $LOAD_DURING"

# --- report --------------------------------------------------------------------
# med LABEL: median of column 3 over the runs.
med() {
	awk -v l="$1" '$1==l {print $3}' "$RES" | sort -n | awk '{v[NR]=$1} END {if (NR==0) {print "NA"; exit} if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
medrss() {
	awk -v l="$1" '$1==l {print $4}' "$RES" | sort -n | awk '{v[NR]=$1} END {if (NR==0) {print "NA"; exit} if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
medcpu() {
	awk -v l="$1" '$1==l {print $5}' "$RES" | sort -n | awk '{v[NR]=$1} END {if (NR==0) {print "NA"; exit} if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}
# tm LABEL: "wall s (CPU s)"
tm() { local w; w=$(med "$1"); [ "$w" = NA ] && { echo "–"; return; }; echo "$(sec "$w") (CPU $(sec "$(medcpu "$1")"))"; }
maxrss() { awk -v l="$1" '$1==l && $4>m {m=$4} END {print m+0}' "$RES"; }
samples() { awk -v l="$1" '$1==l {printf "%s%.2f", (n++ ? ", " : ""), $3/1000}' "$RES"; }
sec() { awk -v v="$1" 'BEGIN{ if (v=="NA") print "–"; else printf "%.2f s", v/1000}'; }
mb() { awk -v v="$1" 'BEGIN{ if (v=="NA") print "–"; else printf "%.0f MB", v/1e6}'; }
mib() { awk -v v="$1" 'BEGIN{ if (v=="NA"||v==0) print "–"; else printf "%.0f MiB", v/1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="NA"||b=="NA"||b==0) print "–"; else printf "%.2f", a/b}'; }
pass() { awk -v c="$1" 'BEGIN{print (c ? "**yes**" : "**no**")}'; }

lb_full=$(med lb_full); lbsha_full=$(med lbsha_full); restic_full=$(med restic_full)
lb_repo=$(med lb_repo); lbsha_repo=$(med lbsha_repo); restic_repo=$(med restic_repo)
lb_restore=$(med lb_restore); restic_restore=$(med restic_restore); cp_restore=$(med cp_restore); cp_sync_restore=$(med cp_sync_restore)
lb_incr_map=$(med lb_incr_map); lb_incr_nomap=$(med lb_incr_nomap); restic_incr=$(med restic_incr)
lb_growth_map=$(med lb_growth_map); lb_growth_nomap=$(med lb_growth_nomap); restic_growth=$(med restic_growth)
peak=0
for l in lb_full lbsha_full lb_restore lb_incr_map lb_incr_nomap lb_big_backup lb_big_restore; do
	m=$(maxrss $l); [ "$m" -gt "$peak" ] && peak=$m
done
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- . ':!bench' ':!docs' 2>/dev/null | grep -q . && echo " + uncommitted changes" || true)

report() {
	cat <<EOF
## $(date -u +%Y-%m-%d) — lifeboat $commit$dirty vs restic $RESTIC_VERSION

- Started $STARTED, $RUNS run(s), medians; $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(df -T "$BENCH_DIR" | awk 'NR==2 {print $2}') under $BENCH_DIR; $(go version | awk '{print $3}').
- Load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER; 1-minute load sampled every 5 s during the runs: $LOAD_DURING (this benchmark alone accounts for about 2).
- Incremental: $WRITES scattered 1 MiB random writes. restic flags: backup ${restic_backup_flags[*]:-(none; no --no-scan in this version)}, restore ${restic_restore_flags[*]:-(none; no --sparse in this version)}.
${BENCH_NOTE:+- $BENCH_NOTE
}
Times are wall clock (median), with the process's user + system CPU time beside them; the ratio column compares wall times or sizes.

| measure | lifeboat | restic | lifeboat / restic |
|---|---|---|---|
| full backup | $(tm lb_full) | $(tm restic_full) | $(ratio $lb_full $restic_full) |
| full backup, SHA-256 repository | $(tm lbsha_full) | | $(ratio $lbsha_full $restic_full) |
| repository after full | $(mb $lb_repo) | $(mb $restic_repo) | $(ratio $lb_repo $restic_repo) |
| repository after full, SHA-256 | $(mb $lbsha_repo) | | |
| incremental, change map | $(tm lb_incr_map) | $(tm restic_incr) | $(ratio $lb_incr_map $restic_incr) |
| incremental, no change map (reads all) | $(tm lb_incr_nomap) | | $(ratio $lb_incr_nomap $restic_incr) |
| repository growth, change map | $(mb $lb_growth_map) | $(mb $restic_growth) | $(ratio $lb_growth_map $restic_growth) |
| repository growth, no change map | $(mb $lb_growth_nomap) | | $(ratio $lb_growth_nomap $restic_growth) |
| restore of the full point | $(tm lb_restore) | $(tm restic_restore) | $(ratio $lb_restore $restic_restore) |
| physical bound: \`cp --sparse=always\` of the raw image (without / with fsync) | $(tm cp_restore) / $(tm cp_sync_restore) | | lifeboat / cp: $(ratio $lb_restore $cp_restore) / $(ratio $lb_restore $cp_sync_restore) |
| peak RSS, full backup | $(mib $(medrss lb_full)) | $(mib $(medrss restic_full)) | |
| peak RSS, incremental (map / no map) | $(mib $(medrss lb_incr_map)) / $(mib $(medrss lb_incr_nomap)) | $(mib $(medrss restic_incr)) | |
| peak RSS, restore | $(mib $(medrss lb_restore)) | $(mib $(medrss restic_restore)) | |
| 2 TiB sparse: backup | $(tm lb_big_backup), $(mib $(medrss lb_big_backup)) | not run | |
| 2 TiB sparse: restore | $(tm lb_big_restore), $(mib $(medrss lb_big_restore)) | not run | |

| target | measured | met |
|---|---|---|
| full backup ≥ 3× faster than restic | $(ratio $restic_full $lb_full)× (CPU time $(ratio "$(medcpu restic_full)" "$(medcpu lb_full)")×) | $(pass "$(awk -v a=$restic_full -v b=$lb_full 'BEGIN{print (a >= 3*b)}')") |
| repository after full ≤ restic's | $(ratio $lb_repo $restic_repo)× restic's | $(pass "$(awk -v a=$lb_repo -v b=$restic_repo 'BEGIN{print (a <= b)}')") |
| incremental with change map < 10% of our full | $(awk -v a=$lb_incr_map -v b=$lb_full 'BEGIN{printf "%.1f%%", 100*a/b}') (CPU time $(awk -v a="$(medcpu lb_incr_map)" -v b="$(medcpu lb_full)" 'BEGIN{printf "%.1f%%", 100*a/b}')) | $(pass "$(awk -v a=$lb_incr_map -v b=$lb_full 'BEGIN{print (a < 0.1*b)}')") |
| restore ≥ 2× faster than restic | $(ratio $restic_restore $lb_restore)× (CPU time $(ratio "$(medcpu restic_restore)" "$(medcpu lb_restore)")×) | $(pass "$(awk -v a=$restic_restore -v b=$lb_restore 'BEGIN{print (a >= 2*b)}')") |
| restore ≥ 50% of \`cp --sparse=always\`'s speed | $(awk -v a=$cp_restore -v b=$lb_restore 'BEGIN{printf "%.0f%%", 100*a/b}') of cp's speed ($(awk -v a=$cp_sync_restore -v b=$lb_restore 'BEGIN{printf "%.0f%%", 100*a/b}') of cp + fsync) | $(pass "$(awk -v a=$cp_restore -v b=$lb_restore 'BEGIN{print (a >= 0.5*b)}')") |
| peak memory < 256 MiB (every lifeboat run, 2 TiB included) | $(mib $peak) | $(pass "$(awk -v p=$peak 'BEGIN{print (p < 256*1024)}')") |
| repository growth ≤ restic's (DESIGN.md) | $(ratio $lb_growth_map $restic_growth)× restic's | $(pass "$(awk -v a=$lb_growth_map -v b=$restic_growth 'BEGIN{print (a <= b)}')") |

Samples (s): lifeboat full $(samples lb_full); SHA-256 full $(samples lbsha_full); restic full $(samples restic_full); lifeboat incremental map $(samples lb_incr_map), no map $(samples lb_incr_nomap); restic incremental $(samples restic_incr); lifeboat restore $(samples lb_restore); restic restore $(samples restic_restore); cp $(samples cp_restore), cp + fsync $(samples cp_sync_restore)$( [ "$SPARSE" = 1 ] && echo "; 2 TiB backup $(samples lb_big_backup), restore $(samples lb_big_restore)").
Checked in run 1: restored full point = source (cmp) for both tools, restored incrementals (map and no map) = changed source, \`lifeboat verify\` passes ($(sec $(med lb_verify)))$( [ "$SPARSE" = 1 ] && echo "; 2 TiB restore: same size, data ranges equal, sparse"). Restored full image allocation: lifeboat $(mb $(med lb_restore_alloc)), restic $(mb $(med restic_restore_alloc)).

EOF
}
report
if [ "$RECORD" = 1 ]; then
	if [ ! -f "$DOC" ]; then
		cat >"$DOC" <<'EOF'
# Performance

Lifeboat against restic, measured side by side in the same run by
`bash bench/run.sh` (see the script's header for its knobs).

**Method.** The test image is a 4 GiB sparse raw image built
deterministically by `bench/mkimage`: 1 GiB of text-like data (templated log
lines and prose; zstd -1 3.0x), 1 GiB of random bytes and 0.5 GiB of
synthetic binary-like data (code, string and integer tables, padding,
compressed sections; zstd -1 1.9x) as separate regions with holes between
them, the last 1.4 GiB unallocated. The incremental follows scattered 1 MiB
random writes at 1 MiB-aligned offsets inside the data (205 writes = 5% of
the image by default); `lifeboat backup --changed` gets their change map,
and the run without it reads the whole image. Each tool backs up into a
fresh repository; restic (Debian's) uses its defaults (compression auto).
The page cache is hot (source and repositories fit in RAM); times are
whole-process wall clock, medians of the runs; memory is peak RSS from
`/usr/bin/time -v`. The machine has 2 cores, and other jobs may share it:
each section gives the load average before and after.

**Targets.**
- full backup ≥ 3× faster than restic;
- repository after the full backup ≤ restic's;
- incremental with a change map < 10% of our full backup time;
- restore ≥ 2× faster than restic, and ≥ 50% of the speed of
  `cp --sparse=always` of the raw image (the physical bound);
- peak memory < 256 MiB, including a 2 TiB sparse image.

EOF
	fi
	report >>"$DOC"
	log "appended to $DOC"
fi
