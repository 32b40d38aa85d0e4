package pacemaker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lifeboat/cluster"
)

// Unit tests: no cluster needed. The canned outputs are what Pacemaker
// 2.1.5 printed in the lab.

const domainXML = `<domain type='qemu'>
  <name>vm1</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
</domain>
`

func TestValidateID(t *testing.T) {
	for _, id := range []string{"vm1", "VM_1", "a.b-c", "_x", strings.Repeat("a", 64)} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q): %v", id, err)
		}
	}
	for _, id := range []string{"", "1vm", "-x", "a b", "a;b", "a'b", `a"b`, "$(id)", "a/b", "../x", "a]b",
		"ä", strings.Repeat("a", 65), "a\nb"} {
		if err := ValidateID(id); err == nil {
			t.Errorf("ValidateID(%q) accepted", id)
		}
	}
}

func TestCheckDomainConfig(t *testing.T) {
	name, err := CheckDomainConfig([]byte(domainXML))
	if err != nil || name != "vm1" {
		t.Fatalf("good XML: %q, %v", name, err)
	}
	bad := map[string]string{
		"one line":      `<domain type='qemu'><name>vm1</name><memory>64</memory></domain>`,
		"name first":    "<domain type='qemu'><name>vm1</name>\n</domain>",
		"second name":   strings.Replace(domainXML, "<os>", "<metadata>\n <x:name>z</x:name>\n <name>other</name>\n</metadata>\n<os>", 1),
		"no name":       "<domain type='qemu'>\n</domain>",
		"space in name": "<domain>\n<name>a b</name>\n</domain>",
		"not a domain":  "<network>\n<name>n</name>\n</network>",
		"not XML":       "hello",
	}
	for what, x := range bad {
		if _, err := CheckDomainConfig([]byte(x)); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}

func writeConfig(t *testing.T, x string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vm1.xml")
	if err := os.WriteFile(p, []byte(x), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckSpec(t *testing.T) {
	m := New(Options{})
	cfg := writeConfig(t, domainXML)
	good := cluster.VirtualDomainSpec{ConfigPath: cfg, HypervisorURI: "qemu:///system?socket=/var/tmp/x/libvirt-sock"}
	id, err := m.checkSpec(&good)
	if err != nil || id != "vm1" {
		t.Fatalf("good spec: %q, %v", id, err)
	}
	mod := func(f func(s *cluster.VirtualDomainSpec)) cluster.VirtualDomainSpec {
		s := good
		f(&s)
		return s
	}
	bad := map[string]cluster.VirtualDomainSpec{
		"no config":        mod(func(s *cluster.VirtualDomainSpec) { s.ConfigPath = "" }),
		"relative":         mod(func(s *cluster.VirtualDomainSpec) { s.ConfigPath = "vm1.xml" }),
		"unclean":          mod(func(s *cluster.VirtualDomainSpec) { s.ConfigPath = "/tmp/../etc/vm1.xml" }),
		"space in path":    mod(func(s *cluster.VirtualDomainSpec) { s.ConfigPath = "/tmp/a b.xml" }),
		"glob in path":     mod(func(s *cluster.VirtualDomainSpec) { s.ConfigPath = "/tmp/*.xml" }),
		"missing file":     mod(func(s *cluster.VirtualDomainSpec) { s.ConfigPath = "/nonexistent/vm1.xml" }),
		"bad id":           mod(func(s *cluster.VirtualDomainSpec) { s.ID = "x;rm -rf /" }),
		"no hypervisor":    mod(func(s *cluster.VirtualDomainSpec) { s.HypervisorURI = "" }),
		"space in uri":     mod(func(s *cluster.VirtualDomainSpec) { s.HypervisorURI = "qemu:///system --readonly" }),
		"quote in uri":     mod(func(s *cluster.VirtualDomainSpec) { s.HypervisorURI = "qemu:///system'" }),
		"glob in uri":      mod(func(s *cluster.VirtualDomainSpec) { s.HypervisorURI = "qemu:///*" }),
		"bad node uri":     mod(func(s *cluster.VirtualDomainSpec) { s.NodeHypervisors = map[string]string{"n1": "a b"} }),
		"bad node name":    mod(func(s *cluster.VirtualDomainSpec) { s.Nodes = []string{"n1'"} }),
		"node and avoid":   mod(func(s *cluster.VirtualDomainSpec) { s.Nodes = []string{"n1"}; s.Avoid = []string{"n1"} }),
		"target-role meta": mod(func(s *cluster.VirtualDomainSpec) { s.Meta = map[string]string{"target-role": "Started"} }),
		"bad meta name":    mod(func(s *cluster.VirtualDomainSpec) { s.Meta = map[string]string{"a b": "x"} }),
		"control in value": mod(func(s *cluster.VirtualDomainSpec) { s.Params = map[string]string{"x": "a\nb"} }),
		"transport":        mod(func(s *cluster.VirtualDomainSpec) { s.MigrationTransport = "ssh;id" }),
		"short monitor":    mod(func(s *cluster.VirtualDomainSpec) { s.MonitorInterval = time.Millisecond }),
	}
	for what, s := range bad {
		if _, err := m.checkSpec(&s); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
	// The name line is checked in the file.
	oneLine := cluster.VirtualDomainSpec{ConfigPath: writeConfig(t, `<domain><name>vm1</name></domain>`), HypervisorURI: "qemu:///system"}
	if _, err := m.checkSpec(&oneLine); err == nil || !strings.Contains(err.Error(), "alone on its line") {
		t.Errorf("one-line XML: %v", err)
	}
	// RemoteFiles: the file is not read here, so an ID is required.
	r := New(Options{RemoteFiles: true})
	remote := cluster.VirtualDomainSpec{ConfigPath: "/elsewhere/vm1.xml", HypervisorURI: "qemu:///system"}
	if _, err := r.checkSpec(&remote); err == nil {
		t.Error("remote files without ID: accepted")
	}
	remote.ID = "vm1"
	if id, err := r.checkSpec(&remote); err != nil || id != "vm1" {
		t.Errorf("remote files with ID: %q, %v", id, err)
	}
}

func TestBuildPrimitiveRoundTrip(t *testing.T) {
	spec := cluster.VirtualDomainSpec{
		ConfigPath:         "/shared/vm1.xml",
		HypervisorURI:      "qemu:///system",
		NodeHypervisors:    map[string]string{"node1": "qemu:///session?socket=/lab/node1/sock", "node2": "qemu:///session?socket=/lab/node2/sock"},
		MigrationTransport: "ssh",
		RemoteURI:          "qemu:///session?socket=/lab/%n/sock",
		MigrateOptions:     "--unsafe",
		ForceStop:          true,
		MonitorInterval:    5 * time.Second,
		Meta:               map[string]string{"resource-stickiness": "100"},
		Params:             map[string]string{"save_config_on_stop": "false"},
	}
	x, err := buildPrimitive("vm1", spec)
	if err != nil {
		t.Fatal(err)
	}
	res, err := parseResources([]byte("<resources>" + x + "</resources>"))
	if err != nil {
		t.Fatalf("%v\n%s", err, x)
	}
	p := res.primitive("vm1")
	if p == nil || p.agent() != "ocf:heartbeat:VirtualDomain" {
		t.Fatalf("primitive: %+v", p)
	}
	params, perNode := p.params()
	want := map[string]string{"config": "/shared/vm1.xml", "hypervisor": "qemu:///system", "force_stop": "true",
		"migration_transport": "ssh", "remoteuri": "qemu:///session?socket=/lab/%n/sock", "migrate_options": "--unsafe",
		"save_config_on_stop": "false"}
	if fmt.Sprint(params) != fmt.Sprint(want) {
		t.Errorf("params %v, want %v", params, want)
	}
	if fmt.Sprint(perNode) != fmt.Sprint(spec.NodeHypervisors) {
		t.Errorf("per-node hypervisors %v", perNode)
	}
	meta := p.meta()
	if meta["target-role"] != "Stopped" || meta["allow-migrate"] != "true" || meta["resource-stickiness"] != "100" {
		t.Errorf("meta %v", meta)
	}
	ops := map[string]string{}
	for _, o := range p.Ops {
		ops[o.Name] = o.Interval + "/" + o.Timeout
	}
	if ops["monitor"] != "5s/30s" || ops["start"] != "0s/90s" || ops["stop"] != "0s/90s" || ops["migrate_to"] == "" {
		t.Errorf("ops %v", ops)
	}
	// The per-node sets come first with a higher score than the plain set.
	if len(p.Instance) != 3 || p.Instance[0].Rule == nil || p.Instance[0].Score != "10" || p.Instance[2].Rule != nil {
		t.Errorf("instance attribute sets: %+v", p.Instance)
	}
	// Values are escaped, never interpolated.
	spec.Params = map[string]string{"x": `'"<&>`}
	x, err = buildPrimitive("vm1", spec)
	if err != nil {
		t.Fatal(err)
	}
	res, err = parseResources([]byte("<resources>" + x + "</resources>"))
	if err != nil {
		t.Fatal(err)
	}
	if params, _ := res.primitive("vm1").params(); params["x"] != `'"<&>` {
		t.Errorf("escaped value came back as %q", params["x"])
	}
	// allow-migrate may be turned off.
	spec.Meta = map[string]string{"allow-migrate": "false"}
	x, _ = buildPrimitive("vm1", spec)
	res, _ = parseResources([]byte("<resources>" + x + "</resources>"))
	if got := res.primitive("vm1").meta()["allow-migrate"]; got != "false" {
		t.Errorf("allow-migrate %q", got)
	}
}

func TestBuildConstraints(t *testing.T) {
	cs := buildConstraints("vm1", cluster.VirtualDomainSpec{Nodes: []string{"node1", "node2"}, Avoid: []string{"node3"}})
	want := []string{
		`<rsc_location id="location-vm1-node1" rsc="vm1" node="node1" score="0" resource-discovery="exclusive"></rsc_location>`,
		`<rsc_location id="location-vm1-node2" rsc="vm1" node="node2" score="0" resource-discovery="exclusive"></rsc_location>`,
		`<rsc_location id="location-vm1-avoid-node3" rsc="vm1" node="node3" score="-INFINITY" resource-discovery="never"></rsc_location>`,
	}
	if strings.Join(cs, "\n") != strings.Join(want, "\n") {
		t.Errorf("constraints:\n%s", strings.Join(cs, "\n"))
	}
}

// ------------------------------------------------------------ fake tools

type exitErr int

func (e exitErr) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
func (e exitErr) ExitCode() int { return int(e) }

type call struct {
	tool string
	args []string
}

// fake answers tool calls from a function and records them.
type fake struct {
	calls  []call
	answer func(tool string, args []string) (string, string, error)
}

func (f *fake) run(_ context.Context, tool string, args ...string) ([]byte, []byte, error) {
	f.calls = append(f.calls, call{tool, append([]string(nil), args...)})
	out, errOut, err := f.answer(tool, args)
	return []byte(out), []byte(errOut), err
}

func (f *fake) commands() string {
	var lines []string
	for _, c := range f.calls {
		lines = append(lines, c.tool+" "+strings.Join(c.args, " "))
	}
	return strings.Join(lines, "\n")
}

const cibResources = `<resources>
  <primitive id="pmtry" class="ocf" provider="heartbeat" type="VirtualDomain">
    <instance_attributes id="pmtry-ia">
      <nvpair id="pmtry-ia-config" name="config" value="/var/tmp/lifeboat-lab/pmtry/pmtry.xml"/>
      <nvpair id="pmtry-ia-hv" name="hypervisor" value="qemu:///system?socket=/var/tmp/lifeboat-lab/node0/run/libvirt-sock"/>
    </instance_attributes>
    <meta_attributes id="pmtry-meta">
      <nvpair id="pmtry-meta-am" name="allow-migrate" value="true"/>
    </meta_attributes>
  </primitive>
  <primitive id="pmbad" class="ocf" provider="heartbeat" type="VirtualDomain">
    <instance_attributes id="pmbad-ia">
      <nvpair id="pmbad-ia-config" name="config" value="/var/tmp/lifeboat-lab/pmtry/pmbad.xml"/>
    </instance_attributes>
  </primitive>
  <group id="g1">
    <primitive id="ip1" class="ocf" provider="heartbeat" type="IPaddr2"/>
  </group>
</resources>`

const monXML = `<pacemaker-result api-version="2.25" request="crm_mon -1 --output-as=xml --inactive">
  <pacemakerd sys_from="pacemakerd" state="running" last_updated="2026-11-25 13:57:00Z"/>
  <nodes>
    <node name="node0" id="1" online="true" standby="false" type="member"/>
  </nodes>
  <resources>
    <resource id="pmtry" resource_agent="ocf:heartbeat:VirtualDomain" role="Started" active="true" orphaned="false" blocked="false" managed="true" failed="false" failure_ignored="false" nodes_running_on="1">
      <node name="node0" id="1" cached="true"/>
    </resource>
    <resource id="pmbad" resource_agent="ocf:heartbeat:VirtualDomain" role="Stopped" active="false" orphaned="false" blocked="false" managed="true" failed="false" failure_ignored="false" nodes_running_on="0"/>
    <group id="g1" number_resources="1" managed="true" disabled="false">
      <resource id="ip1" resource_agent="ocf:heartbeat:IPaddr2" role="Started" active="true" orphaned="false" blocked="false" managed="true" failed="false" failure_ignored="false" nodes_running_on="2">
        <node name="node0" id="1" cached="true"/>
        <node name="node1" id="2" cached="true"/>
      </resource>
    </group>
  </resources>
  <node_history>
    <node name="node0">
      <resource_history id="pmbad" orphan="false" migration-threshold="1000000" fail-count="1000000" last-failure="Wed Nov 25 13:57:10 2026"/>
    </node>
  </node_history>
  <failures>
    <failure op_key="pmbad_start_0" node="node0" exitstatus="error" exitreason="Failed to start virtual domain pmbad." exitcode="1" call="18" status="complete" last-rc-change="2026-11-25 13:57:10Z" queued="0" exec="119" interval="0" task="start"/>
  </failures>
  <status code="0" message="OK"/>
</pacemaker-result>`

func cannedCluster(tool string, args []string) (string, string, error) {
	switch {
	case tool == "cibadmin" && args[0] == "--query":
		return cibResources, "", nil
	case tool == "crm_mon":
		return monXML, "", nil
	}
	return "", "", fmt.Errorf("unexpected %s %v", tool, args)
}

func TestResourcesFromCannedOutput(t *testing.T) {
	f := &fake{answer: cannedCluster}
	m := New(Options{Run: f.run})
	rs, err := m.Resources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 {
		t.Fatalf("%d resources: %+v", len(rs), rs)
	}
	try, bad, ip := rs[0], rs[1], rs[2]
	if try.ID != "pmtry" || try.Type != "ocf:heartbeat:VirtualDomain" || try.Node != "node0" || try.State != cluster.StateStarted ||
		try.Role != "Started" || try.Config != "/var/tmp/lifeboat-lab/pmtry/pmtry.xml" ||
		try.HypervisorURI != "qemu:///system?socket=/var/tmp/lifeboat-lab/node0/run/libvirt-sock" ||
		try.Meta["allow-migrate"] != "true" || !try.Managed || len(try.Failures) != 0 {
		t.Errorf("pmtry: %+v", try)
	}
	if bad.State != cluster.StateFailed || bad.Node != "" || len(bad.Failures) != 1 ||
		bad.Failures[0].Op != "start" || bad.Failures[0].Reason != "Failed to start virtual domain pmbad." ||
		bad.Failures[0].ExitCode != 1 || bad.Failures[0].Node != "node0" {
		t.Errorf("pmbad: %+v", bad)
	}
	if ip.Type != "ocf:heartbeat:IPaddr2" || ip.State != cluster.StateMigrating || len(ip.Nodes) != 2 || ip.Node != "" {
		t.Errorf("ip1 (in a group, on two nodes): %+v", ip)
	}
	for _, c := range f.calls {
		if c.tool == "crm_mon" && strings.Join(c.args, " ") != "--one-shot --inactive --output-as=xml" {
			t.Errorf("crm_mon args %v", c.args)
		}
	}
}

func TestLocation(t *testing.T) {
	answers := map[string]struct {
		out string
		err error
	}{
		"one":  {`<pacemaker-result><nodes resource="one"><node>node0</node></nodes><status code="0" message="OK"/></pacemaker-result>`, nil},
		"none": {`<pacemaker-result><nodes resource="none"/><status code="0" message="OK"/></pacemaker-result>`, nil},
		"two":  {`<pacemaker-result><nodes resource="two"><node>node0</node><node state="promoted">node1</node></nodes><status code="0" message="OK"/></pacemaker-result>`, nil},
		"gone": {`<pacemaker-result><status code="105" message="No such object"><errors><error>crm_resource: Resource 'gone' not found</error></errors></status></pacemaker-result>`, exitErr(105)},
		"down": {`<pacemaker-result><status code="102" message="Not connected"><errors><error>Could not connect to the CIB: Transport endpoint is not connected</error></errors></status></pacemaker-result>`, exitErr(102)},
	}
	f := &fake{answer: func(tool string, args []string) (string, string, error) {
		if tool == "cibadmin" {
			return `<resources><primitive id="none" class="ocf" provider="heartbeat" type="VirtualDomain"/></resources>`, "", nil
		}
		a := answers[args[2]]
		return a.out, "", a.err
	}}
	m := New(Options{Run: f.run})
	ctx := context.Background()
	if n, err := m.Location(ctx, "one"); n != "node0" || err != nil {
		t.Errorf("one: %q, %v", n, err)
	}
	if n, err := m.Location(ctx, "none"); n != "" || err != nil {
		t.Errorf("none: %q, %v", n, err)
	}
	if _, err := m.Location(ctx, "two"); !errors.Is(err, cluster.ErrInTransition) {
		t.Errorf("two: %v", err)
	}
	if _, err := m.Location(ctx, "gone"); !errors.Is(err, cluster.ErrNotFound) {
		t.Errorf("gone: %v", err)
	}
	_, err := m.Location(ctx, "down")
	var te *ToolError
	if !errors.As(err, &te) || te.ExitCode != 102 || !strings.Contains(err.Error(), "Transport endpoint is not connected") ||
		!strings.Contains(err.Error(), "locate resource down") {
		t.Errorf("down: %v", err)
	}
	// An orphan (history left, no configuration) is not found.
	answers["orphan"] = answers["none"]
	if _, err := m.Location(ctx, "orphan"); !errors.Is(err, cluster.ErrNotFound) {
		t.Errorf("orphan: %v", err)
	}
	n := len(f.calls)
	if _, err := m.Location(ctx, "x'] | //*[@id='y"); err == nil {
		t.Error("XPath-breaking ID accepted")
	}
	if len(f.calls) != n {
		t.Errorf("%d calls: an invalid ID reached a tool?\n%s", len(f.calls), f.commands())
	}
}

func TestAddVirtualDomainCalls(t *testing.T) {
	cfg := writeConfig(t, domainXML)
	empty := `<pacemaker-result><resources/><status code="0" message="OK"/></pacemaker-result>`
	var failConstraint bool
	f := &fake{answer: func(tool string, args []string) (string, string, error) {
		switch {
		case tool == "cibadmin" && args[0] == "--query":
			return "<resources/>", "", nil
		case tool == "crm_mon":
			return empty, "", nil
		case tool == "cibadmin" && args[0] == "--create" && args[2] == "constraints" && failConstraint:
			return "", "Call cib_create failed (-203): Update does not conform to the configured schema", exitErr(105)
		}
		return "", "", nil
	}}
	m := New(Options{Run: f.run})
	spec := cluster.VirtualDomainSpec{ConfigPath: cfg, HypervisorURI: "qemu:///system", Nodes: []string{"node0"}}
	if err := m.AddVirtualDomain(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	got := f.commands()
	prim, _ := buildPrimitive("vm1", spec)
	want := strings.Join([]string{
		"cibadmin --query --scope resources",
		"crm_mon --one-shot --inactive --output-as=xml",
		"cibadmin --create --scope resources --xml-text " + prim,
		`cibadmin --create --scope constraints --xml-text <rsc_location id="location-vm1-node0" rsc="vm1" node="node0" score="0" resource-discovery="exclusive"></rsc_location>`,
		"crm_resource --resource vm1 --meta --set-parameter target-role --parameter-value Started",
	}, "\n")
	if got != want {
		t.Errorf("calls:\n%s\nwant:\n%s", got, want)
	}

	// A failing constraint removes the primitive again and says why.
	f.calls = nil
	failConstraint = true
	err := m.AddVirtualDomain(context.Background(), spec)
	if err == nil || !strings.Contains(err.Error(), "does not conform") || !strings.Contains(err.Error(), "add VirtualDomain resource vm1") {
		t.Errorf("failing constraint: %v", err)
	}
	got = f.commands()
	if !strings.Contains(got, "cibadmin --delete --xpath //resources//primitive[@id='vm1']") || strings.Contains(got, "--set-parameter target-role") {
		t.Errorf("undo calls:\n%s", got)
	}

	// Stopped: no start.
	f.calls = nil
	failConstraint = false
	spec.Stopped = true
	if err := m.AddVirtualDomain(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(f.commands(), "--set-parameter target-role") {
		t.Errorf("Stopped spec was started:\n%s", f.commands())
	}
}

func TestAddExisting(t *testing.T) {
	cfg := writeConfig(t, strings.Replace(domainXML, "vm1", "pmtry", 1))
	f := &fake{answer: cannedCluster}
	m := New(Options{Run: f.run})
	err := m.AddVirtualDomain(context.Background(), cluster.VirtualDomainSpec{ConfigPath: cfg, HypervisorURI: "qemu:///system"})
	if !errors.Is(err, cluster.ErrExists) {
		t.Errorf("existing ID: %v", err)
	}
}

func TestRemoveMissing(t *testing.T) {
	f := &fake{answer: cannedCluster}
	m := New(Options{Run: f.run})
	if err := m.RemoveResource(context.Background(), "nosuch"); !errors.Is(err, cluster.ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	if err := m.RemoveResource(context.Background(), "g1"); err == nil || !strings.Contains(err.Error(), "only primitives") {
		t.Errorf("group: %v", err)
	}
}

func TestToolErrorHasStderr(t *testing.T) {
	f := &fake{answer: func(string, []string) (string, string, error) {
		return "", "Could not connect to the CIB: Transport endpoint is not connected", exitErr(102)
	}}
	m := New(Options{Run: f.run})
	_, err := m.Exists(context.Background(), "vm1")
	if err == nil || !strings.Contains(err.Error(), "Transport endpoint is not connected") ||
		!strings.Contains(err.Error(), "exit code 102") || !strings.Contains(err.Error(), "resource vm1 exists") {
		t.Errorf("error: %v", err)
	}
}
