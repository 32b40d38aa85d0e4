package qcow2

import (
	"context"
	"testing"

	"lifeboat/disk"
	"lifeboat/disk/disktest"
)

func format() disktest.Format {
	return disktest.Format{
		Name: disk.QCOW2,
		Ext:  ".qcow2",
		Create: func(ctx context.Context, path string, opts disk.CreateOptions) (disk.Writer, error) {
			return Create(ctx, path, opts)
		},
		Open: func(ctx context.Context, path string, parents disk.ParentOpener) (disk.Image, error) {
			return Open(ctx, path, parents)
		},
		Differencing: true,
		Granularity:  defaultClusterSize,
	}
}

func TestConformance(t *testing.T) { disktest.Run(t, format()) }
