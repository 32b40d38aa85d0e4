package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"lifeboat/nbd/internal/wire"
)

// Client-side encoders, shared with the fuzz seeds.

func encOpt(opt uint32, data []byte) []byte {
	b := be.AppendUint64(nil, wire.OptsMagic)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func encString(s string) []byte { return append(be.AppendUint32(nil, uint32(len(s))), s...) }

func goData(name string, infos ...uint16) []byte {
	b := encString(name)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

func metaData(name string, queries ...string) []byte {
	b := encString(name)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = append(b, encString(q)...)
	}
	return b
}

func encReq(flags, cmd uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := be.AppendUint32(nil, wire.RequestMagic)
	b = be.AppendUint16(b, flags)
	b = be.AppendUint16(b, cmd)
	b = be.AppendUint64(b, cookie)
	b = be.AppendUint64(b, off)
	b = be.AppendUint32(b, length)
	return append(b, payload...)
}

// rawClient speaks the protocol byte by byte.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func newRaw(t *testing.T, srv *Server, cflags uint32) *rawClient {
	t.Helper()
	cli, sc := net.Pipe()
	go srv.ServeConn(context.Background(), sc)
	t.Cleanup(func() { cli.Close() })
	cli.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &rawClient{t: t, c: cli, r: bufio.NewReader(cli)}
	var g [18]byte
	rc.read(g[:])
	if be.Uint64(g[:]) != wire.NBDMagic || be.Uint64(g[8:]) != wire.OptsMagic || be.Uint16(g[16:]) != wire.FlagFixedNewstyle|wire.FlagNoZeroes {
		t.Fatalf("greeting %x", g)
	}
	rc.send(be.AppendUint32(nil, cflags))
	return rc
}

func (rc *rawClient) send(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawClient) read(b []byte) {
	rc.t.Helper()
	if _, err := io.ReadFull(rc.r, b); err != nil {
		rc.t.Fatal(err)
	}
}

type optRep struct {
	typ  uint32
	data []byte
}

// opt sends an option and collects replies up to the final one.
func (rc *rawClient) opt(opt uint32, data []byte) []optRep {
	rc.t.Helper()
	rc.send(encOpt(opt, data))
	var out []optRep
	for {
		var h [20]byte
		rc.read(h[:])
		if be.Uint64(h[:]) != wire.OptReplyMagic || be.Uint32(h[8:]) != opt {
			rc.t.Fatalf("option reply header %x", h)
		}
		r := optRep{typ: be.Uint32(h[12:]), data: make([]byte, be.Uint32(h[16:]))}
		rc.read(r.data)
		out = append(out, r)
		if r.typ != wire.RepServer && r.typ != wire.RepInfo && r.typ != wire.RepMetaContext {
			return out
		}
	}
}

type chunk struct {
	flags, typ uint16
	payload    []byte
}

type reply struct {
	simple bool
	errno  uint32
	data   []byte // simple read data
	chunks []chunk
}

// reply reads one whole reply for cookie (replies to other cookies are
// stashed); dataLen is the simple reply's data length.
func (rc *rawClient) reply(cookie uint64, dataLen int, stash map[uint64]*reply) *reply {
	rc.t.Helper()
	if r, ok := stash[cookie]; ok {
		delete(stash, cookie)
		return r
	}
	for {
		var m [4]byte
		rc.read(m[:])
		switch be.Uint32(m[:]) {
		case wire.SimpleReplyMagic:
			var h [12]byte
			rc.read(h[:])
			r := &reply{simple: true, errno: be.Uint32(h[:])}
			if r.errno == 0 && dataLen > 0 {
				r.data = make([]byte, dataLen)
				rc.read(r.data)
			}
			if c := be.Uint64(h[4:]); c != cookie {
				stash[c] = r
				continue
			}
			return r
		case wire.StructuredReplyMagic:
			var h [16]byte
			rc.read(h[:])
			ch := chunk{flags: be.Uint16(h[:]), typ: be.Uint16(h[2:]), payload: make([]byte, be.Uint32(h[12:]))}
			rc.read(ch.payload)
			c := be.Uint64(h[4:])
			r := stash[c]
			if r == nil {
				r = &reply{}
				stash[c] = r
			}
			r.chunks = append(r.chunks, ch)
			if ch.typ == wire.ReplyTypeError {
				r.errno = be.Uint32(ch.payload)
			}
			if ch.flags&wire.ReplyFlagDone != 0 && c == cookie {
				delete(stash, c)
				return r
			}
		default:
			rc.t.Fatalf("reply magic %x", m)
		}
	}
}

