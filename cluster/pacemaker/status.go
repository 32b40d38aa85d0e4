package pacemaker

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"strconv"
	"strings"

	"lifeboat/cluster"
)

// The XML of `crm_mon --output-as=xml` (API 2.x), the parts read here.

type monNode struct {
	Name string `xml:"name,attr"`
}

type monResource struct {
	ID         string    `xml:"id,attr"`
	Agent      string    `xml:"resource_agent,attr"`
	Role       string    `xml:"role,attr"`
	TargetRole string    `xml:"target_role,attr"`
	Active     string    `xml:"active,attr"`
	Orphaned   string    `xml:"orphaned,attr"`
	Blocked    string    `xml:"blocked,attr"`
	Managed    string    `xml:"managed,attr"`
	Failed     string    `xml:"failed,attr"`
	Pending    string    `xml:"pending,attr"`
	Nodes      []monNode `xml:"node"`
}

// monContainer: <resources>, <group>, <clone>, <bundle>, <replica>.
type monContainer struct {
	Resources []monResource  `xml:"resource"`
	Groups    []monContainer `xml:"group"`
	Clones    []monContainer `xml:"clone"`
	Bundles   []monContainer `xml:"bundle"`
	Replicas  []monContainer `xml:"replica"`
}

type monHistory struct {
	ID        string `xml:"id,attr"`
	FailCount string `xml:"fail-count,attr"`
}

type monFailure struct {
	OpKey      string `xml:"op_key,attr"`
	Node       string `xml:"node,attr"`
	ExitStatus string `xml:"exitstatus,attr"`
	ExitReason string `xml:"exitreason,attr"`
	ExitCode   string `xml:"exitcode,attr"`
	Task       string `xml:"task,attr"`
	Interval   string `xml:"interval,attr"`
	Changed    string `xml:"last-rc-change,attr"`
}

type monNodeStatus struct {
	Name   string `xml:"name,attr"`
	Online string `xml:"online,attr"`
}

type monResult struct {
	XMLName   xml.Name        `xml:"pacemaker-result"`
	Nodes     []monNodeStatus `xml:"nodes>node"`
	Resources monContainer    `xml:"resources"`
	History   []struct {
		Node      string       `xml:"name,attr"`
		Resources []monHistory `xml:"resource_history"`
	} `xml:"node_history>node"`
	Failures []monFailure `xml:"failures>failure"`
	Status   resultStatus `xml:"status"`
}

type resultStatus struct {
	Code    string   `xml:"code,attr"`
	Message string   `xml:"message,attr"`
	Errors  []string `xml:"errors>error"`
}

func parseMon(b []byte) (*monResult, error) {
	var r monResult
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse crm_mon output: %w", err)
	}
	return &r, nil
}

func (c *monContainer) walk(f func(*monResource) bool) bool {
	for i := range c.Resources {
		if f(&c.Resources[i]) {
			return true
		}
	}
	for _, cs := range [][]monContainer{c.Groups, c.Clones, c.Bundles, c.Replicas} {
		for i := range cs {
			if cs[i].walk(f) {
				return true
			}
		}
	}
	return false
}

// resource is crm_mon's view of a primitive, nil when crm_mon does not
// list it.
func (r *monResult) resource(id string) *monResource {
	var found *monResource
	r.Resources.walk(func(m *monResource) bool {
		if m.ID == id {
			found = m
			return true
		}
		return false
	})
	return found
}

// failures are the failed operations of a resource. crm_mon names an
// operation "<rsc>_<task>_<interval ms>".
func (r *monResult) failures(id string) []cluster.Failure {
	var out []cluster.Failure
	for _, f := range r.Failures {
		if f.OpKey != id+"_"+f.Task+"_"+f.Interval {
			continue
		}
		code, _ := strconv.Atoi(f.ExitCode)
		out = append(out, cluster.Failure{
			Node: f.Node, Op: f.Task, Status: f.ExitStatus, ExitCode: code,
			Reason: f.ExitReason, Time: f.Changed,
		})
	}
	return out
}

// hasHistory: some node remembers operations of that resource.
func (r *monResult) hasHistory(id string) bool {
	for _, n := range r.History {
		for _, h := range n.Resources {
			if h.ID == id {
				return true
			}
		}
	}
	for _, f := range r.Failures {
		if strings.HasPrefix(f.OpKey, id+"_") {
			return true
		}
	}
	return false
}

// parseLocate reads `crm_resource --locate --output-as=xml`:
// <nodes resource="X"><node>node0</node></nodes>.
func parseLocate(b []byte) ([]string, error) {
	var r struct {
		XMLName xml.Name `xml:"pacemaker-result"`
		Nodes   []string `xml:"nodes>node"`
	}
	if err := xml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse crm_resource output: %w", err)
	}
	var nodes []string
	for _, n := range r.Nodes {
		if n = strings.TrimSpace(n); n != "" {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// resultErrors returns the error messages of a tool's XML result, "" when
// the output is no such result.
func resultErrors(b []byte) string {
	if !bytes.Contains(b, []byte("<pacemaker-result")) {
		return ""
	}
	var r struct {
		XMLName xml.Name     `xml:"pacemaker-result"`
		Status  resultStatus `xml:"status"`
	}
	if xml.Unmarshal(b, &r) != nil {
		return ""
	}
	var msgs []string
	for _, e := range r.Status.Errors {
		if e = strings.TrimSpace(e); e != "" {
			msgs = append(msgs, e)
		}
	}
	if len(msgs) == 0 && r.Status.Code != "" && r.Status.Code != "0" {
		msgs = append(msgs, r.Status.Message)
	}
	return strings.Join(msgs, "; ")
}
