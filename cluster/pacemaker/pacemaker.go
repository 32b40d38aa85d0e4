// Package pacemaker is Lifeboat's adapter to a Pacemaker cluster: it lists
// resources and where they run, and adds and removes VirtualDomain
// resources (ocf:heartbeat:VirtualDomain, a libvirt domain run by the
// cluster). It implements cluster.HAManager.
//
// It drives the cluster through Pacemaker's own command-line tools, run on
// a cluster node: cibadmin (read and change the CIB), crm_mon
// --output-as=xml (status), crm_resource (locate, set meta attributes,
// clean up history) and crm_attribute. Their XML output is parsed with
// encoding/xml and the XML given to them is built with it. Tools are run
// with argument lists, never through a shell, and every name that reaches
// them is validated first. The process must be root or in group haclient.
//
// Facts about the VirtualDomain agent that shape the package (resource
// agents 4.12):
//   - it reads the domain name from the config file with a line-based
//     grep: the file must hold `<name>NAME</name>` alone on its line, and
//     only once (CheckDomainConfig);
//   - it uses the config path, the hypervisor URI and the domain name
//     unquoted in its shell code, so none may hold white space or glob
//     characters (a `?socket=` URI is fine);
//   - on start it undefines a persistent domain of that name and creates
//     a transient one from the config file: the file is the domain's
//     definition from then on;
//   - without `hypervisor` it uses virsh's default URI, so a URI is
//     required here.
package pacemaker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"lifeboat/cluster"
)

// RunFunc runs one of Pacemaker's tools with arguments (no shell) and
// returns what it wrote. A tool that exits non-zero gives an error with an
// ExitCode() int method (as *exec.ExitError has).
type RunFunc func(ctx context.Context, tool string, args ...string) (stdout, stderr []byte, err error)

// Options configure a Manager.
type Options struct {
	// BinDir holds the tools; empty: $PATH, then /usr/sbin.
	BinDir string
	// Run replaces running the tools on this machine (tests, or a node
	// reached another way). Nil runs them here.
	Run RunFunc
	// Command, when set, runs every tool through it: the tool's path and
	// arguments are appended to it (as `nsenter --target PID --mount
	// --net --uts --`, which reaches a cluster node living in namespaces,
	// as in the lab's two-node cluster, or `ssh NODE`). Ignored with Run.
	Command []string
	// RemoteFiles says the tools run on another machine than this
	// process: AddVirtualDomain then does not read ConfigPath here.
	RemoteFiles bool
	// PollInterval of the waits; 0 means 250 ms.
	PollInterval time.Duration
	// StopTimeout bounds the stop that RemoveResource waits for; 0
	// means 2 minutes.
	StopTimeout time.Duration
}

// Manager is a Pacemaker cluster seen from one of its nodes.
type Manager struct {
	opts Options
}

var _ cluster.HAManager = (*Manager)(nil)

// New returns a Manager. It does not contact the cluster.
func New(opts Options) *Manager {
	if opts.PollInterval <= 0 {
		opts.PollInterval = 250 * time.Millisecond
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 2 * time.Minute
	}
	m := &Manager{opts: opts}
	if m.opts.Run == nil {
		m.opts.Run = m.runLocal
	}
	return m
}

// ToolError is a tool that failed: which, with what arguments, its exit
// code and what it said.
type ToolError struct {
	Tool     string
	Args     []string
	ExitCode int // -1 when it did not run or was killed
	Stderr   string
	Err      error
}

