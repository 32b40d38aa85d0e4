// Package wire holds the constants of the NBD protocol
// (NetworkBlockDevice/nbd doc/proto.md) that the client (lifeboat/nbd) and
// the server (lifeboat/nbd/server) share. Everything on the wire is
// big-endian. Limits each side enforces stay in its own package.
package wire

// Magics, handshake and transmission flags, options, option replies,
// NBD_INFO types, commands and their flags, structured reply flags and
// chunk types, and error values (Linux errno numbers).
const (
	NBDMagic             = 0x4e42444d41474943 // "NBDMAGIC"
	OptsMagic            = 0x49484156454f5054 // "IHAVEOPT"
	OldstyleMagic        = 0x0000420281861253
	OptReplyMagic        = 0x0003e889045565a9
	RequestMagic         = 0x25609513
	SimpleReplyMagic     = 0x67446698
	StructuredReplyMagic = 0x668e33ef
	FlagFixedNewstyle    = 1 << 0
	FlagNoZeroes         = 1 << 1
	FlagHasFlags         = 1 << 0
	FlagReadOnly         = 1 << 1
	FlagCanMultiConn     = 1 << 8
	OptExportName        = 1
	OptAbort             = 2
	OptList              = 3
	OptStartTLS          = 5
	OptInfo              = 6
	OptGo                = 7
	OptStructuredReply   = 8
	OptListMetaContext   = 9
	OptSetMetaContext    = 10
	RepAck               = 1
	RepServer            = 2
	RepInfo              = 3
	RepMetaContext       = 4
	RepErrBit            = 1 << 31
	RepErrUnsup          = RepErrBit | 1
	RepErrPolicy         = RepErrBit | 2
	RepErrInvalid        = RepErrBit | 3
	RepErrPlatform       = RepErrBit | 4
	RepErrTLSReqd        = RepErrBit | 5
	RepErrUnknown        = RepErrBit | 6
	RepErrShutdown       = RepErrBit | 7
	RepErrBlockSizeReqd  = RepErrBit | 8
	RepErrTooBig         = RepErrBit | 9
	RepErrExtHeaderReqd  = RepErrBit | 10
	InfoExport           = 0
	InfoName             = 1
	InfoDescription      = 2
	InfoBlockSize        = 3
	CmdRead              = 0
	CmdDisc              = 2
	CmdBlockStatus       = 7
	ReplyFlagDone        = 1 << 0
	ReplyTypeNone        = 0
	ReplyTypeOffsetData  = 1
	ReplyTypeOffsetHole  = 2
	ReplyTypeBlockStatus = 5
	ReplyTypeErrBit      = 1 << 15
	ReplyTypeError       = 1<<15 | 1
	ReplyTypeErrorOffset = ReplyTypeErrBit | 2
	FlagSendFlush        = 1 << 2
	FlagSendFUA          = 1 << 3
	FlagSendTrim         = 1 << 5
	FlagSendWriteZeroes  = 1 << 6
	FlagSendDF           = 1 << 7
	FlagSendFastZero     = 1 << 11
	CmdWrite             = 1
	CmdFlush             = 3
	CmdTrim              = 4
	CmdCache             = 5
	CmdWriteZeroes       = 6
	CmdFlagFUA           = 1 << 0
	CmdFlagNoHole        = 1 << 1
	CmdFlagDF            = 1 << 2
	CmdFlagReqOne        = 1 << 3
	CmdFlagFastZero      = 1 << 4
	ErrPerm              = 1
	ErrIO                = 5
	ErrNoMem             = 12
	ErrInval             = 22
	ErrNoSpc             = 28
	ErrOverflow          = 75
	ErrNotSup            = 95
	ErrShutdown          = 108
)
