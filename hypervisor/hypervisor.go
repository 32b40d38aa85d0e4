// Package hypervisor defines what Lifeboat needs from a host that runs VMs:
// list them with their files, read their configuration, take a consistent
// backup of one (online through the hypervisor's backup API, or offline),
// and define, start, stop and undefine VMs for recovery.
//
// Drivers live in sub-packages (hypervisor/libvirt; Hyper-V VM folders in
// hypervisor/hyperv). Every driver runs the conformance suite in
// hypervisor/hypervisortest.
//
// A driver never reads a running VM's image files directly: a hypervisor
// holds unflushed metadata, so the file can differ from what the guest sees.
// Online backups read through the hypervisor (libvirt: NBD pull mode);
// offline backups read files only once the VM is stopped or saved.
package hypervisor

import (
	"context"
	"errors"

	"lifeboat/disk"
	"lifeboat/vmconfig"
)

// Driver is one hypervisor host.
type Driver interface {
	// Name is the driver's name ("libvirt", "hyperv-folder").
	Name() string
	// Host names the host the driver talks to.
	Host(ctx context.Context) (string, error)
	// List returns every VM the host knows, running or not.
	List(ctx context.Context) ([]VMInfo, error)
	// Config returns a VM's configuration, raw and parsed.
	Config(ctx context.Context, vm string) (*Config, error)

	// Define registers a VM from a raw configuration (as Config.Raw
	// returns it) and returns its name. An existing VM of that name is
	// an error unless the configuration has the same ID (then it is
	// updated).
	Define(ctx context.Context, raw []byte) (string, error)
	// Start powers a VM on (from its saved state when it has one).
	Start(ctx context.Context, vm string) error
	// Shutdown asks the guest to power off and returns without waiting.
	Shutdown(ctx context.Context, vm string) error
	// Destroy powers a VM off at once.
	Destroy(ctx context.Context, vm string) error
	// Undefine removes a stopped VM's definition (and the hypervisor's
	// metadata about it: saved state, snapshot and checkpoint records),
	// never its disks.
	Undefine(ctx context.Context, vm string) error
	// ManagedSave saves a running VM's memory to the hypervisor's own
	// saved-state file and stops it; Restore (or Start) resumes it.
	ManagedSave(ctx context.Context, vm string) error
	Restore(ctx context.Context, vm string) error

	// Backup begins a backup of a VM. The caller reads the session's
	// disks and must call End, whatever happens.
	Backup(ctx context.Context, vm string, opts BackupOptions) (BackupSession, error)

	// Close releases the connection.
	Close() error
}

// State is a VM's power state.
type State string

const (
	Running State = "running"
	Paused  State = "paused"
	ShutOff State = "shutoff"
	// Saved is shut off with a saved memory state to resume from.
	Saved   State = "saved"
	Crashed State = "crashed"
	Other   State = "other"
)

// Roles of a VM's files (the same words as repository manifests use).
const (
	RoleConfig           = "config"
	RoleDisk             = "disk"
	RoleDifferencingDisk = "differencing-disk"
	RoleSavedState       = "saved-state"
	RoleOther            = "other"
)

// VMInfo is one VM as List sees it.
type VMInfo struct {
	Name  string `json:"name"`
	ID    string `json:"id"`
	State State  `json:"state"`
	Files []File `json:"files"`
}

// File is one file that belongs to a VM.
type File struct {
	// Path is the file's path as this process can open it.
	Path string `json:"path"`
	Role string `json:"role"`
	// Format is the image format of a disk ("" for other files).
	Format disk.Format `json:"format,omitempty"`
	// Target is the disk's name inside the VM ("vda"), for disks.
	Target string `json:"target,omitempty"`
	// Parent is the path of the parent (backing) layer of a differencing
	// disk.
	Parent string `json:"parent,omitempty"`
	// Volume is the filesystem the file lives on.
	Volume Volume `json:"volume"`
}

