// Package catalogtest is the catalog's one test suite. Each database runs
// it through Run with a function that opens a fresh, empty catalog.
package catalogtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"lifeboat/catalog"
	"lifeboat/repo"
)

// Open opens a fresh, empty, migrated catalog; it closes it on cleanup.
type Open func(t *testing.T) *catalog.Catalog

// Run runs every test against catalogs made by open.
func Run(t *testing.T, open Open) {
	tests := []struct {
		name string
		fn   func(t *testing.T, c *catalog.Catalog)
	}{
		{"Migrations", testMigrations},
		{"Clusters", testClusters},
		{"SharedVolumes", testSharedVolumes},
		{"Nodes", testNodes},
		{"EnrollmentTokens", testTokens},
		{"TokenConcurrentUse", testTokenRace},
		{"Inventory", testInventory},
		{"Groups", testGroups},
		{"Jobs", testJobs},
		{"ConcurrentClaim", testConcurrentClaim},
		{"ClaimNext", testClaimNext},
		{"ClaimLimits", testClaimLimits},
		{"ClaimPaging", testClaimPaging},
		{"Points", testPoints},
		{"RebuildPoints", testRebuild},
		{"Alerts", testAlerts},
		{"Tapes", testTapes},
		{"Stats", testStats},
		{"Scale", testScale},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

var ctx = context.Background()

// must(f())(t) returns f's value, failing the test on f's error.
func must[T any](v T, err error) func(t *testing.T) T {
	return func(t *testing.T) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func is(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got error %v, want %v", err, target)
	}
}

// clock is a settable clock for expiry and ordering.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (k *clock) Now() time.Time      { k.mu.Lock(); defer k.mu.Unlock(); return k.now }
func (k *clock) Add(d time.Duration) { k.mu.Lock(); k.now = k.now.Add(d); k.mu.Unlock() }

func setClock(c *catalog.Catalog) *clock {
	k := &clock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	c.SetClock(k.Now)
	return k
}

func testMigrations(t *testing.T, c *catalog.Catalog) {
	v := must(c.SchemaVersion(ctx))(t)
	if v < 1 {
		t.Fatalf("schema version %d after open", v)
	}
	for i := 0; i < 2; i++ {
		n := must(c.Migrate(ctx))(t)
		if n != 0 {
			t.Fatalf("migrate again applied %d migrations", n)
		}
	}
	if v2 := must(c.SchemaVersion(ctx))(t); v2 != v {
		t.Fatalf("schema version %d → %d", v, v2)
	}
}

func testClusters(t *testing.T, c *catalog.Catalog) {
	cl := must(c.CreateCluster(ctx, catalog.Cluster{Name: "prod", HAManager: "pacemaker"}))(t)
	if cl.ID == 0 || cl.Created.IsZero() {
		t.Fatalf("created %+v", cl)
	}
	_, err := c.CreateCluster(ctx, catalog.Cluster{Name: "prod"})
	is(t, err, catalog.ErrConflict)
	_, err = c.CreateCluster(ctx, catalog.Cluster{})
	is(t, err, catalog.ErrInvalid)
	must(c.CreateCluster(ctx, catalog.Cluster{Name: "lab"}))(t)

	got := must(c.GetCluster(ctx, cl.ID))(t)
	if got.Name != "prod" || got.HAManager != "pacemaker" || !got.Created.Equal(cl.Created) {
		t.Fatalf("got %+v, want %+v", got, cl)
	}
	got = must(c.ClusterByName(ctx, "prod"))(t)
	if got.ID != cl.ID {
		t.Fatalf("by name: %+v", got)
	}
	list := must(c.ListClusters(ctx))(t)
	if len(list) != 2 || list[0].Name != "lab" || list[1].Name != "prod" {
		t.Fatalf("list %+v", list)
	}
	cl.HAManager = ""
	ok(t, c.UpdateCluster(ctx, cl))
	if got := must(c.GetCluster(ctx, cl.ID))(t); got.HAManager != "" {
		t.Fatalf("update: %+v", got)
	}
	is(t, c.UpdateCluster(ctx, catalog.Cluster{ID: 999, Name: "x"}), catalog.ErrNotFound)

	// A cluster with nodes cannot go; without, it can.
	n := must(c.AddNode(ctx, catalog.Node{Name: "n1", ClusterID: cl.ID}))(t)
	is(t, c.DeleteCluster(ctx, cl.ID), catalog.ErrConflict)
	ok(t, c.SetNodeCluster(ctx, n.ID, 0))
	ok(t, c.DeleteCluster(ctx, cl.ID))
	_, err = c.GetCluster(ctx, cl.ID)
	is(t, err, catalog.ErrNotFound)
	is(t, c.DeleteCluster(ctx, cl.ID), catalog.ErrNotFound)
}

func testSharedVolumes(t *testing.T, c *catalog.Catalog) {
	cl := must(c.CreateCluster(ctx, catalog.Cluster{Name: "c"}))(t)
	other := must(c.CreateCluster(ctx, catalog.Cluster{Name: "d"}))(t)
	v := must(c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: cl.ID, Path: "/csv/vol1", VolumeID: "uuid-1"}))(t)
	must(c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: cl.ID, Path: "/csv/vol2", VolumeID: "uuid-2"}))(t)
	// The same path in another cluster is another volume.
	must(c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: other.ID, Path: "/csv/vol1", VolumeID: "uuid-9"}))(t)
	_, err := c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: cl.ID, Path: "/csv/vol1", VolumeID: "uuid-3"})
	is(t, err, catalog.ErrConflict)
	_, err = c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: cl.ID, Path: "/csv/vol3", VolumeID: "uuid-2"})
	is(t, err, catalog.ErrConflict)
	_, err = c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: 12345, Path: "/x", VolumeID: "y"})
	is(t, err, catalog.ErrNotFound)
	_, err = c.AddSharedVolume(ctx, catalog.SharedVolume{ClusterID: cl.ID})
	is(t, err, catalog.ErrInvalid)

	list := must(c.ListSharedVolumes(ctx, cl.ID))(t)
	if len(list) != 2 || list[0] != v {
		t.Fatalf("list %+v", list)
	}
	if all := must(c.ListSharedVolumes(ctx, 0))(t); len(all) != 3 {
		t.Fatalf("all volumes: %+v", all)
	}
	ok(t, c.DeleteSharedVolume(ctx, v.ID))
	is(t, c.DeleteSharedVolume(ctx, v.ID), catalog.ErrNotFound)
	// Deleting the cluster takes its volumes.
	ok(t, c.DeleteCluster(ctx, cl.ID))
	if list := must(c.ListSharedVolumes(ctx, cl.ID))(t); len(list) != 0 {
		t.Fatalf("volumes outlived their cluster: %+v", list)
	}
}

