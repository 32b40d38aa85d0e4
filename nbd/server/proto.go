package server

// The protocol's constants are in lifeboat/nbd/internal/wire, shared with
// the client; these are the server's own names and limits.

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
