package pacemaker

import (
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"lifeboat/cluster"
)

// ------------------------------------------------------------- validation

// idRE: what the package accepts as a resource ID. Pacemaker IDs are XML
// IDs (NCName); this is stricter: ASCII letters, digits, '_', '.', '-',
// starting with a letter or '_', at most 64 characters. Such an ID is safe
// inside an XPath string literal and in the agents' shell code.
var idRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`)

// ValidateID checks a resource ID.
func ValidateID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("invalid resource ID %q: use 1 to 64 ASCII letters, digits, '_', '.' or '-', starting with a letter or '_'", id)
	}
	return nil
}

// nodeRE: node names (host names).
var nodeRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$`)

func validateNode(n string) error {
	if !nodeRE.MatchString(n) {
		return fmt.Errorf("invalid node name %q", n)
	}
	return nil
}

// nameRE: attribute names.
var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,63}$`)

// pathRE: characters allowed in ConfigPath. The agent uses the path
// unquoted in shell code (`virsh create ${OCF_RESKEY_config}`), so white
// space, glob characters and quotes are refused.
var pathRE = regexp.MustCompile(`^/[A-Za-z0-9_.,:@%+=/-]*$`)

// uriRE: characters allowed in a hypervisor or migration URI; also used
// unquoted (`--connect=${OCF_RESKEY_hypervisor}`). '?' is accepted for
// `?socket=`: the glob it would be cannot match, as the word starts with
// "--connect=qemu:".
var uriRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9_.,:@%+=/?&~-]*$`)

// transportRE: a libvirt transport (ssh, tcp, tls, libssh2, …).
var transportRE = regexp.MustCompile(`^[a-z][a-z0-9+]{0,15}$`)

func validateValue(name, v string) error {
	for _, r := range v {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("attribute %s: control character in value", name)
		}
	}
	return nil
}

// domainNameRE: domain names the agent handles (it greps for the name and
// uses it unquoted).
var domainNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)

// agentNameLine is the agent's own test for the line holding the domain
// name: egrep '[[:space:]]*<name>.*</name>[[:space:]]*$'.
var agentNameLine = regexp.MustCompile(`[ \t\r\f\v]*<name>.*</name>[ \t\r\f\v]*$`)

