package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"lifeboat/hypervisor/libvirt"
)

// thawGuardCmd is the hidden subcommand a backup re-executes itself as,
// before it freezes a guest: see libvirt.RunThawGuard.
const thawGuardCmd = "__thaw-guard"

// hiddenCommands run like commands but are not for people: usage and
// shell completion list only commands().
func hiddenCommands() []command {
	return []command{{thawGuardCmd, "", cmdThawGuard}}
}

// cmdThawGuard waits for the backup at the other end of stdin and thaws
// the guest if the backup ends without saying it did.
func cmdThawGuard(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet(thawGuardCmd, flag.ContinueOnError)
	uri := fs.String("uri", "", "libvirt URI")
	vm := fs.String("vm", "", "VM name")
	parent := fs.Int("parent", 0, "pid of the backup, for the log")
	freezeTimeout := fs.Duration("freeze-timeout", 0, "the backup's freeze timeout")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *uri == "" || *vm == "" {
		return usagef("usage: lifeboat %s --uri URI --vm NAME [--parent PID] [--freeze-timeout D] <PIPE", thawGuardCmd)
	}
	// Signals for the backup's process group, session or service are
	// for the backup: the guard outlives it by design and ends by
	// itself.
	ignoreStopSignals()
	thawed, err := libvirt.RunThawGuard(context.WithoutCancel(ctx), *uri, *vm, os.Stdin, *freezeTimeout)
	if thawed {
		e.log.Warn("the backup ended without thawing the guest's filesystems: the thaw guard thawed them", "vm", *vm, "uri", *uri, "backup_pid", *parent)
	}
	if err != nil {
		return fmt.Errorf("VM %s, backup pid %d: %w", *vm, *parent, err)
	}
	return nil
}

// guardReleaseWait bounds how long a backup that thawed its guest waits
// for the guard to exit: it should at once, and then no guard outlives
// the backup.
const guardReleaseWait = 2 * time.Second
