package libvirt

// ScratchDir is the folder the driver gives the daemon for scratch files
// and NBD sockets (Options.ScratchDir, or the mode's default), as the
// daemon sees it. An agent's verify-boot puts its run folder there: the
// host's QEMU can create files in it.
func (d *Driver) ScratchDir() string { return d.scratch }
