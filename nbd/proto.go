package nbd

import "strconv"

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Everything on the wire is big-endian.

const (
	nbdMagic             = 0x4e42444d41474943 // "NBDMAGIC"
	optsMagic            = 0x49484156454f5054 // "IHAVEOPT"
	oldstyleMagic        = 0x0000420281861253
	optReplyMagic        = 0x0003e889045565a9
	requestMagic         = 0x25609513
	simpleReplyMagic     = 0x67446698
	structuredReplyMagic = 0x668e33ef
)

// Handshake flags (server) and client flags use the same two bits.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Transmission flags, sent with the export's size.
const (
	flagHasFlags     = 1 << 0
	flagReadOnly     = 1 << 1
	flagCanMultiConn = 1 << 8
)

// Options of the handshake phase.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
	optListMetaContext = 9
	optSetMetaContext  = 10
)

// Option reply types; errors have bit 31 set.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrBit           = 1 << 31
	repErrUnsup         = repErrBit | 1
	repErrPolicy        = repErrBit | 2
	repErrInvalid       = repErrBit | 3
	repErrPlatform      = repErrBit | 4
	repErrTLSReqd       = repErrBit | 5
	repErrUnknown       = repErrBit | 6
	repErrShutdown      = repErrBit | 7
	repErrBlockSizeReqd = repErrBit | 8
	repErrTooBig        = repErrBit | 9
	repErrExtHeaderReqd = repErrBit | 10
)

// NBD_INFO_* types carried by NBD_REP_INFO.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands of the transmission phase.
const (
	cmdRead        = 0
	cmdDisc        = 2
	cmdBlockStatus = 7
)

// Structured reply chunk flags and types; error types have bit 15 set.
const (
	replyFlagDone = 1 << 0

	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeErrBit      = 1 << 15
	replyTypeError       = replyTypeErrBit | 1
	replyTypeErrorOffset = replyTypeErrBit | 2
)

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
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaContext:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaContext:
		return "NBD_OPT_SET_META_CONTEXT"
	}
	return "option " + itoa(uint64(o))
}

func repName(r uint32) string {
	switch r {
	case repAck:
		return "NBD_REP_ACK"
	case repServer:
		return "NBD_REP_SERVER"
	case repInfo:
		return "NBD_REP_INFO"
	case repMetaContext:
		return "NBD_REP_META_CONTEXT"
	case repErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case repErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case repErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case repErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case repErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD"
	case repErrUnknown:
		return "NBD_REP_ERR_UNKNOWN"
	case repErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case repErrBlockSizeReqd:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	case repErrExtHeaderReqd:
		return "NBD_REP_ERR_EXT_HEADER_REQD"
	}
	if r&repErrBit != 0 {
		return "NBD_REP_ERR(" + itoa(uint64(r&^repErrBit)) + ")"
	}
	return "reply type " + itoa(uint64(r))
}

func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "read"
	case cmdBlockStatus:
		return "block status"
	case cmdDisc:
		return "disconnect"
	}
	return "command " + itoa(uint64(c))
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
