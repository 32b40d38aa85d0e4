package local

import (
	"os"

	"golang.org/x/sys/unix"
)

// syncFiles makes a batch durable with one syncfs(2) of the repository's
// filesystem: cheaper than an fsync per object, which forces a journal
// commit each time.
func syncFiles(root string, _ []stagedObject) error {
	d, err := os.Open(root)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
