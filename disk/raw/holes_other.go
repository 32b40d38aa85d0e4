//go:build !linux

package raw

import (
	"context"
	"os"

	"lifeboat/disk"
)

// holes reports everything as data where the OS offers no portable hole
// query.
func holes(ctx context.Context, f *os.File, path string, off, length int64) ([]disk.Extent, error) {
	return []disk.Extent{{Offset: off, Length: length, Kind: disk.Data}}, nil
}

// punchHole is unsupported here; the caller writes zeros instead.
func punchHole(f *os.File, off, n int64) error { return errNoHoles }

func startWriteback(*os.File, int64, int64) {}

func openDirect(string) *os.File { return nil }

func directAligned([]byte, int64) bool { return false }

func directRefused(error) bool { return false }
