package libvirt

import (
	"context"
	"time"

	golibvirt "github.com/digitalocean/go-libvirt"

	"lifeboat/hypervisor"
)

// AgentCommand sends one QEMU guest agent command (a JSON object such as
// {"execute":"guest-ping"}) to a running VM through libvirt and returns
// the agent's JSON reply. The agent must answer within timeout (at least
// one second: libvirt counts whole seconds); a guest whose agent is not
// connected fails at once.
func (d *Driver) AgentCommand(ctx context.Context, vm, cmd string, timeout time.Duration) (string, error) {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return "", err
	}
	secs := int32(timeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	var out golibvirt.OptString
	err = callCtx(ctx, func() error {
		var e error
		out, e = d.l.QEMUDomainAgentCommand(dom, cmd, secs, 0)
		return e
	}, func() {})
	if err != nil {
		return "", d.wrap(err, "guest agent of %q", vm)
	}
	if len(out) == 0 {
		return "", nil
	}
	return out[0], nil
}

// State returns one VM's power state without listing every VM.
func (d *Driver) State(ctx context.Context, vm string) (hypervisor.State, error) {
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		return "", err
	}
	return d.state(dom)
}
