//go:build linux && (mips || mipsle || mips64 || mips64le || ppc64 || ppc64le)

package st

// The ioctl encoding of MIPS and POWER: 3 direction bits, 13 size bits.
const (
	iocWrite     = 4
	iocRead      = 2
	iocSizeShift = 16
	iocDirShift  = 29
)
