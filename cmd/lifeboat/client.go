package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"lifeboat/api"
	"lifeboat/catalog"
)

// clientFlags are the flags of every command that talks to a server.
type clientFlags struct {
	server, token, ca, data string
	json                    bool
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.server, "server", "", "server URL (or $LIFEBOAT_SERVER; default: the data folder's server.url, else https://127.0.0.1:8443)")
	fs.StringVar(&f.token, "token", "", "admin token (or $LIFEBOAT_TOKEN; default: the data folder's admin-token)")
	fs.StringVar(&f.ca, "ca", "", "server CA certificate (default: the data folder's tls/ca.pem)")
	fs.StringVar(&f.data, "data", "", "the server's data folder, for defaults (or $LIFEBOAT_DATA; default ./lifeboat-data)")
	fs.BoolVar(&f.json, "json", false, "machine-readable output")
}

func (f *clientFlags) client(e *env) (*api.Client, error) {
	data := dataDir(e, f.data)
	srv := firstOf(f.server, e.getenv("LIFEBOAT_SERVER"))
	if srv == "" {
		if b, err := os.ReadFile(filepath.Join(data, "server.url")); err == nil {
			srv = strings.TrimSpace(string(b))
		}
	}
	if srv == "" {
		srv = "https://127.0.0.1:8443"
	}
	tok := firstOf(f.token, e.getenv("LIFEBOAT_TOKEN"))
	if tok == "" {
		if b, err := os.ReadFile(filepath.Join(data, "admin-token")); err == nil {
			tok = strings.TrimSpace(string(b))
		}
	}
	if tok == "" {
		return nil, usagef("no admin token: give --token, set LIFEBOAT_TOKEN, or run where the server's data folder is (--data)")
	}
	caFile := f.ca
	if caFile == "" {
		caFile = filepath.Join(data, "tls", "ca.pem")
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, usagef("no server CA certificate: give --ca FILE (%v)", err)
	}
	tc, err := api.TLSConfig(caPEM, nil)
	if err != nil {
		return nil, err
	}
	return &api.Client{Base: srv, Token: tok, HTTP: api.HTTPClient(tc, 5*time.Minute)}, nil
}

// call runs one request and prints the answer as JSON when --json.
func (f *clientFlags) call(ctx context.Context, e *env, method, path string, in, out any) error {
	c, err := f.client(e)
	if err != nil {
		return err
	}
	_, err = c.Do(ctx, method, path, in, out)
	if err != nil {
		return err
	}
	if f.json && out != nil {
		return json.NewEncoder(e.stdout).Encode(out)
	}
	return nil
}

func table(e *env, header string, rows [][]string) error {
	tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func sub(e *env, args []string, usage string, cmds map[string]func(context.Context, *env, []string) error) (func(context.Context, *env, []string) error, []string, error) {
	if len(args) == 0 {
		return nil, nil, usagef("usage: %s", usage)
	}
	fn, ok := cmds[args[0]]
	if !ok {
		return nil, nil, usagef("unknown subcommand %q; usage: %s", args[0], usage)
	}
	return fn, args[1:], nil
}

// ---- token -----------------------------------------------------------------------

func cmdToken(ctx context.Context, e *env, args []string) error {
	fn, rest, err := sub(e, args, "lifeboat token create [--ttl 24h] [--note TEXT] [--cluster NAME] | lifeboat token list", map[string]func(context.Context, *env, []string) error{
		"create": cmdTokenCreate, "list": cmdTokenList,
	})
	if err != nil {
		return err
	}
	return fn(ctx, e, rest)
}

func cmdTokenCreate(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("token create", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	ttl := fs.String("ttl", "24h", "how long the token stays valid")
	note := fs.String("note", "", "what the token is for")
	cluster := fs.String("cluster", "", "cluster the enrolling node joins")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var out api.TokenResponse
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/enrollment-tokens", api.TokenRequest{TTL: *ttl, Note: *note, Cluster: *cluster}, &out); err != nil {
		return err
	}
	if !cf.json {
		c, _ := cf.client(e)
		fmt.Fprintf(e.stdout, "token %s (one use, expires %s)\n", out.Token, ts(out.Expires))
		fmt.Fprintf(e.stdout, "enroll a host with:\n  lifeboat agent --server %s --token %s --ca-fingerprint %s --vm-dir DIR\n", c.Base, out.Token, out.CAFingerprint)
	}
	return nil
}

func cmdTokenList(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("token list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var out []catalog.EnrollmentToken
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/enrollment-tokens", nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, t := range out {
		rows = append(rows, []string{strconv.FormatInt(t.ID, 10), ts(t.Created), ts(t.Expires), ts(t.Used), strconv.FormatInt(t.NodeID, 10), t.Note})
	}
	return table(e, "ID\tCREATED\tEXPIRES\tUSED\tNODE\tNOTE", rows)
}

// ---- agents ----------------------------------------------------------------------

func cmdAgentList(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("agent list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var out []struct {
		catalog.Node
		Reachable bool `json:"reachable"`
	}
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/agents", nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, n := range out {
		state := n.State
		if state == catalog.NodeEnrolled && !n.Reachable {
			state = "unreachable" // silent for 3 heartbeat intervals
		}
		rows = append(rows, []string{strconv.FormatInt(n.ID, 10), n.Name, n.Hostname, state, n.Version, ts(n.LastHeartbeat)})
	}
	return table(e, "ID\tNAME\tHOSTNAME\tSTATE\tVERSION\tLAST HEARTBEAT", rows)
}

