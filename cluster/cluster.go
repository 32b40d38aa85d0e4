// Package cluster holds what Lifeboat needs from a cluster's HA manager: a
// view of its VM resources (which node runs which VM) and the operations
// recovery needs to make a restored VM a cluster role again.
//
// The interface is defined here, where it is used: recovery (method 1's
// preflight checks that the VM's HA resource still exists; method 2 and
// `vm rebuild` with --ha, and `vm make-ha`, add a VirtualDomain resource)
// and the server (a VM's owner is the node that runs it now) depend on
// HAManager, not on a particular cluster stack. The Pacemaker adapter is
// package lifeboat/cluster/pacemaker.
package cluster

import (
	"context"
	"errors"
	"time"
)

// HAManager is a cluster's HA manager as Lifeboat uses it.
type HAManager interface {
	// Resources lists the manager's resources with their state and, for
	// VirtualDomain resources, their configuration.
	Resources(ctx context.Context) ([]Resource, error)
	// Location is the node the resource runs on now, or "" when it runs
	// nowhere. A resource active on more than one node (a live migration
	// in progress) gives an error wrapping ErrInTransition; one that does
	// not exist an error wrapping ErrNotFound.
	Location(ctx context.Context, id string) (node string, err error)
	// Exists says whether a resource of that ID is configured.
	Exists(ctx context.Context, id string) (bool, error)
	// AddVirtualDomain adds a resource that runs a libvirt domain. It
	// fails with an error wrapping ErrExists when the ID is taken.
	AddVirtualDomain(ctx context.Context, spec VirtualDomainSpec) error
	// RemoveResource stops the resource, then removes it, its
	// constraints and its history. A missing resource gives an error
	// wrapping ErrNotFound.
	RemoveResource(ctx context.Context, id string) error
	// WaitStarted waits until the resource runs, fails to start (the
	// error then gives the manager's reason), or timeout passes.
	WaitStarted(ctx context.Context, id string, timeout time.Duration) error
}

var (
	// ErrNotFound: no resource of that ID.
	ErrNotFound = errors.New("no such cluster resource")
	// ErrExists: a resource of that ID exists already.
	ErrExists = errors.New("cluster resource exists already")
	// ErrInTransition: the resource is active on more than one node, as
	// during a live migration; ask again later.
	ErrInTransition = errors.New("cluster resource is active on more than one node")
)

// Resource states, derived from the HA manager's view.
const (
	StateStarted   = "started"   // active on a node and not failed
	StateStopped   = "stopped"   // active nowhere, no failure recorded
	StateFailed    = "failed"    // an operation failed (see Failures)
	StateStarting  = "starting"  // a start is in progress
	StateStopping  = "stopping"  // a stop is in progress
	StateMigrating = "migrating" // a live migration is in progress
)

// Resource is one resource of the HA manager.
type Resource struct {
	ID string
	// Type is the agent as class:provider:type, such as
	// "ocf:heartbeat:VirtualDomain".
	Type string
	// Node runs the resource now ("" when it runs nowhere); Nodes lists
	// every node it is active on (two during a live migration).
	Node  string
	Nodes []string
	// Role is the manager's own word (Pacemaker: Started, Stopped, …);
	// State is one of the State constants.
	Role  string
	State string
	// TargetRole is the role the manager is asked to reach ("Started",
	// "Stopped"), empty when not set.
	TargetRole string
	Managed    bool
	// Failures are the failed operations the manager remembers.
	Failures []Failure

	// Config is the path of the domain XML on the nodes (VirtualDomain's
	// "config"); HypervisorURI the libvirt URI used on every node unless
	// NodeHypervisors gives one for the node.
	Config          string
	HypervisorURI   string
	NodeHypervisors map[string]string
	// Params and Meta are the resource's instance and meta attributes as
	// configured (the first set of each; rule-based sets are in
	// NodeHypervisors).
	Params map[string]string
	Meta   map[string]string
}

// Failure is one failed operation of a resource.
type Failure struct {
	Node string
	// Op is the operation (start, stop, monitor, migrate_to, …).
	Op string
	// Status is the manager's word for the result ("error", "not
	// installed", …); Reason the agent's explanation.
	Status   string
	ExitCode int
	Reason   string
	Time     string
}

// VirtualDomainSpec describes a VirtualDomain resource (a libvirt domain
// run by the HA manager).
type VirtualDomainSpec struct {
	// ID of the resource; empty means the domain's name.
	ID string
	// ConfigPath is the absolute path of the domain XML, present at that
	// path on every node that may run the domain. The agent creates the
	// domain from it (a transient domain) on start.
	ConfigPath string
	// HypervisorURI is the libvirt URI the agent uses on every node;
	// NodeHypervisors overrides it per node (node name → URI). One of
	// the two is required.
	HypervisorURI   string
	NodeHypervisors map[string]string
	// MigrationTransport is the transport of live migrations ("ssh",
	// "tcp", "tls"); RemoteURI the migration target URI (%n is the
	// target node); MigrateOptions extra `virsh migrate` options.
	MigrationTransport string
	RemoteURI          string
	MigrateOptions     string
	// ForceStop destroys the domain on stop instead of asking the guest
	// to shut down (needed for guests that ignore ACPI).
	ForceStop bool
	// Nodes, when set, are the only nodes that may run the domain; the
	// others never probe for it. Avoid are nodes that must never run it
	// nor probe for it.
	Nodes []string
	Avoid []string
	// Stopped adds the resource without starting it.
	Stopped bool
	// MonitorInterval of the recurring monitor; 0 means 10 s.
	MonitorInterval time.Duration
	// Meta attributes; allow-migrate defaults to true.
	Meta map[string]string
	// Params are further instance attributes of the agent.
	Params map[string]string
}