// CheckDomainConfig checks that a domain XML is usable as VirtualDomain's
// config file and returns the domain's name. The agent finds the name with
// a line-based grep, so `<name>NAME</name>` must be alone on its line and
// no other line may end in a `<name>…</name>` element (as in libvirt's own
// `virsh dumpxml` output).
func CheckDomainConfig(data []byte) (string, error) {
	var dom struct {
		XMLName xml.Name `xml:"domain"`
		Name    string   `xml:"name"`
	}
	if err := xml.Unmarshal(data, &dom); err != nil {
		return "", fmt.Errorf("not a libvirt domain XML: %w", err)
	}
	name := strings.TrimSpace(dom.Name)
	if name == "" {
		return "", errors.New("domain XML has no <name>")
	}
	if !domainNameRE.MatchString(name) {
		return "", fmt.Errorf("domain name %q: the VirtualDomain agent needs ASCII letters, digits, '_', '.', '+' or '-'", name)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if agentNameLine.MatchString(l) {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 || strings.TrimSpace(lines[0]) != "<name>"+name+"</name>" {
		return "", fmt.Errorf("domain XML: the VirtualDomain agent needs <name>%s</name> alone on its line, and no other line ending in a <name> element (found %d such lines)", name, len(lines))
	}
	return name, nil
}

// checkSpec validates the spec, reads the config file (unless the tools
// run elsewhere) and returns the resource ID.
func (m *Manager) checkSpec(spec *cluster.VirtualDomainSpec) (string, error) {
	p := spec.ConfigPath
	if p == "" {
		return "", errors.New("no ConfigPath (the domain XML file)")
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p || !pathRE.MatchString(p) {
		return "", fmt.Errorf("ConfigPath %q: must be a clean absolute path of letters, digits and _ . , : @ %% + = / - (the agent uses it unquoted in shell code)", p)
	}
	id := spec.ID
	if !m.opts.RemoteFiles {
		data, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("domain XML %s (it must be at that path on every node that may run the domain): %w", p, err)
		}
		name, err := CheckDomainConfig(data)
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, err)
		}
		if id == "" {
			id = name
		}
	}
	if id == "" {
		return "", errors.New("no ID (and the domain XML is not read here)")
	}
	if err := ValidateID(id); err != nil {
		return "", err
	}
	if spec.HypervisorURI == "" && len(spec.NodeHypervisors) == 0 {
		return "", errors.New("no HypervisorURI: the agent would use virsh's default URI")
	}
	if spec.HypervisorURI != "" && !uriRE.MatchString(spec.HypervisorURI) {
		return "", fmt.Errorf("HypervisorURI %q: not a URI the agent can use (no white space, quotes or glob characters)", spec.HypervisorURI)
	}
	for n, u := range spec.NodeHypervisors {
		if err := validateNode(n); err != nil {
			return "", err
		}
		if !uriRE.MatchString(u) {
			return "", fmt.Errorf("hypervisor URI of node %s %q: not a URI the agent can use", n, u)
		}
	}
	if spec.RemoteURI != "" && !uriRE.MatchString(spec.RemoteURI) {
		return "", fmt.Errorf("RemoteURI %q: not a URI the agent can use", spec.RemoteURI)
	}
	if spec.MigrationTransport != "" && !transportRE.MatchString(spec.MigrationTransport) {
		return "", fmt.Errorf("MigrationTransport %q: not a libvirt transport", spec.MigrationTransport)
	}
	if err := validateValue("migrate_options", spec.MigrateOptions); err != nil {
		return "", err
	}
	seen := map[string]string{}
	for _, n := range spec.Nodes {
		if err := validateNode(n); err != nil {
			return "", err
		}
		seen[n] = "Nodes"
	}
	for _, n := range spec.Avoid {
		if err := validateNode(n); err != nil {
			return "", err
		}
		if seen[n] == "Nodes" {
			return "", fmt.Errorf("node %s is in both Nodes and Avoid", n)
		}
	}
	for k, v := range spec.Meta {
		if !nameRE.MatchString(k) {
			return "", fmt.Errorf("invalid meta attribute name %q", k)
		}
		if k == "target-role" {
			return "", errors.New("meta attribute target-role: use Stopped")
		}
		if err := validateValue(k, v); err != nil {
			return "", err
		}
	}
	for k, v := range spec.Params {
		if !nameRE.MatchString(k) {
			return "", fmt.Errorf("invalid instance attribute name %q", k)
		}
		if err := validateValue(k, v); err != nil {
			return "", err
		}
	}
	if spec.MonitorInterval < 0 || (spec.MonitorInterval > 0 && spec.MonitorInterval < time.Second) {
		return "", fmt.Errorf("MonitorInterval %v: at least 1s", spec.MonitorInterval)
	}
	return id, nil
}

// ------------------------------------------------------------ CIB XML

type xNVPair struct {
	ID    string `xml:"id,attr"`
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type xExpression struct {
	ID        string `xml:"id,attr"`
	Attribute string `xml:"attribute,attr"`
	Operation string `xml:"operation,attr"`
	Value     string `xml:"value,attr,omitempty"`
}

type xRule struct {
	ID          string        `xml:"id,attr"`
	Score       string        `xml:"score,attr,omitempty"`
	BooleanOp   string        `xml:"boolean-op,attr,omitempty"`
	Expressions []xExpression `xml:"expression"`
}

type xAttrSet struct {
	ID      string    `xml:"id,attr"`
	Score   string    `xml:"score,attr,omitempty"`
	Rule    *xRule    `xml:"rule,omitempty"`
	NVPairs []xNVPair `xml:"nvpair"`
}

type xOp struct {
	ID       string `xml:"id,attr"`
	Name     string `xml:"name,attr"`
	Interval string `xml:"interval,attr"`
	Timeout  string `xml:"timeout,attr,omitempty"`
}

type xPrimitive struct {
	XMLName  xml.Name   `xml:"primitive"`
	ID       string     `xml:"id,attr"`
	Class    string     `xml:"class,attr"`
	Provider string     `xml:"provider,attr,omitempty"`
	Type     string     `xml:"type,attr"`
	Instance []xAttrSet `xml:"instance_attributes"`
	Meta     []xAttrSet `xml:"meta_attributes"`
	Ops      []xOp      `xml:"operations>op"`
}

type xGroup struct {
	ID         string       `xml:"id,attr"`
	Primitives []xPrimitive `xml:"primitive"`
}

type xClone struct {
	ID        string      `xml:"id,attr"`
	Primitive *xPrimitive `xml:"primitive"`
	Group     *xGroup     `xml:"group"`
}

type xResources struct {
	XMLName    xml.Name     `xml:"resources"`
	Primitives []xPrimitive `xml:"primitive"`
	Groups     []xGroup     `xml:"group"`
	Clones     []xClone     `xml:"clone"`
	Masters    []xClone     `xml:"master"`
	Bundles    []xClone     `xml:"bundle"`
}

type xLocation struct {
	XMLName           xml.Name `xml:"rsc_location"`
	ID                string   `xml:"id,attr"`
	Rsc               string   `xml:"rsc,attr"`
	Node              string   `xml:"node,attr"`
	Score             string   `xml:"score,attr"`
	ResourceDiscovery string   `xml:"resource-discovery,attr,omitempty"`
}

func parseResources(b []byte) (*xResources, error) {
	var r xResources
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse cibadmin output: %w", err)
	}
	return &r, nil
}