func cmdAgentRevoke(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("agent revoke", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat agent revoke NODE")
	}
	var out catalog.Node
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/agents/"+api.Q(pos[0])+"/revoke", nil, &out); err != nil || cf.json {
		return err
	}
	fmt.Fprintf(e.stdout, "agent %s is %s\n", out.Name, out.State)
	return nil
}

func cmdAgentInventory(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("agent inventory", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat agent inventory NODE")
	}
	var out struct {
		Time time.Time         `json:"time"`
		VMs  []api.InventoryVM `json:"vms"`
	}
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/agents/"+api.Q(pos[0])+"/inventory", nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, v := range out.VMs {
		rows = append(rows, []string{v.Name, v.State, v.VolumeID, v.Path, strconv.Itoa(len(v.Files))})
	}
	return table(e, "VM\tSTATE\tVOLUME\tPATH\tFILES", rows)
}

// ---- clusters --------------------------------------------------------------------

func cmdCluster(ctx context.Context, e *env, args []string) error {
	fn, rest, err := sub(e, args, "lifeboat cluster create NAME [--ha pacemaker] | list | volume add CLUSTER PATH ID | volume list CLUSTER", map[string]func(context.Context, *env, []string) error{
		"create": cmdClusterCreate, "list": cmdClusterList, "volume": cmdClusterVolume,
	})
	if err != nil {
		return err
	}
	return fn(ctx, e, rest)
}

func cmdClusterCreate(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("cluster create", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	ha := fs.String("ha", "", "HA manager: pacemaker")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat cluster create NAME")
	}
	var out catalog.Cluster
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/clusters", api.ClusterRequest{Name: pos[0], HAManager: *ha}, &out); err != nil || cf.json {
		return err
	}
	fmt.Fprintf(e.stdout, "cluster %s (id %d)\n", out.Name, out.ID)
	return nil
}

func cmdClusterList(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("cluster list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var out []catalog.Cluster
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/clusters", nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, c := range out {
		rows = append(rows, []string{strconv.FormatInt(c.ID, 10), c.Name, c.HAManager})
	}
	return table(e, "ID\tNAME\tHA", rows)
}

func cmdClusterVolume(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "add" && args[0] != "list") {
		return usagef("usage: lifeboat cluster volume add CLUSTER PATH ID | list CLUSTER")
	}
	fs := flag.NewFlagSet("cluster volume", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if args[0] == "list" {
		if len(pos) != 1 {
			return usagef("usage: lifeboat cluster volume list CLUSTER")
		}
		var out []catalog.SharedVolume
		if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/clusters/"+api.Q(pos[0])+"/volumes", nil, &out); err != nil || cf.json {
			return err
		}
		var rows [][]string
		for _, v := range out {
			rows = append(rows, []string{v.VolumeID, v.Path})
		}
		return table(e, "VOLUME\tPATH", rows)
	}
	if len(pos) != 3 {
		return usagef("usage: lifeboat cluster volume add CLUSTER PATH ID")
	}
	var out catalog.SharedVolume
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/clusters/"+api.Q(pos[0])+"/volumes", api.VolumeRequest{Path: pos[1], VolumeID: pos[2]}, &out); err != nil || cf.json {
		return err
	}
	fmt.Fprintf(e.stdout, "shared volume %s at %s\n", out.VolumeID, out.Path)
	return nil
}

// ---- groups ----------------------------------------------------------------------

func cmdGroup(ctx context.Context, e *env, args []string) error {
	fn, rest, err := sub(e, args, "lifeboat group create|add|set|remove|list|run …", map[string]func(context.Context, *env, []string) error{
		"create": cmdGroupCreate, "add": cmdGroupAdd, "set": cmdGroupSet, "remove": cmdGroupRemove, "list": cmdGroupList, "run": cmdGroupRun,
	})
	if err != nil {
		return err
	}
	return fn(ctx, e, rest)
}

