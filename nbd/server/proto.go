package server

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Everything on the wire is big-endian. The client package keeps its own
// unexported copy of the ones it needs; these are the server's.

const (
	nbdMagic             = 0x4e42444d41474943 // "NBDMAGIC"
	optsMagic            = 0x49484156454f5054 // "IHAVEOPT"
	optReplyMagic        = 0x0003e889045565a9
	requestMagic         = 0x25609513
	simpleReplyMagic     = 0x67446698
	structuredReplyMagic = 0x668e33ef
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle = 1 << 0
	flagNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagSendDF          = 1 << 7
	flagCanMultiConn    = 1 << 8
	flagSendFastZero    = 1 << 11
)

// Options.
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

// Option reply types.
const (
	repAck         = 1
	repServer      = 2
	repInfo        = 3
	repMetaContext = 4

	repErrBit      = 1 << 31
	repErrUnsup    = repErrBit | 1
	repErrInvalid  = repErrBit | 3
	repErrUnknown  = repErrBit | 6
	repErrShutdown = repErrBit | 7
	repErrTooBig   = repErrBit | 9
)

// NBD_INFO_* types.
const (
	infoExport      = 0
	infoName        = 1
	infoDescription = 2
	infoBlockSize   = 3
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7
)

// Command flags.
const (
	cmdFlagFUA      = 1 << 0
	cmdFlagNoHole   = 1 << 1
	cmdFlagDF       = 1 << 2
	cmdFlagReqOne   = 1 << 3
	cmdFlagFastZero = 1 << 4
)

// Structured reply flags and chunk types.
const (
	replyFlagDone = 1 << 0

	replyTypeNone        = 0
	replyTypeOffsetData  = 1
	replyTypeOffsetHole  = 2
	replyTypeBlockStatus = 5
	replyTypeError       = 1<<15 | 1
)

// Error values (protocol constants, Linux errno numbers).
const (
	errPerm     = 1
	errIO       = 5
	errNoMem    = 12
	errInval    = 22
	errNoSpc    = 28
	errOverflow = 75
	errNotSup   = 95
	errShutdown = 108
)

// base:allocation.
const (
	metaBaseAllocation = "base:allocation"
	baseAllocationID   = 1
	stateHole          = 1 << 0
	stateZero          = 1 << 1
)

// Limits.
const (
	// MaxBlockSize is the largest READ or WRITE the server accepts and
	// advertises (NBD_INFO_BLOCK_SIZE maximum).
	MaxBlockSize = 32 << 20
	// PreferredBlockSize is the advertised preferred block size.
	PreferredBlockSize = 4096

	maxStringLen    = 4096     // names, queries
	maxOptLen       = 64 << 10 // option payload read into memory
	maxOptDiscard   = 16 << 20 // larger option payloads end the session
	maxOptions      = 4096     // options one connection may send
	maxStatusLen    = 1 << 30  // range one BLOCK_STATUS reply describes at most
	maxDescriptors  = 1 << 16  // descriptors in one BLOCK_STATUS reply
	connBudget      = 2 * MaxBlockSize
	defaultWorkers  = 4
	handshakeLength = 60 // default handshake timeout in seconds
)
