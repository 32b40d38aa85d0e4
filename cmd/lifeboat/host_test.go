package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/testenv"
)

// Issue 3, host bare-metal backup: an image-file "host" with a GPT, a
// filesystem and configuration files round-trips bit-identically onto a
// new image file, and its configuration comes back in a folder.
func TestHostBareMetal(t *testing.T) {
	dir := t.TempDir()
	hostDisk := filepath.Join(dir, "sda.img")
	os.WriteFile(hostDisk, nil, 0o644)
	os.Truncate(hostDisk, 128<<20)
	sfdisk := testenv.Tool(t, "sfdisk")
	cmd := exec.Command(sfdisk, "--quiet", hostDisk)
	cmd.Stdin = strings.NewReader("label: gpt\n,32M,L\n,,L\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v %s", err, out)
	}
	// A real ext4 root in partition 2 (offset 33 MiB: sfdisk aligns to 1 MiB).
	tree := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("node7\n"), 0o644)
	testenv.Run(t, "mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, "-E", "offset="+itoa(33<<20), hostDisk, itoa(64<<10)+"k")
	conf := filepath.Join(dir, "etc-libvirt")
	os.MkdirAll(filepath.Join(conf, "qemu"), 0o755)
	os.WriteFile(filepath.Join(conf, "qemu", "vm1.xml"), []byte("<domain><name>vm1</name></domain>\n"), 0o600)

	repoDir := filepath.Join(dir, "repo")
	lb(t, repoDir, false, "repo", "init")
	lb(t, repoDir, false, "backup", "--host", "--name", "node7", "--disk", hostDisk, "--config", conf)
	pts := points(t, repoDir)
	if len(pts) != 1 {
		t.Fatalf("%d points", len(pts))
	}
	roles := map[string]string{}
	for _, f := range pts[0].Files {
		roles[f.Path] = f.Role
	}
	cfgPath := "host-config/" + strings.TrimPrefix(filepath.ToSlash(filepath.Join(conf, "qemu", "vm1.xml")), "/")
	if roles["disks/sda.img"] != "disk" || roles["partition-table/sda.img.json"] != "partition-table" || roles[cfgPath] != "config" {
		t.Fatalf("host point files: %v", roles)
	}
	var kind struct {
		Kind string `json:"kind"`
	}
	out := lb(t, repoDir, false, "points", "--json")
	var all []json.RawMessage
	json.Unmarshal([]byte(out), &all)
	json.Unmarshal(all[0], &kind)
	if kind.Kind != "host" {
		t.Errorf("point kind %q, want host", kind.Kind)
	}
	// Onto a new image file: bit-identical.
	target := filepath.Join(dir, "new-sda.img")
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--file", "disks/sda.img", "--to-device", target)
	if fileHash(t, target) != fileHash(t, hostDisk) {
		t.Fatal("restored host disk differs")
	}
	// Onto an existing image full of other bytes: every byte is replaced
	// where the point has data, and the rest reads as the source does.
	os.WriteFile(target, []byte(strings.Repeat("x", 1<<20)), 0o644)
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--file", "disks/sda.img", "--to-device", target)
	if fileHash(t, target) != fileHash(t, hostDisk) {
		t.Fatal("restore over an old image differs")
	}
	// The configuration and partition table come back as files.
	folder := filepath.Join(dir, "out")
	lb(t, repoDir, false, "restore", "--point", pts[0].ID, "--to", folder)
	got, _ := os.ReadFile(filepath.Join(folder, filepath.FromSlash(cfgPath)))
	if string(got) != "<domain><name>vm1</name></domain>\n" {
		t.Errorf("restored config: %q", got)
	}
	table, _ := os.ReadFile(filepath.Join(folder, "partition-table", "sda.img.json"))
	if !strings.Contains(string(table), `"scheme": "gpt"`) || !strings.Contains(string(table), `"fs": "ext4"`) {
		t.Errorf("partition table: %s", table)
	}
}
