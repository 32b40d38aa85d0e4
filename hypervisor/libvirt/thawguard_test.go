package libvirt

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/backup"
	"lifeboat/hypervisor"
	"lifeboat/lab"
)

// The thaw guard on a real guest: a backup that says it thawed lets the
// guard go without touching the guest; one that ends without saying so
// (it died) gets a frozen guest thawed, also when the freeze lands after
// the backup is gone; a guest that is not frozen is left alone. And the
// driver calls the hook once per quiescing backup and releases it with
// "thawed".
func TestThawGuard(t *testing.T) {
	l := lab.Start(t)
	n := l.Node("node1")
	v := n.StartGuest(t, "lbtest-thawguard", lab.GuestOptions{})
	const freezeTimeout = 3 * time.Second
	hookRuns := func() int { return strings.Count(v.Serial(), "fsfreeze-hook: freeze") }
	// pipe gives what a backup leaves at its end of the guard's pipe.
	pipe := func(msg string) io.Reader {
		r, w := io.Pipe()
		go func() {
			io.WriteString(w, msg)
			w.Close()
		}()
		return r
	}
	freeze := func(t *testing.T) {
		if _, err := v.Agent(`{"execute":"guest-fsfreeze-freeze"}`, 10); err != nil {
			t.Fatal(err)
		}
	}
	// lateFreeze sends a freeze that outlives its caller, as a killed
	// backup's does: the hook takes 3 s, the caller gives up after 1 s.
	lateFreeze := func(t *testing.T) {
		v.Run(t, "echo 3 >/run/fsfreeze-hang")
		runs := hookRuns()
		go v.Agent(`{"execute":"guest-fsfreeze-freeze"}`, 1)
		deadline := time.Now().Add(10 * time.Second)
		for hookRuns() == runs {
			if time.Now().After(deadline) {
				t.Fatal("the freeze hook never ran")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, c := range []struct {
		name       string
		setup      func(t *testing.T)
		msg        string
		wantThawed bool
		wantStatus string
	}{
		{"done: frozen guest left alone", freeze, ThawGuardDone, false, `"frozen"`},
		{"no done: frozen guest thawed", freeze, "", true, `"thawed"`},
		{"no done: late freeze thawed", lateFreeze, "", true, `"thawed"`},
		{"no done: thawed guest left alone", func(*testing.T) {}, "", false, `"thawed"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.setup(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			thawed, err := RunThawGuard(ctx, n.URI, v.Name, pipe(c.msg), freezeTimeout)
			t.Logf("guard returned after %v: thawed %v, err %v", time.Since(start).Round(time.Millisecond), thawed, err)
			if err != nil {
				t.Fatal(err)
			}
			if thawed != c.wantThawed {
				t.Errorf("thawed = %v, want %v", thawed, c.wantThawed)
			}
			if st := freezeStatus(t, v); !strings.Contains(st, c.wantStatus) {
				t.Errorf("freeze status after the guard: %s, want %s", st, c.wantStatus)
			}
			if strings.Contains(freezeStatus(t, v), `"frozen"`) {
				if _, err := v.Agent(`{"execute":"guest-fsfreeze-thaw"}`, 10); err != nil {
					t.Fatal(err)
				}
			}
			guestWrites(t, v)
		})
	}

	t.Run("driver hook", func(t *testing.T) {
		var mu sync.Mutex
		var calls []string
		hook := func(_ context.Context, uri, vm string, ft time.Duration) (func(bool), error) {
			mu.Lock()
			defer mu.Unlock()
			calls = append(calls, "start "+vm+" "+ft.String())
			return func(thawed bool) {
				mu.Lock()
				defer mu.Unlock()
				if thawed {
					calls = append(calls, "thawed")
				} else {
					calls = append(calls, "not thawed")
				}
			}, nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		d, err := Open(ctx, Options{URI: n.URI, ScratchDir: n.Scratch, FreezeTimeout: freezeTimeout, ThawGuard: hook})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		p, err := backup.RunVM(ctx, newTestRepo(t), d, v.Name, backup.VMOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Consistency != hypervisor.Application {
			t.Errorf("consistency %q, notes %q", p.Consistency, p.Notes)
		}
		mu.Lock()
		defer mu.Unlock()
		want := []string{"start " + v.Name + " 3s", "thawed"}
		if strings.Join(calls, "|") != strings.Join(want, "|") {
			t.Errorf("hook calls %q, want %q", calls, want)
		}
	})
}
