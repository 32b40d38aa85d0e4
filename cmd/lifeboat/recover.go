package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"lifeboat/cluster"
	"lifeboat/cluster/pacemaker"
	"lifeboat/hypervisor/libvirt"
	"lifeboat/recovery"
)

// cmdRecover is `lifeboat recover`: the three recovery methods, each
// checked in full (preflight) before anything is written.
func cmdRecover(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("recover", flag.ContinueOnError)
	var rf repoFlags
	rf.register(fs, true)
	method := fs.String("method", "", "original (overwrite the VM in place), vm (as a VM on any host), folder (copy to a folder) or instant (boot from the repository over NBD, serving in the foreground)")
	point := fs.String("point", "", "point ID")
	lv := fs.String("libvirt", "", "libvirt URI of the host: the VM's own host (original) or the target (vm)")
	host := fs.String("host", "", "with --method vm: the target host's libvirt URI (same as --libvirt)")
	hostName := fs.String("host-name", "", "the target host's name as points record it (default: its host name); decides about saved state and chains")
	to := fs.String("to", "", "target folder (vm: the VM's final location; folder: the copy)")
	newID := fs.Bool("new-identity", false, "with --method vm: new UUID, new MACs and a name with a suffix")
	name := fs.String("name", "", "with --method vm: the recovered VM's name")
	ha := fs.Bool("ha", false, "with --method vm: register the VM with the cluster's HA manager")
	haRes := fs.String("ha-resource", "", "the VM's HA resource ID (default: the VM's name)")
	haMgr := fs.String("ha-manager", "", "the cluster's HA manager: pacemaker (or $LIFEBOAT_HA_MANAGER); none by default")
	var haf haSpecFlags
	haf.register(fs)
	discard := fs.Bool("discard-saved-state", false, "with --method vm: boot cold even on the source host")
	keep := fs.Bool("keep-chain", false, "keep differencing chains as they are")
	merge := fs.Bool("merge-chain", false, "with --method vm: merge differencing chains even on the source host")
	var shared stringList
	fs.Var(&shared, "shared-volume", "root of a cluster shared volume, refused as a target (repeatable; also $LIFEBOAT_SHARED_VOLUMES, colon-separated)")
	mode := fs.String("mode", "", "octal mode of restored files (default 0660)")
	owner := fs.String("owner", "", "USER[:GROUP] to own restored files")
	graceful := fs.Duration("graceful-timeout", time.Minute, "with --method original: how long the guest may take to shut down before it is powered off")
	dry := fs.Bool("dry-run", false, "run the preflight only and print the plan")
	finalize := fs.Bool("finalize", false, "after --method instant: copy the served VM's disks into qcow2 files in --to and switch it to them")
	vmName := fs.String("vm", "", "with --finalize: the instantly recovered VM's name (checked)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *finalize {
		if *to == "" {
			return usagef("usage: lifeboat recover --finalize --to DIR [--libvirt URI] [--vm NAME]")
		}
		dir, err := filepath.Abs(*to)
		if err != nil {
			return err
		}
		return finalizeInstant(ctx, e, dir, *vmName)
	}
	if *method == "" || *point == "" {
		return usagef("usage: lifeboat recover --method original|vm|folder --point ID [--libvirt URI] [--to DIR] … (see -h)")
	}
	m, err := recovery.ParseMethod(*method)
	if err != nil {
		return usageError{err}
	}
	req := recovery.Request{Method: m, Point: *point, TargetHost: *hostName, NewIdentity: *newID, Name: *name, HA: *ha,
		HAResource: *haRes, DiscardSavedState: *discard, SharedVolumes: sharedVolumes(e, shared)}
	if req.HAOptions, err = haf.spec(); err != nil {
		return err
	}
	if *to != "" {
		if req.Dir, err = filepath.Abs(*to); err != nil {
			return err
		}
	}
	switch {
	case *keep && *merge:
		return usagef("--keep-chain and --merge-chain exclude each other")
	case *keep:
		req.Chain = "keep"
	case *merge:
		req.Chain = "merge"
	}
	if err := fileOwnership(&req, *mode, *owner); err != nil {
		return err
	}
	uri := *lv
	if *host != "" {
		uri = *host
	}
	switch m {
	case recovery.MethodOriginal:
		if uri == "" {
			return usagef("usage: lifeboat recover --method original --point ID --libvirt URI")
		}
	case recovery.MethodVM, recovery.MethodInstant:
		if uri == "" || req.Dir == "" {
			return usagef("usage: lifeboat recover --method vm --point ID --host URI --to DIR [--new-identity] [--ha] [--discard-saved-state] [--keep-chain]")
		}
	case recovery.MethodFolder:
		if req.Dir == "" {
			return usagef("usage: lifeboat recover --method folder --point ID --to DIR")
		}
	}
	r, err := rf.open(ctx, e)
	if err != nil {
		return err
	}
	rc := &recovery.Recovery{Repo: r, GracefulTimeout: *graceful}
	if rc.HA, err = openHA(e, *haMgr); err != nil {
		return err
	}
	if uri != "" && m != recovery.MethodFolder {
		drv, err := libvirt.Open(ctx, libvirt.Options{URI: uri})
		if err != nil {
			return reportRefusal(e, rf.json, nil, recovery.HostUnreachable(uri, err))
		}
		defer drv.Close()
		req.Driver = drv
	}
	if m == recovery.MethodInstant {
		return runInstant(ctx, e, rf.json, *dry, rc, req)
	}
	return planAndRun(ctx, e, rf.json, *dry, rc, req, "recover "+*point)
}

