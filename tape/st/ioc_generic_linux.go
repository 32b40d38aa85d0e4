//go:build linux && !mips && !mipsle && !mips64 && !mips64le && !ppc64 && !ppc64le

package st

// Linux's generic ioctl encoding: 2 direction bits, 14 size bits.
const (
	iocWrite     = 1
	iocRead      = 2
	iocSizeShift = 16
	iocDirShift  = 30
)
