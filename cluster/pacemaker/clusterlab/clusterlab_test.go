package clusterlab

import (
	"strings"
	"testing"
)

const goodEnv = `# Written by lifeboat lab/cluster.sh up
HA_CLUSTER=lifeboat-ha
HA_DIR=/var/tmp/lifeboat-lab/hacluster
HA_NODES='node1 node2'
HA_NODE1_HOLDER=1234
HA_NODE1_NETNS=lbha-c2e4c9-node1
HA_NODE1_ADDR=10.213.88.1
HA_NODE1_LOG=/var/tmp/lifeboat-lab/hacluster/node1/log-pacemaker/pacemaker.log
HA_NODE1_COROSYNC_LOG=/var/tmp/lifeboat-lab/hacluster/node1/log-corosync/corosync.log
HA_NODE2_HOLDER=5678
HA_NODE2_LOG=/x/node2.log
`

func TestParseEnv(t *testing.T) {
	c, err := parseEnv(strings.NewReader(goodEnv), "cluster.env")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Nodes, ",") != "node1,node2" || c.holders["node1"] != 1234 || c.holders["node2"] != 5678 ||
		c.logs["node1"] != "/var/tmp/lifeboat-lab/hacluster/node1/log-pacemaker/pacemaker.log" || c.logs["node2"] != "/x/node2.log" {
		t.Errorf("parsed %+v", c)
	}
	if got := strings.Join(c.Command("node2"), " "); got != "nsenter --target 5678 --mount --net --uts --" {
		t.Errorf("command of node2: %q", got)
	}
	if c.Other("node1") != "node2" || c.Other("node2") != "node1" {
		t.Errorf("Other: %q %q", c.Other("node1"), c.Other("node2"))
	}
	bad := map[string]string{
		"one node":        "HA_NODES='node1'\nHA_NODE1_HOLDER=1\n",
		"same node twice": "HA_NODES='node1 node1'\nHA_NODE1_HOLDER=1\n",
		"no holder":       "HA_NODES='node1 node2'\nHA_NODE1_HOLDER=1\n",
		"holder not pid":  "HA_NODES='node1 node2'\nHA_NODE1_HOLDER=x\nHA_NODE2_HOLDER=2\n",
		"holder negative": "HA_NODES='node1 node2'\nHA_NODE1_HOLDER=-1\nHA_NODE2_HOLDER=2\n",
		"empty":           "",
	}
	for what, env := range bad {
		if _, err := parseEnv(strings.NewReader(env), "cluster.env"); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}

func FuzzParseEnv(f *testing.F) {
	f.Add(goodEnv)
	f.Add("HA_NODES='a b'\nHA_A_HOLDER=1\nHA_B_HOLDER=2\n")
	f.Fuzz(func(t *testing.T, env string) {
		c, err := parseEnv(strings.NewReader(env), "fuzz")
		if err != nil {
			return
		}
		if len(c.Nodes) != 2 || c.Nodes[0] == c.Nodes[1] {
			t.Fatalf("accepted nodes %q", c.Nodes)
		}
		for _, n := range c.Nodes {
			if c.holders[n] <= 0 {
				t.Fatalf("accepted holder %d of %s", c.holders[n], n)
			}
		}
	})
}
