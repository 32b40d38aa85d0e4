package main

import (
	"flag"
	"io"
	"reflect"
	"testing"
	"time"

	"lifeboat/cluster"
)

// The --ha-* flags make the VirtualDomain spec that --ha adds.
func TestHASpecFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want cluster.VirtualDomainSpec
		bad  bool
	}{
		{args: nil, want: cluster.VirtualDomainSpec{}},
		{args: []string{"--ha-hypervisor", "n1=qemu:///session?socket=/a/n1", "--ha-hypervisor", "n2=qemu:///session?socket=/a/n2",
			"--ha-remote-uri", "qemu:///session?socket=/a/%n", "--ha-migrate-options", "--unsafe", "--ha-force-stop", "--ha-monitor", "5s"},
			want: cluster.VirtualDomainSpec{
				NodeHypervisors: map[string]string{"n1": "qemu:///session?socket=/a/n1", "n2": "qemu:///session?socket=/a/n2"},
				Nodes:           []string{"n1", "n2"}, RemoteURI: "qemu:///session?socket=/a/%n", MigrateOptions: "--unsafe",
				ForceStop: true, MonitorInterval: 5 * time.Second}},
		{args: []string{"--ha-hypervisor", "n1"}, bad: true},
		{args: []string{"--ha-hypervisor", "=qemu:///system"}, bad: true},
		{args: []string{"--ha-hypervisor", "n1="}, bad: true},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		var h haSpecFlags
		h.register(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		got, err := h.spec()
		if c.bad {
			if err == nil {
				t.Errorf("%q: accepted", c.args)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: %+v, %v; want %+v", c.args, got, err, c.want)
		}
	}
}
