package catalog_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/catalog"
	"lifeboat/catalog/catalogtest"
)

func TestSQLite(t *testing.T) {
	catalogtest.Run(t, func(t *testing.T) *catalog.Catalog {
		c, err := catalog.Open(context.Background(), filepath.Join(t.TempDir(), "catalog.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	})
}

func TestPostgres(t *testing.T) {
	dsn := pg.DSN(t)
	catalogtest.Run(t, func(t *testing.T) *catalog.Catalog {
		return openSchema(t, dsn, freshSchema(t, dsn))
	})
}

// Reopening an existing catalog applies no migration and keeps the data.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, open func() *catalog.Catalog) {
		c := open()
		if _, err := c.CreateCluster(ctx, catalog.Cluster{Name: "kept"}); err != nil {
			t.Fatal(err)
		}
		c.Close()
		c = open()
		if n, err := c.Migrate(ctx); err != nil || n != 0 {
			t.Fatalf("migrate on reopen: %d, %v", n, err)
		}
		if _, err := c.ClusterByName(ctx, "kept"); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	t.Run("SQLite", func(t *testing.T) {
		path := "sqlite://" + filepath.Join(t.TempDir(), "c.db")
		check(t, func() *catalog.Catalog {
			c, err := catalog.Open(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			return c
		})
	})
	t.Run("Postgres", func(t *testing.T) {
		dsn := pg.DSN(t)
		schema := freshSchema(t, dsn)
		check(t, func() *catalog.Catalog {
			c, err := catalog.Open(ctx, withSchema(dsn, schema))
			if err != nil {
				t.Fatal(err)
			}
			return c
		})
	})
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, dsn := range []string{"", "sqlite://", "/nonexistent/dir/c.db", "c.db?_pragma=x"} {
		if c, err := catalog.Open(ctx, dsn); err == nil {
			c.Close()
			t.Errorf("Open(%q) succeeded", dsn)
		}
	}
}

// pg is the PostgreSQL server of this test binary.
var pg catalogtest.Postgres

func TestMain(m *testing.M) {
	code := m.Run()
	pg.Stop()
	os.Exit(code)
}

// freshSchema makes an empty schema for one test, dropped after it.
func freshSchema(t *testing.T, dsn string) string {
	t.Helper()
	var b [6]byte
	rand.Read(b[:])
	schema := "lbtest_" + hex.EncodeToString(b[:])
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

func openSchema(t *testing.T, dsn, schema string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(context.Background(), withSchema(dsn, schema))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