func printGroup(e *env, g api.Group) {
	fmt.Fprintf(e.stdout, "group %s (id %d): full %s, incremental %s, keep %d days / %d points; members: %s\n",
		g.Name, g.ID, firstOf(strings.Join(g.FullTimes, ","), "-"), firstOf(g.Incremental, "-"), g.RetentionDays, g.RetentionCount, strings.Join(g.Members, ", "))
}

func cmdGroupCreate(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("group create", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	full := fs.String("full", "", "times of day of full-read points, HH:MM[,HH:MM…]")
	tz := fs.String("time-zone", "UTC", "time zone of --full")
	inc := fs.String("incremental", "", "interval of incremental points (15m to 24h)")
	days := fs.Int("retention-days", 0, "keep points this many days")
	count := fs.Int("retention-count", 0, "keep at least this many points per VM")
	noOffline := fs.Bool("no-offline-fallback", false, "never fall back to an offline backup")
	verifyBoot := fs.Bool("verify-boot", false, "verify-boot each new point of a member on the node that took it")
	var members stringList
	fs.Var(&members, "member", "VM name or path of a VM folder or image (repeatable)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 {
		return usagef("usage: lifeboat group create NAME [--full 01:00] [--incremental 1h] [--retention-days N] [--retention-count N] [MEMBER…]")
	}
	g := api.Group{Name: pos[0], TimeZone: *tz, Incremental: *inc, RetentionDays: *days, RetentionCount: *count,
		Members: append(members, pos[1:]...)}
	if *full != "" {
		g.FullTimes = strings.Split(*full, ",")
	}
	off := !*noOffline
	g.OfflineFallback = &off
	g.VerifyBoot = *verifyBoot
	if g.Members == nil {
		g.Members = []string{}
	}
	var out api.Group
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/groups", g, &out); err != nil || cf.json {
		return err
	}
	printGroup(e, out)
	return nil
}

func cmdGroupAdd(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("group add", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usagef("usage: lifeboat group add GROUP MEMBER…  (a VM name, or the path of a VM folder or image)")
	}
	var out api.Group
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/groups/"+api.Q(pos[0])+"/members", api.Members{Members: pos[1:]}, &out); err != nil || cf.json {
		return err
	}
	printGroup(e, out)
	return nil
}

func cmdGroupList(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("group list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var out []api.Group
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/groups", nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, g := range out {
		rows = append(rows, []string{strconv.FormatInt(g.ID, 10), g.Name, firstOf(strings.Join(g.FullTimes, ","), "-"), firstOf(g.Incremental, "-"),
			fmt.Sprintf("%dd/%d", g.RetentionDays, g.RetentionCount), strings.Join(g.Members, ", ")})
	}
	return table(e, "ID\tNAME\tFULL\tINCREMENTAL\tRETENTION\tMEMBERS", rows)
}

func cmdGroupRun(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("group run", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("usage: lifeboat group run GROUP")
	}
	var out api.RunResponse
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/groups/"+api.Q(pos[0])+"/run", nil, &out); err != nil || cf.json {
		return err
	}
	for _, j := range out.Jobs {
		fmt.Fprintf(e.stdout, "queued job %d: backup of %s\n", j.ID, j.VMName)
	}
	return nil
}

func cmdProtect(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("protect", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	group := fs.String("group", "", "protection group")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *group == "" {
		return usagef("usage: lifeboat protect --group GROUP PATH")
	}
	var out api.Group
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/protect", api.ProtectRequest{Path: pos[0], Group: *group}, &out); err != nil || cf.json {
		return err
	}
	printGroup(e, out)
	return nil
}

// ---- jobs ------------------------------------------------------------------------

func cmdJob(ctx context.Context, e *env, args []string) error {
	fn, rest, err := sub(e, args, "lifeboat job list [--state S] [--kind K] [--vm NAME] | show ID | cancel ID", map[string]func(context.Context, *env, []string) error{
		"list": cmdJobList, "show": cmdJobShow, "cancel": cmdJobCancel,
	})
	if err != nil {
		return err
	}
	return fn(ctx, e, rest)
}

