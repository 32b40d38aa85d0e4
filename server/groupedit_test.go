package server_test

import (
	"path/filepath"
	"slices"
	"testing"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/server"
)

// A group's schedule, retention, options and members change through
// PATCH; only what is given changes, a bad value changes nothing, and a
// member removed leaves the group.
func TestUpdateGroup(t *testing.T) {
	e := start(t, server.Config{ManualSchedule: true})
	root := t.TempDir()
	randomFile(t, filepath.Join(root, "vms", "a", "disk.raw"), 1<<20)
	randomFile(t, filepath.Join(root, "vms", "b", "disk.raw"), 1<<20)
	e.agentIn("", "n1", filepath.Join(root, "vms"))
	waitFor(t, "inventory", func() bool {
		var vms []catalog.VMStatus
		e.do("GET", api.Prefix+"/vms", nil, &vms)
		return len(vms) == 2
	})
	if err := e.do("POST", api.Prefix+"/groups", api.Group{Name: "g", Incremental: "1h", RetentionCount: 3, Members: []string{"a"}}, nil); err != nil {
		t.Fatal(err)
	}
	ptr := func(s string) *string { return &s }
	n := func(i int) *int { return &i }
	yes, no := true, false
	for _, c := range []struct {
		name   string
		u      api.GroupUpdate
		status int
		check  func(g api.Group) bool
	}{
		{"schedule", api.GroupUpdate{Incremental: ptr("30m"), FullTimes: &[]string{"02:00"}}, 0,
			func(g api.Group) bool {
				return g.Incremental == "30m0s" && slices.Equal(g.FullTimes, []string{"02:00"}) && g.RetentionCount == 3
			}},
		{"retention and options", api.GroupUpdate{RetentionDays: n(14), OfflineFallback: &no, VerifyBoot: &yes}, 0,
			func(g api.Group) bool {
				return g.RetentionDays == 14 && !*g.OfflineFallback && g.VerifyBoot && g.Incremental == "30m0s"
			}},
		{"members replaced", api.GroupUpdate{Members: &[]string{"b"}}, 0,
			func(g api.Group) bool { return slices.Equal(g.Members, []string{"b"}) }},
		{"bad incremental", api.GroupUpdate{Incremental: ptr("5s")}, 400, nil},
		{"not a duration", api.GroupUpdate{Incremental: ptr("often")}, 400, nil},
		{"unknown member", api.GroupUpdate{Members: &[]string{"/nowhere/x"}}, 422, nil},
	} {
		var g api.Group
		err := e.do("PATCH", api.Prefix+"/groups/g", c.u, &g)
		if got := api.StatusOf(err); c.status != 0 && got != c.status {
			t.Errorf("%s: status %d (%v), want %d", c.name, got, err, c.status)
			continue
		}
		if c.status == 0 && (err != nil || !c.check(g)) {
			t.Errorf("%s: %+v %v", c.name, g, err)
		}
	}
	// The refusals changed nothing.
	var g api.Group
	if err := e.do("GET", api.Prefix+"/groups/g", nil, &g); err != nil || g.Incremental != "30m0s" || !slices.Equal(g.Members, []string{"b"}) {
		t.Fatalf("after refused updates: %+v %v", g, err)
	}
	if err := e.do("DELETE", api.Prefix+"/groups/g/members/b", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.do("DELETE", api.Prefix+"/groups/g/members/b", nil, nil); api.StatusOf(err) != 404 {
		t.Errorf("removing a non-member: %v", err)
	}
	if err := e.do("GET", api.Prefix+"/groups/g", nil, &g); err != nil || len(g.Members) != 0 {
		t.Fatalf("after removing b: %+v %v", g, err)
	}
}