func testNodes(t *testing.T, c *catalog.Catalog) {
	k := setClock(c)
	cl := must(c.CreateCluster(ctx, catalog.Cluster{Name: "c"}))(t)
	n := must(c.AddNode(ctx, catalog.Node{Name: "hv1", Hostname: "hv1.lab", CertFingerprint: "fp1", ClusterID: cl.ID, Version: "1.0"}))(t)
	if n.ID == 0 || n.State != catalog.NodeEnrolled || !n.Enrolled.Equal(k.Now()) || n.ClusterID != cl.ID {
		t.Fatalf("added %+v", n)
	}
	must(c.AddNode(ctx, catalog.Node{Name: "hv2", CertFingerprint: "fp2"}))(t)
	_, err := c.AddNode(ctx, catalog.Node{Name: "hv3", CertFingerprint: "fp1"})
	is(t, err, catalog.ErrConflict) // one certificate, one node

	if got := must(c.NodeByFingerprint(ctx, "fp1"))(t); got.ID != n.ID {
		t.Fatalf("by fingerprint: %+v", got)
	}
	_, err = c.NodeByFingerprint(ctx, "nope")
	is(t, err, catalog.ErrNotFound)
	_, err = c.NodeByFingerprint(ctx, "")
	is(t, err, catalog.ErrNotFound)
	if got := must(c.NodeByName(ctx, "hv2"))(t); got.ClusterID != 0 {
		t.Fatalf("by name: %+v", got)
	}

	k.Add(time.Minute)
	ok(t, c.Heartbeat(ctx, n.ID, "1.1"))
	got := must(c.GetNode(ctx, n.ID))(t)
	if !got.LastHeartbeat.Equal(k.Now()) || got.Version != "1.1" {
		t.Fatalf("after heartbeat: %+v", got)
	}
	if l := must(c.ListNodes(ctx, cl.ID))(t); len(l) != 1 || l[0].Name != "hv1" {
		t.Fatalf("cluster's nodes: %+v", l)
	}
	if l := must(c.ListNodes(ctx, 0))(t); len(l) != 2 {
		t.Fatalf("all nodes: %+v", l)
	}

	ok(t, c.RevokeNode(ctx, n.ID))
	is(t, c.Heartbeat(ctx, n.ID, "1.1"), catalog.ErrConflict)
	if got := must(c.NodeByFingerprint(ctx, "fp1"))(t); got.State != catalog.NodeRevoked {
		t.Fatalf("revoked node reads as %s", got.State)
	}
	is(t, c.Heartbeat(ctx, 999, ""), catalog.ErrNotFound)
	is(t, c.RevokeNode(ctx, 999), catalog.ErrNotFound)

	ok(t, c.DeleteNode(ctx, n.ID))
	_, err = c.GetNode(ctx, n.ID)
	is(t, err, catalog.ErrNotFound)
}

func testTokens(t *testing.T, c *catalog.Catalog) {
	k := setClock(c)
	cl := must(c.CreateCluster(ctx, catalog.Cluster{Name: "c"}))(t)
	tok, rec, err := c.CreateEnrollmentToken(ctx, cl.ID, time.Hour, "hv1")
	ok(t, err)
	if tok == "" || rec.ID == 0 || !rec.Expires.Equal(k.Now().Add(time.Hour)) || !rec.Used.IsZero() {
		t.Fatalf("token %q %+v", tok, rec)
	}
	_, _, err = c.CreateEnrollmentToken(ctx, 0, 0, "")
	is(t, err, catalog.ErrInvalid)

	n, err := c.EnrollNode(ctx, tok, catalog.Node{Name: "hv1", Hostname: "hv1.lab", CertFingerprint: "fpA"})
	ok(t, err)
	if n.ClusterID != cl.ID || n.State != catalog.NodeEnrolled {
		t.Fatalf("enrolled %+v", n)
	}
	// A replay is refused and changes nothing.
	_, err = c.EnrollNode(ctx, tok, catalog.Node{Name: "evil", CertFingerprint: "fpEvil"})
	is(t, err, catalog.ErrConflict)
	_, err = c.NodeByName(ctx, "evil")
	is(t, err, catalog.ErrNotFound)
	_, err = c.UseEnrollmentToken(ctx, tok)
	is(t, err, catalog.ErrConflict)
	_, err = c.UseEnrollmentToken(ctx, "lbe_unknown")
	is(t, err, catalog.ErrNotFound)

	toks := must(c.ListEnrollmentTokens(ctx))(t)
	if len(toks) != 1 || toks[0].NodeID != n.ID || !toks[0].Used.Equal(k.Now()) {
		t.Fatalf("tokens %+v", toks)
	}

	// Expired.
	tok2, rec2, err := c.CreateEnrollmentToken(ctx, 0, time.Minute, "")
	ok(t, err)
	k.Add(2 * time.Minute)
	_, err = c.UseEnrollmentToken(ctx, tok2)
	is(t, err, catalog.ErrExpired)
	ok(t, c.DeleteEnrollmentToken(ctx, rec2.ID))
	_, err = c.UseEnrollmentToken(ctx, tok2)
	is(t, err, catalog.ErrNotFound)

	// Re-enrolling a revoked node by name with a fresh token replaces its
	// certificate and lifts the revocation.
	ok(t, c.RevokeNode(ctx, n.ID))
	tok3, _, err := c.CreateEnrollmentToken(ctx, 0, time.Hour, "")
	ok(t, err)
	n2 := must(c.EnrollNode(ctx, tok3, catalog.Node{Name: "hv1", CertFingerprint: "fpB"}))(t)
	if n2.ID != n.ID || n2.State != catalog.NodeEnrolled || n2.CertFingerprint != "fpB" || n2.ClusterID != cl.ID {
		t.Fatalf("re-enrolled %+v", n2)
	}
	_, err = c.NodeByFingerprint(ctx, "fpA")
	is(t, err, catalog.ErrNotFound)
}

// Eight agents racing one token: exactly one enrolls.
func testTokenRace(t *testing.T, c *catalog.Catalog) {
	tok, _, err := c.CreateEnrollmentToken(ctx, 0, time.Hour, "")
	ok(t, err)
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.EnrollNode(ctx, tok, catalog.Node{Name: fmt.Sprintf("n%d", i), CertFingerprint: fmt.Sprintf("fp%d", i)})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, catalog.ErrConflict):
				conflicts.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 7 {
		t.Fatalf("%d enrolled, %d refused; want 1 and 7", wins.Load(), conflicts.Load())
	}
	if nodes := must(c.ListNodes(ctx, 0))(t); len(nodes) != 1 {
		t.Fatalf("%d nodes after the race", len(nodes))
	}
}