// assemble puts a structured read reply together, checking the chunks
// cover [off, off+n) exactly once.
func assemble(t *testing.T, r *reply, off uint64, n int) []byte {
	t.Helper()
	out := make([]byte, n)
	seen := make([]bool, n)
	mark := func(o uint64, k int) {
		if o < off || o-off+uint64(k) > uint64(n) {
			t.Fatalf("chunk [%d,+%d) outside the read [%d,+%d)", o, k, off, n)
		}
		for i := range k {
			if seen[int(o-off)+i] {
				t.Fatalf("chunks overlap at %d", o+uint64(i))
			}
			seen[int(o-off)+i] = true
		}
	}
	for _, c := range r.chunks {
		switch c.typ {
		case wire.ReplyTypeOffsetData:
			o := be.Uint64(c.payload)
			mark(o, len(c.payload)-8)
			copy(out[o-off:], c.payload[8:])
		case wire.ReplyTypeOffsetHole:
			o, k := be.Uint64(c.payload), int(be.Uint32(c.payload[8:]))
			mark(o, k)
		case wire.ReplyTypeNone:
		default:
			t.Fatalf("chunk type %d in a read reply", c.typ)
		}
	}
	for i, s := range seen {
		if !s {
			t.Fatalf("byte %d of the read not covered", i)
		}
	}
	return out
}

func testServer(t *testing.T) (*Server, *Overlay, *memImage) {
	base := memBase()
	ov := openOverlay(t, base, "")
	srv, err := New(
		Export{Name: "a", Description: "disk a", Overlay: ov},
		Export{Name: "ro", Image: base},
	)
	if err != nil {
		t.Fatal(err)
	}
	return srv, ov, base
}

