package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"slices"
	"time"

	"lifeboat/nbd/internal/wire"
)

// ExportInfo describes an export as the server announced it.
type ExportInfo struct {
	Name        string
	Description string
	Size        int64
	// Flags are the raw transmission flags.
	Flags     uint16
	ReadOnly  bool
	MultiConn bool // NBD_FLAG_CAN_MULTI_CONN
	// Block size constraints (NBD_INFO_BLOCK_SIZE); without them the
	// client uses 1, 4096 and DefaultMaxRequest.
	MinBlock       uint32
	PreferredBlock uint32
	MaxBlock       uint32
	// Structured is true when structured replies were negotiated.
	Structured bool
	// MetaContexts are the metadata contexts in use (Dial), or those the
	// server lists for the export (Probe).
	MetaContexts []string
}

// handshake reads and writes the negotiation phase.
type handshake struct {
	r      *bufio.Reader
	w      *bufio.Writer
	fixed  bool
	zeroes bool // the server sends 124 zero bytes after NBD_OPT_EXPORT_NAME
	export string
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }
func be32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func be64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// readFull reads exactly len(b) bytes, naming what it was reading when the
// server hangs up.
func readFull(r io.Reader, b []byte, what string) error {
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return &ConnError{Msg: "server closed the connection while sending " + what, Err: io.ErrUnexpectedEOF}
		}
		return &ConnError{Msg: "reading " + what, Err: err}
	}
	return nil
}

// start reads the server's greeting and answers with the client flags.
func (h *handshake) start() error {
	var b [18]byte
	if err := readFull(h.r, b[:16], "its greeting"); err != nil {
		return err
	}
	if be64(b[:8]) != wire.NBDMagic {
		return handshakeErr("not an NBD server (greeting %x)", b[:8])
	}
	switch be64(b[8:16]) {
	case wire.OptsMagic:
	case wire.OldstyleMagic:
		return handshakeErr("server uses oldstyle negotiation, which has no export names and is not supported")
	default:
		return handshakeErr("unknown negotiation magic %#x", be64(b[8:16]))
	}
	if err := readFull(h.r, b[16:18], "its handshake flags"); err != nil {
		return err
	}
	hflags := be16(b[16:18])
	var cflags uint32
	h.fixed = hflags&wire.FlagFixedNewstyle != 0
	if h.fixed {
		cflags |= wire.FlagFixedNewstyle
	}
	h.zeroes = true
	if hflags&wire.FlagNoZeroes != 0 {
		cflags |= wire.FlagNoZeroes
		h.zeroes = false
	}
	var c [4]byte
	binary.BigEndian.PutUint32(c[:], cflags)
	h.w.Write(c[:])
	return h.flush()
}

func (h *handshake) flush() error {
	if err := h.w.Flush(); err != nil {
		return &ConnError{Msg: "sending handshake", Err: err}
	}
	return nil
}

func (h *handshake) sendOpt(opt uint32, data []byte) error {
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[0:], wire.OptsMagic)
	binary.BigEndian.PutUint32(hdr[8:], opt)
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(data)))
	h.w.Write(hdr[:])
	h.w.Write(data)
	return h.flush()
}

type optReply struct {
	typ  uint32
	data []byte
}

// reply reads one option reply to opt, refusing oversized payloads.
func (h *handshake) reply(opt uint32) (optReply, error) {
	var hdr [20]byte
	if err := readFull(h.r, hdr[:], "the reply to "+optName(opt)); err != nil {
		return optReply{}, err
	}
	if m := be64(hdr[0:]); m != wire.OptReplyMagic {
		return optReply{}, handshakeErr("reply to %s has magic %#x", optName(opt), m)
	}
	if o := be32(hdr[8:]); o != opt {
		return optReply{}, handshakeErr("reply to %s is for %s", optName(opt), optName(o))
	}
	typ, n := be32(hdr[12:]), be32(hdr[16:])
	if n > maxOptReplyLen {
		return optReply{}, handshakeErr("%s reply to %s claims %d bytes (limit %d)", repName(typ), optName(opt), n, maxOptReplyLen)
	}
	data := make([]byte, n)
	if err := readFull(h.r, data, "the reply to "+optName(opt)); err != nil {
		return optReply{}, err
	}
	return optReply{typ, data}, nil
}

func (h *handshake) refused(opt uint32, r optReply) error {
	return &OptionError{Option: optName(opt), Export: h.export, Reply: repName(r.typ), Message: printable(r.data), code: r.typ}
}

func putString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// structuredReplies asks for structured replies; false when refused.
func (h *handshake) structuredReplies() (bool, error) {
	if err := h.sendOpt(wire.OptStructuredReply, nil); err != nil {
		return false, err
	}
	r, err := h.reply(wire.OptStructuredReply)
	if err != nil {
		return false, err
	}
	switch {
	case r.typ == wire.RepAck:
		return true, nil
	case r.typ == wire.RepErrTLSReqd || r.typ == wire.RepErrShutdown:
		return false, h.refused(wire.OptStructuredReply, r)
	case r.typ&wire.RepErrBit != 0:
		return false, nil
	}
	return false, handshakeErr("unexpected %s to %s", repName(r.typ), optName(wire.OptStructuredReply))
}