func testInventory(t *testing.T, c *catalog.Catalog) {
	k := setClock(c)
	cl := must(c.CreateCluster(ctx, catalog.Cluster{Name: "c"}))(t)
	a := must(c.AddNode(ctx, catalog.Node{Name: "a", ClusterID: cl.ID}))(t)
	b := must(c.AddNode(ctx, catalog.Node{Name: "b", ClusterID: cl.ID}))(t)
	ok(t, c.ReportInventory(ctx, a.ID, []catalog.VMReport{
		{UUID: "u1", Name: "web", VolumeID: "vol1", Path: "/csv/vol1/web", State: catalog.VMRunning},
		{UUID: "u2", Name: "db", State: catalog.VMOff},
	}))
	web := must(c.VMByUUID(ctx, "u1"))(t)
	if web.OwnerNodeID != a.ID || web.ClusterID != cl.ID || web.VolumeID != "vol1" || web.State != catalog.VMRunning || !web.LastSeen.Equal(k.Now()) {
		t.Fatalf("web %+v", web)
	}
	is(t, c.ReportInventory(ctx, a.ID, []catalog.VMReport{{Name: "x"}}), catalog.ErrInvalid)
	is(t, c.ReportInventory(ctx, 999, nil), catalog.ErrNotFound)

	// web migrates to b: b's report moves the owner, keeping the row.
	k.Add(time.Minute)
	ok(t, c.ReportInventory(ctx, b.ID, []catalog.VMReport{{UUID: "u1", Name: "web", VolumeID: "vol1", State: catalog.VMRunning}}))
	moved := must(c.VMByUUID(ctx, "u1"))(t)
	if moved.ID != web.ID || moved.OwnerNodeID != b.ID || moved.State != catalog.VMRunning {
		t.Fatalf("after the move %+v", moved)
	}
	// a still has a stopped definition of web: it does not take it back.
	k.Add(time.Minute)
	ok(t, c.ReportInventory(ctx, a.ID, []catalog.VMReport{
		{UUID: "u1", Name: "web", State: catalog.VMOff},
		{UUID: "u2", Name: "db", State: catalog.VMOff},
	}))
	if got := must(c.VMByUUID(ctx, "u1"))(t); got.OwnerNodeID != b.ID || got.State != catalog.VMRunning {
		t.Fatalf("stopped copy took the VM: %+v", got)
	}
	// a stops reporting db: absent, still owned by a.
	k.Add(time.Minute)
	ok(t, c.ReportInventory(ctx, a.ID, nil))
	if got := must(c.VMByUUID(ctx, "u2"))(t); got.State != catalog.VMAbsent || got.OwnerNodeID != a.ID {
		t.Fatalf("unreported VM %+v", got)
	}
	if got := must(c.VMByUUID(ctx, "u1"))(t); got.State != catalog.VMRunning {
		t.Fatalf("a's report touched b's VM: %+v", got)
	}
	// db comes back on b, stopped: b owns it.
	ok(t, c.ReportInventory(ctx, b.ID, []catalog.VMReport{
		{UUID: "u1", Name: "web", State: catalog.VMRunning},
		{UUID: "u2", Name: "db", State: catalog.VMOff},
	}))
	if got := must(c.VMByUUID(ctx, "u2"))(t); got.OwnerNodeID != b.ID || got.State != catalog.VMOff {
		t.Fatalf("db back %+v", got)
	}

	ok(t, c.SetVMState(ctx, web.ID, catalog.VMMigrating))
	if got := must(c.GetVM(ctx, web.ID))(t); got.State != catalog.VMMigrating {
		t.Fatalf("state %s", got.State)
	}
	if vs := must(c.VMsByName(ctx, "db"))(t); len(vs) != 1 || vs[0].UUID != "u2" {
		t.Fatalf("by name %+v", vs)
	}
	// Deleting the owner leaves the VM without one.
	ok(t, c.DeleteNode(ctx, a.ID))
	ok(t, c.DeleteVM(ctx, web.ID))
	is(t, c.DeleteVM(ctx, web.ID), catalog.ErrNotFound)
	_, err := c.GetVM(ctx, web.ID)
	is(t, err, catalog.ErrNotFound)
}