// Volume is the mounted filesystem a file lives on.
type Volume struct {
	// Mount is the mount point ("/var/lib/libvirt").
	Mount string `json:"mount"`
	// Source is what is mounted there (a device, a server share).
	Source string `json:"source,omitempty"`
	// FSType is the filesystem type ("ext4", "nfs4").
	FSType string `json:"fstype,omitempty"`
}

// Config is a VM's configuration: the hypervisor's own document, kept
// byte for byte so a recovery can define the VM again, plus the neutral
// summary a recovery point stores.
type Config struct {
	// Format names the raw document's format ("libvirt-domain-xml",
	// "hyperv-vmcx-xml").
	Format string `json:"format"`
	Raw    []byte `json:"-"`
	// Summary is the parsed, hypervisor-neutral view.
	Summary vmconfig.VM `json:"summary"`
}

// BackupOptions choose how a VM is backed up.
type BackupOptions struct {
	// Incremental asks for only the blocks changed since the checkpoint
	// Since. When that checkpoint chain is broken (missing checkpoint or
	// dirty bitmap, disk added, VM moved) the backup falls back to a
	// full read and BackupSession.Fallback says why.
	Incremental bool
	// Since is the checkpoint of the previous point (the
	// BackupSession.Checkpoint that was committed with it). It must be
	// given: a checkpoint whose backup was never stored (a job that
	// died) would make a wrong incremental, so an empty Since reads in
	// full.
	Since string
	// CheckpointName names the checkpoint this backup creates so the
	// next one can be incremental; empty picks a name.
	CheckpointName string
	// Quiesce freezes the guest's filesystems for the snapshot when a
	// guest agent answers; the point is then application-consistent.
	Quiesce bool
	// Offline backs a running VM up through a managed save: its disks
	// and saved memory are read from files while it is stopped, and it
	// resumes at End. A VM that is not running is always backed up
	// offline.
	Offline bool
}

// Consistency of a backup, as recorded in a point.
const (
	Application = "application"
	Crash       = "crash"
	Offline     = "offline"
)

// BackupSession is a backup in progress.
type BackupSession interface {
	// Consistency is Application, Crash or Offline.
	Consistency() string
	// Config is the VM's configuration at the backup.
	Config() *Config
	// Disks are the VM's disks as they were at the snapshot moment.
	Disks() []BackupDisk
	// Files are other files that belong to the point (saved state).
	Files() []File
	// Checkpoint names the checkpoint this backup created ("" if none).
	Checkpoint() string
	// Incremental says whether every disk carries a change list
	// (BackupDisk.ChangedKnown).
	Incremental() bool
	// Fallback says why an incremental request became a full read ("" if
	// it did not).
	Fallback() string
	// Notes are remarks for the point's manifest: why the backup is only
	// crash-consistent, why it fell back, what was cleaned up.
	Notes() []string
	// Commit records that the caller stored the backup: the new
	// checkpoint becomes the base of the next incremental and older
	// checkpoints Lifeboat created are deleted. Commit ends the session.
	Commit(ctx context.Context) error
	// End ends the session. Without a Commit before, a checkpoint this
	// backup created is deleted, so no checkpoint outlives a failed job.
	// End is safe to call more than once and after Commit.
	End(ctx context.Context) error
}

// BackupDisk is one disk of a backup.
type BackupDisk struct {
	// Target is the disk's name in the VM ("vda").
	Target string
	// Path and Format describe the disk's source file on the host.
	Path   string
	Format disk.Format
	// Image reads the disk's content at the snapshot moment. Online
	// backups present it as a raw image whose Extents are the
	// allocation map; offline backups open the file (chain) itself.
	Image disk.Image
	// ChangedKnown says that Changed lists every range that may differ
	// since the checkpoint the backup is incremental to (a superset of
	// the guest's writes); ranges outside it are unchanged. Without it
	// the whole disk must be read.
	ChangedKnown bool
	Changed      []disk.Extent
}

// ErrNotFound is wrapped when a VM does not exist.
var ErrNotFound = errors.New("no such VM")