// metaContexts sends NBD_OPT_SET_META_CONTEXT or NBD_OPT_LIST_META_CONTEXT
// with queries and returns the contexts by ID (LIST gives IDs of 0, so its
// names come back in the order sent). A refusal other than an unknown
// export yields no contexts.
func (h *handshake) metaContexts(opt uint32, queries []string) (ids []uint32, names []string, err error) {
	data := putString(nil, h.export)
	data = binary.BigEndian.AppendUint32(data, uint32(len(queries)))
	for _, q := range queries {
		data = putString(data, q)
	}
	if err := h.sendOpt(opt, data); err != nil {
		return nil, nil, err
	}
	for range maxOptReplies {
		r, err := h.reply(opt)
		if err != nil {
			return nil, nil, err
		}
		switch {
		case r.typ == wire.RepAck:
			return ids, names, nil
		case r.typ == wire.RepMetaContext:
			if len(r.data) < 5 || len(r.data)-4 > maxStringLen {
				return nil, nil, handshakeErr("%s reply to %s has %d bytes", repName(r.typ), optName(opt), len(r.data))
			}
			id, name := be32(r.data), string(r.data[4:])
			if opt == wire.OptSetMetaContext && slices.Contains(ids, id) {
				return nil, nil, handshakeErr("%s gave context ID %d twice", optName(opt), id)
			}
			if slices.Contains(names, name) {
				return nil, nil, handshakeErr("%s gave context %q twice", optName(opt), printable([]byte(name)))
			}
			ids = append(ids, id)
			names = append(names, name)
		case r.typ == wire.RepErrUnknown || r.typ == wire.RepErrTLSReqd || r.typ == wire.RepErrShutdown:
			return nil, nil, h.refused(opt, r)
		case r.typ&wire.RepErrBit != 0:
			// Not supported for this export: no contexts.
			return nil, nil, nil
		default:
			return nil, nil, handshakeErr("unexpected %s to %s", repName(r.typ), optName(opt))
		}
	}
	return nil, nil, handshakeErr("more than %d replies to %s", maxOptReplies, optName(opt))
}

// errGoUnsupported says the server does not know NBD_OPT_GO/INFO.
var errGoUnsupported = errors.New("NBD_OPT_GO not supported")

// info sends NBD_OPT_GO or NBD_OPT_INFO and collects the export's details.
func (h *handshake) info(opt uint32) (*ExportInfo, error) {
	data := putString(nil, h.export)
	data = binary.BigEndian.AppendUint16(data, 1)
	data = binary.BigEndian.AppendUint16(data, wire.InfoBlockSize)
	if err := h.sendOpt(opt, data); err != nil {
		return nil, err
	}
	inf := &ExportInfo{Name: h.export}
	haveExport, haveBlock := false, false
	for range maxOptReplies {
		r, err := h.reply(opt)
		if err != nil {
			return nil, err
		}
		switch {
		case r.typ == wire.RepAck:
			if !haveExport {
				return nil, handshakeErr("%s acknowledged without NBD_INFO_EXPORT", optName(opt))
			}
			if !haveBlock {
				inf.MinBlock, inf.PreferredBlock, inf.MaxBlock = 1, 4096, DefaultMaxRequest
			}
			return inf, nil
		case r.typ == wire.RepInfo:
			if len(r.data) < 2 {
				return nil, handshakeErr("NBD_REP_INFO of %d bytes", len(r.data))
			}
			d := r.data[2:]
			switch be16(r.data) {
			case wire.InfoExport:
				if len(d) != 10 {
					return nil, handshakeErr("NBD_INFO_EXPORT of %d bytes, want 12", len(r.data))
				}
				if err := inf.setExport(be64(d), be16(d[8:])); err != nil {
					return nil, err
				}
				haveExport = true
			case wire.InfoName:
				inf.Name = printable(d)
			case wire.InfoDescription:
				inf.Description = printable(d)
			case wire.InfoBlockSize:
				if len(d) != 12 {
					return nil, handshakeErr("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", len(r.data))
				}
				if err := inf.setBlockSize(be32(d), be32(d[4:]), be32(d[8:])); err != nil {
					return nil, err
				}
				haveBlock = true
			}
		case r.typ == wire.RepErrUnsup:
			return nil, errGoUnsupported
		case r.typ&wire.RepErrBit != 0:
			return nil, h.refused(opt, r)
		default:
			return nil, handshakeErr("unexpected %s to %s", repName(r.typ), optName(opt))
		}
	}
	return nil, handshakeErr("more than %d replies to %s", maxOptReplies, optName(opt))
}

func (inf *ExportInfo) setExport(size uint64, flags uint16) error {
	if size > math.MaxInt64 {
		return handshakeErr("export size %d is out of range", size)
	}
	inf.Size = int64(size)
	inf.Flags = flags
	inf.ReadOnly = flags&wire.FlagReadOnly != 0
	inf.MultiConn = flags&wire.FlagCanMultiConn != 0
	return nil
}