func testGroups(t *testing.T, c *catalog.Catalog) {
	g := catalog.Group{
		Name: "gold", FullTimes: []string{"01:00", "13:30"}, TimeZone: "Europe/Paris",
		Incremental: time.Hour, RetentionDays: 14, RetentionCount: 100, OfflineFallback: true,
		Members: []string{"web", "db"},
	}
	g = must(c.CreateGroup(ctx, g))(t)
	got := must(c.GetGroup(ctx, g.ID))(t)
	want := g
	want.Members = []string{"db", "web"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	_, err := c.CreateGroup(ctx, catalog.Group{Name: "gold"})
	is(t, err, catalog.ErrConflict)
	// A VM belongs to one group only; the failed create leaves nothing.
	_, err = c.CreateGroup(ctx, catalog.Group{Name: "silver", Members: []string{"mail", "web"}})
	is(t, err, catalog.ErrConflict)
	_, err = c.GroupByName(ctx, "silver")
	is(t, err, catalog.ErrNotFound)
	for _, bad := range []catalog.Group{
		{Name: ""},
		{Name: "x", FullTimes: []string{"25:00"}},
		{Name: "x", FullTimes: []string{"1:00"}},
		{Name: "x", Incremental: 5 * time.Minute},
		{Name: "x", Incremental: 25 * time.Hour},
		{Name: "x", RetentionDays: -1},
		{Name: "x", TimeZone: "Mars/Olympus"},
		{Name: "x", Members: []string{""}},
	} {
		_, err := c.CreateGroup(ctx, bad)
		is(t, err, catalog.ErrInvalid)
	}
	silver := must(c.CreateGroup(ctx, catalog.Group{Name: "silver", Incremental: 15 * time.Minute}))(t)
	if silver.TimeZone != "UTC" || silver.OfflineFallback || len(silver.Members) != 0 {
		t.Fatalf("silver %+v", silver)
	}
	ok(t, c.AddGroupMembers(ctx, silver.ID, "mail", "dns"))
	is(t, c.AddGroupMembers(ctx, silver.ID, "web"), catalog.ErrConflict)
	is(t, c.AddGroupMembers(ctx, 999, "zzz"), catalog.ErrNotFound)
	if g := must(c.GroupOfVM(ctx, "mail"))(t); g.ID != silver.ID || len(g.Members) != 2 {
		t.Fatalf("group of mail: %+v", g)
	}
	_, err = c.GroupOfVM(ctx, "nobody")
	is(t, err, catalog.ErrNotFound)

	ok(t, c.RemoveGroupMember(ctx, silver.ID, "dns"))
	is(t, c.RemoveGroupMember(ctx, silver.ID, "dns"), catalog.ErrNotFound)
	silver.RetentionCount = 7
	silver.FullTimes = []string{"22:00"}
	ok(t, c.UpdateGroup(ctx, silver))
	is(t, c.UpdateGroup(ctx, catalog.Group{ID: 999, Name: "y"}), catalog.ErrNotFound)
	list := must(c.ListGroups(ctx))(t)
	if len(list) != 2 || list[0].Name != "gold" || list[1].RetentionCount != 7 ||
		fmt.Sprint(list[1].Members) != "[mail]" || fmt.Sprint(list[1].FullTimes) != "[22:00]" {
		t.Fatalf("list %+v", list)
	}
	ok(t, c.DeleteGroup(ctx, g.ID))
	_, err = c.GroupOfVM(ctx, "web")
	is(t, err, catalog.ErrNotFound)
	// web is free again.
	ok(t, c.AddGroupMembers(ctx, silver.ID, "web"))
}

// world is a cluster with nodes, VMs on a shared volume and a group.
type world struct {
	cluster catalog.Cluster
	nodes   []catalog.Node
	vms     []catalog.VM
}

func makeWorld(t *testing.T, c *catalog.Catalog, nodes, vmsPerNode int) world {
	t.Helper()
	var w world
	w.cluster = must(c.CreateCluster(ctx, catalog.Cluster{Name: "c"}))(t)
	for i := 0; i < nodes; i++ {
		n := must(c.AddNode(ctx, catalog.Node{Name: fmt.Sprintf("node%02d", i), ClusterID: w.cluster.ID, CertFingerprint: fmt.Sprintf("fp%d", i)}))(t)
		w.nodes = append(w.nodes, n)
		var rep []catalog.VMReport
		for j := 0; j < vmsPerNode; j++ {
			rep = append(rep, catalog.VMReport{
				UUID: fmt.Sprintf("uuid-%d-%d", i, j), Name: fmt.Sprintf("vm-%02d-%02d", i, j),
				VolumeID: fmt.Sprintf("vol%d", j%2), State: catalog.VMRunning,
			})
		}
		ok(t, c.ReportInventory(ctx, n.ID, rep))
	}
	for _, s := range must(c.ListVMs(ctx, catalog.VMFilter{}))(t) {
		w.vms = append(w.vms, s.VM)
	}
	return w
}

func testJobs(t *testing.T, c *catalog.Catalog) {
	k := setClock(c)
	w := makeWorld(t, c, 2, 1)
	vm := w.vms[0]
	j := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, VMID: vm.ID, Params: json.RawMessage(`{"full":true}`)}))(t)
	if j.ID == 0 || j.State != catalog.JobQueued || j.VMName != vm.Name || j.VolumeID != vm.VolumeID || !j.Created.Equal(k.Now()) {
		t.Fatalf("created %+v", j)
	}
	_, err := c.CreateJob(ctx, catalog.Job{Kind: "dance"})
	is(t, err, catalog.ErrInvalid)
	_, err = c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, Params: json.RawMessage(`{`)})
	is(t, err, catalog.ErrInvalid)
	_, err = c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, VMID: 9999})
	is(t, err, catalog.ErrNotFound)
	gc := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindGC}))(t)

	got := must(c.GetJob(ctx, j.ID))(t)
	if string(got.Params) != `{"full":true}` || got.Progress != 0 {
		t.Fatalf("got %+v", got)
	}
	_, err = c.GetJob(ctx, 9999)
	is(t, err, catalog.ErrNotFound)

	// Progress and finishing need a running job.
	_, err = c.SetJobProgress(ctx, j.ID, 0.5, 10)
	is(t, err, catalog.ErrConflict)
	is(t, c.FinishJob(ctx, j.ID, catalog.JobSucceeded, nil, ""), catalog.ErrConflict)

	k.Add(time.Second)
	run := must(c.ClaimJob(ctx, j.ID, vm.OwnerNodeID))(t)
	if run.State != catalog.JobRunning || run.NodeID != vm.OwnerNodeID || !run.Started.Equal(k.Now()) || run.Attempts != 1 {
		t.Fatalf("claimed %+v", run)
	}
	_, err = c.ClaimJob(ctx, j.ID, vm.OwnerNodeID)
	is(t, err, catalog.ErrConflict)

	cancel := must(c.SetJobProgress(ctx, j.ID, 1.7, 4096))(t)
	if cancel {
		t.Fatal("cancel requested out of nowhere")
	}
	if got := must(c.GetJob(ctx, j.ID))(t); got.Progress != 1 || got.Bytes != 4096 {
		t.Fatalf("progress %+v", got)
	}
	ok(t, c.AddJobLog(ctx, j.ID, "", "reading disk0"))
	ok(t, c.AddJobLog(ctx, j.ID, "warn", "slow source", "still slow"))
	is(t, c.AddJobLog(ctx, 9999, "", "x"), catalog.ErrNotFound)
	lines := must(c.JobLog(ctx, j.ID, 0, 0))(t)
	if len(lines) != 3 || lines[0].Message != "reading disk0" || lines[0].Level != "info" || lines[2].Level != "warn" {
		t.Fatalf("log %+v", lines)
	}
	if more := must(c.JobLog(ctx, j.ID, lines[1].ID, 10))(t); len(more) != 1 || more[0].Message != "still slow" {
		t.Fatalf("log after %d: %+v", lines[1].ID, more)
	}

	// Cancel a running job: the agent learns it from its next progress.
	cj := must(c.CancelJob(ctx, j.ID))(t)
	if cj.State != catalog.JobRunning || !cj.CancelRequested {
		t.Fatalf("cancel running: %+v", cj)
	}
	if cancel := must(c.SetJobProgress(ctx, j.ID, 0.9, 5000))(t); !cancel {
		t.Fatal("cancel not passed on")
	}
	is(t, c.FinishJob(ctx, j.ID, "done", nil, ""), catalog.ErrInvalid)
	is(t, c.FinishJob(ctx, j.ID, catalog.JobSucceeded, json.RawMessage(`nope`), ""), catalog.ErrInvalid)
	k.Add(time.Second)
	ok(t, c.FinishJob(ctx, j.ID, catalog.JobCanceled, json.RawMessage(`{"point":""}`), "canceled by admin"))
	is(t, c.FinishJob(ctx, j.ID, catalog.JobSucceeded, nil, ""), catalog.ErrConflict)
	_, err = c.CancelJob(ctx, j.ID)
	is(t, err, catalog.ErrConflict)
	done := must(c.GetJob(ctx, j.ID))(t)
	if done.State != catalog.JobCanceled || !done.Finished.Equal(k.Now()) || string(done.Result) != `{"point":""}` || done.Error != "canceled by admin" || !done.Done() {
		t.Fatalf("finished %+v", done)
	}

	// Cancel a queued job: at once.
	if cg := must(c.CancelJob(ctx, gc.ID))(t); cg.State != catalog.JobCanceled || cg.Finished.IsZero() {
		t.Fatalf("cancel queued: %+v", cg)
	}
	_, err = c.CancelJob(ctx, 9999)
	is(t, err, catalog.ErrNotFound)

	// Success sets progress to 1.
	j2 := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindVerify}))(t)
	must(c.ClaimJob(ctx, j2.ID, 0))(t)
	ok(t, c.FinishJob(ctx, j2.ID, catalog.JobSucceeded, nil, ""))
	if got := must(c.GetJob(ctx, j2.ID))(t); got.Progress != 1 || got.NodeID != 0 {
		t.Fatalf("verify %+v", got)
	}

	// List filters.
	j3 := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindRecovery, VMID: vm.ID, TargetNodeID: w.nodes[1].ID}))(t)
	for _, tc := range []struct {
		f    catalog.JobFilter
		want []int64
	}{
		{catalog.JobFilter{}, []int64{j3.ID, j2.ID, gc.ID, j.ID}},
		{catalog.JobFilter{Kinds: []string{catalog.KindBackup, catalog.KindRecovery}}, []int64{j3.ID, j.ID}},
		{catalog.JobFilter{States: []string{catalog.JobCanceled}}, []int64{gc.ID, j.ID}},
		{catalog.JobFilter{VMID: vm.ID}, []int64{j3.ID, j.ID}},
		{catalog.JobFilter{VMName: vm.Name, States: []string{catalog.JobQueued}}, []int64{j3.ID}},
		{catalog.JobFilter{NodeID: vm.OwnerNodeID}, []int64{j.ID}},
		{catalog.JobFilter{VolumeID: vm.VolumeID}, []int64{j3.ID, j.ID}},
		{catalog.JobFilter{BeforeID: j2.ID, Limit: 1}, []int64{gc.ID}},
	} {
		var ids []int64
		for _, x := range must(c.ListJobs(ctx, tc.f))(t) {
			ids = append(ids, x.ID)
		}
		if fmt.Sprint(ids) != fmt.Sprint(tc.want) {
			t.Errorf("ListJobs(%+v) = %v, want %v", tc.f, ids, tc.want)
		}
	}

	// Defer: back to the queue, held until then, logged.
	must(c.ClaimJob(ctx, j3.ID, w.nodes[1].ID))(t)
	ok(t, c.DeferJob(ctx, j3.ID, k.Now().Add(time.Minute), "VM is migrating"))
	d := must(c.GetJob(ctx, j3.ID))(t)
	if d.State != catalog.JobQueued || d.NodeID != 0 || !d.Started.IsZero() || !d.NotBefore.Equal(k.Now().Add(time.Minute)) {
		t.Fatalf("deferred %+v", d)
	}
	if l := must(c.JobLog(ctx, j3.ID, 0, 0))(t); len(l) != 1 {
		t.Fatalf("defer log %+v", l)
	}
	is(t, c.DeferJob(ctx, j3.ID, time.Time{}, ""), catalog.ErrConflict)

	// Stale running jobs fail; old finished ones are purged with their logs.
	must(c.ClaimJob(ctx, j3.ID, w.nodes[1].ID))(t)
	k.Add(time.Hour)
	if n := must(c.FailStaleJobs(ctx, k.Now().Add(-30*time.Minute), "agent lost"))(t); n != 1 {
		t.Fatalf("failed %d stale jobs", n)
	}
	if got := must(c.GetJob(ctx, j3.ID))(t); got.State != catalog.JobFailed || got.Error != "agent lost" {
		t.Fatalf("stale %+v", got)
	}
	if n := must(c.PurgeJobs(ctx, k.Now().Add(-time.Minute)))(t); n != 3 {
		t.Fatalf("purged %d", n)
	}
	if l := must(c.JobLog(ctx, j.ID, 0, 0))(t); len(l) != 0 {
		t.Fatalf("log outlived its job: %+v", l)
	}
	if l := must(c.ListJobs(ctx, catalog.JobFilter{}))(t); len(l) != 1 || l[0].ID != j3.ID {
		t.Fatalf("after purge %+v", l)
	}
}

