package main

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Outcome 3: SIGKILL at random moments of a backup, 20 times. After each
// kill verify passes, no partial point is listed, and every earlier point
// still restores to exactly what was backed up.
func TestCrashSafety(t *testing.T) {
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init", "--chunk-size", "1048576")
	img := filepath.Join(dir, "disk.raw")
	const size = 96 << 20
	r := rand.New(rand.NewPCG(7, 7))
	buf := make([]byte, size)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(img, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{} // point → content hash
	backupOnce := func() time.Duration {
		start := time.Now()
		lb(t, repoDir, false, "backup", "--name", "crashy", img)
		want[lastPoint(t, repoDir)] = fileHash(t, img)
		return time.Since(start)
	}
	backupOnce()
	// Kill within the span of a typical later backup, which reads
	// everything but stores little.
	dur := backupOnce()
	kills := 0
	for i := 0; i < 20; i++ {
		// Change a few MiB so each backup has new chunks to write.
		f, _ := os.OpenFile(img, os.O_RDWR, 0)
		for range 8 {
			chunk := make([]byte, 1<<20)
			for j := range chunk {
				chunk[j] = byte(r.Uint32())
			}
			f.WriteAt(chunk, r.Int64N(size/(1<<20))<<20)
		}
		f.Close()
		before := len(points(t, repoDir))
		cmd := exec.Command(lifeboatBin, "backup", "--name", "crashy", img)
		cmd.Env = append(os.Environ(), "LIFEBOAT_REPO="+repoDir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(r.Int64N(int64(dur)))
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		err := cmd.Wait()
		after := points(t, repoDir)
		if err != nil {
			kills++
		}
		switch len(after) {
		case before:
			if err == nil {
				t.Fatalf("kill %d: a completed backup listed no point", i)
			}
		case before + 1:
			// Finished, or killed after the manifest was written (while
			// unlocking): either way the point must be whole, which the
			// verify and restore below prove.
			want[after[len(after)-1].ID] = fileHash(t, img)
		default:
			t.Fatalf("kill %d after %v: %d points listed, had %d", i, delay, len(after), before)
		}
		if out := lb(t, repoDir, false, "verify"); !strings.HasPrefix(out, "ok:") {
			t.Fatalf("kill %d: verify: %s", i, out)
		}
		// The newest earlier point still restores exactly.
		last := after[len(after)-1].ID
		checkRestore(t, repoDir, last, want[last], filepath.Join(dir, "r", last))
	}
	if kills < 10 {
		t.Errorf("only %d of 20 backups were killed mid-way; the test is not testing", kills)
	}
	for id, h := range want {
		checkRestore(t, repoDir, id, h, filepath.Join(dir, "final", id))
	}
	t.Logf("%d kills mid-backup, %d points, all restore", kills, len(want))
}

func checkRestore(t *testing.T, repoDir, id, wantHash, out string) {
	t.Helper()
	if _, err := os.Stat(out); err == nil {
		return
	}
	lb(t, repoDir, false, "restore", "--point", id, "--to", out)
	if got := fileHash(t, filepath.Join(out, "disk.raw")); got != wantHash {
		t.Fatalf("point %s restores to %s, want %s", id, got, wantHash)
	}
	os.RemoveAll(out)
	os.MkdirAll(out, 0o755) // remember it was checked
}

// Several backups into one repository at once: each completes, shared
// chunks are stored once, and every point restores.
func TestConcurrentBackups(t *testing.T) {
	dir := t.TempDir()
	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init", "--chunk-size", "1048576")
	r := rand.New(rand.NewPCG(11, 11))
	common := make([]byte, 16<<20)
	for i := range common {
		common[i] = byte(r.Uint32())
	}
	hashes := map[string]string{}
	var cmds []*exec.Cmd
	for i := range 4 {
		own := make([]byte, 4<<20)
		for j := range own {
			own[j] = byte(r.Uint32())
		}
		p := filepath.Join(dir, "img"+string(rune('a'+i))+".raw")
		os.WriteFile(p, append(append([]byte{}, common...), own...), 0o644)
		hashes["img"+string(rune('a'+i))] = fileHash(t, p)
		cmd := exec.Command(lifeboatBin, "backup", "--name", "img"+string(rune('a'+i)), p)
		cmd.Env = append(os.Environ(), "LIFEBOAT_REPO="+repoDir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("concurrent backup: %v", err)
		}
	}
	if out := lb(t, repoDir, false, "verify"); !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify: %s", out)
	}
	n := 0
	filepath.Walk(filepath.Join(repoDir, "chunks"), func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n++
		}
		return nil
	})
	if n != 16+4*4 {
		t.Errorf("%d chunks stored, want %d (shared ones once)", n, 16+4*4)
	}
	for _, p := range points(t, repoDir) {
		out := filepath.Join(dir, "out", p.Name)
		lb(t, repoDir, false, "restore", "--point", p.ID, "--to", out)
		if got := fileHash(t, filepath.Join(out, p.Name+".raw")); got != hashes[p.Name] {
			t.Errorf("%s restores differently", p.Name)
		}
	}
}