func TestProtocol(t *testing.T) {
	srv, ov, base := testServer(t)
	size := uint64(ov.Size())
	rc := newRaw(t, srv, wire.FlagFixedNewstyle|wire.FlagNoZeroes)

	reps := rc.opt(wire.OptList, nil)
	if len(reps) != 3 || reps[0].typ != wire.RepServer || !bytes.Equal(reps[0].data, append(encString("a"), "disk a"...)) || reps[2].typ != wire.RepAck {
		t.Fatalf("LIST: %+v", reps)
	}
	if r := rc.opt(wire.OptList, []byte{1}); r[0].typ != wire.RepErrInvalid {
		t.Fatalf("LIST with data: %+v", r)
	}
	if r := rc.opt(wire.OptInfo, goData("nope")); r[0].typ != wire.RepErrUnknown {
		t.Fatalf("INFO of unknown export: %+v", r)
	}
	if r := rc.opt(wire.OptInfo, goData("a")[:5]); r[0].typ != wire.RepErrInvalid {
		t.Fatalf("malformed INFO: %+v", r)
	}
	if r := rc.opt(wire.OptSetMetaContext, metaData("a", metaBaseAllocation)); r[0].typ != wire.RepErrInvalid {
		t.Fatalf("SET_META_CONTEXT before structured replies: %+v", r)
	}
	if r := rc.opt(99, []byte("x")); r[0].typ != wire.RepErrUnsup {
		t.Fatalf("unknown option: %+v", r)
	}
	if r := rc.opt(wire.OptStructuredReply, nil); r[0].typ != wire.RepAck {
		t.Fatalf("STRUCTURED_REPLY: %+v", r)
	}
	if r := rc.opt(wire.OptListMetaContext, metaData("a")); len(r) != 2 || r[0].typ != wire.RepMetaContext || string(r[0].data[4:]) != metaBaseAllocation {
		t.Fatalf("LIST_META_CONTEXT: %+v", r)
	}
	if r := rc.opt(wire.OptListMetaContext, metaData("a", "base:", "qemu:")); len(r) != 2 || r[0].typ != wire.RepMetaContext {
		t.Fatalf("LIST_META_CONTEXT base: %+v", r)
	}
	r := rc.opt(wire.OptSetMetaContext, metaData("a", "x-foo:bar", metaBaseAllocation))
	if len(r) != 2 || r[0].typ != wire.RepMetaContext || be.Uint32(r[0].data) != baseAllocationID || r[1].typ != wire.RepAck {
		t.Fatalf("SET_META_CONTEXT: %+v", r)
	}
	r = rc.opt(wire.OptGo, goData("a", wire.InfoName, wire.InfoBlockSize))
	var gotSize, gotFlags, gotName, gotBlock bool
	for _, x := range r {
		if x.typ != wire.RepInfo {
			continue
		}
		switch be.Uint16(x.data) {
		case wire.InfoExport:
			gotSize = be.Uint64(x.data[2:]) == size
			f := be.Uint16(x.data[10:])
			gotFlags = f&wire.FlagReadOnly == 0 && f&wire.FlagSendDF != 0 && f&wire.FlagSendWriteZeroes != 0
		case wire.InfoName:
			gotName = string(x.data[2:]) == "a"
		case wire.InfoBlockSize:
			gotBlock = be.Uint32(x.data[2:]) == 1 && be.Uint32(x.data[6:]) == 4096 && be.Uint32(x.data[10:]) == MaxBlockSize
		}
	}
	if !gotSize || !gotFlags || !gotName || !gotBlock || r[len(r)-1].typ != wire.RepAck {
		t.Fatalf("GO: %+v", r)
	}

	stash := map[uint64]*reply{}
	read := func(cookie, off uint64, n uint32, flags uint16) *reply {
		rc.send(encReq(flags, wire.CmdRead, cookie, off, n, nil))
		return rc.reply(cookie, 0, stash)
	}
	want := bytes.Clone(base.b)
	// Reads: data and holes, DF.
	rep := read(1, 250<<10, 200<<10, 0)
	mustEqual(t, "read", assemble(t, rep, 250<<10, 200<<10), want[250<<10:450<<10])
	if len(rep.chunks) < 2 || rep.chunks[1].typ != wire.ReplyTypeOffsetHole {
		t.Fatalf("read over a hole: %d chunks", len(rep.chunks))
	}
	rep = read(2, 250<<10, 200<<10, wire.CmdFlagDF)
	if len(rep.chunks) != 1 || rep.chunks[0].typ != wire.ReplyTypeOffsetData {
		t.Fatalf("DF read: %d chunks", len(rep.chunks))
	}
	mustEqual(t, "DF read", assemble(t, rep, 250<<10, 200<<10), want[250<<10:450<<10])
	rep = read(3, size-50, 50, 0)
	mustEqual(t, "read at the end", assemble(t, rep, size-50, 50), want[size-50:])
	for _, bad := range []struct {
		off   uint64
		n     uint32
		flags uint16
		errno uint32
	}{
		{size - 50, 51, 0, wire.ErrInval},
		{1 << 63, 1, 0, wire.ErrInval},
		{^uint64(0), 2, 0, wire.ErrInval},
		{0, MaxBlockSize + 1, 0, wire.ErrOverflow},
		{0, 10, 1 << 9, wire.ErrInval},
		{0, 10, wire.CmdFlagReqOne, wire.ErrInval},
	} {
		if rep := read(4, bad.off, bad.n, bad.flags); rep.errno != bad.errno {
			t.Fatalf("read %+v: errno %d", bad, rep.errno)
		}
	}
	if rep := read(5, 10, 0, 0); rep.errno != 0 || len(rep.chunks) != 1 || rep.chunks[0].typ != wire.ReplyTypeNone {
		t.Fatalf("empty read: %+v", rep)
	}

	// Writes.
	cmd := func(flags, c uint16, cookie, off uint64, n uint32, payload []byte) *reply {
		rc.send(encReq(flags, c, cookie, off, n, payload))
		return rc.reply(cookie, 0, stash)
	}
	p := randomBytes(9, 5000)
	if rep := cmd(wire.CmdFlagFUA, wire.CmdWrite, 10, 100, 5000, p); rep.errno != 0 {
		t.Fatalf("write: %d", rep.errno)
	}
	copy(want[100:], p)
	if rep := cmd(0, wire.CmdWrite, 11, size-10, 11, make([]byte, 11)); rep.errno != wire.ErrNoSpc {
		t.Fatalf("write past the end: %d", rep.errno)
	}
	big := make([]byte, MaxBlockSize+1)
	if rep := cmd(0, wire.CmdWrite, 12, 0, MaxBlockSize+1, big); rep.errno != wire.ErrOverflow {
		t.Fatalf("write too big: %d", rep.errno)
	}
	if rep := cmd(wire.CmdFlagNoHole|wire.CmdFlagFastZero, wire.CmdWriteZeroes, 13, 1000, 9000, nil); rep.errno != 0 {
		t.Fatalf("write zeroes: %d", rep.errno)
	}
	clear(want[1000:10000])
	if rep := cmd(0, wire.CmdTrim, 14, 5*BlockSize, 2*BlockSize, nil); rep.errno != 0 {
		t.Fatalf("trim: %d", rep.errno)
	}
	clear(want[5*BlockSize : 7*BlockSize])
	if rep := cmd(wire.CmdFlagDF, wire.CmdTrim, 15, 0, 10, nil); rep.errno != wire.ErrInval {
		t.Fatalf("trim with DF: %d", rep.errno)
	}
	if rep := cmd(0, wire.CmdFlush, 16, 0, 0, nil); rep.errno != 0 {
		t.Fatalf("flush: %d", rep.errno)
	}
	if rep := cmd(0, 42, 17, 0, 0, nil); rep.errno != wire.ErrInval {
		t.Fatalf("unknown command: %d", rep.errno)
	}
	if rep := cmd(0, wire.CmdCache, 18, 0, 10, nil); rep.errno != wire.ErrInval {
		t.Fatalf("cache: %d", rep.errno)
	}

	// Block status.
	rep = cmd(0, wire.CmdBlockStatus, 20, 0, uint32(size), nil)
	if rep.errno != 0 || len(rep.chunks) != 1 || rep.chunks[0].typ != wire.ReplyTypeBlockStatus {
		t.Fatalf("block status: %+v", rep)
	}
	bs := rep.chunks[0].payload
	var total uint64
	for i := 4; i < len(bs); i += 8 {
		total += uint64(be.Uint32(bs[i:]))
	}
	if be.Uint32(bs) != baseAllocationID || total != size || len(bs) < 4+3*8 {
		t.Fatalf("block status payload %x", bs)
	}
	rep = cmd(wire.CmdFlagReqOne, wire.CmdBlockStatus, 21, 0, uint32(size), nil)
	if len(rep.chunks[0].payload) != 12 {
		t.Fatalf("REQ_ONE: %x", rep.chunks[0].payload)
	}
	if rep := cmd(0, wire.CmdBlockStatus, 22, 0, 0, nil); rep.errno != wire.ErrInval {
		t.Fatalf("empty block status: %d", rep.errno)
	}
	if rep := cmd(0, wire.CmdBlockStatus, 23, 1, uint32(size), nil); rep.errno != wire.ErrInval {
		t.Fatalf("block status past the end: %d", rep.errno)
	}

	// Pipelined reads, replies in any order. net.Pipe has no buffer:
	// send while reading.
	var reqs []byte
	for i := range uint64(20) {
		reqs = append(reqs, encReq(0, wire.CmdRead, 100+i, i*40000, 40000, nil)...)
	}
	go rc.c.Write(reqs)
	for i := range uint64(20) {
		rep := rc.reply(100+i, 0, stash)
		mustEqual(t, "pipelined read", assemble(t, rep, i*40000, 40000), want[i*40000:i*40000+40000])
	}
	mustEqual(t, "overlay", readAll(t, ov.Image(), ov.Size()), want)

	// Disconnect: the server hangs up.
	rc.send(encReq(0, wire.CmdDisc, 0, 0, 0, nil))
	if _, err := rc.r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("after DISC: %v", err)
	}
}

