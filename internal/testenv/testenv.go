// Package testenv gives tests the shared fixtures and the outside tools
// they need, and decides what a missing tool means: under CI (CI=true) it is
// a failure, because CI's set-up script installs every tool; on a developer
// machine the test is skipped with the install hint.
package testenv

import (
	"compress/bzip2"
	"compress/gzip"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// RepoRoot finds the module root by walking up to go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testenv: go.mod not found above the test's folder")
		}
		dir = parent
	}
}

// SharedDir is ../shared beside the checkout, or $LIFEBOAT_SHARED.
func SharedDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("LIFEBOAT_SHARED"); d != "" {
		return d
	}
	return filepath.Join(RepoRoot(t), "..", "shared")
}

// HyperV returns the path of a Hyper-V fixture, decompressed into a temp
// folder when it is stored as .gz or .bz2 (name is given without that
// suffix). Missing fixtures fail under CI and skip elsewhere.
func HyperV(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(SharedDir(t), "testdata", "hyperv")
	plain := filepath.Join(dir, name)
	if _, err := os.Stat(plain); err == nil {
		return plain
	}
	for _, suf := range []string{".gz", ".bz2"} {
		src := plain + suf
		f, err := os.Open(src)
		if err != nil {
			continue
		}
		defer f.Close()
		var r io.Reader
		if suf == ".gz" {
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatalf("fixture %s: %v", src, err)
			}
			r = zr
		} else {
			r = bzip2.NewReader(f)
		}
		out := filepath.Join(t.TempDir(), name)
		w, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, r); err != nil {
			t.Fatalf("fixture %s: %v", src, err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	missing(t, "fixture "+plain+" (shared/testdata/hyperv beside the checkout)")
	return ""
}

// Tool returns the path of an outside program the test needs.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		missing(t, name+" (run scripts/setup-test.sh)")
	}
	return p
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(Tool(t, name), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("missing %s", what)
	}
	t.Skipf("missing %s", what)
}
