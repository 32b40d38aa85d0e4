package itemlevel

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"unicode/utf16"

	"lifeboat/internal/testenv"
)

// patchAll replaces every occurrence of old by new (same length) in the
// file and returns how many it replaced.
func patchAll(t *testing.T, path string, old, new []byte) int {
	t.Helper()
	if len(old) != len(new) {
		t.Fatalf("patch %q: length %d != %d", old, len(old), len(new))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := bytes.Count(b, old)
	if n == 0 {
		t.Fatalf("placeholder %q not found in %s", old, path)
	}
	b = bytes.ReplaceAll(b, old, new)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return n
}

func utf16Bytes(s string) []byte {
	var b []byte
	for _, c := range utf16.Encode([]rune(s)) {
		b = append(b, byte(c), byte(c>>8))
	}
	return b
}

// checkNoEscape extracts the whole volume and a tar of it, and checks that
// nothing lands outside the target, that only the legitimate files are
// written, and that every nasty entry is reported.
func checkNoEscape(t *testing.T, fsys FS, legit map[string][]byte, nasty []string) {
	ctx := context.Background()
	parent := t.TempDir()
	sentinel := filepath.Join(parent, "sentinel")
	os.WriteFile(sentinel, []byte("x"), 0o644)
	target := filepath.Join(parent, "target")

	// The listing shows the nasty names, flagged, with no path.
	es, err := fsys.ReadDir("")
	if err != nil {
		t.Fatal(err)
	}
	invalid := map[string]string{}
	for _, e := range es {
		if e.Invalid != "" {
			if e.Path != "" {
				t.Errorf("invalid entry %q has path %q", e.Name, e.Path)
			}
			invalid[e.Name] = e.Invalid
		}
	}
	for _, n := range nasty {
		if _, ok := invalid[n]; !ok && !strings.HasPrefix(n, "link") {
			t.Errorf("%q not listed as invalid (invalid: %q)", n, invalid)
		}
	}

	res, err := Extract(ctx, fsys, "/", target, ExtractOptions{})
	if err != nil {
		t.Fatalf("Extract: %v", err)
	}
	sameFiles(t, "extract", readTree(t, target), legit)
	// Nothing else appeared beside the target or above it.
	ents, _ := os.ReadDir(parent)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "sentinel,target" {
		t.Errorf("beside the target: %q", names)
	}
	for _, p := range []string{
		filepath.Join(filepath.Dir(parent), "escape.txt"),
		filepath.Join(filepath.Dir(parent), "AT.TXT"),
		"/abs.txt",
	} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was written", p)
		}
	}
	var reported []string
	for _, s := range res.Skipped {
		reported = append(reported, s.Path+" ("+s.Reason+")")
	}
	sort.Strings(reported)
	t.Logf("skipped: %q", reported)
	for _, n := range nasty {
		found := false
		for _, s := range res.Skipped {
			if strings.HasSuffix(s.Path, "/"+n) && s.Reason != "" {
				found = true
			}
		}
		if !found {
			t.Errorf("%q not reported as skipped; skipped: %q", n, reported)
		}
	}

	var buf bytes.Buffer
	tres, err := WriteTar(ctx, fsys, []string{""}, &buf)
	if err != nil {
		t.Fatalf("WriteTar: %v", err)
	}
	sameFiles(t, "tar", readTar(t, buf.Bytes()), legit)
	if len(tres.Skipped) != len(res.Skipped) {
		t.Errorf("tar skipped %d entries, extract %d", len(tres.Skipped), len(res.Skipped))
	}
}

