package catalog_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"lifeboat/catalog"
)

// TestBootVerdicts: a point's newest verdict is kept (an older one arriving
// late does not replace it), a verdict of an unlisted point is refused, and
// the verdict goes with its point; on SQLite and PostgreSQL.
func TestBootVerdicts(t *testing.T) {
	eachDB(t, func(t *testing.T, c *catalog.Catalog) {
		ctx := context.Background()
		at := time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)
		pt := catalog.Point{ID: "20261125T150000Z-0123abcd", Name: "web1", Kind: "vm", Time: at}
		if err := c.RecordPoint(ctx, pt); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetBootVerdict(ctx, pt.ID); !errors.Is(err, catalog.ErrNotFound) {
			t.Fatalf("verdict of an unverified point: %v", err)
		}
		ok := catalog.BootVerdict{PointID: pt.ID, Verdict: "booted-agent-ok", Host: "node1", CheckedAt: at.Add(2 * time.Hour), BootSeconds: 4.2, Seconds: 7.5, Key: "verify/" + pt.ID + "/x"}
		old := catalog.BootVerdict{PointID: pt.ID, Verdict: "did-not-boot", Reason: "kernel panic", CheckedAt: at.Add(time.Hour)}
		for _, v := range []catalog.BootVerdict{ok, old} {
			if err := c.RecordBootVerdict(ctx, v); err != nil {
				t.Fatal(err)
			}
		}
		got, err := c.GetBootVerdict(ctx, pt.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got != ok {
			t.Errorf("got %+v\nwant %+v", got, ok)
		}
		newer := old
		newer.CheckedAt = at.Add(3 * time.Hour)
		if err := c.RecordBootVerdict(ctx, newer); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.GetBootVerdict(ctx, pt.ID); got.Verdict != "did-not-boot" || !got.CheckedAt.Equal(newer.CheckedAt) {
			t.Errorf("a newer verdict did not replace the old one: %+v", got)
		}
		if err := c.RecordBootVerdict(ctx, catalog.BootVerdict{PointID: "20261125T150000Z-ffffffff", Verdict: "booted-agent-ok", CheckedAt: at}); !errors.Is(err, catalog.ErrNotFound) {
			t.Errorf("verdict of an unknown point: %v", err)
		}
		if err := c.RecordBootVerdict(ctx, catalog.BootVerdict{PointID: pt.ID}); !errors.Is(err, catalog.ErrInvalid) {
			t.Errorf("empty verdict: %v", err)
		}
		if err := c.DeletePoint(ctx, pt.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetBootVerdict(ctx, pt.ID); !errors.Is(err, catalog.ErrNotFound) {
			t.Errorf("verdict of a deleted point: %v", err)
		}
	})
}
