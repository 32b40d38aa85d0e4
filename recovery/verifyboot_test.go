package recovery

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirtxml"
)

func TestClassifySerial(t *testing.T) {
	for _, tc := range []struct {
		name          string
		log           string
		booted, panic string
	}{
		{"empty", "", "", ""},
		{"firmware only", "SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\n", "", ""},
		{"kernel", "[    0.000000] Linux version 6.1.0-27-cloud-amd64 (debian-kernel@lists.debian.org)\r\n[    1.2] Run /init as init process\r\n",
			"[    0.000000] Linux version 6.1.0-27-cloud-amd64 (debian-kernel@lists.debian.org)", ""},
		{"no init", "[    0.000000] Linux version 6.1.0\n[    2.1] Kernel panic - not syncing: No working init found.  Try passing init= option to kernel.\n",
			"[    0.000000] Linux version 6.1.0", "[    2.1] Kernel panic - not syncing: No working init found.  Try passing init= option to kernel."},
		{"init killed", "Linux version 6.1.0\nRun /sbin/init as init process\n[ 3.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n",
			"Linux version 6.1.0", "[ 3.0] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"},
		{"quiet kernel", "LIFEBOAT-GUEST-READY\r\n", "LIFEBOAT-GUEST-READY", ""},
		{"quiet panic", "[    2.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200\n",
			"[    2.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200", "[    2.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000200"},
		{"control bytes", "\x1b[0mLinux version 6.1.0\x07\n", "[0mLinux version 6.1.0", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := classifySerial([]byte(tc.log))
			if s.Booted != tc.booted || s.Panic != tc.panic {
				t.Errorf("got booted %q panic %q\nwant booted %q panic %q", s.Booted, s.Panic, tc.booted, tc.panic)
			}
		})
	}
}

func TestReadSerial(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small.log")
	os.WriteFile(small, []byte("hello\n"), 0o644)
	if s, n, err := readSerial(small); err != nil || s != "hello\n" || n != 6 {
		t.Errorf("small log: %q %d %v", s, n, err)
	}
	big := filepath.Join(dir, "big.log")
	b := []byte("HEAD" + strings.Repeat("x", 200<<10) + "TAIL")
	os.WriteFile(big, b, 0o644)
	s, n, err := readSerial(big)
	if err != nil || n != int64(len(b)) {
		t.Fatalf("big log: %d %v", n, err)
	}
	if !strings.HasPrefix(s, "HEAD") || !strings.HasSuffix(s, "TAIL") || !strings.Contains(s, "bytes of the serial log left out") || len(s) > serialKeepHead+serialKeepTail+100 {
		t.Errorf("big log kept %d bytes, head %q tail %q", len(s), s[:8], s[len(s)-8:])
	}
	if _, _, err := readSerial(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing log read without error")
	}
}

