package local

import (
	"os"

	"golang.org/x/sync/errgroup"
)

// syncFiles makes a staged batch durable. On Linux one syncfs(2) of the
// repository's filesystem does it (measured: a 2.6 GB backup took 5.8 s
// this way and 20 s with an fsync per object, even 16 at a time); it also
// flushes other dirty data on that filesystem, which is why a repository
// belongs on its own filesystem, not beside running VMs' disks. Elsewhere
// each file is fsynced.
func syncFiles(root string, batch []stagedObject) error {
	if ok, err := syncFS(root); ok {
		return err
	}
	var g errgroup.Group
	g.SetLimit(16)
	for _, o := range batch {
		g.Go(func() error {
			f, err := os.OpenFile(o.tmp, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			err = f.Sync()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			return err
		})
	}
	return g.Wait()
}
