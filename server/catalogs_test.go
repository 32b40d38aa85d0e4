package server_test

import (
	"os"
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
		return pg.FreshDSN(t)
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
