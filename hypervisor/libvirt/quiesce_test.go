package libvirt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"lifeboat/backup"
	"lifeboat/hypervisor"
	"lifeboat/internal/testenv"
	"lifeboat/itemlevel"
	"lifeboat/lab"
	"lifeboat/repo"
	"lifeboat/repo/storage/local"
	"lifeboat/restore"
)

// Application-consistent backups of a real Linux guest (issue 7): lab
// guests run qemu-ga with an fsfreeze hook that logs to
// /var/log/fsfreeze.log (see lab/README.md, "The guest").

func newTestRepo(t *testing.T) *repo.Repository {
	t.Helper()
	b, err := local.Open(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := repo.Init(context.Background(), b, repo.InitOptions{ChunkSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func openGuestNode(t *testing.T, n lab.Node, agent, freeze time.Duration) *Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := Open(ctx, Options{URI: n.URI, ScratchDir: n.Scratch, AgentTimeout: agent, FreezeTimeout: freeze})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// pointDisk is the one disk file of a VM point.
func pointDisk(t *testing.T, p *repo.Point) string {
	t.Helper()
	for _, f := range p.Files {
		if f.Role == repo.RoleDisk {
			return f.Path
		}
	}
	t.Fatalf("point %s has no disk", p.ID)
	return ""
}

// pointFile reads one file of the guest's root filesystem (ext4 on the
// whole disk) from a point by item-level recovery.
func pointFile(t *testing.T, r *repo.Repository, p *repo.Point, guestPath string) []byte {
	t.Helper()
	ctx := context.Background()
	img, err := r.OpenFile(ctx, p, pointDisk(t, p))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	vols, err := itemlevel.OpenVolumes(ctx, img, img.Size())
	if err != nil {
		t.Fatal(err)
	}
	vol, err := itemlevel.PickVolume(vols, 0)
	if err != nil {
		t.Fatalf("volumes %+v: %v", vols, err)
	}
	fsys, err := itemlevel.OpenFS(ctx, img, vol)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	f, err := fsys.Open(guestPath)
	if err != nil {
		t.Fatalf("point %s: %v", p.ID, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("point %s: read %s: %v", p.ID, guestPath, err)
	}
	return b
}

// fsck restores the point's disk to a raw file and runs e2fsck -fn on it;
// it returns e2fsck's exit code and output.
func fsck(t *testing.T, r *repo.Repository, p *repo.Point) (int, string) {
	t.Helper()
	e2fsck := testenv.Tool(t, "e2fsck")
	raw := filepath.Join(t.TempDir(), "disk.raw")
	if _, err := restore.ToDevice(context.Background(), r, p, pointDisk(t, p), raw, nil); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(e2fsck, "-fn", raw).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// freezeEvent is one line of the guest's /var/log/fsfreeze.log.
type freezeEvent struct {
	uptime float64
	what   string // "freeze" or "thaw"
}

func parseFreezeLog(t *testing.T, log string) []freezeEvent {
	t.Helper()
	var out []freezeEvent
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		up, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			t.Fatalf("fsfreeze.log line %q: %v", line, err)
		}
		out = append(out, freezeEvent{up, f[2]})
	}
	return out
}

func count(ev []freezeEvent, what string) int {
	n := 0
	for _, e := range ev {
		if e.what == what {
			n++
		}
	}
	return n
}

func hasNote(p *repo.Point, sub string) bool {
	for _, n := range p.Notes {
		if strings.Contains(n, sub) {
			return true
		}
	}
	return false
}

func freezeStatus(t *testing.T, v *lab.GuestVM) string {
	t.Helper()
	r, err := v.Agent(`{"execute":"guest-fsfreeze-status"}`, 10)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// guestWrites checks the guest can still write and sync its root
// filesystem (a frozen one blocks the write until the thaw).
func guestWrites(t *testing.T, v *lab.GuestVM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := v.Exec(ctx, "echo ok >/data/alive && sync && cat /data/alive")
	if err != nil || r.Exit != 0 || string(r.Stdout) != "ok\n" {
		t.Fatalf("guest cannot write: %v exit %d %q %q (freeze status %s)", err, r.Exit, r.Stdout, r.Stderr, freezeStatus(t, v))
	}
}

// Outcomes 1 and 2 of issue 7: a backup of a running guest with its agent
// is application-consistent (the hook saw freeze and thaw, the restored
// filesystem is clean), and files the guest wrote are found, equal, by
// item-level recovery in the next, incremental, point. On a session node.
func TestGuestApplicationConsistentBackup(t *testing.T) {
	l := lab.Start(t)
	n := l.Node("node1")
	v := n.StartGuest(t, "lbtest-quiesce-app", lab.GuestOptions{})
	t.Logf("boot to guest-ping: %v", v.BootToAgent)
	d := openGuestNode(t, n, 0, 0)
	r := newTestRepo(t)
	ctx := context.Background()

	p1, err := backup.RunVM(ctx, r, d, v.Name, backup.VMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p1.Consistency != hypervisor.Application || len(p1.Notes) != 0 {
		t.Fatalf("first point: consistency %q, notes %q; want %q and none", p1.Consistency, p1.Notes, hypervisor.Application)
	}

	// Files written by the guest itself, sizes not a multiple of a block.
	v.Run(t, "dd if=/dev/urandom of=/data/f1 bs=65536 count=45 2>/dev/null && "+
		"dd if=/dev/urandom of=/data/f2 bs=1000 count=333 2>/dev/null && "+
		"mkdir -p /data/sub && echo 'written by the guest' >/data/sub/f3 && sync")
	want := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(v.Run(t, "sha256sum /data/f1 /data/f2 /data/sub/f3")), "\n") {
		f := strings.Fields(line)
		want[f[1]] = f[0]
	}

	p2, err := backup.RunVM(ctx, r, d, v.Name, backup.VMOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var read int64
	for _, f := range p2.Files {
		read += f.Stats.BytesRead
	}
	if p2.Consistency != hypervisor.Application || p2.Previous != p1.ID || hasNote(p2, "fell back") {
		t.Fatalf("second point: consistency %q, previous %q (want %s), notes %q", p2.Consistency, p2.Previous, p1.ID, p2.Notes)
	}
	if read > 16<<20 {
		t.Errorf("the incremental read %d bytes of a 64 MiB disk for 3.3 MB written", read)
	}
	t.Logf("incremental point read %d bytes", read)

	for path, sum := range want {
		b := pointFile(t, r, p2, path)
		h := sha256.Sum256(b)
		if got := hex.EncodeToString(h[:]); got != sum {
			t.Errorf("%s in the incremental point: sha256 %s (%d bytes), the guest has %s", path, got, len(b), sum)
		}
	}

	// The hook ran for both backups: the first's freeze and thaw are in
	// the second point, whose own freeze line was written before it froze.
	inPoint := parseFreezeLog(t, string(pointFile(t, r, p2, "/var/log/fsfreeze.log")))
	if count(inPoint, "freeze") != 2 || count(inPoint, "thaw") != 1 {
		t.Errorf("fsfreeze.log in the second point: %+v, want freeze, thaw, freeze", inPoint)
	}
	inGuest := parseFreezeLog(t, v.Run(t, "cat /var/log/fsfreeze.log"))
	if len(inGuest) != 4 || count(inGuest, "freeze") != 2 || count(inGuest, "thaw") != 2 {
		t.Fatalf("fsfreeze.log in the guest: %+v, want freeze and thaw twice", inGuest)
	}
	for i := 0; i+1 < len(inGuest); i += 2 {
		if inGuest[i].what != "freeze" || inGuest[i+1].what != "thaw" {
			t.Fatalf("fsfreeze.log in the guest: %+v, want freeze/thaw pairs", inGuest)
		}
		t.Logf("backup %d: guest filesystems frozen for %.2f s", i/2+1, inGuest[i+1].uptime-inGuest[i].uptime)
	}
	if st := freezeStatus(t, v); !strings.Contains(st, `"thawed"`) {
		t.Errorf("guest freeze status after the backups: %s", st)
	}

	for _, p := range []*repo.Point{p1, p2} {
		if code, out := fsck(t, r, p); code != 0 {
			t.Errorf("e2fsck -fn of point %s: exit %d\n%s", p.ID, code, out)
		}
	}
}

// Outcome 3 of issue 7: a broken guest agent (hung hook, cancelled backup,
// stopped or killed agent, a freeze left by a killed backup) never hangs
// the backup, falls back to crash-consistent with a note, and never leaves
// the guest frozen. The cases run in order on one guest (the last one
// kills its agent).
func TestGuestBrokenAgent(t *testing.T) {
	l := lab.Start(t)
	n := l.Node("node0")
	v := n.StartGuest(t, "lbtest-quiesce-broken", lab.GuestOptions{})
	const agentTimeout, freezeTimeout = 2 * time.Second, 3 * time.Second
	d := openGuestNode(t, n, agentTimeout, freezeTimeout)
	r := newTestRepo(t)
	lastFreeze := func() freezeEvent {
		ev := parseFreezeLog(t, v.Run(t, "cat /var/log/fsfreeze.log"))
		if len(ev) == 0 {
			return freezeEvent{}
		}
		return ev[len(ev)-1]
	}
	run := func(ctx context.Context, o backup.VMOptions) (*repo.Point, time.Duration, error) {
		start := time.Now()
		p, err := backup.RunVM(ctx, r, d, v.Name, o)
		return p, time.Since(start), err
	}
	hookRuns := func() int { return strings.Count(v.Serial(), "fsfreeze-hook: freeze") }

	t.Run("frozen by an earlier backup", func(t *testing.T) {
		// What a backup killed while the guest was frozen leaves behind.
		if _, err := v.Agent(`{"execute":"guest-fsfreeze-freeze"}`, 10); err != nil {
			t.Fatal(err)
		}
		p, took, err := run(context.Background(), backup.VMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("backup took %v, notes %q", took, p.Notes)
		if p.Consistency != hypervisor.Application || !hasNote(p, "found frozen") {
			t.Errorf("consistency %q, notes %q; want %q and a note about the earlier freeze", p.Consistency, p.Notes, hypervisor.Application)
		}
		guestWrites(t, v)
	})

	t.Run("hook slower than the freeze timeout", func(t *testing.T) {
		v.Run(t, "echo 5 >/run/fsfreeze-hang")
		defer v.Run(t, "rm -f /run/fsfreeze-hang")
		p, took, err := run(context.Background(), backup.VMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("backup took %v, notes %q", took, p.Notes)
		if p.Consistency != hypervisor.Crash || !hasNote(p, "freeze failed or took longer") {
			t.Errorf("consistency %q, notes %q; want %q and a note about the freeze", p.Consistency, p.Notes, hypervisor.Crash)
		}
		// The hook finished after the timeout and the agent froze the
		// guest late: the backup's watcher thawed it.
		if st := freezeStatus(t, v); !strings.Contains(st, `"thawed"`) {
			t.Errorf("freeze status after the backup: %s", st)
		}
		if e := lastFreeze(); e.what != "thaw" {
			t.Errorf("last fsfreeze.log line %+v, want a thaw", e)
		}
		guestWrites(t, v)
		code, out := fsck(t, r, p)
		t.Logf("e2fsck -fn of the crash-consistent point: exit %d: %s", code, lastLine(out))
	})

	t.Run("cancelled while freezing", func(t *testing.T) {
		v.Run(t, "echo 1 >/run/fsfreeze-hang")
		defer v.Run(t, "rm -f /run/fsfreeze-hang")
		before := hookRuns()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			for ctx.Err() == nil && hookRuns() == before {
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
		}()
		p, took, err := run(ctx, backup.VMOptions{})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("backup cancelled during the freeze: point %v, error %v; want context.Canceled", p, err)
		}
		t.Logf("cancelled backup returned after %v: %v", took, err)
		if st := freezeStatus(t, v); !strings.Contains(st, `"thawed"`) {
			t.Errorf("freeze status after the cancelled backup: %s", st)
		}
		if e := lastFreeze(); e.what != "thaw" {
			t.Errorf("last fsfreeze.log line %+v, want a thaw", e)
		}
		guestWrites(t, v)
	})

	t.Run("cancelled mid-transfer", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		o := backup.VMOptions{Options: backup.Options{FullRead: true, Progress: func(done, total int64) {
			if done > 0 {
				cancel()
			}
		}}}
		p, _, err := run(ctx, o)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("backup cancelled mid-transfer: point %v, error %v; want context.Canceled", p, err)
		}
		if st := freezeStatus(t, v); !strings.Contains(st, `"thawed"`) {
			t.Errorf("freeze status after the cancelled backup: %s", st)
		}
		guestWrites(t, v)
	})

	t.Run("agent stopped", func(t *testing.T) {
		// The shell is qemu-ga's child and outlives the stop: it wakes
		// the agent after the backup.
		if _, err := v.Agent(`{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c",`+
			`"p=$(cat /run/qemu-ga.pid); kill -STOP $p; sleep 10; kill -CONT $p"]}}`, 10); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		p, took, err := run(context.Background(), backup.VMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("backup took %v, notes %q", took, p.Notes)
		if p.Consistency != hypervisor.Crash || !hasNote(p, "no guest agent") {
			t.Errorf("consistency %q, notes %q; want %q and a note about the agent", p.Consistency, p.Notes, hypervisor.Crash)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := v.WaitAgent(ctx); err != nil {
			t.Fatal(err)
		}
		guestWrites(t, v)
	})

	t.Run("agent gone", func(t *testing.T) {
		v.Agent(`{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","kill $(cat /run/qemu-ga.pid)"]}}`, 10)
		time.Sleep(time.Second)
		p, took, err := run(context.Background(), backup.VMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("backup took %v, notes %q", took, p.Notes)
		if p.Consistency != hypervisor.Crash || !hasNote(p, "no guest agent") {
			t.Errorf("consistency %q, notes %q; want %q and a note about the agent", p.Consistency, p.Notes, hypervisor.Crash)
		}
	})
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return fmt.Sprint(s)
}
