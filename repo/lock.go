package repo

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"lifeboat/repo/storage"
)

// Locks coordinate writers on a store that has no compare-and-swap:
// each holder writes its own lock object, then lists the others. Backups
// hold shared locks and run side by side; gc holds the exclusive lock and
// runs alone. Two racing claimants may both back off, never both proceed.
// A lock not refreshed within lockStale is dead (its holder crashed) and
// is ignored, and removed by the next exclusive claimant.
const (
	lockStale   = 30 * time.Minute
	lockRefresh = 5 * time.Minute
)

type lockInfo struct {
	Exclusive bool      `json:"exclusive"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Purpose   string    `json:"purpose"`
	Time      time.Time `json:"time"`
}

// Lock is a held repository lock. Unlock releases it.
type Lock struct {
	r    *Repository
	info lockInfo

	mu   sync.Mutex
	key  string
	stop chan struct{}
	done chan struct{}
}

// ErrLocked is wrapped when a conflicting lock is held.
var ErrLocked = fmt.Errorf("repository is locked")

// Lock takes a shared (exclusive=false) or exclusive lock.
func (r *Repository) Lock(ctx context.Context, exclusive bool, purpose string) (*Lock, error) {
	host, _ := os.Hostname()
	l := &Lock{r: r, info: lockInfo{Exclusive: exclusive, Host: host, PID: os.Getpid(), Purpose: purpose}}
	if err := l.write(ctx); err != nil {
		return nil, err
	}
	if err := l.checkConflicts(ctx); err != nil {
		r.b.Delete(context.WithoutCancel(ctx), l.key)
		return nil, err
	}
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.refreshLoop()
	return l, nil
}

func (l *Lock) write(ctx context.Context) error {
	l.info.Time = time.Now().UTC()
	plain, err := json.Marshal(l.info)
	if err != nil {
		return err
	}
	key := "locks/" + randomHex(16)
	obj, err := l.r.codec.seal(typeLock, key, plain, false)
	if err != nil {
		return err
	}
	if err := l.r.b.Put(ctx, key, obj); err != nil {
		return fmt.Errorf("write lock: %w", err)
	}
	l.mu.Lock()
	old := l.key
	l.key = key
	l.mu.Unlock()
	if old != "" {
		l.r.b.Delete(ctx, old)
	}
	return nil
}

func (l *Lock) checkConflicts(ctx context.Context) error {
	var conflicts []string
	err := l.r.b.List(ctx, "locks/", func(o storage.ObjectInfo) error {
		if o.Key == l.key {
			return nil
		}
		obj, err := l.r.b.Get(ctx, o.Key)
		if err != nil {
			return nil // released meanwhile
		}
		plain, err := l.r.codec.open(typeLock, o.Key, obj)
		var other lockInfo
		if err == nil {
			err = json.Unmarshal(plain, &other)
		}
		if err != nil {
			return fmt.Errorf("lock %s: %w", o.Key, err)
		}
		if time.Since(other.Time) > lockStale {
			if l.info.Exclusive {
				l.r.b.Delete(ctx, o.Key)
			}
			return nil
		}
		if l.info.Exclusive || other.Exclusive {
			conflicts = append(conflicts, fmt.Sprintf("%s by %s pid %d since %s", other.Purpose, other.Host, other.PID, other.Time.Format(time.RFC3339)))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check locks: %w", err)
	}
	if len(conflicts) > 0 {
		return fmt.Errorf("%w: %s", ErrLocked, strings.Join(conflicts, "; "))
	}
	return nil
}

func (l *Lock) refreshLoop() {
	defer close(l.done)
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			l.write(ctx)
			cancel()
		}
	}
}

// Unlock releases the lock.
func (l *Lock) Unlock(ctx context.Context) error {
	close(l.stop)
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.b.Delete(ctx, l.key)
}
