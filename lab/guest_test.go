package lab_test

import (
	"os"
	"strings"
	"testing"

	"lifeboat/lab"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if err := lab.Stop(); err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
	}
	os.Exit(code)
}

// TestGuestBoots boots the lab guest on node0 (system daemon, its disks
// folder) and node1 (session daemon, the shared volume) and checks what
// other tests rely on: the ready marker, guest-exec, writes to the root
// filesystem, and the fsfreeze hook's log.
func TestGuestBoots(t *testing.T) {
	l := lab.Start(t)
	for _, tc := range []struct {
		node   string
		shared bool
	}{
		{"node0", false},
		{"node1", true},
		// node2 is a session node like node1; cmd/lifeboat's guest test
		// boots there from its own disks folder.
	} {
		t.Run(tc.node, func(t *testing.T) {
			n := l.Node(tc.node)
			o := lab.GuestOptions{}
			if tc.shared {
				o.Dir = l.Shared
			}
			v := n.StartGuest(t, "lbtest-guest-"+tc.node, o)
			t.Logf("%s: boot to guest-ping %v", tc.node, v.BootToAgent)
			if !strings.Contains(v.Serial(), lab.Guest(t).ReadyMarker) {
				t.Errorf("serial console has no ready marker:\n%s", v.Serial())
			}
			if got := v.Run(t, "echo hello >/data/x && sync && cat /data/x"); got != "hello\n" {
				t.Errorf("guest-exec output %q, want %q", got, "hello\n")
			}
			for _, c := range []string{"guest-fsfreeze-freeze", "guest-fsfreeze-thaw"} {
				if _, err := v.Agent(`{"execute":"`+c+`"}`, 10); err != nil {
					t.Fatal(err)
				}
			}
			log := v.Run(t, "cat /var/log/fsfreeze.log")
			if !strings.Contains(log, " freeze\n") || !strings.Contains(log, " thaw\n") {
				t.Errorf("fsfreeze.log has no freeze and thaw lines:\n%s", log)
			}
		})
	}
}
