package nbd

import (
	"context"

	"lifeboat/disk"
)

// Image presents an export as a disk.Image, so that the repository can
// back up straight from an NBD server: the export is the guest-visible
// disk (raw format, no parent) and its allocation map comes from
// base:allocation.
type Image struct {
	c *Client
}

var _ disk.Image = (*Image)(nil)

// NewImage wraps a client; closing the image closes the client.
func NewImage(c *Client) *Image { return &Image{c: c} }

// OpenImage dials an NBD URI (see ParseURL) and wraps the client.
func OpenImage(ctx context.Context, uri string, opts Options) (*Image, error) {
	c, err := DialURL(ctx, uri, opts)
	if err != nil {
		return nil, err
	}
	return NewImage(c), nil
}

// Client is the underlying connection, for Dirty and BlockStatus.
func (im *Image) Client() *Client { return im.c }

func (im *Image) ReadAt(p []byte, off int64) (int, error) { return im.c.ReadAt(p, off) }
func (im *Image) Close() error                            { return im.c.Close() }
func (im *Image) Format() disk.Format                     { return disk.Raw }
func (im *Image) Size() int64                             { return im.c.Size() }
func (im *Image) Parent() disk.Image                      { return nil }

// Extents maps [off, off+length), clamped to the export, from
// base:allocation: data, zero (reads as zeros) and unallocated (a hole
// reading as zeros).
func (im *Image) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	off, length = disk.ClampRange(off, length, im.c.Size())
	if length == 0 {
		return nil, nil
	}
	return im.c.Allocation(ctx, off, length)
}

// Info describes the export as a raw layer with subformat "nbd".
func (im *Image) Info() disk.Info {
	return disk.Info{Format: disk.Raw, Size: im.c.Size(), Subformat: "nbd"}
}
