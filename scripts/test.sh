#!/usr/bin/env bash
# The whole test suite: installs what it needs, then vets, cross-builds for
# Windows (the agent runs on Hyper-V hosts) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test.sh
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt: these files need formatting:"; echo "$unformatted"; exit 1
fi
go vet ./...
GOOS=windows GOARCH=amd64 go build -o /dev/null ./cmd/lifeboat
# Two cores: one test binary at a time keeps I/O-heavy tests from starving.
# The packages that run a Pacemaker cluster go last: its teardown may
# outlast their test binary, and nothing that uses the lab runs after it.
ha='lifeboat/cluster/pacemaker|lifeboat/recovery'
mapfile -t first < <(go list ./... | grep -Ev "^($ha)(/|$)")
mapfile -t last < <(go list ./... | grep -E "^($ha)(/|$)")
go test -p 1 -count=1 -timeout 20m "${first[@]}" "$@"
go test -p 1 -count=1 -timeout 10m "${last[@]}" "$@"