func (inf *ExportInfo) setBlockSize(minB, pref, maxB uint32) error {
	if minB == 0 || bits.OnesCount32(minB) != 1 || minB > maxMinBlock {
		return handshakeErr("minimum block size %d is not a power of two up to 64 KiB", minB)
	}
	if maxB < minB {
		return handshakeErr("maximum block size %d is below the minimum %d", maxB, minB)
	}
	if pref < minB || bits.OnesCount32(pref) != 1 {
		// Only advice: fall back to something sensible.
		pref = max(minB, 4096)
	}
	inf.MinBlock, inf.PreferredBlock, inf.MaxBlock = minB, pref, maxB
	return nil
}

// exportName ends the handshake the old way, for servers without
// NBD_OPT_GO. The server hangs up when the export does not exist.
func (h *handshake) exportName() (*ExportInfo, error) {
	if err := h.sendOpt(wire.OptExportName, []byte(h.export)); err != nil {
		return nil, err
	}
	var b [10 + 124]byte
	n := 10
	if h.zeroes {
		n += 124
	}
	if _, err := io.ReadFull(h.r, b[:n]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("nbd: server closed the connection after NBD_OPT_EXPORT_NAME %q: %w", h.export, ErrUnknownExport)
		}
		return nil, &ConnError{Msg: "reading the reply to NBD_OPT_EXPORT_NAME", Err: err}
	}
	inf := &ExportInfo{Name: h.export, MinBlock: 1, PreferredBlock: 4096, MaxBlock: DefaultMaxRequest}
	if err := inf.setExport(be64(b[:]), be16(b[8:])); err != nil {
		return nil, err
	}
	return inf, nil
}

// session is what a completed handshake hands the client.
type session struct {
	info     *ExportInfo
	contexts map[string]uint32
	r        *bufio.Reader // carries on into the transmission phase
}

// negotiate runs the whole handshake on conn for opts.
func negotiate(conn net.Conn, opts *Options) (*session, error) {
	h := &handshake{r: bufio.NewReaderSize(conn, 256<<10), w: bufio.NewWriter(conn), export: opts.Export}
	if err := h.start(); err != nil {
		return nil, err
	}
	want := []string{BaseAllocation}
	for _, m := range opts.MetaContexts {
		if !slices.Contains(want, m) {
			want = append(want, m)
		}
	}
	if !h.fixed {
		if len(opts.MetaContexts) > 0 {
			return nil, handshakeErr("server only speaks non-fixed newstyle negotiation: no metadata contexts")
		}
		inf, err := h.exportName()
		if err != nil {
			return nil, err
		}
		return &session{info: inf, r: h.r}, nil
	}
	structured, err := h.structuredReplies()
	if err != nil {
		return nil, err
	}
	s := &session{contexts: map[string]uint32{}, r: h.r}
	if structured {
		ids, names, err := h.metaContexts(wire.OptSetMetaContext, want)
		if err != nil {
			return nil, err
		}
		for i, n := range names {
			s.contexts[n] = ids[i]
		}
	}
	for _, m := range opts.MetaContexts {
		if _, ok := s.contexts[m]; !ok {
			why := "the server did not grant it"
			if !structured {
				why = "the server refused structured replies"
			}
			return nil, fmt.Errorf("nbd: metadata context %q for export %q: %s (is the dirty bitmap exported?): %w", m, opts.Export, why, ErrNoMetaContext)
		}
	}
	inf, err := h.info(wire.OptGo)
	if errors.Is(err, errGoUnsupported) {
		inf, err = h.exportName()
	}
	if err != nil {
		return nil, err
	}
	inf.Structured = structured
	for n := range s.contexts {
		inf.MetaContexts = append(inf.MetaContexts, n)
	}
	slices.Sort(inf.MetaContexts)
	s.info = inf
	return s, nil
}

// probe lists an export's details and metadata contexts, then aborts.
func probe(conn net.Conn, export string) (*ExportInfo, error) {
	h := &handshake{r: bufio.NewReaderSize(conn, 64<<10), w: bufio.NewWriter(conn), export: export}
	if err := h.start(); err != nil {
		return nil, err
	}
	if !h.fixed {
		return nil, handshakeErr("server only speaks non-fixed newstyle negotiation, which cannot describe an export without entering it")
	}
	structured, err := h.structuredReplies()
	if err != nil {
		return nil, err
	}
	var names []string
	if structured {
		if _, names, err = h.metaContexts(wire.OptListMetaContext, nil); err != nil {
			return nil, err
		}
	}
	inf, err := h.info(wire.OptInfo)
	if errors.Is(err, errGoUnsupported) {
		err = handshakeErr("server does not support NBD_OPT_INFO")
	}
	if err != nil {
		return nil, err
	}
	inf.Structured = structured
	inf.MetaContexts = names
	slices.Sort(inf.MetaContexts)
	// Soft disconnect; the server may or may not acknowledge.
	conn.SetDeadline(time.Now().Add(time.Second))
	if h.sendOpt(wire.OptAbort, nil) == nil {
		h.reply(wire.OptAbort)
	}
	return inf, nil
}
