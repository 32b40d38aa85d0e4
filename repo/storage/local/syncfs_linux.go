package local

import (
	"os"

	"golang.org/x/sys/unix"
)

func syncFS(root string) (bool, error) {
	d, err := os.Open(root)
	if err != nil {
		return true, err
	}
	defer d.Close()
	return true, unix.Syncfs(int(d.Fd()))
}
