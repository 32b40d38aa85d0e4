//go:build !unix

package main

import "os"

// notifyFinalize: no SIGUSR1 here; the control socket remains.
func notifyFinalize(chan<- os.Signal) {}
