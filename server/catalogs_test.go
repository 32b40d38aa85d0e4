package server_test

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx" for freshSchema

	"lifeboat/catalog/catalogtest"
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
		dsn := pg.DSN(t)
		return withSchema(dsn, freshSchema(t, dsn))
	}},
}

// eachCatalog runs test once per catalog, as subtests named after it.
func eachCatalog(t *testing.T, test func(t *testing.T, cat catalogKind)) {
	for _, c := range catalogs {
		t.Run(c.name, func(t *testing.T) { test(t, c) })
	}
}

// pg is the PostgreSQL server of this test binary.
var pg catalogtest.Postgres

func TestMain(m *testing.M) {
	code := m.Run()
	pg.Stop()
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