// primitives lists every primitive, also inside groups, clones and
// bundles, in CIB order.
func (r *xResources) primitives() []*xPrimitive {
	var out []*xPrimitive
	for i := range r.Primitives {
		out = append(out, &r.Primitives[i])
	}
	group := func(g *xGroup) {
		for i := range g.Primitives {
			out = append(out, &g.Primitives[i])
		}
	}
	for i := range r.Groups {
		group(&r.Groups[i])
	}
	for _, cs := range [][]xClone{r.Clones, r.Masters, r.Bundles} {
		for i := range cs {
			if cs[i].Primitive != nil {
				out = append(out, cs[i].Primitive)
			}
			if cs[i].Group != nil {
				group(cs[i].Group)
			}
		}
	}
	return out
}

func (r *xResources) primitive(id string) *xPrimitive {
	for _, p := range r.primitives() {
		if p.ID == id {
			return p
		}
	}
	return nil
}

// has: a primitive, group, clone or bundle of that ID.
func (r *xResources) has(id string) bool {
	if r.primitive(id) != nil {
		return true
	}
	for _, g := range r.Groups {
		if g.ID == id {
			return true
		}
	}
	for _, cs := range [][]xClone{r.Clones, r.Masters, r.Bundles} {
		for _, c := range cs {
			if c.ID == id || (c.Group != nil && c.Group.ID == id) {
				return true
			}
		}
	}
	return false
}

func (p *xPrimitive) agent() string {
	if p.Provider != "" {
		return p.Class + ":" + p.Provider + ":" + p.Type
	}
	return p.Class + ":" + p.Type
}

// params returns the unconditional instance attributes (all sets without
// a rule, the first value of a name winning) and the per-node hypervisor
// URIs of sets whose rule is `#uname eq NODE`.
func (p *xPrimitive) params() (map[string]string, map[string]string) {
	params := map[string]string{}
	var perNode map[string]string
	for _, set := range p.Instance {
		if set.Rule == nil {
			for _, nv := range set.NVPairs {
				if _, ok := params[nv.Name]; !ok {
					params[nv.Name] = nv.Value
				}
			}
			continue
		}
		if len(set.Rule.Expressions) != 1 {
			continue
		}
		e := set.Rule.Expressions[0]
		if e.Attribute != "#uname" || e.Operation != "eq" {
			continue
		}
		for _, nv := range set.NVPairs {
			if nv.Name == "hypervisor" {
				if perNode == nil {
					perNode = map[string]string{}
				}
				perNode[e.Value] = nv.Value
			}
		}
	}
	return params, perNode
}

func (p *xPrimitive) meta() map[string]string {
	meta := map[string]string{}
	for _, set := range p.Meta {
		if set.Rule != nil {
			continue
		}
		for _, nv := range set.NVPairs {
			if _, ok := meta[nv.Name]; !ok {
				meta[nv.Name] = nv.Value
			}
		}
	}
	return meta
}

