package libvirt

import (
	"context"

	golibvirt "github.com/digitalocean/go-libvirt"

	"lifeboat/vmconfig"
)

// ParseConfig summarises a libvirt domain definition (as Config.Raw holds
// it, or a point's config.xml) into the neutral VM summary.
func ParseConfig(raw []byte) (vmconfig.VM, error) {
	_, s, _, err := parseDomain(raw)
	return s, err
}

// RestoreFrom starts a defined VM from a saved memory state in a file (the
// format of virDomainSave and of managed save), with config as its
// definition: it must describe the same VM and devices as the saved one,
// but its disk paths may differ. The path is as the daemon sees it.
func (d *Driver) RestoreFrom(ctx context.Context, statePath string, config []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	err := d.l.DomainRestoreFlags(statePath, golibvirt.OptString{string(config)}, 0)
	return d.wrap(err, "restore from %s", statePath)
}
