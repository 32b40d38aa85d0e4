package nbd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"lifeboat/nbd/internal/wire"
)

var (
	// ErrUnknownExport is wrapped when the server has no export of the
	// requested name.
	ErrUnknownExport = errors.New("export not found")
	// ErrTLSRequired is wrapped when the server insists on TLS, which this
	// client does not speak.
	ErrTLSRequired = errors.New("server requires TLS")
	// ErrClosed is returned for requests made after Close.
	ErrClosed = errors.New("nbd: client closed")
	// ErrNoMetaContext is wrapped when a block status query names a
	// metadata context that was not negotiated.
	ErrNoMetaContext = errors.New("metadata context not negotiated")
)

// Errno is an error value of the NBD protocol. The values are those of
// Linux errno, but they are protocol constants, not the local system's.
type Errno uint32

// Error values servers send.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "EPERM (operation not permitted)"
	case EIO:
		return "EIO (input/output error)"
	case ENOMEM:
		return "ENOMEM (cannot allocate memory)"
	case EINVAL:
		return "EINVAL (invalid argument)"
	case ENOSPC:
		return "ENOSPC (no space left on device)"
	case EOVERFLOW:
		return "EOVERFLOW (value too large)"
	case ENOTSUP:
		return "ENOTSUP (operation not supported)"
	case ESHUTDOWN:
		return "ESHUTDOWN (server is shutting down)"
	}
	return "error " + strconv.FormatUint(uint64(e), 10)
}

// Error is an error the server reported for one request. errors.Is(err,
// nbd.EIO) and the like work through Unwrap.
type Error struct {
	Op      string // "read" or "block status"
	Offset  int64  // the request's offset
	Length  int64  // the request's length
	Errno   Errno
	Message string // the server's text, may be empty
	// At is the offset the server said the error happened at, or -1.
	At int64
}

func (e *Error) Error() string {
	s := fmt.Sprintf("nbd: %s of %d bytes at offset %d: server error %v", e.Op, e.Length, e.Offset, e.Errno)
	if e.At >= 0 {
		s += fmt.Sprintf(" at offset %d", e.At)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

func (e *Error) Unwrap() error { return e.Errno }

// ProtocolError reports a server that broke the NBD protocol: a bad magic,
// a reply that does not fit its request, a length out of bounds.
type ProtocolError struct {
	Op     string // "handshake", "read", "block status", "reply"
	Offset int64  // the request's offset, -1 outside a request
	Length int64
	Msg    string
}

func (e *ProtocolError) Error() string {
	if e.Offset < 0 {
		return fmt.Sprintf("nbd: %s: protocol violation by server: %s", e.Op, e.Msg)
	}
	return fmt.Sprintf("nbd: %s of %d bytes at offset %d: protocol violation by server: %s", e.Op, e.Length, e.Offset, e.Msg)
}

func handshakeErr(format string, args ...any) error {
	return &ProtocolError{Op: "handshake", Offset: -1, Msg: fmt.Sprintf(format, args...)}
}

// OptionError is a handshake option the server refused.
type OptionError struct {
	Option  string // "NBD_OPT_GO" ...
	Export  string
	Reply   string // "NBD_REP_ERR_UNKNOWN" ...
	Message string // the server's text, may be empty
	code    uint32
}

func (e *OptionError) Error() string {
	s := fmt.Sprintf("nbd: %s for export %q refused with %s", e.Option, e.Export, e.Reply)
	switch e.code {
	case wire.RepErrUnknown:
		s += " (export not found)"
	case wire.RepErrTLSReqd:
		s += " (server requires TLS, which this client does not support)"
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is makes errors.Is(err, ErrUnknownExport) and ErrTLSRequired work.
func (e *OptionError) Is(target error) bool {
	switch target {
	case ErrUnknownExport:
		return e.code == wire.RepErrUnknown
	case ErrTLSRequired:
		return e.code == wire.RepErrTLSReqd
	}
	return false
}

// ConnError is the connection to the server failing: closed, reset, timed
// out. Every request that was in flight gets it.
type ConnError struct {
	Msg string
	Err error
}

func (e *ConnError) Error() string {
	if e.Err == nil {
		return "nbd: " + e.Msg
	}
	return "nbd: " + e.Msg + ": " + e.Err.Error()
}

func (e *ConnError) Unwrap() error { return e.Err }

// opError puts the request in front of an error that does not name it.
type opError struct {
	prefix string
	err    error
}

func (e *opError) Error() string {
	return e.prefix + ": " + strings.TrimPrefix(e.err.Error(), "nbd: ")
}

func (e *opError) Unwrap() error { return e.err }

// withRequest names the request [off, off+length) in err unless err
// already names a request inside it.
func withRequest(err error, off, length int64, format string, args ...any) error {
	var se *Error
	var pe *ProtocolError
	switch {
	case errors.As(err, &se) && se.Offset >= off && se.Offset < off+length:
		return err
	case errors.As(err, &pe) && pe.Offset >= off && pe.Offset < off+length:
		return err
	}
	return &opError{prefix: "nbd: " + fmt.Sprintf(format, args...), err: err}
}

// printable turns server-sent text into something safe to show: valid
// UTF-8, control characters escaped, at most maxStringLen bytes.
func printable(b []byte) string {
	if len(b) > maxStringLen {
		b = b[:maxStringLen]
	}
	s := string(b)
	clean := utf8.ValidString(s)
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}
