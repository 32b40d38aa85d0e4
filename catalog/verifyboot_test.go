package catalog_test

import (
	"context"
	"testing"
	"time"

	"lifeboat/catalog"
)

// TestVerifyBootCatalog: a group's verify-boot option survives create,
// read, list and update; verify-boot jobs are a job kind; a point's newest
// verdict shows in GetPoint and ListPoints (and filters on the point's own
// columns still work with it); on SQLite and PostgreSQL.
func TestVerifyBootCatalog(t *testing.T) {
	eachDB(t, func(t *testing.T, c *catalog.Catalog) {
		ctx := context.Background()
		g, err := c.CreateGroup(ctx, catalog.Group{Name: "verified", VerifyBoot: true, Members: []string{"web1"}})
		if err != nil {
			t.Fatal(err)
		}
		plain, err := c.CreateGroup(ctx, catalog.Group{Name: "plain"})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := c.GetGroup(ctx, g.ID); err != nil || !got.VerifyBoot {
			t.Fatalf("group created with verify-boot reads back %+v, %v", got, err)
		}
		if got, err := c.GroupOfVM(ctx, "web1"); err != nil || !got.VerifyBoot {
			t.Fatalf("group of web1: %+v, %v", got, err)
		}
		gs, err := c.ListGroups(ctx)
		if err != nil || len(gs) != 2 || gs[0].Name != "plain" || gs[0].VerifyBoot || !gs[1].VerifyBoot {
			t.Fatalf("list groups: %+v, %v", gs, err)
		}
		plain.VerifyBoot = true
		if err := c.UpdateGroup(ctx, plain); err != nil {
			t.Fatal(err)
		}
		if got, _ := c.GroupByName(ctx, "plain"); !got.VerifyBoot {
			t.Errorf("update did not turn verify-boot on: %+v", got)
		}

		j, err := c.CreateJob(ctx, catalog.Job{Kind: catalog.KindVerifyBoot, VMName: "web1", GroupID: g.ID, Params: []byte(`{"point":"x"}`)})
		if err != nil || j.Kind != "verify-boot" || j.State != catalog.JobQueued {
			t.Fatalf("verify-boot job: %+v, %v", j, err)
		}

		at := time.Date(2026, 11, 25, 15, 0, 0, 0, time.UTC)
		a := catalog.Point{ID: "20261125T150000Z-0000000a", Name: "web1", Kind: "vm", Time: at, Host: "node1"}
		b := catalog.Point{ID: "20261125T160000Z-0000000b", Name: "web1", Kind: "vm", Time: at.Add(time.Hour), Host: "node1"}
		for _, p := range []catalog.Point{a, b} {
			if err := c.RecordPoint(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.RecordBootVerdict(ctx, catalog.BootVerdict{PointID: b.ID, Verdict: "booted-no-agent", Host: "node1", CheckedAt: at.Add(2 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if p, err := c.GetPoint(ctx, b.ID); err != nil || p.BootVerdict != "booted-no-agent" {
			t.Errorf("GetPoint of a verified point: %q, %v", p.BootVerdict, err)
		}
		if p, err := c.GetPoint(ctx, a.ID); err != nil || p.BootVerdict != "" {
			t.Errorf("GetPoint of an unverified point: %q, %v", p.BootVerdict, err)
		}
		ps, err := c.ListPoints(ctx, catalog.PointFilter{Name: "web1", Since: at, Files: true})
		if err != nil || len(ps) != 2 || ps[0].ID != b.ID || ps[0].BootVerdict != "booted-no-agent" || ps[1].BootVerdict != "" {
			t.Fatalf("list points: %+v, %v", ps, err)
		}
	})
}
