package server_test

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" for freshSchema

	"lifeboat/internal/testenv"
)

// catalogKind is one catalog the integration tests run on. db returns a
// server.Config.DB naming a fresh, empty catalog for one server ("" is
// SQLite in the server's own data folder).
type catalogKind struct {
	name string
	db   func(t *testing.T) string
}

// catalogs is every catalog the server supports: the same integration
// tests run on each (issue 4, outcome 7).
var catalogs = []catalogKind{
	{"SQLite", func(t *testing.T) string { return "" }},
	{"Postgres", func(t *testing.T) string {
		dsn := postgresDSN(t)
		return withSchema(dsn, freshSchema(t, dsn))
	}},
}

// eachCatalog runs test once per catalog, as subtests named after it.
func eachCatalog(t *testing.T, test func(t *testing.T, cat catalogKind)) {
	for _, c := range catalogs {
		t.Run(c.name, func(t *testing.T) { test(t, c) })
	}
}

var (
	pgOnce sync.Once
	pgDSN  string
	pgErr  string
	pgStop bool
)

// postgresDSN is $LIFEBOAT_PG_DSN, or a private server started with
// scripts/postgres.sh (as root or under CI; skipped otherwise), as in
// catalog/catalog_test.go. A server the tests started is stopped when
// they end.
func postgresDSN(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("LIFEBOAT_PG_DSN"); d != "" {
		return d
	}
	if os.Geteuid() != 0 && os.Getenv("CI") == "" {
		t.Skip("PostgreSQL: set LIFEBOAT_PG_DSN, or run as root to start one with scripts/postgres.sh")
	}
	pgOnce.Do(func() {
		script := filepath.Join(testenv.RepoRoot(t), "scripts", "postgres.sh")
		if exec.Command("bash", script, "status").Run() != nil {
			pgStop = true
		}
		cmd := exec.Command("bash", script, "start")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			pgErr = "scripts/postgres.sh start: " + err.Error() + "\n" + stderr.String()
			return
		}
		f := strings.Fields(strings.TrimSpace(string(out)))
		if len(f) == 0 {
			pgErr = "scripts/postgres.sh start printed no DSN"
			return
		}
		pgDSN = f[len(f)-1]
	})
	if pgErr != "" {
		t.Fatal(pgErr)
	}
	return pgDSN
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pgStop {
		exec.Command("bash", filepath.Join("..", "scripts", "postgres.sh"), "stop").Run()
	}
	os.Exit(code)
}

// freshSchema makes an empty schema for one server, dropped when the test
// ends (after the server, whose cleanup was registered later, closed).
func freshSchema(t *testing.T, dsn string) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	schema := "lbsrv_" + hex.EncodeToString(b[:])
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE SCHEMA ` + schema); err != nil {
		db.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		db.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
		db.Close()
	})
	return schema
}

func withSchema(dsn, schema string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "search_path=" + schema
}
