//go:build !linux

package raw

import "testing"

// allocated is unknown here; -1 passes every bound.
func allocated(t *testing.T, path string) int64 { return -1 }
