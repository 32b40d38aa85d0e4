package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
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
	be.PutUint64(b[0:], nbdMagic)
	be.PutUint64(b[8:], optsMagic)
	be.PutUint16(b[16:], flagFixedNewstyle|flagNoZeroes)
	n.w.Write(b[:])
	if err := n.w.Flush(); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(n.r, b[:4]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	cflags := be.Uint32(b[:4])
	if cflags&^(flagFixedNewstyle|flagNoZeroes) != 0 {
		return nil, protoErr("unknown client flags %#x", cflags)
	}
	n.noZeroes = cflags&flagNoZeroes != 0
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
	be.PutUint64(hdr[0:], optReplyMagic)
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
	if m := be.Uint64(hdr[:]); m != optsMagic {
		return nil, protoErr("option magic %#x", m)
	}
	opt, length := be.Uint32(hdr[8:]), be.Uint32(hdr[12:])
	if length > maxOptLen {
		if opt == optExportName || length > maxOptDiscard {
			return nil, protoErr("option %d with %d bytes of data", opt, length)
		}
		if _, err := io.CopyN(io.Discard, n.r, int64(length)); err != nil {
			return nil, fmt.Errorf("reading option data: %w", err)
		}
		n.replyErr(opt, repErrTooBig, "option data of %d bytes is too long", length)
		return nil, n.w.Flush()
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(n.r, data); err != nil {
		return nil, fmt.Errorf("reading option data: %w", err)
	}
	var sess *session
	var err error
	switch opt {
	case optExportName:
		return n.exportName(data)
	case optAbort:
		n.reply(opt, repAck)
		n.w.Flush()
		return nil, errAbort
	case optList:
		if len(data) != 0 {
			n.replyErr(opt, repErrInvalid, "NBD_OPT_LIST takes no data")
			break
		}
		for _, e := range n.s.exports {
			n.reply(opt, repServer, be.AppendUint32(nil, uint32(len(e.Name))), []byte(e.Name), []byte(e.Description))
		}
		n.reply(opt, repAck)
	case optInfo, optGo:
		sess, err = n.info(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			n.replyErr(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
			break
		}
		n.structured = true
		n.reply(opt, repAck)
	case optListMetaContext, optSetMetaContext:
		n.metaContext(opt, data)
	case optStartTLS:
		n.replyErr(opt, repErrUnsup, "TLS is not supported")
	default:
		n.replyErr(opt, repErrUnsup, "option %d is not supported", opt)
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
	f := uint16(flagHasFlags | flagSendFlush | flagCanMultiConn)
	if e.readOnly {
		f |= flagReadOnly
	} else {
		f |= flagSendFUA | flagSendTrim | flagSendWriteZeroes | flagSendFastZero
	}
	if n.structured {
		f |= flagSendDF
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
		n.replyErr(opt, repErrInvalid, "malformed request")
		return nil, nil
	}
	e := n.s.lookup(name)
	if e == nil {
		n.replyErr(opt, repErrUnknown, "no export named %q", name)
		return nil, nil
	}
	var wantName bool
	for i := range int(be.Uint16(rest)) {
		if be.Uint16(rest[2+2*i:]) == infoName {
			wantName = true
		}
	}
	var b [14]byte
	be.PutUint16(b[0:], infoExport)
	be.PutUint64(b[2:], uint64(e.b.Size()))
	be.PutUint16(b[10:], n.transmissionFlags(e))
	n.reply(opt, repInfo, b[:12])
	if wantName {
		n.reply(opt, repInfo, be.AppendUint16(nil, infoName), []byte(e.Name))
	}
	if e.Description != "" { // like qemu-nbd, also when not asked for
		n.reply(opt, repInfo, be.AppendUint16(nil, infoDescription), []byte(e.Description))
	}
	be.PutUint16(b[0:], infoBlockSize)
	be.PutUint32(b[2:], e.MinBlockSize)
	be.PutUint32(b[6:], PreferredBlockSize)
	be.PutUint32(b[10:], MaxBlockSize)
	n.reply(opt, repInfo, b[:14])
	n.reply(opt, repAck)
	if opt == optGo {
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
		n.replyErr(opt, repErrInvalid, "negotiate structured replies first")
		return
	}
	name, rest, ok := getString(d)
	if !ok || len(rest) < 4 {
		n.replyErr(opt, repErrInvalid, "malformed request")
		return
	}
	nq := be.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for range nq {
		var q string
		if q, rest, ok = getString(rest); !ok {
			n.replyErr(opt, repErrInvalid, "malformed query")
			return
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		n.replyErr(opt, repErrInvalid, "trailing bytes after the queries")
		return
	}
	e := n.s.lookup(name)
	if e == nil {
		n.replyErr(opt, repErrUnknown, "no export named %q", name)
		return
	}
	alloc := opt == optListMetaContext && nq == 0
	for _, q := range queries {
		if q == metaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			alloc = true
		}
	}
	if alloc {
		id := uint32(0)
		if opt == optSetMetaContext {
			id = baseAllocationID
		}
		n.reply(opt, repMetaContext, be.AppendUint32(nil, id), []byte(metaBaseAllocation))
	}
	if opt == optSetMetaContext {
		n.metaExp, n.metaAlloc = e, alloc
	}
	n.reply(opt, repAck)
}
