package recovery

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// relocateChardevFiles moves every file a character device writes on the
// host (a serial or console log, a file channel, a <log file=…>) that lies
// outside dir into dir, keeping its base name: on another host, or for a
// copy beside the original, the source host's path is not writable (a
// session daemon's user cannot create files in another node's folder) or
// belongs to the original, and QEMU refuses to start when it cannot open
// it. A serial port and the console that mirrors it name the same file and
// keep naming one file. It returns a note per moved file.
func (d *domainDoc) relocateChardevFiles(dir string) []string {
	if d.dom.Devices == nil {
		return nil
	}
	moved := map[string]string{} // old → new
	used := map[string]bool{}
	var notes []string
	move := func(p *string) {
		old := *p
		if old == "" || strings.HasPrefix(old, dir+string(filepath.Separator)) {
			return
		}
		if nw, ok := moved[old]; ok {
			*p = nw
			return
		}
		base := filepath.Base(old)
		nw := filepath.Join(dir, base)
		for i := 2; used[nw]; i++ {
			nw = filepath.Join(dir, fmt.Sprintf("%d-%s", i, base))
		}
		used[nw], moved[old] = true, nw
		*p = nw
		notes = append(notes, fmt.Sprintf("the console/serial file %s is written to %s instead", old, nw))
	}
	fix := func(src *libvirtxml.DomainChardevSource, log *libvirtxml.DomainChardevLog) {
		if src != nil && src.File != nil {
			move(&src.File.Path)
		}
		if log != nil {
			move(&log.File)
		}
	}
	dev := d.dom.Devices
	for i := range dev.Serials {
		fix(dev.Serials[i].Source, dev.Serials[i].Log)
	}
	for i := range dev.Consoles {
		fix(dev.Consoles[i].Source, dev.Consoles[i].Log)
	}
	for i := range dev.Parallels {
		fix(dev.Parallels[i].Source, dev.Parallels[i].Log)
	}
	for i := range dev.Channels {
		fix(dev.Channels[i].Source, dev.Channels[i].Log)
	}
	return notes
}

// finishDir gives a target folder this recovery created the access its
// files get (0660 files: a 0770 folder), keeping a setgid bit, so that the
// host's hypervisor user can create files there (console logs, snapshots),
// as it can read and write the disks.
func finishDir(p *Plan) error {
	if p.anc == "" || p.anc == p.Dir {
		return nil // the folder existed: it is the operator's
	}
	mode := p.req.FileMode
	if mode == 0 {
		mode = 0o660
	}
	perm := mode.Perm() | 0o700
	for _, r := range []os.FileMode{0o040, 0o004} {
		if perm&r != 0 {
			perm |= r >> 2 // readable → searchable
		}
	}
	fi, err := os.Stat(p.Dir)
	if err != nil {
		return err
	}
	if err := os.Chmod(p.Dir, perm|fi.Mode()&os.ModeSetgid); err != nil {
		return err
	}
	if p.req.ChownFiles {
		return os.Chown(p.Dir, p.req.UID, p.req.GID)
	}
	return nil
}