// Eight callers race to claim one queued job: exactly one wins.
func testConcurrentClaim(t *testing.T, c *catalog.Catalog) {
	w := makeWorld(t, c, 8, 1)
	for round := 0; round < 5; round++ {
		j := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, VMID: w.vms[0].ID}))(t)
		var wins, conflicts atomic.Int32
		var winner atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				got, err := c.ClaimJob(ctx, j.ID, w.nodes[i].ID)
				switch {
				case err == nil:
					wins.Add(1)
					winner.Store(got.NodeID)
				case errors.Is(err, catalog.ErrConflict):
					conflicts.Add(1)
				default:
					t.Error(err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != 7 {
			t.Fatalf("round %d: %d wins, %d conflicts; want 1 and 7", round, wins.Load(), conflicts.Load())
		}
		if got := must(c.GetJob(ctx, j.ID))(t); got.NodeID != winner.Load() || got.Attempts != 1 {
			t.Fatalf("round %d: job %+v, winner %d", round, got, winner.Load())
		}
	}

	// Many queued jobs, eight claimers of one node: each job claimed once.
	var jobs []catalog.Job
	n0 := w.nodes[0].ID
	for i := 0; i < 40; i++ {
		jobs = append(jobs, catalog.Job{Kind: catalog.KindRecovery, TargetNodeID: n0})
	}
	must(c.CreateJobs(ctx, jobs))(t)
	var mu sync.Mutex
	claimed := map[int64]int{}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				j, err := c.ClaimNext(ctx, n0, catalog.Limits{})
				if errors.Is(err, catalog.ErrNotFound) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				claimed[j.ID]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(claimed) != 40 {
		t.Fatalf("%d jobs claimed, want 40", len(claimed))
	}
	for id, n := range claimed {
		if n != 1 {
			t.Fatalf("job %d claimed %d times", id, n)
		}
	}
}

func testClaimNext(t *testing.T, c *catalog.Catalog) {
	k := setClock(c)
	w := makeWorld(t, c, 2, 2)
	a, b := w.nodes[0], w.nodes[1]
	var onA []catalog.VM
	for _, v := range w.vms {
		if v.OwnerNodeID == a.ID {
			onA = append(onA, v)
		}
	}
	backup := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, VMID: onA[0].ID}))(t)
	restore := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindRecovery, VMID: onA[1].ID, TargetNodeID: b.ID}))(t)
	prune := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindPrune}))(t)
	later := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, VMID: onA[1].ID, NotBefore: k.Now().Add(time.Hour)}))(t)

	ids := func(js []catalog.Job) []int64 {
		var out []int64
		for _, j := range js {
			out = append(out, j.ID)
		}
		return out
	}
	if got := ids(must(c.NextJobs(ctx, a.ID, 0))(t)); fmt.Sprint(got) != fmt.Sprint([]int64{backup.ID}) {
		t.Fatalf("a's next jobs %v", got)
	}
	if got := ids(must(c.NextJobs(ctx, b.ID, 0))(t)); fmt.Sprint(got) != fmt.Sprint([]int64{restore.ID}) {
		t.Fatalf("b's next jobs %v", got)
	}
	if got := ids(must(c.NextJobs(ctx, 0, 0))(t)); fmt.Sprint(got) != fmt.Sprint([]int64{prune.ID}) {
		t.Fatalf("server's next jobs %v", got)
	}

	// The VM is migrating: its backup waits. Then it lands on b: b runs it.
	ok(t, c.SetVMState(ctx, onA[0].ID, catalog.VMMigrating))
	_, err := c.ClaimNext(ctx, a.ID, catalog.Limits{})
	is(t, err, catalog.ErrNotFound)
	ok(t, c.ReportInventory(ctx, b.ID, []catalog.VMReport{{UUID: onA[0].UUID, Name: onA[0].Name, VolumeID: onA[0].VolumeID, State: catalog.VMRunning}}))
	_, err = c.ClaimNext(ctx, a.ID, catalog.Limits{})
	is(t, err, catalog.ErrNotFound)
	got := must(c.ClaimNext(ctx, b.ID, catalog.Limits{}))(t)
	if got.ID != backup.ID || got.NodeID != b.ID {
		t.Fatalf("b claimed %+v, want the moved VM's backup", got)
	}
	got = must(c.ClaimNext(ctx, b.ID, catalog.Limits{}))(t)
	if got.ID != restore.ID {
		t.Fatalf("b claimed %+v, want the restore", got)
	}
	got = must(c.ClaimNext(ctx, 0, catalog.Limits{}))(t)
	if got.ID != prune.ID || got.NodeID != 0 {
		t.Fatalf("server claimed %+v", got)
	}
	// The held-back job comes due.
	_, err = c.ClaimNext(ctx, a.ID, catalog.Limits{})
	is(t, err, catalog.ErrNotFound)
	k.Add(2 * time.Hour)
	if got := must(c.ClaimNext(ctx, a.ID, catalog.Limits{}))(t); got.ID != later.ID {
		t.Fatalf("a claimed %+v, want the due job", got)
	}
}

// Limits hold under concurrency: one backup per shared volume at a time,
// however many nodes ask at once.
func testClaimLimits(t *testing.T, c *catalog.Catalog) {
	w := makeWorld(t, c, 8, 2) // each node: one VM on vol0, one on vol1
	var jobs []catalog.Job
	for _, v := range w.vms {
		jobs = append(jobs, catalog.Job{Kind: catalog.KindBackup, VMID: v.ID})
	}
	must(c.CreateJobs(ctx, jobs))(t)
	lim := catalog.Limits{PerVolume: 1, PerNode: 1}
	claimAll := func() []catalog.Job {
		var mu sync.Mutex
		var got []catalog.Job
		var wg sync.WaitGroup
		for _, n := range w.nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				j, err := c.ClaimNext(ctx, n.ID, lim)
				if errors.Is(err, catalog.ErrNotFound) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, j)
				mu.Unlock()
			}()
		}
		wg.Wait()
		return got
	}
	got := claimAll()
	vols := map[string]int{}
	for _, j := range got {
		vols[j.VolumeID]++
	}
	if len(got) != 2 || vols["vol0"] != 1 || vols["vol1"] != 1 {
		t.Fatalf("claimed %d jobs, by volume %v; want one per volume", len(got), vols)
	}
	if more := claimAll(); len(more) != 0 {
		t.Fatalf("claimed %d more while the volumes were busy", len(more))
	}
	r := must(c.RunningCounts(ctx))(t)
	if r.ByVolume["vol0"] != 1 || r.ByVolume["vol1"] != 1 || r.ByKind[catalog.KindBackup] != 2 {
		t.Fatalf("running %+v", r)
	}
	if on := must(c.RunningOnVolume(ctx, "vol0"))(t); len(on) != 1 {
		t.Fatalf("running on vol0: %+v", on)
	}
	// Finishing one frees its volume for one more.
	ok(t, c.FinishJob(ctx, got[0].ID, catalog.JobSucceeded, nil, ""))
	next := claimAll()
	if len(next) != 1 || next[0].VolumeID != got[0].VolumeID {
		t.Fatalf("after finishing one: %+v", next)
	}

	// Per kind: at most two recoveries at once (the queued backups out of
	// the way).
	for _, j := range must(c.ListJobs(ctx, catalog.JobFilter{States: []string{catalog.JobQueued}}))(t) {
		must(c.CancelJob(ctx, j.ID))(t)
	}
	var recs []catalog.Job
	for i := 0; i < 6; i++ {
		recs = append(recs, catalog.Job{Kind: catalog.KindRecovery, TargetNodeID: w.nodes[i%len(w.nodes)].ID})
	}
	must(c.CreateJobs(ctx, recs))(t)
	lim = catalog.Limits{PerKind: map[string]int{catalog.KindRecovery: 2}}
	for round := 0; round < 2; round++ {
		recovering := 0
		for _, j := range claimAll() {
			if j.Kind == catalog.KindRecovery {
				recovering++
			}
		}
		if want := 2 - 2*round; recovering != want {
			t.Fatalf("round %d: claimed %d recoveries, want %d", round, recovering, want)
		}
	}
	if r := must(c.RunningCounts(ctx))(t); r.ByKind[catalog.KindRecovery] != 2 {
		t.Fatalf("running %+v", r)
	}
}

