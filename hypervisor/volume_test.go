package hypervisor

import (
	"os"
	"path/filepath"
	"testing"
)

func TestVolumeOf(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	table := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /var/lib/libvirt rw - xfs /dev/sdb1 rw
31 22 0:26 / /mnt/my\040share rw shared:5 master:2 - nfs4 srv:/export rw
32 30 0:27 / /var/lib/libvirt rw - tmpfs tmpfs rw
bad line
`
	if err := os.WriteFile(mi, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path string
		want Volume
	}{
		{"/etc/passwd", Volume{Mount: "/", Source: "/dev/sda1", FSType: "ext4"}},
		{"/var/lib/libvirt/images/a.qcow2", Volume{Mount: "/var/lib/libvirt", Source: "tmpfs", FSType: "tmpfs"}},
		{"/var/lib/libvirtx/a", Volume{Mount: "/", Source: "/dev/sda1", FSType: "ext4"}},
		{"/mnt/my share/vm/a.vhdx", Volume{Mount: "/mnt/my share", Source: "srv:/export", FSType: "nfs4"}},
	} {
		if got := VolumeOf(mi, c.path); got != c.want {
			t.Errorf("VolumeOf(%q) = %+v, want %+v", c.path, got, c.want)
		}
	}
	if got := VolumeOf(filepath.Join(t.TempDir(), "missing"), "/x"); got != (Volume{}) {
		t.Errorf("missing table: %+v", got)
	}
}
