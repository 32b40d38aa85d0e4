package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"lifeboat/nbd/internal/wire"
)

// session is what negotiation hands the transmission phase.
type session struct {
	exp        *export
	r          *bufio.Reader
	w          *bufio.Writer
	structured bool
	metaAlloc  bool // base:allocation selected for exp
}

// negotiator runs the handshake of one connection.
type negotiator struct {
	s          *Server
	r          *bufio.Reader
	w          *bufio.Writer
	noZeroes   bool
	structured bool
	metaExp    *export // export of the last NBD_OPT_SET_META_CONTEXT
	metaAlloc  bool
}

var be = binary.BigEndian

// errAbort ends a negotiation the client asked to end.
var errAbort = errors.New("client aborted negotiation")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("nbd server: client broke the protocol: "+format, args...)
}

// negotiate runs the handshake; a nil session with a nil error is a
// client that aborted.
func (s *Server) negotiate(conn net.Conn) (*session, error) {
	n := &negotiator{s: s, r: bufio.NewReaderSize(conn, 64<<10), w: bufio.NewWriterSize(conn, 64<<10)}
	var b [18]byte
	be.PutUint64(b[0:], wire.NBDMagic)
	be.PutUint64(b[8:], wire.OptsMagic)
	be.PutUint16(b[16:], wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	n.w.Write(b[:])
	if err := n.w.Flush(); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(n.r, b[:4]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	cflags := be.Uint32(b[:4])
	if cflags&^(wire.FlagFixedNewstyle|wire.FlagNoZeroes) != 0 {
		return nil, protoErr("unknown client flags %#x", cflags)
	}
	n.noZeroes = cflags&wire.FlagNoZeroes != 0
	for range maxOptions {
		sess, err := n.option()
		if errors.Is(err, errAbort) {
			return nil, nil
		}
		if err != nil || sess != nil {
			return sess, err
		}
	}
	return nil, protoErr("more than %d options", maxOptions)
}

func (n *negotiator) reply(opt, typ uint32, data ...[]byte) {
	var hdr [20]byte
	be.PutUint64(hdr[0:], wire.OptReplyMagic)
	be.PutUint32(hdr[8:], opt)
	be.PutUint32(hdr[12:], typ)
	var l int
	for _, d := range data {
		l += len(d)
	}
	be.PutUint32(hdr[16:], uint32(l))
	n.w.Write(hdr[:])
	for _, d := range data {
		n.w.Write(d)
	}
}

func (n *negotiator) replyErr(opt, typ uint32, format string, args ...any) {
	n.reply(opt, typ, fmt.Appendf(nil, format, args...))
}

// option reads and answers one option. It returns a session when the
// option enters transmission.
func (n *negotiator) option() (*session, error) {
	var hdr [16]byte
	if _, err := io.ReadFull(n.r, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading option: %w", err)
	}
	if m := be.Uint64(hdr[:]); m != wire.OptsMagic {
		return nil, protoErr("option magic %#x", m)
	}
	opt, length := be.Uint32(hdr[8:]), be.Uint32(hdr[12:])
	if length > maxOptLen {
		if opt == wire.OptExportName || length > maxOptDiscard {
			return nil, protoErr("option %d with %d bytes of data", opt, length)
		}
		if _, err := io.CopyN(io.Discard, n.r, int64(length)); err != nil {
			return nil, fmt.Errorf("reading option data: %w", err)
		}
		n.replyErr(opt, wire.RepErrTooBig, "option data of %d bytes is too long", length)
		return nil, n.w.Flush()
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(n.r, data); err != nil {
		return nil, fmt.Errorf("reading option data: %w", err)
	}
	var sess *session
	var err error
	switch opt {
	case wire.OptExportName:
		return n.exportName(data)
	case wire.OptAbort:
		n.reply(opt, wire.RepAck)
		n.w.Flush()
		return nil, errAbort
	case wire.OptList:
		if len(data) != 0 {
			n.replyErr(opt, wire.RepErrInvalid, "NBD_OPT_LIST takes no data")
			break
		}
		for _, e := range n.s.exports {
			n.reply(opt, wire.RepServer, be.AppendUint32(nil, uint32(len(e.Name))), []byte(e.Name), []byte(e.Description))
		}
		n.reply(opt, wire.RepAck)
	case wire.OptInfo, wire.OptGo:
		sess, err = n.info(opt, data)
	case wire.OptStructuredReply:
		if len(data) != 0 {
			n.replyErr(opt, wire.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
			break
		}
		n.structured = true
		n.reply(opt, wire.RepAck)
	case wire.OptListMetaContext, wire.OptSetMetaContext:
		n.metaContext(opt, data)
	case wire.OptStartTLS:
		n.replyErr(opt, wire.RepErrUnsup, "TLS is not supported")
	default:
		n.replyErr(opt, wire.RepErrUnsup, "option %d is not supported", opt)
	}
	if err != nil {
		return nil, err
	}
	if ferr := n.w.Flush(); ferr != nil {
		return nil, ferr
	}
	return sess, nil
}

func (n *negotiator) transmissionFlags(e *export) uint16 {
	f := uint16(wire.FlagHasFlags | wire.FlagSendFlush | wire.FlagCanMultiConn)
	if e.readOnly {
		f |= wire.FlagReadOnly
	} else {
		f |= wire.FlagSendFUA | wire.FlagSendTrim | wire.FlagSendWriteZeroes | wire.FlagSendFastZero
	}
	if n.structured {
		f |= wire.FlagSendDF
	}
	return f
}

func (n *negotiator) session(e *export) *session {
	return &session{
		exp:        e,
		r:          n.r,
		w:          n.w,
		structured: n.structured,
		metaAlloc:  n.structured && n.metaAlloc && n.metaExp == e,
	}
}

// exportName answers NBD_OPT_EXPORT_NAME, which has no error reply: an
// unknown export ends the connection.
func (n *negotiator) exportName(name []byte) (*session, error) {
	e := n.s.lookup(string(name))
	if len(name) > maxStringLen || e == nil {
		return nil, fmt.Errorf("client asked for unknown export %q", clip(name))
	}
	var b [10 + 124]byte
	be.PutUint64(b[0:], uint64(e.b.Size()))
	be.PutUint16(b[8:], n.transmissionFlags(e))
	l := 10
	if !n.noZeroes {
		l += 124
	}
	n.w.Write(b[:l])
	if err := n.w.Flush(); err != nil {
		return nil, err
	}
	return n.session(e), nil
}

func clip(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return strings.ToValidUTF8(string(b), "?")
}

// getString takes a u32 length and that many bytes from d.
func getString(d []byte) (string, []byte, bool) {
	if len(d) < 4 {
		return "", nil, false
	}
	l := be.Uint32(d)
	if l > maxStringLen || uint64(l) > uint64(len(d)-4) {
		return "", nil, false
	}
	return string(d[4 : 4+l]), d[4+l:], true
}

// info answers NBD_OPT_INFO and NBD_OPT_GO.
func (n *negotiator) info(opt uint32, d []byte) (*session, error) {
	name, rest, ok := getString(d)
	if !ok || len(rest) < 2 || len(rest) != 2+2*int(be.Uint16(rest)) {
		n.replyErr(opt, wire.RepErrInvalid, "malformed request")
		return nil, nil
	}
	e := n.s.lookup(name)
	if e == nil {
		n.replyErr(opt, wire.RepErrUnknown, "no export named %q", name)
		return nil, nil
	}
	var wantName bool
	for i := range int(be.Uint16(rest)) {
		if be.Uint16(rest[2+2*i:]) == wire.InfoName {
			wantName = true
		}
	}
	var b [14]byte
	be.PutUint16(b[0:], wire.InfoExport)
	be.PutUint64(b[2:], uint64(e.b.Size()))
	be.PutUint16(b[10:], n.transmissionFlags(e))
	n.reply(opt, wire.RepInfo, b[:12])
	if wantName {
		n.reply(opt, wire.RepInfo, be.AppendUint16(nil, wire.InfoName), []byte(e.Name))
	}
	if e.Description != "" { // like qemu-nbd, also when not asked for
		n.reply(opt, wire.RepInfo, be.AppendUint16(nil, wire.InfoDescription), []byte(e.Description))
	}
	be.PutUint16(b[0:], wire.InfoBlockSize)
	be.PutUint32(b[2:], e.MinBlockSize)
	be.PutUint32(b[6:], PreferredBlockSize)
	be.PutUint32(b[10:], MaxBlockSize)
	n.reply(opt, wire.RepInfo, b[:14])
	n.reply(opt, wire.RepAck)
	if opt == wire.OptGo {
		if err := n.w.Flush(); err != nil {
			return nil, err
		}
		return n.session(e), nil
	}
	return nil, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The one context is base:allocation; LIST
// also matches the query "base:".
func (n *negotiator) metaContext(opt uint32, d []byte) {
	if !n.structured {
		n.replyErr(opt, wire.RepErrInvalid, "negotiate structured replies first")
		return
	}
	name, rest, ok := getString(d)
	if !ok || len(rest) < 4 {
		n.replyErr(opt, wire.RepErrInvalid, "malformed request")
		return
	}
	nq := be.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for range nq {
		var q string
		if q, rest, ok = getString(rest); !ok {
			n.replyErr(opt, wire.RepErrInvalid, "malformed query")
			return
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		n.replyErr(opt, wire.RepErrInvalid, "trailing bytes after the queries")
		return
	}
	e := n.s.lookup(name)
	if e == nil {
		n.replyErr(opt, wire.RepErrUnknown, "no export named %q", name)
		return
	}
	alloc := opt == wire.OptListMetaContext && nq == 0
	for _, q := range queries {
		if q == metaBaseAllocation || (opt == wire.OptListMetaContext && q == "base:") {
			alloc = true
		}
	}
	if alloc {
		id := uint32(0)
		if opt == wire.OptSetMetaContext {
			id = baseAllocationID
		}
		n.reply(opt, wire.RepMetaContext, be.AppendUint32(nil, id), []byte(metaBaseAllocation))
	}
	if opt == wire.OptSetMetaContext {
		n.metaExp, n.metaAlloc = e, alloc
	}
	n.reply(opt, wire.RepAck)
}