// A job a limit allows, queued behind more than a page of jobs it blocks,
// is still found.
func testClaimPaging(t *testing.T, c *catalog.Catalog) {
	w := makeWorld(t, c, 1, 1)
	n, vm := w.nodes[0].ID, w.vms[0].ID
	first := must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindBackup, VMID: vm, VolumeID: "volA"}))(t)
	must(c.ClaimJob(ctx, first.ID, n))(t)
	var js []catalog.Job
	for i := 0; i < 70; i++ {
		js = append(js, catalog.Job{Kind: catalog.KindBackup, VMID: vm, VolumeID: "volA"})
	}
	js = append(js, catalog.Job{Kind: catalog.KindBackup, VMID: vm, VolumeID: "volB"})
	created := must(c.CreateJobs(ctx, js))(t)
	got := must(c.ClaimNext(ctx, n, catalog.Limits{PerVolume: 1}))(t)
	if got.ID != created[len(created)-1].ID {
		t.Fatalf("claimed %+v, want the volB job", got)
	}
	_, err := c.ClaimNext(ctx, n, catalog.Limits{PerVolume: 1})
	is(t, err, catalog.ErrNotFound)
}

func point(id, name string, at time.Time, files ...repo.File) repo.Point {
	return repo.Point{Version: 1, ID: id, Name: name, Kind: "vm", Time: at, Host: "hv1", Consistency: "crash", Files: files}
}

func testPoints(t *testing.T, c *catalog.Catalog) {
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	files := []repo.File{
		{Path: "web.vhdx", Role: repo.RoleDisk, Size: 1 << 30, Index: "ab", Stats: repo.Stats{NewBytes: 1000}},
		{Path: "web.xml", Role: repo.RoleConfig, Size: 2048, Index: "cd", Stats: repo.Stats{NewBytes: 24}},
	}
	rp := point("20260501T000000Z-00000001", "web", t0, files...)
	rp.Notes = []string{"fell back to a full read"}
	ok(t, c.RecordPoint(ctx, catalog.PointFromRepo(&rp, "gold")))
	ok(t, c.RecordPoint(ctx, catalog.PointFromRepo(new(point("20260501T010000Z-00000002", "web", t0.Add(time.Hour))), "gold")))
	ok(t, c.RecordPoint(ctx, catalog.PointFromRepo(new(point("20260501T003000Z-00000003", "db", t0.Add(30*time.Minute))), "")))
	is(t, c.RecordPoint(ctx, catalog.Point{ID: "x"}), catalog.ErrInvalid)

	p := must(c.GetPoint(ctx, rp.ID))(t)
	if p.Name != "web" || !p.Time.Equal(t0) || p.Size != 1<<30+2048 || p.Stored != 1024 || p.Group != "gold" ||
		len(p.Files) != 2 || p.Files[0].Path != "web.vhdx" || p.Files[0].Stats.NewBytes != 1000 || p.Notes[0] != rp.Notes[0] {
		t.Fatalf("point %+v", p)
	}
	// Recording again (without a group) keeps the group.
	ok(t, c.RecordPoint(ctx, catalog.PointFromRepo(&rp, "")))
	if p := must(c.GetPoint(ctx, rp.ID))(t); p.Group != "gold" {
		t.Fatalf("group lost: %+v", p)
	}
	_, err := c.GetPoint(ctx, "nope")
	is(t, err, catalog.ErrNotFound)

	for _, tc := range []struct {
		f    catalog.PointFilter
		want string
	}{
		{catalog.PointFilter{}, "[2 3 1]"},
		{catalog.PointFilter{Oldest: true}, "[1 3 2]"},
		{catalog.PointFilter{Name: "web"}, "[2 1]"},
		{catalog.PointFilter{Group: "gold", Limit: 1}, "[2]"},
		{catalog.PointFilter{Since: t0.Add(time.Minute)}, "[2 3]"},
		{catalog.PointFilter{Until: t0.Add(time.Hour)}, "[3 1]"},
		{catalog.PointFilter{Kind: "image"}, "[]"},
	} {
		var ids []string
		for _, p := range must(c.ListPoints(ctx, tc.f))(t) {
			ids = append(ids, p.ID[len(p.ID)-1:])
			if tc.f.Files != (p.Files != nil) {
				t.Errorf("files %v read: %v", tc.f.Files, p.Files)
			}
		}
		if fmt.Sprint(ids) != tc.want && !(tc.want == "[]" && ids == nil) {
			t.Errorf("ListPoints(%+v) = %v, want %s", tc.f, ids, tc.want)
		}
	}
	if ps := must(c.ListPoints(ctx, catalog.PointFilter{Name: "web", Files: true}))(t); len(ps[1].Files) != 2 {
		t.Fatalf("files not read: %+v", ps[1])
	}
	latest := must(c.LatestPoints(ctx))(t)
	if len(latest) != 2 || !latest["web"].Equal(t0.Add(time.Hour)) || !latest["db"].Equal(t0.Add(30*time.Minute)) {
		t.Fatalf("latest %v", latest)
	}
	ok(t, c.DeletePoint(ctx, rp.ID))
	is(t, c.DeletePoint(ctx, rp.ID), catalog.ErrNotFound)
}

