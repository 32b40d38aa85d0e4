//go:build !linux

package local

import "os"

// syncFiles fsyncs each staged file where syncfs(2) does not exist.
func syncFiles(_ string, batch []stagedObject) error {
	for _, o := range batch {
		f, err := os.OpenFile(o.tmp, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
