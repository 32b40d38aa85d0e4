//go:build !unix

package recovery

import (
	"io/fs"
	"math"
)

// On other systems (the Windows build of the agent) the preflight cannot
// ask these questions cheaply; writes then fail with their own errors.

func writable(string, bool) error     { return nil }
func fileDevice(fs.FileInfo) uint64   { return 0 }
func copyOwner(string, fs.FileInfo)   {}
func freeBytes(string) (int64, error) { return math.MaxInt64, nil }
