package nbd

import (
	"strconv"

	"lifeboat/nbd/internal/wire"
)

// The protocol's constants are in lifeboat/nbd/internal/wire, shared with
// the server; these are the client's public names and limits.

// Metadata context names and the flags they define.
const (
	// BaseAllocation is the standard allocation context.
	BaseAllocation = "base:allocation"
	// DirtyBitmapPrefix starts the name of QEMU's dirty-bitmap contexts,
	// "qemu:dirty-bitmap:NAME".
	DirtyBitmapPrefix = "qemu:dirty-bitmap:"

	// StateHole (base:allocation) marks a range not allocated on the server.
	StateHole = 1 << 0
	// StateZero (base:allocation) marks a range that reads as zeros.
	StateZero = 1 << 1
	// StateDirty (qemu:dirty-bitmap:NAME) marks a range as dirty.
	StateDirty = 1 << 0
)

// DirtyBitmapContext is the metadata context name of a QEMU dirty bitmap.
func DirtyBitmapContext(bitmap string) string { return DirtyBitmapPrefix + bitmap }

// Limits the client holds the server to. Nothing the server says makes the
// client allocate more than these.
const (
	// DefaultMaxRequest caps one NBD_CMD_READ (the protocol's customary
	// limit when the server states none).
	DefaultMaxRequest = 32 << 20
	// DefaultMaxInFlight is how many requests a client pipelines.
	DefaultMaxInFlight = 16

	maxStringLen     = 4096     // export names, context names, messages
	maxOptReplyLen   = 64 << 10 // payload of one option reply
	maxOptReplies    = 1 << 16  // replies to one option
	maxErrorPayload  = 6 + 0xffff + 8
	maxDescriptors   = 1 << 20 // block status descriptors in one chunk
	maxStatusExtents = 1 << 21 // merged extents one BlockStatus call returns
	maxMinBlock      = 64 << 10
	maxBlockStatus   = 1 << 31 // length of one NBD_CMD_BLOCK_STATUS request
	maxReadIntervals = 4096    // disjoint pieces a read reply may be in at once
)

func optName(o uint32) string {
	switch o {
	case wire.OptExportName:
		return "NBD_OPT_EXPORT_NAME"
	case wire.OptAbort:
		return "NBD_OPT_ABORT"
	case wire.OptList:
		return "NBD_OPT_LIST"
	case wire.OptStartTLS:
		return "NBD_OPT_STARTTLS"
	case wire.OptInfo:
		return "NBD_OPT_INFO"
	case wire.OptGo:
		return "NBD_OPT_GO"
	case wire.OptStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case wire.OptListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case wire.OptSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	}
	return "option " + itoa(uint64(o))
}

func repName(r uint32) string {
	switch r {
	case wire.RepAck:
		return "NBD_REP_ACK"
	case wire.RepServer:
		return "NBD_REP_SERVER"
	case wire.RepInfo:
		return "NBD_REP_INFO"
	case wire.RepMetaContext:
		return "NBD_REP_META_CONTEXT"
	case wire.RepErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case wire.RepErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case wire.RepErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case wire.RepErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case wire.RepErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD"
	case wire.RepErrUnknown:
		return "NBD_REP_ERR_UNKNOWN"
	case wire.RepErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case wire.RepErrBlockSizeReqd:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case wire.RepErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	case wire.RepErrExtHeaderReqd:
		return "NBD_REP_ERR_EXT_HEADER_REQD"
	}
	if r&wire.RepErrBit != 0 {
		return "NBD_REP_ERR(" + itoa(uint64(r&^wire.RepErrBit)) + ")"
	}
	return "reply type " + itoa(uint64(r))
}

func cmdName(c uint16) string {
	switch c {
	case wire.CmdRead:
		return "read"
	case wire.CmdBlockStatus:
		return "block status"
	case wire.CmdDisc:
		return "disconnect"
	}
	return "command " + itoa(uint64(c))
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