// cmdVMLocal is `lifeboat vm rebuild` and `lifeboat vm make-ha`, which work
// on a host directly (the other `vm` commands ask the server).
func cmdVMLocal(ctx context.Context, e *env, args []string) error {
	sub := args[0]
	fs := flag.NewFlagSet("vm "+sub, flag.ContinueOnError)
	lv := fs.String("libvirt", "", "libvirt URI of the host")
	fs.StringVar(lv, "host", "", "same as --libvirt")
	hostName := fs.String("host-name", "", "the host's name as points record it")
	ha := fs.Bool("ha", false, "rebuild: register the VM with the cluster's HA manager")
	haRes := fs.String("ha-resource", "", "the VM's HA resource ID (default: the VM's name)")
	haMgr := fs.String("ha-manager", "", "the cluster's HA manager: pacemaker (or $LIFEBOAT_HA_MANAGER)")
	var haf haSpecFlags
	haf.register(fs)
	name := fs.String("name", "", "rebuild: the VM's name (default: the configuration's)")
	newID := fs.Bool("new-identity", false, "rebuild: new UUID, new MACs and a name with a suffix")
	config := fs.String("config", "", "make-ha: where the VM's definition is kept for the HA manager (default: beside its first disk)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	dry := fs.Bool("dry-run", false, "run the preflight only and print the plan")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 || *lv == "" {
		if sub == "rebuild" {
			return usagef("usage: lifeboat vm rebuild FOLDER --libvirt URI [--ha] [--name NAME] [--new-identity]")
		}
		return usagef("usage: lifeboat vm make-ha VM --libvirt URI [--config PATH] [--ha-resource ID]")
	}
	rc := &recovery.Recovery{}
	if rc.HA, err = openHA(e, *haMgr); err != nil {
		return err
	}
	req := recovery.Request{TargetHost: *hostName, HAResource: *haRes}
	if req.HAOptions, err = haf.spec(); err != nil {
		return err
	}
	if sub == "rebuild" {
		req.Method, req.HA, req.Name, req.NewIdentity = recovery.MethodRebuild, *ha, *name, *newID
		if req.Dir, err = filepath.Abs(pos[0]); err != nil {
			return err
		}
	} else {
		req.Method, req.VM = recovery.MethodMakeHA, pos[0]
		if *config != "" {
			if req.ConfigPath, err = filepath.Abs(*config); err != nil {
				return err
			}
		}
	}
	drv, err := libvirt.Open(ctx, libvirt.Options{URI: *lv})
	if err != nil {
		return reportRefusal(e, *asJSON, nil, recovery.HostUnreachable(*lv, err))
	}
	defer drv.Close()
	req.Driver = drv
	return planAndRun(ctx, e, *asJSON, *dry, rc, req, "vm "+sub)
}