// TestExportName: the old way into transmission, with and without the
// 124 zero bytes, and simple replies.
func TestExportName(t *testing.T) {
	srv, ov, base := testServer(t)
	for _, cflags := range []uint32{wire.FlagFixedNewstyle | wire.FlagNoZeroes, 0} {
		rc := newRaw(t, srv, cflags)
		rc.send(encOpt(wire.OptExportName, []byte("a")))
		n := 10
		if cflags&wire.FlagNoZeroes == 0 {
			n += 124
		}
		b := make([]byte, n)
		rc.read(b)
		if be.Uint64(b) != uint64(ov.Size()) || be.Uint16(b[8:])&wire.FlagSendDF != 0 || !allZero(b[10:]) {
			t.Fatalf("export info %x", b)
		}
		stash := map[uint64]*reply{}
		rc.send(encReq(0, wire.CmdRead, 7, 1000, 3000, nil))
		r := rc.reply(7, 3000, stash)
		if !r.simple || r.errno != 0 {
			t.Fatalf("read: %+v", r)
		}
		mustEqual(t, "read", r.data, base.b[1000:4000])
		rc.send(encReq(wire.CmdFlagDF, wire.CmdRead, 8, 1000, 3000, nil))
		if r := rc.reply(8, 3000, stash); !r.simple || r.errno != wire.ErrInval {
			t.Fatalf("DF without structured replies: %+v", r)
		}
		rc.send(encReq(0, wire.CmdBlockStatus, 9, 0, 10, nil))
		if r := rc.reply(9, 0, stash); r.errno != wire.ErrInval {
			t.Fatalf("block status without contexts: %+v", r)
		}
	}
	// Unknown export: the server hangs up.
	rc := newRaw(t, srv, wire.FlagFixedNewstyle)
	rc.send(encOpt(wire.OptExportName, []byte("nope")))
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("server answered an unknown export")
	}
}

