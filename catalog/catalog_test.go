package catalog_test

import (
	"context"
	"os"
	"path/filepath"
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
	catalogtest.Run(t, func(t *testing.T) *catalog.Catalog {
		return openDSN(t, pg.FreshDSN(t))
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
		fresh := pg.FreshDSN(t)
		check(t, func() *catalog.Catalog {
			c, err := catalog.Open(ctx, fresh)
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

func openDSN(t *testing.T, dsn string) *catalog.Catalog {
	t.Helper()
	c, err := catalog.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// eachDB runs test on a fresh catalog of each database: SQLite, then
// PostgreSQL.
func eachDB(t *testing.T, test func(t *testing.T, c *catalog.Catalog)) {
	t.Run("SQLite", func(t *testing.T) { test(t, openDSN(t, filepath.Join(t.TempDir(), "c.db"))) })
	t.Run("Postgres", func(t *testing.T) { test(t, openDSN(t, pg.FreshDSN(t))) })
}
