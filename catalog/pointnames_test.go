package catalog_test

import (
	"context"
	"testing"
	"time"

	"lifeboat/catalog"
)

// TestPointNames counts points per VM name with the newest time, on SQLite
// and PostgreSQL.
func TestPointNames(t *testing.T) {
	eachDB(t, func(t *testing.T, c *catalog.Catalog) {
		ctx := context.Background()
		if ns, err := c.PointNames(ctx); err != nil || len(ns) != 0 {
			t.Fatalf("empty catalog: %+v %v", ns, err)
		}
		at := time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)
		for i, p := range []struct {
			id, name string
			h        int
		}{{"20261125T150000Z-00000001", "web1", 0}, {"20261125T170000Z-00000002", "web1", 2}, {"20261125T160000Z-00000003", "db1", 1}} {
			if err := c.RecordPoint(ctx, catalog.Point{ID: p.id, Name: p.name, Kind: "vm", Time: at.Add(time.Duration(p.h) * time.Hour)}); err != nil {
				t.Fatalf("point %d: %v", i, err)
			}
		}
		ns, err := c.PointNames(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []catalog.PointName{{Name: "db1", Points: 1, Newest: at.Add(time.Hour)}, {Name: "web1", Points: 2, Newest: at.Add(2 * time.Hour)}}
		if len(ns) != len(want) {
			t.Fatalf("got %+v, want %+v", ns, want)
		}
		for i := range want {
			if ns[i].Name != want[i].Name || ns[i].Points != want[i].Points || !ns[i].Newest.Equal(want[i].Newest) {
				t.Errorf("name %d: %+v, want %+v", i, ns[i], want[i])
			}
		}
	})
}
