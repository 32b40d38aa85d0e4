package raw

import (
	"os"
	"syscall"
	"testing"
)

// allocated is the number of bytes the filesystem stores for path.
func allocated(t *testing.T, path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Blocks * 512
}