// planAndRun prints the preflight, stops at a refusal, and otherwise
// executes the plan.
func planAndRun(ctx context.Context, e *env, asJSON, dry bool, rc *recovery.Recovery, req recovery.Request, label string) error {
	p, err := rc.Plan(ctx, req)
	if err != nil {
		if pe, ok := recovery.AsPreflight(err); ok {
			return reportRefusal(e, asJSON, p, pe)
		}
		return err
	}
	if !asJSON {
		printPlan(e, p)
	}
	if dry {
		if asJSON {
			return json.NewEncoder(e.stdout).Encode(map[string]any{"plan": p})
		}
		fmt.Fprintln(e.stdout, "preflight passed (dry run: nothing was changed)")
		return nil
	}
	if !asJSON {
		rc.Log = func(msg string) { fmt.Fprintln(e.stderr, msg) }
	}
	bar := newProgress(e, label)
	rc.Progress = bar.update
	res, err := rc.Execute(ctx, p)
	bar.done()
	if asJSON {
		if res != nil {
			json.NewEncoder(e.stdout).Encode(map[string]any{"plan": p, "result": res})
		}
		return err
	}
	if res != nil {
		printResult(e, res)
	}
	return err
}

func reportRefusal(e *env, asJSON bool, p *recovery.Plan, pe *recovery.PreflightError) error {
	if asJSON {
		json.NewEncoder(e.stdout).Encode(map[string]any{"plan": p, "refusal": pe})
	} else if p != nil {
		printPlan(e, p)
	}
	return pe
}

func printPlan(e *env, p *recovery.Plan) {
	fmt.Fprintf(e.stdout, "preflight (%s):\n", p.Method)
	for _, c := range p.Checks {
		if c.Name == "verdict" {
			continue
		}
		mark := "ok"
		if !c.OK {
			mark = "NO"
		}
		fmt.Fprintf(e.stdout, "  %-3s %-14s %s\n", mark, c.Name, c.Detail)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(e.stdout, "  note: %s\n", n)
	}
}

func printResult(e *env, r *recovery.Result) {
	for _, k := range sortedResultKeys(r.Files) {
		fmt.Fprintf(e.stdout, "%s -> %s\n", k, r.Files[k])
	}
	for _, n := range r.Notes {
		fmt.Fprintf(e.stdout, "note: %s\n", n)
	}
	what := map[recovery.Method]string{
		recovery.MethodOriginal: "recovered VM %s in place on %s",
		recovery.MethodVM:       "recovered VM %s on %s",
		recovery.MethodFolder:   "copied %s into a folder%s",
		recovery.MethodRebuild:  "rebuilt VM %s on %s",
		recovery.MethodMakeHA:   "made VM %s highly available on %s",
	}[r.Method]
	fmt.Fprintf(e.stdout, what, r.VM, r.Host)
	if r.Method != recovery.MethodFolder {
		state := "not running"
		if r.Running {
			state = "running"
		}
		fmt.Fprintf(e.stdout, " (%s", state)
		if r.HA {
			fmt.Fprint(e.stdout, ", HA")
		}
		fmt.Fprint(e.stdout, ")")
	}
	fmt.Fprintf(e.stdout, ": %s written in %.1fs\n", human(r.Bytes), r.Seconds)
}

func sortedResultKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// openHA returns the configured HA manager, or nil when none is.
func openHA(e *env, name string) (recovery.HA, error) {
	if name == "" {
		name = e.getenv("LIFEBOAT_HA_MANAGER")
	}
	switch name {
	case "", "none":
		return nil, nil
	case "pacemaker":
		// A command that reaches the cluster's tools, split at spaces
		// (the lab's namespaced nodes: "nsenter --target PID --mount
		// --net --uts --"); empty runs them here.
		return pacemaker.New(pacemaker.Options{Command: strings.Fields(e.getenv("LIFEBOAT_PACEMAKER_COMMAND"))}), nil
	}
	return nil, usagef("unknown HA manager %q (pacemaker or none)", name)
}

// haSpecFlags shape the VirtualDomain resource that --ha adds, for clusters
// whose nodes reach libvirt or each other by different URIs (without them
// the resource uses the target host's URI on every node).
type haSpecFlags struct {
	hypervisors    stringList
	remoteURI      string
	migrateOptions string
	forceStop      bool
	monitor        time.Duration
}

func (h *haSpecFlags) register(fs *flag.FlagSet) {
	fs.Var(&h.hypervisors, "ha-hypervisor", "with --ha: NODE=URI, the libvirt URI the cluster uses on that node (repeatable; the VM then runs only on the nodes given)")
	fs.StringVar(&h.remoteURI, "ha-remote-uri", "", "with --ha: the live-migration target URI, %n standing for the target node")
	fs.StringVar(&h.migrateOptions, "ha-migrate-options", "", "with --ha: extra options the cluster gives virsh migrate in live migrations")
	fs.BoolVar(&h.forceStop, "ha-force-stop", false, "with --ha: the cluster stops the VM by powering it off (guests that ignore shutdown)")
	fs.DurationVar(&h.monitor, "ha-monitor", 0, "with --ha: the cluster's monitor interval (default 10s)")
}

func (h *haSpecFlags) spec() (cluster.VirtualDomainSpec, error) {
	spec := cluster.VirtualDomainSpec{RemoteURI: h.remoteURI, MigrateOptions: h.migrateOptions, ForceStop: h.forceStop, MonitorInterval: h.monitor}
	for _, hv := range h.hypervisors {
		node, uri, ok := strings.Cut(hv, "=")
		if !ok || node == "" || uri == "" {
			return spec, usagef("--ha-hypervisor %q: want NODE=URI", hv)
		}
		if spec.NodeHypervisors == nil {
			spec.NodeHypervisors = map[string]string{}
		}
		spec.NodeHypervisors[node] = uri
		spec.Nodes = append(spec.Nodes, node)
	}
	return spec, nil
}

func sharedVolumes(e *env, flags []string) []string {
	out := append([]string(nil), flags...)
	for _, v := range strings.Split(e.getenv("LIFEBOAT_SHARED_VOLUMES"), ":") {
		if v != "" {
			out = append(out, v)
		}
	}
	for i, v := range out {
		if a, err := filepath.Abs(v); err == nil {
			out[i] = a
		}
	}
	return out
}

// fileOwnership parses --mode and --owner USER[:GROUP].
func fileOwnership(req *recovery.Request, mode, owner string) error {
	if mode != "" {
		m, err := strconv.ParseUint(mode, 8, 32)
		if err != nil || m > 0o777 {
			return usagef("--mode %q: want an octal mode such as 0660", mode)
		}
		req.FileMode = os.FileMode(m)
	}
	if owner == "" {
		return nil
	}
	un, gn, _ := strings.Cut(owner, ":")
	u, err := user.Lookup(un)
	if err != nil {
		return usagef("--owner: %v", err)
	}
	req.UID, _ = strconv.Atoi(u.Uid)
	req.GID, _ = strconv.Atoi(u.Gid)
	if gn != "" {
		g, err := user.LookupGroup(gn)
		if err != nil {
			return usagef("--owner: %v", err)
		}
		req.GID, _ = strconv.Atoi(g.Gid)
	}
	req.ChownFiles = true
	return nil
}
