package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"lifeboat/hypervisor"
	"lifeboat/hypervisor/libvirt"
)

// NewLibvirt is the Driver of a libvirt host (opts.URI: qemu:///system or
// qemu:///session, with ?socket=…): the agent protects the VMs that
// daemon runs. It connects at first use and again after the connection
// is lost.
//
// A VM is migrating when it has a libvirt job whose operation is an
// incoming or outgoing migration, or is paused (or running post-copy)
// for a migration: it is reported "migrating" and its backup deferred.
func NewLibvirt(opts libvirt.Options, log *slog.Logger) *Hypervisor {
	return &Hypervisor{
		Kind: "libvirt",
		Log:  log,
		Connect: func(ctx context.Context) (hypervisor.Driver, error) {
			return dialLibvirt(ctx, opts)
		},
		CannotOnline: libvirtCannotOnline,
	}
}

// libvirtConn is the driver's connection plus a second one of our own
// for what the driver does not ask (job operations, state reasons).
type libvirtConn struct {
	*libvirt.Driver
	probe *golibvirt.Libvirt
}

func dialLibvirt(ctx context.Context, opts libvirt.Options) (*libvirtConn, error) {
	d, err := libvirt.Open(ctx, opts)
	if err != nil {
		return nil, err
	}
	uri := opts.URI
	if uri == "" {
		uri = "qemu:///system"
	}
	sock, mode, err := libvirtSocket(uri)
	if err != nil {
		d.Close()
		return nil, err
	}
	p := golibvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(sock), dialers.WithLocalTimeout(15*time.Second)))
	done := make(chan error, 1)
	go func() { done <- p.ConnectToURI(golibvirt.ConnectURI("qemu:///" + mode)) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		go func() {
			if <-done == nil {
				p.Disconnect()
			}
		}()
		err = ctx.Err()
	}
	if err != nil {
		d.Close()
		return nil, fmt.Errorf("libvirt: connect to %s: %w", uri, err)
	}
	return &libvirtConn{Driver: d, probe: p}, nil
}

// libvirtSocket is the daemon's socket for a local URI, as
// hypervisor/libvirt finds it.
func libvirtSocket(uri string) (sock, mode string, err error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", fmt.Errorf("libvirt: bad URI %q: %w", uri, err)
	}
	mode = strings.TrimPrefix(u.Path, "/")
	if sock = u.Query().Get("socket"); sock != "" {
		return sock, mode, nil
	}
	if mode == "system" {
		return "/run/libvirt/libvirt-sock", mode, nil
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		return filepath.Join(x, "libvirt", "libvirt-sock"), mode, nil
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "libvirt", "libvirt-sock"), mode, nil
}

// Close closes both connections.
func (c *libvirtConn) Close() error {
	c.probe.Disconnect()
	return c.Driver.Close()
}

// Alive says whether the daemon still answers on the connection.
func (c *libvirtConn) Alive() bool { return c.probe.IsConnected() }

// Migrations lists the running VMs (by UUID) that are migrating in or out
// now, with what shows it.
func (c *libvirtConn) Migrations(ctx context.Context) (map[string]string, error) {
	doms, _, err := c.probe.ConnectListAllDomains(1, golibvirt.ConnectListDomainsActive)
	if err != nil {
		return nil, fmt.Errorf("libvirt: list running VMs: %w", err)
	}
	out := map[string]string{}
	for _, dom := range doms {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		id := fmt.Sprintf("%x-%x-%x-%x-%x", dom.UUID[0:4], dom.UUID[4:6], dom.UUID[6:8], dom.UUID[8:10], dom.UUID[10:16])
		st, reason, err := c.probe.DomainGetState(dom, 0)
		if golibvirt.IsNotFound(err) {
			continue // gone while we listed: a migration that just ended
		}
		if err != nil {
			return nil, fmt.Errorf("libvirt: state of %s: %w", dom.Name, err)
		}
		if why := migrationState(golibvirt.DomainState(st), reason); why != "" {
			out[id] = why
			continue
		}
		typ, params, err := c.probe.DomainGetJobStats(dom, 0)
		var e golibvirt.Error
		if errors.As(err, &e) && golibvirt.ErrorNumber(e.Code) == golibvirt.ErrOperationUnsupported {
			// The destination of a live migration: libvirt keeps job
			// statistics on the source only, and says so, while the
			// incoming VM sits paused ("starting up").
			out[id] = "an incoming migration job runs"
			continue
		}
		if err != nil || golibvirt.DomainJobType(typ) == golibvirt.DomainJobNone {
			continue // no job (or the VM went away)
		}
		for _, p := range params {
			if p.Field != golibvirt.DomainJobOperationStr {
				continue
			}
			switch op := typedInt(p.Value.I); golibvirt.DomainJobOperation(op) {
			case golibvirt.DomainJobOperationStrMigrationIn:
				out[id] = "an incoming migration job runs"
			case golibvirt.DomainJobOperationStrMigrationOut:
				out[id] = "an outgoing migration job runs"
			}
		}
	}
	return out, nil
}

// migrationState says why a state and its reason mean a migration.
func migrationState(st golibvirt.DomainState, reason int32) string {
	switch st {
	case golibvirt.DomainPaused:
		switch golibvirt.DomainPausedReason(reason) {
		case golibvirt.DomainPausedMigration:
			return "paused for a migration"
		case golibvirt.DomainPausedPostcopy:
			return "paused in a post-copy migration"
		case golibvirt.DomainPausedPostcopyFailed:
			return "paused after a failed post-copy migration"
		}
	case golibvirt.DomainRunning:
		if golibvirt.DomainRunningReason(reason) == golibvirt.DomainRunningPostcopy {
			return "running in a post-copy migration"
		}
	}
	return ""
}

func typedInt(v any) int64 {
	switch x := v.(type) {
	case int32:
		return int64(x)
	case uint32:
		return int64(x)
	case int64:
		return x
	case uint64:
		return int64(x)
	}
	return -1
}

// libvirtCannotOnline says an online backup failed because libvirt or
// QEMU cannot back this VM up online (an unsupported disk or
// configuration, no backup support), not because of a passing fault.
func libvirtCannotOnline(err error) bool {
	var e golibvirt.Error
	if !errors.As(err, &e) {
		return false
	}
	switch golibvirt.ErrorNumber(e.Code) {
	case golibvirt.ErrNoSupport, golibvirt.ErrOperationUnsupported, golibvirt.ErrArgumentUnsupported, golibvirt.ErrConfigUnsupported:
		return true
	}
	// QEMU cannot keep a checkpoint's persistent bitmap in a qcow2 v2
	// (compat=0.10) image, and the driver asks for one on every qcow2
	// disk: such a VM cannot be backed up online.
	return strings.Contains(e.Message, "Cannot store dirty bitmaps in qcow2 v2 files")
}
