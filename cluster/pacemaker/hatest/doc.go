// Package hatest holds end-to-end tests of Lifeboat on the lab's two-node
// Pacemaker cluster (lab/cluster.sh, package clusterlab): a real server and
// one agent per cluster node protect VMs that the cluster runs, live
// migrates, and restarts elsewhere when a node dies (issue 8). It has no
// code of its own; run it with `go test ./cluster/pacemaker/hatest/` as
// root.
package hatest