func (e *ToolError) Error() string {
	msg := fmt.Sprintf("%s %s: %v", e.Tool, strings.Join(e.Args, " "), e.Err)
	if e.ExitCode >= 0 {
		msg = fmt.Sprintf("%s %s: exit code %d", e.Tool, strings.Join(e.Args, " "), e.ExitCode)
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	if e.ExitCode == exitNotConnected {
		msg += " (is Pacemaker running on this node, and may this user use it: root or group haclient?)"
	}
	return msg
}

func (e *ToolError) Unwrap() error { return e.Err }

// Exit codes of Pacemaker's tools (crm_exit_t) that the package tests.
const (
	exitNoSuchObject = 105 // CRM_EX_NOSUCH
	exitNotConnected = 102 // CRM_EX_DISCONNECT
)

func (m *Manager) toolPath(tool string) string {
	if m.opts.BinDir != "" {
		return filepath.Join(m.opts.BinDir, tool)
	}
	if p, err := exec.LookPath(tool); err == nil {
		return p
	}
	return filepath.Join("/usr/sbin", tool)
}

func (m *Manager) runLocal(ctx context.Context, tool string, args ...string) ([]byte, []byte, error) {
	cmd := exec.CommandContext(ctx, m.toolPath(tool), args...)
	if len(m.opts.Command) > 0 {
		// A fresh slice: the prefix is shared by concurrent runs.
		argv := append(append([]string{}, m.opts.Command[1:]...), m.toolPath(tool))
		cmd = exec.CommandContext(ctx, m.opts.Command[0], append(argv, args...)...)
	}
	// The C locale keeps the tools' messages stable.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return stdout.Bytes(), stderr.Bytes(), err
}

// run runs a tool and turns a failure into a *ToolError. For tools run
// with --output-as=xml, whose errors are written to stdout inside the
// result, those messages are added to Stderr.
func (m *Manager) run(ctx context.Context, tool string, args ...string) ([]byte, error) {
	stdout, stderr, err := m.opts.Run(ctx, tool, args...)
	if err == nil {
		return stdout, nil
	}
	te := &ToolError{Tool: tool, Args: args, ExitCode: -1, Stderr: string(stderr), Err: err}
	var ec interface{ ExitCode() int }
	if errors.As(err, &ec) && ec.ExitCode() >= 0 {
		te.ExitCode = ec.ExitCode()
	}
	if ctx.Err() != nil {
		te.ExitCode = -1
		te.Err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	if msgs := resultErrors(stdout); msgs != "" {
		if te.Stderr != "" {
			te.Stderr += "\n"
		}
		te.Stderr += msgs
	}
	return stdout, te
}

func exitCode(err error) int {
	var te *ToolError
	if errors.As(err, &te) {
		return te.ExitCode
	}
	return -1
}

// ------------------------------------------------------------------ reading

// snapshot is one consistent look at the cluster: the configured resources
// and constraints (CIB) and the status (crm_mon).
type snapshot struct {
	config *xResources
	status *monResult
}

func (m *Manager) readConfig(ctx context.Context) (*xResources, error) {
	out, err := m.run(ctx, "cibadmin", "--query", "--scope", "resources")
	if err != nil {
		return nil, err
	}
	return parseResources(out)
}

func (m *Manager) readStatus(ctx context.Context) (*monResult, error) {
	out, err := m.run(ctx, "crm_mon", "--one-shot", "--inactive", "--output-as=xml")
	if err != nil {
		return nil, err
	}
	return parseMon(out)
}

func (m *Manager) snapshot(ctx context.Context) (*snapshot, error) {
	cfg, err := m.readConfig(ctx)
	if err != nil {
		return nil, err
	}
	st, err := m.readStatus(ctx)
	if err != nil {
		return nil, err
	}
	return &snapshot{config: cfg, status: st}, nil
}

// Resources lists every primitive resource (also those inside groups and
// clones), with its state from crm_mon and its configuration from the CIB.
func (m *Manager) Resources(ctx context.Context) ([]cluster.Resource, error) {
	s, err := m.snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("pacemaker: list resources: %w", err)
	}
	var out []cluster.Resource
	for _, p := range s.config.primitives() {
		out = append(out, s.resource(p))
	}
	return out, nil
}

func (s *snapshot) resource(p *xPrimitive) cluster.Resource {
	r := cluster.Resource{ID: p.ID, Type: p.agent(), Managed: true, Role: "Stopped"}
	r.Params, r.NodeHypervisors = p.params()
	r.Meta = p.meta()
	r.Config = r.Params["config"]
	r.HypervisorURI = r.Params["hypervisor"]
	r.TargetRole = r.Meta["target-role"]
	if st := s.status.resource(p.ID); st != nil {
		r.Role = st.Role
		r.Managed = st.Managed != "false"
		for _, n := range st.Nodes {
			r.Nodes = append(r.Nodes, n.Name)
		}
		r.Failures = s.status.failures(p.ID)
		r.State = state(st, r.Failures)
	} else {
		r.Failures = s.status.failures(p.ID)
		r.State = state(nil, r.Failures)
	}
	if len(r.Nodes) == 1 {
		r.Node = r.Nodes[0]
	}
	return r
}

// state derives a cluster.State* word from crm_mon's view. crm_mon gives
// role "Starting"/"Stopping"/"Migrating" (or a pending attribute) while an
// operation runs, and failed="true" while a failed resource awaits
// recovery (it may still be active: a failed start must be stopped).
func state(st *monResource, failures []cluster.Failure) string {
	if st == nil {
		if len(failures) > 0 {
			return cluster.StateFailed
		}
		return cluster.StateStopped
	}
	switch {
	case st.Failed == "true" || st.Blocked == "true":
		return cluster.StateFailed
	case strings.HasPrefix(st.Pending, "Migrat") || strings.HasPrefix(st.Role, "Migrat"):
		return cluster.StateMigrating
	case st.Pending == "Starting" || st.Role == "Starting":
		return cluster.StateStarting
	case st.Pending == "Stopping" || st.Role == "Stopping":
		return cluster.StateStopping
	case st.Active == "true" && len(st.Nodes) > 1:
		return cluster.StateMigrating
	case st.Active == "true":
		return cluster.StateStarted
	case len(failures) > 0:
		return cluster.StateFailed
	}
	return cluster.StateStopped
}

// Exists says whether a resource (primitive, group, clone or bundle) of
// that ID is configured.
func (m *Manager) Exists(ctx context.Context, id string) (bool, error) {
	if err := ValidateID(id); err != nil {
		return false, fmt.Errorf("pacemaker: resource exists: %w", err)
	}
	cfg, err := m.readConfig(ctx)
	if err != nil {
		return false, fmt.Errorf("pacemaker: resource %s exists: %w", id, err)
	}
	return cfg.has(id), nil
}

// Location is the node the resource runs on, "" when it runs nowhere.
func (m *Manager) Location(ctx context.Context, id string) (string, error) {
	if err := ValidateID(id); err != nil {
		return "", fmt.Errorf("pacemaker: locate resource: %w", err)
	}
	out, err := m.run(ctx, "crm_resource", "--locate", "--resource", id, "--output-as=xml")
	if err != nil {
		if exitCode(err) == exitNoSuchObject {
			return "", fmt.Errorf("pacemaker: locate resource %s: %w", id, cluster.ErrNotFound)
		}
		return "", fmt.Errorf("pacemaker: locate resource %s: %w", id, err)
	}
	nodes, err := parseLocate(out)
	if err != nil {
		return "", fmt.Errorf("pacemaker: locate resource %s: %w", id, err)
	}
	switch len(nodes) {
	case 0:
		// crm_resource also knows orphans (deleted resources whose
		// history is still there): only a configured one is "nowhere".
		cfg, err := m.readConfig(ctx)
		if err != nil {
			return "", fmt.Errorf("pacemaker: locate resource %s: %w", id, err)
		}
		if !cfg.has(id) {
			return "", fmt.Errorf("pacemaker: locate resource %s: %w", id, cluster.ErrNotFound)
		}
		return "", nil
	case 1:
		return nodes[0], nil
	}
	return "", fmt.Errorf("pacemaker: locate resource %s: active on %s: %w",
		id, strings.Join(nodes, ", "), cluster.ErrInTransition)
}

// ------------------------------------------------------------------ waiting

// WaitStarted waits until the resource is active on one node. A start
// that failed ends the wait with the agent's reason, once the cluster has
// settled: with several nodes Pacemaker may start it on another one.
func (m *Manager) WaitStarted(ctx context.Context, id string, timeout time.Duration) error {
	if err := ValidateID(id); err != nil {
		return fmt.Errorf("pacemaker: wait for resource to start: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	settled := false
	for {
		s, err := m.snapshot(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("pacemaker: resource %s not started after %v (%s)", id, timeout, last)
			}
			return fmt.Errorf("pacemaker: wait for resource %s to start: %w", id, err)
		}
		p := s.config.primitive(id)
		if p == nil {
			return fmt.Errorf("pacemaker: wait for resource %s to start: %w", id, cluster.ErrNotFound)
		}
		r := s.resource(p)
		if r.State == cluster.StateStarted {
			return nil
		}
		if r.TargetRole == "Stopped" {
			return fmt.Errorf("pacemaker: resource %s will not start: its target-role is Stopped", id)
		}
		if r.State == cluster.StateFailed || startFailed(r.Failures) {
			if settled {
				return fmt.Errorf("pacemaker: resource %s failed to start: %s (the agent's own output is in the node's Pacemaker log)",
					id, describeFailures(r.Failures))
			}
			// Let the cluster finish its recovery, then look again.
			if err := m.settle(ctx); err != nil && ctx.Err() == nil {
				return fmt.Errorf("pacemaker: resource %s failed to start: %s (and waiting for the cluster to settle: %v)",
					id, describeFailures(r.Failures), err)
			}
			settled = true
			continue
		}
		last = describe(r)
		select {
		case <-ctx.Done():
			return fmt.Errorf("pacemaker: resource %s not started after %v (%s)", id, timeout, last)
		case <-time.After(m.opts.PollInterval):
		}
	}
}

// settle waits until the cluster has no action pending
// (crm_resource --wait), within ctx's deadline.
func (m *Manager) settle(ctx context.Context) error {
	args := []string{"--wait"}
	if d, ok := ctx.Deadline(); ok {
		secs := int(time.Until(d) / time.Second)
		if secs < 1 {
			secs = 1
		}
		args = append(args, "--timeout", fmt.Sprintf("%ds", secs))
	}
	_, err := m.run(ctx, "crm_resource", args...)
	return err
}

// waitStopped waits until the resource is active nowhere.
func (m *Manager) waitStopped(ctx context.Context, id string) error {
	for {
		st, err := m.readStatus(ctx)
		if err != nil {
			return err
		}
		r := st.resource(id)
		if r == nil || (r.Active != "true" && r.Pending == "" && len(r.Nodes) == 0) {
			return nil
		}
		// A stop that failed leaves the resource blocked (no fencing)
		// or unmanaged; failed="true" alone only means a recovery, such
		// as the stop after a failed start, is under way.
		if r.Blocked == "true" || stopFailed(st.failures(id)) {
			return fmt.Errorf("stop failed: %s", describeFailures(st.failures(id)))
		}
		if r.Managed == "false" {
			return errors.New("it is unmanaged (is-managed=false or maintenance mode): Pacemaker will not stop it")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still active on %s: %w", strings.Join(nodeNames(r), ", "), ctx.Err())
		case <-time.After(m.opts.PollInterval):
		}
	}
}

func nodeNames(r *monResource) []string {
	var names []string
	for _, n := range r.Nodes {
		names = append(names, n.Name)
	}
	return names
}

func startFailed(fs []cluster.Failure) bool { return hasOp(fs, "start") }

func stopFailed(fs []cluster.Failure) bool { return hasOp(fs, "stop") }

func hasOp(fs []cluster.Failure, op string) bool {
	for _, f := range fs {
		if f.Op == op {
			return true
		}
	}
	return false
}

func describeFailures(fs []cluster.Failure) string {
	if len(fs) == 0 {
		return "no failure recorded"
	}
	var parts []string
	for _, f := range fs {
		s := fmt.Sprintf("%s on %s: %s", f.Op, f.Node, f.Status)
		if f.Reason != "" {
			s += " (" + f.Reason + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func describe(r cluster.Resource) string {
	s := "state " + r.State + ", role " + r.Role
	if r.TargetRole != "" {
		s += ", target-role " + r.TargetRole
	}
	if !r.Managed {
		s += ", unmanaged"
	}
	return s
}

// ------------------------------------------------------------------ changes

// AddVirtualDomain adds an ocf:heartbeat:VirtualDomain primitive. The
// primitive is created stopped, then its location constraints, then it is
// started (unless spec.Stopped), so it never runs, nor is probed, where its
// constraints forbid. A failure part-way removes what was added.
func (m *Manager) AddVirtualDomain(ctx context.Context, spec cluster.VirtualDomainSpec) error {
	id, err := m.checkSpec(&spec)
	if err != nil {
		return fmt.Errorf("pacemaker: add VirtualDomain resource %s: %w", spec.ID, err)
	}
	fail := func(err error) error {
		return fmt.Errorf("pacemaker: add VirtualDomain resource %s: %w", id, err)
	}
	s, err := m.snapshot(ctx)
	if err != nil {
		return fail(err)
	}
	if s.config.has(id) {
		return fail(cluster.ErrExists)
	}
	// History of an earlier resource of that ID (fail counts!) would
	// apply to the new one.
	if s.status.hasHistory(id) {
		if _, err := m.run(ctx, "crm_resource", "--cleanup", "--resource", id); err != nil {
			return fail(fmt.Errorf("clean up old history: %w", err))
		}
	}
	prim, err := buildPrimitive(id, spec)
	if err != nil {
		return fail(err)
	}
	if _, err := m.run(ctx, "cibadmin", "--create", "--scope", "resources", "--xml-text", prim); err != nil {
		return fail(err)
	}
	undo := func(cause error) error {
		// Best effort, on a context of its own: ctx may be what failed.
		uctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		m.deleteConstraints(uctx, id)
		if _, err := m.run(uctx, "cibadmin", "--delete", "--xpath", primitiveXPath(id)); err != nil {
			return fail(fmt.Errorf("%w (and removing the half-added resource failed: %v)", cause, err))
		}
		return fail(cause)
	}
	for _, c := range buildConstraints(id, spec) {
		if _, err := m.run(ctx, "cibadmin", "--create", "--scope", "constraints", "--xml-text", c); err != nil {
			return undo(err)
		}
	}
	if !spec.Stopped {
		if err := m.setTargetRole(ctx, id, "Started"); err != nil {
			return undo(err)
		}
	}
	return nil
}

func (m *Manager) setTargetRole(ctx context.Context, id, role string) error {
	_, err := m.run(ctx, "crm_resource", "--resource", id, "--meta",
		"--set-parameter", "target-role", "--parameter-value", role)
	return err
}

// SetManaged tells Pacemaker to stop managing the resource (false: no
// monitor-driven restarts, no moves; the VM is left as it is) or to manage
// it again (true). Method 1 of recovery stops and rewrites a VM under an
// unmanaged resource so that the cluster does not restart it half-written.
// Before managing it again, the resource's history is cleaned up: the
// monitor saw the VM stopped meanwhile, and a recorded failure would make
// Pacemaker "recover" the freshly restored VM by restarting it.
func (m *Manager) SetManaged(ctx context.Context, id string, managed bool) error {
	if err := ValidateID(id); err != nil {
		return fmt.Errorf("pacemaker: set managed: %w", err)
	}
	if managed {
		if _, err := m.run(ctx, "crm_resource", "--cleanup", "--resource", id); err != nil && exitCode(err) != exitNoSuchObject {
			return fmt.Errorf("pacemaker: clean up %s before managing it again: %w", id, err)
		}
	}
	if _, err := m.run(ctx, "crm_resource", "--resource", id, "--meta",
		"--set-parameter", "is-managed", "--parameter-value", strconv.FormatBool(managed)); err != nil {
		return fmt.Errorf("pacemaker: set %s is-managed=%t: %w", id, managed, err)
	}
	return nil
}

// RemoveResource stops the resource and waits for the stop, then deletes
// its constraints and the resource, and clears its history (fail counts,
// operation records) so a later resource of the same ID starts clean.
func (m *Manager) RemoveResource(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return fmt.Errorf("pacemaker: remove resource: %w", err)
	}
	fail := func(what string, err error) error {
		return fmt.Errorf("pacemaker: remove resource %s: %s: %w", id, what, err)
	}
	cfg, err := m.readConfig(ctx)
	if err != nil {
		return fail("read the CIB", err)
	}
	if cfg.primitive(id) == nil {
		if cfg.has(id) {
			return fail("check", errors.New("it is a group, clone or bundle; only primitives are removed"))
		}
		return fail("check", cluster.ErrNotFound)
	}
	if err := m.setTargetRole(ctx, id, "Stopped"); err != nil {
		return fail("stop", err)
	}
	sctx, cancel := context.WithTimeout(ctx, m.opts.StopTimeout)
	err = m.waitStopped(sctx, id)
	cancel()
	if err != nil {
		return fail("stop", err)
	}
	if err := m.deleteConstraints(ctx, id); err != nil {
		return fail("delete its constraints", err)
	}
	if _, err := m.run(ctx, "cibadmin", "--delete", "--xpath", primitiveXPath(id)); err != nil {
		return fail("delete", err)
	}
	if err := m.clearHistory(ctx, id); err != nil {
		return fail("clean up its history", err)
	}
	return nil
}

// clearHistory removes what the nodes remember of a deleted resource
// (operation history, fail counts). The scheduler also cleans up the
// history of a stopped orphan by itself, so the two race: crm_resource
// --cleanup says 105 (no such object) when it finds nothing, and history
// can show up again for a moment. It waits, within 10 s, until crm_mon
// shows none, cleaning up again as needed; history still there then is
// harmless (AddVirtualDomain cleans it up) and is not an error.
func (m *Manager) clearHistory(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if _, err := m.run(ctx, "crm_resource", "--cleanup", "--resource", id); err != nil && exitCode(err) != exitNoSuchObject {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := 0; i < 4; i++ {
			st, err := m.readStatus(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			if !st.hasHistory(id) {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(m.opts.PollInterval):
			}
		}
	}
}

// deleteConstraints deletes every constraint that names the resource
// directly (location, colocation, order, ticket).
func (m *Manager) deleteConstraints(ctx context.Context, id string) error {
	xp := fmt.Sprintf("//constraints/*[@rsc='%s' or @with-rsc='%s' or @first='%s' or @then='%s']", id, id, id, id)
	_, err := m.run(ctx, "cibadmin", "--delete-all", "--xpath", xp, "--force")
	if err != nil && exitCode(err) == exitNoSuchObject {
		return nil // there were none
	}
	return err
}

// primitiveXPath finds the primitive of a validated ID.
func primitiveXPath(id string) string {
	return fmt.Sprintf("//resources//primitive[@id='%s']", id)
}