func TestTraversalExt4(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "EEEEEE"), 0o755)
	legit := map[string][]byte{"ok.txt": []byte("fine\n"), "sub/inner.txt": []byte("inner\n"), "GGGGGGG.txt": []byte("latin-1\n")}
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	for p, b := range legit {
		os.WriteFile(filepath.Join(src, p), b, 0o644)
	}
	// A name that is not UTF-8 is legitimate on Linux and is extracted.
	legit["bad\xffxyz.txt"] = legit["GGGGGGG.txt"]
	delete(legit, "GGGGGGG.txt")
	for _, n := range []string{"AAAAAAAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCC", "DDDDDDDD", "EEEEEE/inner.txt"} {
		os.WriteFile(filepath.Join(src, n), []byte("evil\n"), 0o644)
	}
	os.Symlink("/etc/passwd", filepath.Join(src, "link-abs"))
	os.Symlink("../../../outside", filepath.Join(src, "link-up"))
	img := filepath.Join(dir, "ext.img")
	sparseFile(t, img, 8*mib)
	testenv.Run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", src, img)
	patchAll(t, img, []byte("AAAAAAAAAAAAAAAA"), []byte("../../escape.txt"))
	patchAll(t, img, []byte("BBBBBBBBBBB"), []byte("..\\evil.txt"))
	patchAll(t, img, []byte("CCCCCCC"), []byte("a\x00b.txt"))
	patchAll(t, img, []byte("DDDDDDDD"), []byte("/abs.txt"))
	patchAll(t, img, []byte("EEEEEE"), []byte("../dir"))
	patchAll(t, img, []byte("GGGGGGG"), []byte("bad\xffxyz"))

	fsys := openWhole(t, img)
	checkNoEscape(t, fsys, legit, []string{"../../escape.txt", "..\\evil.txt", "a\x00b.txt", "/abs.txt", "../dir", "link-abs", "link-up"})
}

func TestTraversalFAT(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	legit := map[string][]byte{"ok.txt": []byte("fine\n"), "sub/inner.txt": []byte("inner\n")}
	for p, b := range legit {
		os.WriteFile(filepath.Join(src, p), b, 0o644)
	}
	for _, n := range []string{"AAAAAAAA.TXT", "BBBBBBBB.TXT", "zzzzzlong name.txt"} {
		os.WriteFile(filepath.Join(src, n), []byte("evil\n"), 0o644)
	}
	img := filepath.Join(dir, "fat.img")
	testenv.Run(t, "mkfs.fat", "-C", img, "4096")
	testenv.Run(t, "mcopy", "-s", "-i", img, filepath.Join(src, "ok.txt"), filepath.Join(src, "sub"),
		filepath.Join(src, "AAAAAAAA.TXT"), filepath.Join(src, "BBBBBBBB.TXT"), filepath.Join(src, "zzzzzlong name.txt"), "::/")
	// Short names (no long-name entries for upper-case 8.3 names) and
	// the characters of a long name.
	patchAll(t, img, []byte("AAAAAAAATXT"), []byte("../../ATTXT"))
	patchAll(t, img, []byte("BBBBBBBBTXT"), []byte("..\\BBBBBTXT"))
	patchAll(t, img, utf16Bytes("zzzzz"), utf16Bytes("../.."))

	fsys := openWhole(t, img)
	checkNoEscape(t, fsys, legit, []string{"../../AT.TXT", "..\\BBBBB.TXT", "../..long name.txt"})
}

// TestTargetSymlinks plants symlinks in the target folder: extraction
// neither follows them nor writes through them.
func TestTargetSymlinks(t *testing.T) {
	dir := t.TempDir()
	tr := sampleTree(false)
	img := buildExt(t, dir, tr, 32*mib, "-t", "ext4")
	fsys := openWhole(t, img)
	ctx := context.Background()

	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	target := t.TempDir()
	os.Symlink(victim, filepath.Join(target, "hello.txt"))
	os.Symlink(outside, filepath.Join(target, "Docs"))

	if _, err := Extract(ctx, fsys, "hello.txt", target, ExtractOptions{}); err == nil {
		t.Error("Extract over a planted symlink succeeded without Overwrite")
	}
	if _, err := Extract(ctx, fsys, "Docs", target, ExtractOptions{Overwrite: true}); err == nil {
		t.Error("Extract into a symlinked folder succeeded")
	}
	if _, err := Extract(ctx, fsys, "hello.txt", target, ExtractOptions{Overwrite: true}); err != nil {
		t.Errorf("Extract with Overwrite: %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Errorf("victim outside the target now holds %q", b)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Errorf("outside folder has %d entries", len(ents))
	}
	fi, err := os.Lstat(filepath.Join(target, "hello.txt"))
	if err != nil || !fi.Mode().IsRegular() {
		t.Errorf("hello.txt in the target is %v, %v; want the regular file replacing the link", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "hello.txt")); !bytes.Equal(b, tr.files["hello.txt"]) {
		t.Errorf("hello.txt holds %q", b)
	}
}