// TestReadOnlyExport: writes get EPERM; the image export is read-only.
func TestReadOnlyExport(t *testing.T) {
	srv, _, base := testServer(t)
	rc := newRaw(t, srv, wire.FlagFixedNewstyle|wire.FlagNoZeroes)
	rc.opt(wire.OptStructuredReply, nil)
	rc.opt(wire.OptSetMetaContext, metaData("ro", metaBaseAllocation))
	r := rc.opt(wire.OptGo, goData("ro"))
	if f := be.Uint16(r[0].data[10:]); f&wire.FlagReadOnly == 0 || f&wire.FlagSendTrim != 0 {
		t.Fatalf("flags %#x", f)
	}
	stash := map[uint64]*reply{}
	rc.send(encReq(0, wire.CmdWrite, 1, 0, 5, []byte("hello")))
	if r := rc.reply(1, 0, stash); r.errno != wire.ErrPerm {
		t.Fatalf("write: %+v", r)
	}
	rc.send(encReq(0, wire.CmdWriteZeroes, 2, 0, 5, nil))
	if r := rc.reply(2, 0, stash); r.errno != wire.ErrPerm {
		t.Fatalf("write zeroes: %+v", r)
	}
	rc.send(encReq(0, wire.CmdRead, 3, 0, 5, nil))
	mustEqual(t, "read after refused writes", assemble(t, rc.reply(3, 0, stash), 0, 5), base.b[:5])
	rc.send(encReq(0, wire.CmdBlockStatus, 4, 0, uint32(len(base.b)), nil))
	if r := rc.reply(4, 0, stash); r.errno != 0 {
		t.Fatalf("block status: %+v", r)
	}
}

// TestHandshakeErrors: bad client flags and bad magic end the session;
// ABORT is acknowledged.
func TestHandshakeErrors(t *testing.T) {
	srv, _, _ := testServer(t)
	rc := newRaw(t, srv, 1<<5)
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("unknown client flags accepted")
	}
	rc = newRaw(t, srv, wire.FlagFixedNewstyle)
	rc.send(binary.BigEndian.AppendUint64(nil, 0x1234))
	rc.send(make([]byte, 8))
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("bad option magic accepted")
	}
	rc = newRaw(t, srv, wire.FlagFixedNewstyle)
	if r := rc.opt(wire.OptAbort, nil); r[0].typ != wire.RepAck {
		t.Fatalf("ABORT: %+v", r)
	}
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("server kept the session after ABORT")
	}
	rc = newRaw(t, srv, wire.FlagFixedNewstyle)
	rc.send(encOpt(wire.OptGo, goData("a")))
	for range 4 {
		var h [20]byte
		rc.read(h[:])
		rc.read(make([]byte, be.Uint32(h[16:])))
	}
	req := encReq(0, wire.CmdRead, 1, 0, 10, nil)
	req[0] ^= 0xff
	rc.send(req)
	if _, err := rc.r.ReadByte(); err == nil {
		t.Fatal("bad request magic accepted")
	}
}

func TestNewErrors(t *testing.T) {
	base := memBase() // 1 MiB + 100: not a multiple of 512
	for _, exps := range [][]Export{
		{{Name: "a", Image: base}, {Name: "a", Image: base}},
		{{Name: "a"}},
		{{Name: "a", Image: base, MinBlockSize: 4096}},
		{{Name: "a", Image: base, MinBlockSize: 512}},
		{{Name: string(make([]byte, 5000)), Image: base}},
	} {
		if _, err := New(exps...); err == nil {
			t.Errorf("New(%+v) succeeded", exps)
		}
	}
}