// buildPrimitive makes the <primitive> of a checked spec. It is created
// with target-role=Stopped; AddVirtualDomain starts it afterwards.
func buildPrimitive(id string, spec cluster.VirtualDomainSpec) (string, error) {
	ia := id + "-instance_attributes"
	set := xAttrSet{ID: ia}
	add := func(name, value string) error {
		for _, nv := range set.NVPairs {
			if nv.Name == name {
				return fmt.Errorf("instance attribute %s given twice", name)
			}
		}
		set.NVPairs = append(set.NVPairs, xNVPair{ID: ia + "-" + name, Name: name, Value: value})
		return nil
	}
	add("config", spec.ConfigPath)
	if spec.HypervisorURI != "" {
		add("hypervisor", spec.HypervisorURI)
	}
	if spec.ForceStop {
		add("force_stop", "true")
	}
	if spec.MigrationTransport != "" {
		add("migration_transport", spec.MigrationTransport)
	}
	if spec.RemoteURI != "" {
		add("remoteuri", spec.RemoteURI)
	}
	if spec.MigrateOptions != "" {
		add("migrate_options", spec.MigrateOptions)
	}
	for _, k := range sortedKeys(spec.Params) {
		if err := add(k, spec.Params[k]); err != nil {
			return "", err
		}
	}
	prim := xPrimitive{ID: id, Class: "ocf", Provider: "heartbeat", Type: "VirtualDomain"}
	// Per-node hypervisors: sets with a #uname rule and a higher score
	// than the unconditional set, listed first, so they win on their node.
	for _, n := range sortedKeys(spec.NodeHypervisors) {
		sid := ia + "-" + n
		prim.Instance = append(prim.Instance, xAttrSet{
			ID:    sid,
			Score: "10",
			Rule: &xRule{ID: sid + "-rule", Score: "0", Expressions: []xExpression{
				{ID: sid + "-rule-expr", Attribute: "#uname", Operation: "eq", Value: n},
			}},
			NVPairs: []xNVPair{{ID: sid + "-hypervisor", Name: "hypervisor", Value: spec.NodeHypervisors[n]}},
		})
	}
	prim.Instance = append(prim.Instance, set)

	ma := id + "-meta_attributes"
	meta := xAttrSet{ID: ma, NVPairs: []xNVPair{{ID: ma + "-target-role", Name: "target-role", Value: "Stopped"}}}
	if _, ok := spec.Meta["allow-migrate"]; !ok {
		meta.NVPairs = append(meta.NVPairs, xNVPair{ID: ma + "-allow-migrate", Name: "allow-migrate", Value: "true"})
	}
	for _, k := range sortedKeys(spec.Meta) {
		meta.NVPairs = append(meta.NVPairs, xNVPair{ID: ma + "-" + k, Name: k, Value: spec.Meta[k]})
	}
	prim.Meta = []xAttrSet{meta}

	mon := spec.MonitorInterval
	if mon == 0 {
		mon = 10 * time.Second
	}
	op := func(name string, interval time.Duration, timeout string) xOp {
		iv := fmt.Sprintf("%ds", int(interval/time.Second))
		return xOp{ID: id + "-" + name + "-interval-" + iv, Name: name, Interval: iv, Timeout: timeout}
	}
	prim.Ops = []xOp{
		op("monitor", mon, "30s"),
		op("start", 0, "90s"),
		op("stop", 0, "90s"),
		op("migrate_to", 0, "120s"),
		op("migrate_from", 0, "120s"),
	}
	b, err := xml.Marshal(prim)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// buildConstraints makes the location constraints of a checked spec:
// for each node of Nodes, score 0 with resource-discovery=exclusive (the
// resource may run, and is probed, only on those nodes); for each node of
// Avoid, -INFINITY with resource-discovery=never (never runs there, never
// probed there).
func buildConstraints(id string, spec cluster.VirtualDomainSpec) []string {
	var out []string
	for _, n := range spec.Nodes {
		b, _ := xml.Marshal(xLocation{ID: "location-" + id + "-" + n, Rsc: id, Node: n, Score: "0", ResourceDiscovery: "exclusive"})
		out = append(out, string(b))
	}
	for _, n := range spec.Avoid {
		b, _ := xml.Marshal(xLocation{ID: "location-" + id + "-avoid-" + n, Rsc: id, Node: n, Score: "-INFINITY", ResourceDiscovery: "never"})
		out = append(out, string(b))
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
