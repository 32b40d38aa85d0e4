//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// notifyFinalize delivers SIGUSR1, which asks an instant recovery to
// finalize, as the control socket does.
func notifyFinalize(c chan<- os.Signal) { signal.Notify(c, syscall.SIGUSR1) }
