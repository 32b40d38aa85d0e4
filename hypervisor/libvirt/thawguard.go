package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"lifeboat/hypervisor"
)

// ThawGuardFunc starts a thaw guard for one freeze of VM vm on the daemon
// at uri: something outside the calling process (the CLI re-executes
// itself) that runs RunThawGuard. The backup calls release once the
// freeze is over: thawed says the guest is known to be thawed and the
// guard may exit; false (the thaw failed or its outcome is unknown) leaves
// the guard to go on trying. A process that dies never calls release, and
// that is what the guard is for. ctx is for starting the guard only; the
// guard must outlive it.
type ThawGuardFunc func(ctx context.Context, uri, vm string, freezeTimeout time.Duration) (release func(thawed bool), err error)

// ErrGuardBusy is what a ThawGuardFunc returns when a thaw guard of an
// earlier backup of the same VM still runs (its backup died while the guest
// was frozen): that guard would thaw a new freeze too, so the backup does
// not freeze the guest and says so.
var ErrGuardBusy = errors.New("an earlier backup's thaw guard still watches this VM")

// ThawGuardDone is what a backup writes to its guard's pipe when it has
// thawed the guest itself; closing the pipe without it asks for a thaw.
const ThawGuardDone = "done\n"

// ThawGuardMaxWait is how long a guard waits for its backup to finish
// the freeze (the freeze, its hooks, virDomainBackupBegin and the thaw)
// before it thaws the guest anyway, with the backup still alive: a guest
// frozen that long is an outage, whatever the backup is doing (stopped
// with SIGSTOP, libvirtd hung). The guard never outlives this plus
// 2 × freezeTimeout plus the time for libvirt to answer.
func ThawGuardMaxWait(freezeTimeout time.Duration) time.Duration {
	return 2*normFreezeTimeout(freezeTimeout) + 2*time.Minute
}

func normFreezeTimeout(t time.Duration) time.Duration {
	if t <= 0 {
		return 60 * time.Second
	}
	return t
}

// thawSettle is how long the guard watches a guest that its agent says is
// thawed before it believes that no freeze is still on its way: libvirtd
// may not yet have handed the dead backup's freeze to the agent.
const thawSettle = 2 * time.Second

// RunThawGuard is the thaw guard: it waits until pipe (the backup's end
// of it) is closed. After ThawGuardDone it returns at once: the backup
// thawed the guest itself. Without it the backup died, or gave up on an
// uncertain thaw, and the guard thaws the guest: it asks the guest agent
// for guest-fsfreeze-status and sends guest-fsfreeze-thaw while the guest
// is frozen, for up to 2 × freezeTimeout, because a freeze that libvirtd
// had already sent takes effect when the guest's freeze hooks return. It
// never freezes anything. thawed says whether it thawed the guest.
func RunThawGuard(ctx context.Context, uri, vm string, pipe io.Reader, freezeTimeout time.Duration) (thawed bool, err error) {
	freezeTimeout = normFreezeTimeout(freezeTimeout)
	msg := make(chan string, 1)
	go func() { msg <- readPipe(pipe) }()
	wait := time.NewTimer(ThawGuardMaxWait(freezeTimeout))
	defer wait.Stop()
	select {
	case m := <-msg:
		if strings.TrimSpace(m) == strings.TrimSpace(ThawGuardDone) {
			return false, nil
		}
	case <-wait.C:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	return thawAfterBackup(ctx, uri, vm, freezeTimeout)
}

// readPipe reads until the writer closes and returns the start of what
// it wrote.
func readPipe(r io.Reader) string {
	var head []byte
	buf := make([]byte, 64)
	for {
		n, err := r.Read(buf)
		if len(head) < 64 {
			head = append(head, buf[:min(n, 64-len(head))]...)
		}
		if err != nil {
			return string(head)
		}
	}
}

// thawAfterBackup thaws vm's guest when it is frozen, until the agent has
// said "thawed" for thawSettle (or right after a thaw of its own) or
// 2 × freezeTimeout has passed.
func thawAfterBackup(ctx context.Context, uri, vm string, freezeTimeout time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*freezeTimeout)
	defer cancel()
	var d *Driver
	for {
		var err error
		d, err = Open(ctx, Options{URI: uri, FreezeTimeout: freezeTimeout, DialTimeout: 10 * time.Second})
		if err == nil {
			break
		}
		if sleepCtx(ctx, time.Second) != nil {
			return false, fmt.Errorf("thaw guard of %q: %w", vm, err)
		}
	}
	defer d.Close()
	dom, err := d.lookup(ctx, vm)
	if err != nil {
		if errors.Is(err, hypervisor.ErrNotFound) {
			return false, nil // no VM, nothing frozen
		}
		return false, fmt.Errorf("thaw guard: %w", err)
	}
	var thawed bool
	var lastErr error
	var thawedSince time.Time // first "thawed" of the current run of them
	for {
		st, err := d.agentCommand(dom, agentStatus, time.Second)
		switch {
		case err != nil:
			lastErr = d.wrap(err, "freeze status of %q", vm)
			thawedSince = time.Time{}
			// A stopped VM is not frozen; a paused one may be, and its
			// agent answers once it runs again.
			if s, serr := d.state(dom); serr == nil && s == hypervisor.ShutOff {
				return thawed, nil
			}
		case strings.Contains(st, `"frozen"`) || strings.Contains(st, `"freezing"`):
			thawedSince = time.Time{}
			if err := d.thawNow(dom); err != nil {
				lastErr = err
			} else {
				thawed = true
				continue // confirm
			}
		case thawed:
			return true, nil
		case thawedSince.IsZero():
			thawedSince = time.Now()
		case time.Since(thawedSince) >= thawSettle:
			return false, nil
		}
		if sleepCtx(ctx, 250*time.Millisecond) != nil {
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return thawed, fmt.Errorf("thaw guard of %q: gave up after %v: %w", vm, 2*freezeTimeout, lastErr)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
