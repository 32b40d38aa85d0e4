package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/disk/formats"
	"lifeboat/lab"
	"lifeboat/recovery"
)

func shell(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// recoverTree records every entry under a folder with size and mtime.
func recoverTree(dir string) map[string]string {
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			if fi, err := d.Info(); err == nil {
				out[p] = fmt.Sprintf("%v %d %d", fi.Mode(), fi.Size(), fi.ModTime().UnixNano())
			}
		}
		return nil
	})
	return out
}

// Method 3 through the CLI on a VM folder whose disk is a 2-deep qcow2
// snapshot chain: one merged disk with the newest data, the captured
// configuration and vm.json; then `vm rebuild` brings up a running VM with
// the original MAC. Refusals (LB-32579, LB-32613, LB-40004) change nothing.
func TestRecoverFolderAndRebuild(t *testing.T) {
	l := lab.Start(t)
	n0 := l.Node("node0")
	start := time.Now()
	name := fmt.Sprintf("lbf%06x", time.Now().UnixNano()&0xffffff)
	work := filepath.Join(n0.Disks, name)
	src, out := filepath.Join(work, "src"), filepath.Join(work, "out")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })

	// base ← s1 ← s2, with s2 overwriting part of what s1 wrote.
	base := filepath.Join(src, "base.qcow2")
	in, err := os.Open(l.Images.NTFS)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(f, in)
	f.Close()
	in.Close()
	shell(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2", filepath.Join(src, "s1.qcow2"))
	shell(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xa1 8M 1M", filepath.Join(src, "s1.qcow2"))
	shell(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "s1.qcow2", filepath.Join(src, "s2.qcow2"))
	shell(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0xa2 9M 1M", "-c", "write -P 0xa3 8M 512k", filepath.Join(src, "s2.qcow2"))
	mac := fmt.Sprintf("52:54:00:1d:%02x:%02x", os.Getpid()&0xff, time.Now().UnixNano()&0xff)
	xml := fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='%s'/>
      <model type='virtio'/>
    </interface>
    <memballoon model='none'/>
  </devices>
</domain>
`, name, fmt.Sprintf("6c6f6174-0000-4000-8000-%012x", time.Now().UnixNano()&0xffffffffffff), filepath.Join(src, "s2.qcow2"), mac)
	if err := os.WriteFile(filepath.Join(src, "vm.xml"), []byte(xml), 0o644); err != nil {
		t.Fatal(err)
	}
	repoDir := filepath.Join(t.TempDir(), "repo")
	lb(t, repoDir, false, "repo", "init")
	var bk struct {
		Point string `json:"point"`
	}
	json.Unmarshal([]byte(lb(t, repoDir, false, "backup", "--name", name, src, "--json")), &bk)
	layers := 0
	for _, pf := range points(t, repoDir)[0].Files {
		if pf.Format == "qcow2" {
			layers++
		}
	}
	if layers != 3 {
		t.Fatalf("point holds %d qcow2 layers, want the 3 of the chain", layers)
	}

	// Refusals through the CLI write nothing.
	before := recoverTree(work)
	beforeRepo := recoverTree(repoDir)
	stderr := lb(t, repoDir, true, "recover", "--method", "original", "--point", bk.Point, "--libvirt", n0.URI)
	if !strings.Contains(stderr, "LB-32579") || !strings.Contains(stderr, "method 2") {
		t.Errorf("method 1 on a VM that does not exist: %s", stderr)
	}
	stderr = lb(t, repoDir, true, "recover", "--method", "vm", "--point", bk.Point, "--host", n0.URI, "--to", l.Shared, "--shared-volume", l.Shared)
	if !strings.Contains(stderr, "LB-32613") || !strings.Contains(stderr, "the root of a shared volume cannot hold a VM's files; choose a folder on it") {
		t.Errorf("shared volume root: %s", stderr)
	}
	stderr = lb(t, repoDir, true, "vm", "make-ha", name, "--libvirt", n0.URI)
	if !strings.Contains(stderr, "LB-40004") {
		t.Errorf("make-ha without an HA manager: %s", stderr)
	}
	for p, v := range recoverTree(work) {
		if before[p] != v {
			t.Errorf("a refused command wrote %s", p)
		}
	}
	for p, v := range recoverTree(repoDir) {
		if beforeRepo[p] != v {
			t.Errorf("a refused command wrote %s", p)
		}
	}

	// A dry run prints the plan and writes nothing.
	o := lb(t, repoDir, false, "recover", "--method", "folder", "--point", bk.Point, "--to", out, "--dry-run")
	if !strings.Contains(o, "preflight passed") || !strings.Contains(o, "merged into one disk") {
		t.Errorf("dry run: %s", o)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a dry run created the target folder")
	}

	// Method 3.
	var m3 struct {
		Plan   recovery.Plan   `json:"plan"`
		Result recovery.Result `json:"result"`
	}
	if err := json.Unmarshal([]byte(lb(t, repoDir, false, "recover", "--method", "folder", "--point", bk.Point, "--to", out, "--json")), &m3); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(out)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "s2.qcow2 vm.json vm.xml" {
		t.Fatalf("folder holds %v, want the merged disk, the configuration and vm.json", names)
	}
	merged := filepath.Join(out, "s2.qcow2")
	img, err := formats.Open(context.Background(), merged)
	if err != nil {
		t.Fatal(err)
	}
	if img.Parent() != nil || img.Info().ParentPath != "" {
		t.Errorf("merged disk still has a parent %q", img.Info().ParentPath)
	}
	img.Close()
	// Bit-identical to what the chain shows (newest data wins).
	if o := shell(t, "qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", merged, filepath.Join(src, "s2.qcow2")); !strings.Contains(o, "identical") {
		t.Errorf("qemu-img compare: %s", o)
	}
	fv, err := recovery.ReadFolder(out)
	if err != nil {
		t.Fatal(err)
	}
	if fv.CPUs != 1 || fv.MemoryMiB != 64 || len(fv.NICs) != 1 || fv.NICs[0].MAC != mac || fv.NICs[0].Model != "virtio" ||
		len(fv.Lifeboat.Disks) != 1 || fv.Lifeboat.Disks[0].File != "s2.qcow2" || fv.Lifeboat.Disks[0].Target != "vda" || fv.Lifeboat.Config != "vm.xml" {
		t.Errorf("vm.json: %+v", fv)
	}

	// The source VM is gone; rebuild it from the folder.
	t.Cleanup(func() {
		exec.Command("virsh", "-c", n0.URI, "destroy", name).Run()
		exec.Command("virsh", "-c", n0.URI, "undefine", name).Run()
	})
	o = lb(t, repoDir, false, "vm", "rebuild", out, "--libvirt", n0.URI)
	if !strings.Contains(o, "rebuilt VM "+name) || !strings.Contains(o, "running") {
		t.Errorf("vm rebuild: %s", o)
	}
	if s := vmState(t, n0.URI, name); s != "running" {
		t.Errorf("rebuilt VM is %q", s)
	}
	if o := shell(t, "virsh", "-c", n0.URI, "domiflist", name); !strings.Contains(o, mac) {
		t.Errorf("rebuilt VM lost its MAC %s:\n%s", mac, o)
	}
	if o := shell(t, "virsh", "-c", n0.URI, "domblklist", name); !strings.Contains(o, merged) {
		t.Errorf("rebuilt VM does not use %s:\n%s", merged, o)
	}
	// A second rebuild clashes with the first.
	if stderr := lb(t, repoDir, true, "vm", "rebuild", out, "--libvirt", n0.URI); !strings.Contains(stderr, "LB-40003") {
		t.Errorf("second rebuild: %s", stderr)
	}
	t.Logf("method 3 + rebuild through the CLI: %.1fs", time.Since(start).Seconds())
}