func TestParseExecStatus(t *testing.T) {
	enc := base64.StdEncoding.EncodeToString
	for _, tc := range []struct {
		name    string
		reply   string
		want    execStatus
		wantErr string
	}{
		{"running", `{"return":{"exited":false}}`, execStatus{}, ""},
		{"exit 0", `{"return":{"exited":true,"exitcode":0,"out-data":"` + enc([]byte("ok\n")) + `"}}`, execStatus{Exited: true, Stdout: []byte("ok\n")}, ""},
		{"exit 3 stderr", `{"return":{"exited":true,"exitcode":3,"err-data":"` + enc([]byte("bad")) + `","err-truncated":true}}`,
			execStatus{Exited: true, ExitCode: 3, Stderr: []byte("bad"), Truncated: true}, ""},
		{"signal", `{"return":{"exited":true,"signal":9}}`, execStatus{Exited: true, Signal: 9}, ""},
		{"bad base64", `{"return":{"exited":true,"out-data":"***"}}`, execStatus{}, "out-data"},
		{"no return", `{"error":{"class":"GenericError","desc":"Invalid parameter 'pid'"}}`, execStatus{}, "has no return"},
		{"not json", `<html>`, execStatus{}, "guest-exec-status reply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseExecStatus([]byte(tc.reply))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Exited != tc.want.Exited || got.ExitCode != tc.want.ExitCode || got.Signal != tc.want.Signal ||
				string(got.Stdout) != string(tc.want.Stdout) || string(got.Stderr) != string(tc.want.Stderr) || got.Truncated != tc.want.Truncated {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if pid, err := parseExecReply([]byte(`{"return":{"pid":4242}}`)); err != nil || pid != 4242 {
		t.Errorf("guest-exec reply: %d %v", pid, err)
	}
	if _, err := parseExecReply([]byte(`{"return":{}}`)); err == nil {
		t.Error("a guest-exec reply without pid was accepted")
	}
}

// TestThrowawayRewrite: the throwaway definition keeps the disks and the
// machine, and drops or replaces everything that would clash with the
// original or reach outside.
func TestThrowawayRewrite(t *testing.T) {
	src := `<domain type='qemu'>
  <name>web1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS.fd'>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram>
    <kernel>/srv/kernels/vmlinuz</kernel><cmdline>console=ttyS0 root=/dev/vda</cmdline>
  </os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/vms/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/iso/install.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/web1-data'><host name='ceph1'/></source><target dev='vdb' bus='virtio'/></disk>
    <filesystem type='mount'><source dir='/srv/share'/><target dir='share'/></filesystem>
    <channel type='file'><source path='/var/log/web1-chan.log'/><target type='virtio' name='org.example.log'/></channel>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><model type='virtio'/></interface>
    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-web1/org.qemu.guest_agent.0'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <graphics type='spice' autoport='yes'/>
    <video><model type='qxl'/></video>
  </devices>
</domain>`
	doc, err := parseDomainXML([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	doc.setDiskNBD(0, "vda", "/scratch/run/nbd.sock")
	notes := doc.throwaway("web1-verify-abcdef", "99999999-8888-4777-8666-555555555555", "/scratch/run/serial.log", "/scratch/run/nvram.fd", "/scratch/run/nbd.sock")
	raw, err := doc.marshal()
	if err != nil {
		t.Fatal(err)
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(string(raw)); err != nil {
		t.Fatal(err)
	}
	if d.Name != "web1-verify-abcdef" || d.UUID != "99999999-8888-4777-8666-555555555555" {
		t.Errorf("identity %s %s", d.Name, d.UUID)
	}
	if len(d.Devices.Interfaces) != 0 || len(d.Devices.Graphics) != 0 {
		t.Errorf("%d interfaces, %d graphics left", len(d.Devices.Interfaces), len(d.Devices.Graphics))
	}
	if len(d.Devices.Serials) != 1 || d.Devices.Serials[0].Source.File == nil || d.Devices.Serials[0].Source.File.Path != "/scratch/run/serial.log" || len(d.Devices.Consoles) != 0 {
		t.Errorf("serial %+v, %d consoles", d.Devices.Serials, len(d.Devices.Consoles))
	}
	agents := 0
	for _, ch := range d.Devices.Channels {
		if ch.Target.VirtIO == nil || ch.Target.VirtIO.Name != GuestAgentChannel {
			t.Errorf("channel %+v kept", ch.Target)
			continue
		}
		agents++
		if ch.Source.UNIX == nil || ch.Source.UNIX.Path != "" {
			t.Errorf("agent channel source %+v: want a path the host chooses", ch.Source)
		}
	}
	if agents != 1 {
		t.Errorf("%d guest agent channels", agents)
	}
	if s := d.Devices.Disks[1].Source; s != nil && s.File != nil && s.File.File != "" {
		t.Errorf("the CD-ROM's medium was not ejected: %+v\n%s", d.Devices.Disks[1].Source, raw)
	}
	if len(d.Devices.Disks) != 2 || d.Devices.Disks[0].Source.Network == nil || d.Devices.Disks[0].Source.Network.Protocol != "nbd" {
		t.Errorf("disks: want vda over NBD and the empty CD-ROM, got %d: %+v", len(d.Devices.Disks), d.Devices.Disks)
	}
	if len(d.Devices.Filesystems) != 0 || strings.Contains(string(raw), "rbd") || strings.Contains(string(raw), "web1-chan.log") {
		t.Errorf("the original's network disk, shared folder or channel file is still there:\n%s", raw)
	}
	if d.OS.NVRam == nil || d.OS.NVRam.NVRam != "/scratch/run/nvram.fd" || d.OS.NVRam.Template != "/usr/share/OVMF/OVMF_VARS.fd" {
		t.Errorf("nvram %+v", d.OS.NVRam)
	}
	if d.OS.Kernel != "/srv/kernels/vmlinuz" || d.OnPoweroff != "destroy" || d.OnCrash != "destroy" {
		t.Errorf("os %+v, on_poweroff %s, on_crash %s", d.OS, d.OnPoweroff, d.OnCrash)
	}
	if strings.Contains(string(raw), "52:54:00:aa:bb:cc") {
		t.Error("the original MAC is still in the definition")
	}
	if j := strings.Join(notes, "; "); !strings.Contains(j, "1 network interface(s) removed") || !strings.Contains(j, "sda ejected") ||
		!strings.Contains(j, "disk vdb is not part of the point") || !strings.Contains(j, "1 shared host folder(s) removed") {
		t.Errorf("notes %q", j)
	}
}

func TestDecodeBootVerdict(t *testing.T) {
	good := BootVerdict{Version: 1, Point: "20261125T150000Z-0123abcd", Verdict: VerdictNoAgent, Time: time.Now().UTC()}
	b, _ := json.Marshal(good)
	if v, err := DecodeBootVerdict(b); err != nil || v.Verdict != VerdictNoAgent {
		t.Fatalf("%+v %v", v, err)
	}
	for _, bad := range []string{`{}`, `{"version":1,"point":"x","verdict":"booted-agent-ok"}`,
		`{"version":1,"point":"20261125T150000Z-0123abcd","verdict":"maybe"}`, `[`} {
		if _, err := DecodeBootVerdict([]byte(bad)); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
}

func FuzzClassifySerial(f *testing.F) {
	f.Add([]byte("Linux version 6.1\nKernel panic - not syncing: x\n"))
	f.Add([]byte("\x00\xff\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := classifySerial(b)
		if len(s.Booted) > 400 || len(s.Panic) > 400 {
			t.Fatalf("kept %d/%d bytes of a line", len(s.Booted), len(s.Panic))
		}
	})
}

func FuzzParseExecStatus(f *testing.F) {
	f.Add([]byte(`{"return":{"exited":true,"exitcode":1,"out-data":"aGk="}}`))
	f.Add([]byte(`{"return":{"pid":1}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseExecStatus(b)
		parseExecReply(b)
	})
}

func FuzzDecodeBootVerdict(f *testing.F) {
	f.Add([]byte(`{"version":1,"point":"20261125T150000Z-0123abcd","verdict":"did-not-boot","serial_log":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := DecodeBootVerdict(b)
		if err == nil && (v.Version != 1 || v.Point == "") {
			t.Fatalf("accepted %+v", v)
		}
	})
}