func cmdJobList(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("job list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	state := fs.String("state", "", "queued, running, succeeded, failed or canceled (comma-separated)")
	kind := fs.String("kind", "", "backup, recovery, verify, verify-boot, prune, gc or tape (comma-separated)")
	vm := fs.String("vm", "", "jobs about this VM")
	limit := fs.Int("limit", 100, "at most this many")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	q := url.Values{}
	for _, s := range strings.Split(*state, ",") {
		if s != "" {
			q.Add("state", s)
		}
	}
	for _, k := range strings.Split(*kind, ",") {
		if k != "" {
			q.Add("kind", k)
		}
	}
	if *vm != "" {
		q.Set("vm", *vm)
	}
	q.Set("limit", strconv.Itoa(*limit))
	var out []catalog.Job
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/jobs?"+q.Encode(), nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, j := range out {
		rows = append(rows, []string{strconv.FormatInt(j.ID, 10), j.Kind, j.State, j.VMName, j.VolumeID, strconv.FormatInt(j.NodeID, 10),
			fmt.Sprintf("%.0f%%", j.Progress*100), ts(j.Started), ts(j.Finished), j.Error})
	}
	return table(e, "ID\tKIND\tSTATE\tVM\tVOLUME\tNODE\tPROGRESS\tSTARTED\tFINISHED\tERROR", rows)
}

func jobArg(fs *flag.FlagSet, args []string, usage string) (string, error) {
	pos, err := parse(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", usagef("usage: %s", usage)
	}
	if n, err := strconv.ParseInt(pos[0], 10, 64); err != nil || n <= 0 {
		return "", usagef("job ID %q is not a positive integer", pos[0])
	}
	return pos[0], nil
}

func cmdJobShow(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("job show", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	id, err := jobArg(fs, args, "lifeboat job show ID")
	if err != nil {
		return err
	}
	var out api.JobDetail
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/jobs/"+id, nil, &out); err != nil || cf.json {
		return err
	}
	j := out.Job
	fmt.Fprintf(e.stdout, "job %d: %s %s of %s, node %d, volume %s, %.0f%%, %d attempts\n", j.ID, j.State, j.Kind, firstOf(j.VMName, "-"), j.NodeID, firstOf(j.VolumeID, "-"), j.Progress*100, j.Attempts)
	fmt.Fprintf(e.stdout, "created %s, started %s, finished %s\n", ts(j.Created), ts(j.Started), ts(j.Finished))
	if len(j.Params) > 0 {
		fmt.Fprintf(e.stdout, "params %s\n", j.Params)
	}
	if len(j.Result) > 0 {
		fmt.Fprintf(e.stdout, "result %s\n", j.Result)
	}
	if j.Error != "" {
		fmt.Fprintf(e.stdout, "error %s\n", j.Error)
	}
	for _, l := range out.Log {
		fmt.Fprintf(e.stdout, "  %s %-5s %s\n", ts(l.Time), l.Level, l.Message)
	}
	return nil
}

func cmdJobCancel(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("job cancel", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	id, err := jobArg(fs, args, "lifeboat job cancel ID")
	if err != nil {
		return err
	}
	var out catalog.Job
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/jobs/"+id+"/cancel", nil, &out); err != nil || cf.json {
		return err
	}
	if out.State == catalog.JobCanceled {
		fmt.Fprintf(e.stdout, "job %d canceled\n", out.ID)
	} else {
		fmt.Fprintf(e.stdout, "job %d asked to stop (it is %s)\n", out.ID, out.State)
	}
	return nil
}

// ---- points, VMs, alerts -----------------------------------------------------------

func cmdPoint(ctx context.Context, e *env, args []string) error {
	fn, rest, err := sub(e, args, "lifeboat point list [--name VM] [--group G] | show ID | restore ID --node NODE --to DIR | recover ID --method M [--node NODE] [--to DIR] [--dry-run] | items ID [PATH] | download ID PATH --out FILE.tar | verify-boot ID [--node NODE] [--check CMD] [--wait] | tape ID --library DIR", map[string]func(context.Context, *env, []string) error{
		"list": cmdPointList, "restore": cmdPointRestore, "recover": cmdPointRecover, "items": cmdPointItems, "download": cmdPointDownload,
		"show": cmdPointShow, "verify-boot": cmdPointVerifyBoot, "tape": cmdPointTape,
	})
	if err != nil {
		return err
	}
	return fn(ctx, e, rest)
}

func cmdPointList(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	name := fs.String("name", "", "points of this VM")
	group := fs.String("group", "", "points a group's schedule made")
	limit := fs.Int("limit", 1000, "at most this many")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *name != "" {
		q.Set("name", *name)
	}
	if *group != "" {
		q.Set("group", *group)
	}
	var out []catalog.Point
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/points?"+q.Encode(), nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, p := range out {
		rows = append(rows, []string{p.ID, p.Name, ts(p.Time), p.Host, p.Consistency, firstOf(p.Group, "-"), human(p.Size), human(p.Stored), firstOf(p.BootVerdict, "-")})
	}
	return table(e, "ID\tNAME\tTIME\tHOST\tCONSISTENCY\tGROUP\tSIZE\tSTORED\tBOOT", rows)
}