func testRebuild(t *testing.T, c *catalog.Catalog) {
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var ps []repo.Point
	for i := 0; i < 50; i++ {
		ps = append(ps, point(fmt.Sprintf("20260501T%06dZ-%08x", i, i), fmt.Sprintf("vm%d", i%5), t0.Add(time.Duration(i)*time.Minute),
			repo.File{Path: "d.qcow2", Role: repo.RoleDisk, Size: int64(i), Index: "00"}))
	}
	// An empty catalog adopts every point.
	added, removed := must2(t)(c.RebuildPoints(ctx, ps))
	if added != 50 || removed != 0 {
		t.Fatalf("adopt: added %d, removed %d", added, removed)
	}
	// The scheduler recorded one with its group; a stale one is listed
	// that the repository lost.
	ok(t, c.RecordPoint(ctx, catalog.PointFromRepo(&ps[0], "gold")))
	ok(t, c.RecordPoint(ctx, catalog.PointFromRepo(new(point("20260601T000000Z-deadbeef", "gone", t0)), "")))
	added, removed = must2(t)(c.RebuildPoints(ctx, append(ps[:40:40], ps[0])))
	if added != 0 || removed != 11 {
		t.Fatalf("rebuild: added %d, removed %d", added, removed)
	}
	all := must(c.ListPoints(ctx, catalog.PointFilter{Oldest: true, Files: true}))(t)
	if len(all) != 40 {
		t.Fatalf("%d points after rebuild", len(all))
	}
	for i, p := range all {
		if p.ID != ps[i].ID || !p.Time.Equal(ps[i].Time) || p.Size != int64(i) || len(p.Files) != 1 {
			t.Fatalf("point %d: %+v", i, p)
		}
	}
	if all[0].Group != "gold" {
		t.Fatalf("rebuild dropped the group: %+v", all[0])
	}
	// Idempotent.
	added, removed = must2(t)(c.RebuildPoints(ctx, ps[:40]))
	if added != 0 || removed != 0 {
		t.Fatalf("again: added %d, removed %d", added, removed)
	}
	// A bad manifest rolls the whole rebuild back.
	_, _, err := c.RebuildPoints(ctx, []repo.Point{{ID: "x"}})
	is(t, err, catalog.ErrInvalid)
	if n := len(must(c.ListPoints(ctx, catalog.PointFilter{}))(t)); n != 40 {
		t.Fatalf("failed rebuild left %d points", n)
	}
}

func must2(t *testing.T) func(a, b int, err error) (int, int) {
	return func(a, b int, err error) (int, int) {
		t.Helper()
		ok(t, err)
		return a, b
	}
}

func testAlerts(t *testing.T, c *catalog.Catalog) {
	k := setClock(c)
	a := must(c.RaiseAlert(ctx, catalog.Alert{Kind: "rpo", Subject: "vm:web", Message: "no point for 2h"}))(t)
	if a.ID == 0 || a.Severity != catalog.SeverityWarning || a.Occurrences != 1 || !a.Created.Equal(k.Now()) {
		t.Fatalf("raised %+v", a)
	}
	k.Add(time.Minute)
	again := must(c.RaiseAlert(ctx, catalog.Alert{Kind: "rpo", Subject: "vm:web", Severity: catalog.SeverityCritical, Message: "no point for 3h"}))(t)
	if again.ID != a.ID || again.Occurrences != 2 || again.Message != "no point for 3h" || again.Severity != catalog.SeverityCritical ||
		!again.LastSeen.Equal(k.Now()) || !again.Created.Equal(a.Created) {
		t.Fatalf("raised again %+v", again)
	}
	other := must(c.RaiseAlert(ctx, catalog.Alert{Kind: "job-failed", Subject: "job:7", Severity: catalog.SeverityCritical, Message: "disk read error"}))(t)
	_, err := c.RaiseAlert(ctx, catalog.Alert{Kind: "rpo"})
	is(t, err, catalog.ErrInvalid)
	_, err = c.RaiseAlert(ctx, catalog.Alert{Kind: "rpo", Subject: "x", Severity: "meh"})
	is(t, err, catalog.ErrInvalid)

	ok(t, c.AcknowledgeAlert(ctx, a.ID, "admin"))
	is(t, c.AcknowledgeAlert(ctx, a.ID, "admin"), catalog.ErrConflict)
	is(t, c.AcknowledgeAlert(ctx, 999, "admin"), catalog.ErrNotFound)
	// Raised after acknowledgement: a new alert.
	fresh := must(c.RaiseAlert(ctx, catalog.Alert{Kind: "rpo", Subject: "vm:web", Message: "again"}))(t)
	if fresh.ID == a.ID || fresh.Occurrences != 1 {
		t.Fatalf("fresh %+v", fresh)
	}
	open := must(c.ListAlerts(ctx, catalog.AlertFilter{Open: true}))(t)
	if len(open) != 2 || open[0].ID != fresh.ID || open[1].ID != other.ID {
		t.Fatalf("open %+v", open)
	}
	all := must(c.ListAlerts(ctx, catalog.AlertFilter{Kind: "rpo", Subject: "vm:web"}))(t)
	if len(all) != 2 || all[1].AcknowledgedBy != "admin" || all[1].Acknowledged.IsZero() {
		t.Fatalf("all %+v", all)
	}
}

func testTapes(t *testing.T, c *catalog.Catalog) {
	c1 := must(c.SaveCartridge(ctx, catalog.Cartridge{Library: "vtl", Barcode: "LB0001L8", Slot: 1, LabelID: "lab-1", Capacity: 1 << 40}))(t)
	c2 := must(c.SaveCartridge(ctx, catalog.Cartridge{Library: "vtl", Barcode: "LB0002L8", Slot: 2, LabelID: "lab-2"}))(t)
	if c1.ID == 0 || c1.State != "available" || c1.Slot != 1 {
		t.Fatalf("saved %+v", c1)
	}
	_, err := c.SaveCartridge(ctx, catalog.Cartridge{Library: "vtl", Barcode: "LB0001L8", LabelID: "lab-3"})
	is(t, err, catalog.ErrConflict)
	_, err = c.SaveCartridge(ctx, catalog.Cartridge{Library: "vtl"})
	is(t, err, catalog.ErrInvalid)
	// Moved out of its slot, by label ID.
	moved := must(c.SaveCartridge(ctx, catalog.Cartridge{Library: "vtl", Barcode: "LB0001L8", Slot: -1, LabelID: "lab-1", State: "full", Used: 100}))(t)
	if moved.ID != c1.ID || moved.Slot != -1 || moved.State != "full" {
		t.Fatalf("moved %+v", moved)
	}
	if got := must(c.CartridgeByBarcode(ctx, "vtl", "LB0002L8"))(t); got.ID != c2.ID {
		t.Fatalf("by barcode %+v", got)
	}
	_, err = c.CartridgeByBarcode(ctx, "vtl", "nope")
	is(t, err, catalog.ErrNotFound)

	// A point spanning both cartridges, and another on the second.
	segs := []catalog.TapeSegment{
		{CopyID: "copy-a", Seq: 0, PointID: "p1", CartridgeID: c1.ID, FileNumber: 1, Length: 700},
		{CopyID: "copy-a", Seq: 1, PointID: "p1", CartridgeID: c2.ID, FileNumber: 1, Length: 300, Final: true},
		{CopyID: "copy-b", Seq: 0, PointID: "p2", CartridgeID: c2.ID, FileNumber: 2, Length: 50, Final: true},
	}
	ok(t, c.RecordTapeSegments(ctx, segs))
	is(t, c.RecordTapeSegments(ctx, segs[:1]), catalog.ErrConflict)
	is(t, c.RecordTapeSegments(ctx, []catalog.TapeSegment{{CopyID: "z", PointID: "p", CartridgeID: 999}}), catalog.ErrNotFound)
	ps := must(c.PointSegments(ctx, "p1"))(t)
	if len(ps) != 2 || ps[0].Barcode != "LB0001L8" || ps[1].Barcode != "LB0002L8" || !ps[1].Final || ps[0].Length != 700 {
		t.Fatalf("p1 segments %+v", ps)
	}
	on2 := must(c.CartridgeSegments(ctx, c2.ID))(t)
	if len(on2) != 2 || on2[0].PointID != "p1" || on2[1].PointID != "p2" {
		t.Fatalf("on cartridge 2: %+v", on2)
	}
	if got := must(c.GetCartridge(ctx, c2.ID))(t); got.Written.IsZero() {
		t.Fatalf("written not stamped: %+v", got)
	}
	if l := must(c.ListCartridges(ctx, "vtl"))(t); len(l) != 2 {
		t.Fatalf("list %+v", l)
	}
	// Erasing cartridge 1 loses copy-a whole (its tail on 2 is useless).
	if n := must(c.ForgetCartridgeContents(ctx, c1.ID))(t); n != 2 {
		t.Fatalf("forgot %d segments", n)
	}
	if on2 := must(c.CartridgeSegments(ctx, c2.ID))(t); len(on2) != 1 || on2[0].PointID != "p2" {
		t.Fatalf("after erase %+v", on2)
	}
	ok(t, c.DeleteCartridge(ctx, c2.ID))
	if ps := must(c.PointSegments(ctx, "p2"))(t); len(ps) != 0 {
		t.Fatalf("segments outlived their cartridge: %+v", ps)
	}
}

func testStats(t *testing.T, c *catalog.Catalog) {
	w := makeWorld(t, c, 3, 2)
	must(c.CreateGroup(ctx, catalog.Group{Name: "g", Members: []string{w.vms[0].Name}}))(t)
	must(c.CreateJob(ctx, catalog.Job{Kind: catalog.KindGC}))(t)
	ok(t, c.RevokeNode(ctx, w.nodes[2].ID))
	s := must(c.Stats(ctx))(t)
	if s.Clusters != 1 || s.Nodes != 3 || s.NodesEnrolled != 2 || s.VMs != 6 || s.Groups != 1 || s.GroupMembers != 1 ||
		s.Jobs[catalog.JobQueued] != 1 || s.Points != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// testScale builds the scale target, 1,000 VMs on 50 nodes with a
// history of points and jobs, and times the scheduler's hot queries.
func testScale(t *testing.T, c *catalog.Catalog) {
	const nodes, perNode, pointsPerVM, historyPerVM = 50, 20, 10, 3
	start := time.Now()
	w := makeWorld(t, c, nodes, perNode)
	if len(w.vms) != nodes*perNode {
		t.Fatalf("%d VMs", len(w.vms))
	}
	var names []string
	for _, v := range w.vms {
		names = append(names, v.Name)
	}
	sort.Strings(names)
	for g := 0; g < 10; g++ {
		must(c.CreateGroup(ctx, catalog.Group{Name: fmt.Sprintf("g%d", g), Incremental: time.Hour, RetentionCount: pointsPerVM,
			Members: names[g*90 : g*90+90]}))(t) // 900 protected, 100 not
	}
	t0 := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	var ps []repo.Point
	for i, v := range w.vms {
		for p := 0; p < pointsPerVM; p++ {
			ps = append(ps, point(fmt.Sprintf("20260501T%02d0000Z-%08x", p, i*pointsPerVM+p), v.Name, t0.Add(time.Duration(p)*time.Hour),
				repo.File{Path: "disk.qcow2", Role: repo.RoleDisk, Size: 10 << 30, Index: "00"}))
		}
	}
	must2(t)(c.RebuildPoints(ctx, ps))
	var hist []catalog.Job
	for h := 0; h < historyPerVM; h++ {
		for _, v := range w.vms {
			hist = append(hist, catalog.Job{Kind: catalog.KindBackup, VMID: v.ID, VMName: v.Name, VolumeID: v.VolumeID})
		}
	}
	must(c.CreateJobs(ctx, hist))(t)
	if _, err := c.DB().ExecContext(ctx, `UPDATE jobs SET state = 'succeeded', started_at = created_at, finished_at = created_at`); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: dataset (%d VMs, %d nodes, %d points, %d finished jobs) built in %s",
		c.Dialect(), len(w.vms), nodes, len(ps), len(hist), time.Since(start).Round(time.Millisecond))

	timeIt := func(what string, n int, fn func()) {
		fn() // warm
		s := time.Now()
		for i := 0; i < n; i++ {
			fn()
		}
		t.Logf("%s: %-44s %8.2f ms", c.Dialect(), what, float64(time.Since(s).Microseconds())/1000/float64(n))
	}
	var vs []catalog.VMStatus
	timeIt("ListVMs with protection state (1,000 VMs)", 5, func() { vs = must(c.ListVMs(ctx, catalog.VMFilter{}))(t) })
	protected := 0
	for _, s := range vs {
		if s.Protected() {
			protected++
		}
		if s.Points != pointsPerVM || !s.LastPoint.Equal(t0.Add((pointsPerVM-1)*time.Hour)) || s.LastBackupState != catalog.JobSucceeded {
			t.Fatalf("VM status %+v", s)
		}
	}
	if len(vs) != 1000 || protected != 900 {
		t.Fatalf("%d VMs, %d protected", len(vs), protected)
	}
	timeIt("ListVMs of one node", 20, func() { must(c.ListVMs(ctx, catalog.VMFilter{OwnerNodeID: w.nodes[7].ID}))(t) })
	timeIt("ListGroups (10 groups, 900 members)", 20, func() { must(c.ListGroups(ctx))(t) })
	timeIt("LatestPoints (10,000 points)", 5, func() { must(c.LatestPoints(ctx))(t) })
	timeIt("ListPoints of one VM", 20, func() { must(c.ListPoints(ctx, catalog.PointFilter{Name: names[500]}))(t) })
	timeIt("RunningCounts", 20, func() { must(c.RunningCounts(ctx))(t) })

	// A scheduling round: queue a backup of every protected VM.
	var round []catalog.Job
	for _, s := range vs {
		if s.Protected() {
			round = append(round, catalog.Job{Kind: catalog.KindBackup, VMID: s.ID, VMName: s.Name, VolumeID: s.VolumeID, GroupID: s.GroupID})
		}
	}
	s := time.Now()
	must(c.CreateJobs(ctx, round))(t)
	t.Logf("%s: %-44s %8.2f ms", c.Dialect(), "CreateJobs (900 backups, one transaction)", float64(time.Since(s).Microseconds())/1000)

	timeIt("NextJobs for one node", 20, func() {
		if js := must(c.NextJobs(ctx, w.nodes[3].ID, 10))(t); len(js) == 0 {
			t.Fatal("no next jobs")
		}
	})
	// Every node claims until the limits stop it: one backup per node and
	// per shared volume (two volumes), so two run.
	lim := catalog.Limits{PerVolume: 1, PerNode: 1}
	s = time.Now()
	claimed := 0
	for _, n := range w.nodes {
		if _, err := c.ClaimNext(ctx, n.ID, lim); err == nil {
			claimed++
		} else if !errors.Is(err, catalog.ErrNotFound) {
			t.Fatal(err)
		}
	}
	t.Logf("%s: %-44s %8.2f ms (%d claimed)", c.Dialect(), "ClaimNext by 50 nodes, volume-limited", float64(time.Since(s).Microseconds())/1000, claimed)
	if claimed != 2 {
		t.Fatalf("claimed %d, want 2 (one per shared volume)", claimed)
	}
	// Nodes with queued backups and none running each claim one.
	want := 0
	busy := must(c.RunningCounts(ctx))(t)
	for _, n := range w.nodes {
		if busy.ByNode[n.ID] == 0 && len(must(c.NextJobs(ctx, n.ID, 1))(t)) > 0 {
			want++
		}
	}
	s = time.Now()
	claimed = 0
	for _, n := range w.nodes {
		if _, err := c.ClaimNext(ctx, n.ID, catalog.Limits{PerNode: 1}); err == nil {
			claimed++
		}
	}
	t.Logf("%s: %-44s %8.2f ms (%d claimed)", c.Dialect(), "ClaimNext by 50 nodes, node-limited", float64(time.Since(s).Microseconds())/1000, claimed)
	if claimed != want || want < 40 {
		t.Fatalf("claimed %d, want %d (the two busy nodes wait)", claimed, want)
	}
	timeIt("Stats", 5, func() { must(c.Stats(ctx))(t) })
}