func cmdPointRestore(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("point restore", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	node := fs.String("node", "", "agent (node name) that writes the files")
	to := fs.String("to", "", "absolute target folder on that host")
	format := fs.String("format", "", "convert disks to raw, qcow2, vhd or vhdx")
	merge := fs.Bool("merge-chain", false, "flatten differencing chains")
	overwrite := fs.Bool("overwrite", false, "replace existing files")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *node == "" || *to == "" {
		return usagef("usage: lifeboat point restore ID --node NODE --to DIR [--format F] [--merge-chain]")
	}
	var out catalog.Job
	if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/restores", api.RestoreRequest{Point: pos[0], Node: *node, Target: *to,
		Format: *format, Merge: *merge, Overwrite: *overwrite}, &out); err != nil || cf.json {
		return err
	}
	fmt.Fprintf(e.stdout, "queued recovery job %d on %s\n", out.ID, *node)
	return nil
}

func cmdVM(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && (args[0] == "rebuild" || args[0] == "make-ha") {
		return cmdVMLocal(ctx, e, args)
	}
	if len(args) == 0 || args[0] != "list" {
		return usagef("usage: lifeboat vm list [--unprotected] | vm rebuild FOLDER --libvirt URI [--ha] | vm make-ha VM --libvirt URI")
	}
	fs := flag.NewFlagSet("vm list", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	unprot := fs.Bool("unprotected", false, "only VMs in no group")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	path := api.Prefix + "/vms"
	if *unprot {
		path += "?unprotected=true"
	}
	var out []catalog.VMStatus
	if err := cf.call(ctx, e, http.MethodGet, path, nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, v := range out {
		rows = append(rows, []string{v.Name, v.State, firstOf(v.OwnerName, "-"), firstOf(v.VolumeID, "-"), firstOf(v.GroupName, "-"), strconv.FormatInt(v.Points, 10), ts(v.LastPoint)})
	}
	return table(e, "VM\tSTATE\tOWNER\tVOLUME\tGROUP\tPOINTS\tLAST POINT", rows)
}

func cmdAlert(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "ack") {
		return usagef("usage: lifeboat alert list [--open] | ack ID")
	}
	fs := flag.NewFlagSet("alert", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	open := fs.Bool("open", false, "only unacknowledged alerts")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if args[0] == "ack" {
		if len(pos) != 1 {
			return usagef("usage: lifeboat alert ack ID")
		}
		if err := cf.call(ctx, e, http.MethodPost, api.Prefix+"/alerts/"+api.Q(pos[0])+"/ack", nil, nil); err != nil {
			return err
		}
		if cf.json {
			return json.NewEncoder(e.stdout).Encode(map[string]string{"acknowledged": pos[0]})
		}
		fmt.Fprintf(e.stdout, "alert %s acknowledged\n", pos[0])
		return nil
	}
	path := api.Prefix + "/alerts"
	if *open {
		path += "?open=true"
	}
	var out []catalog.Alert
	if err := cf.call(ctx, e, http.MethodGet, path, nil, &out); err != nil || cf.json {
		return err
	}
	var rows [][]string
	for _, a := range out {
		rows = append(rows, []string{strconv.FormatInt(a.ID, 10), a.Severity, a.Kind, a.Subject, ts(a.LastSeen), strconv.FormatInt(a.Occurrences, 10), a.Message})
	}
	return table(e, "ID\tSEVERITY\tKIND\tSUBJECT\tLAST SEEN\tCOUNT\tMESSAGE", rows)
}

func cmdStatus(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	var cf clientFlags
	cf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var out api.Status
	if err := cf.call(ctx, e, http.MethodGet, api.Prefix+"/status", nil, &out); err != nil || cf.json {
		return err
	}
	fmt.Fprintf(e.stdout, "server %s up since %s, catalog %s, repository %s\n", out.Version, ts(out.Started), out.Catalog, out.Repository.ID)
	fmt.Fprintf(e.stdout, "%d agents (%d enrolled), %d VMs, %d groups, %d points, %d open alerts\n",
		out.Stats.Nodes, out.Stats.NodesEnrolled, out.Stats.VMs, out.Stats.Groups, out.Stats.Points, out.Stats.AlertsOpen)
	return nil
}
