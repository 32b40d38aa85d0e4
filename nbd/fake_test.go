package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/nbd/internal/wire"
)

// A scripted server for protocol edge cases qemu never produces, and for
// the fuzz target: it plays segments of bytes as the server side of a
// connection, segs[0] at once and segs[i] after the client's i-th message
// (client flags, an option, a request), or after a short silence so that a
// script that answers too little cannot stall. After the last segment it
// hangs up.

// clientMsg is one message the client sent.
type clientMsg struct {
	opt    uint32 // option, for option messages
	isReq  bool
	cmd    uint16
	flags  uint16
	cookie uint64
	off    uint64
	length uint32
	data   []byte
}

type scripted struct {
	mu   sync.Mutex
	msgs []clientMsg
	done chan struct{}
}

func (s *scripted) messages() []clientMsg {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// playScript serves segs on conn. silence is how long the writer waits for
// the next client message before it sends the next segment anyway.
func playScript(conn net.Conn, segs [][]byte, silence time.Duration) *scripted {
	s := &scripted{done: make(chan struct{})}
	got := make(chan struct{}, 1<<16)
	readerDone := make(chan struct{})
	go func() { // reader: parse what the client sends
		defer close(readerDone)
		var b [28]byte
		if _, err := io.ReadFull(conn, b[:4]); err != nil {
			return
		}
		got <- struct{}{}
		for {
			if _, err := io.ReadFull(conn, b[:4]); err != nil {
				return
			}
			var m clientMsg
			switch {
			case string(b[:4]) == "IHAV":
				if _, err := io.ReadFull(conn, b[4:16]); err != nil {
					return
				}
				m.opt = be32(b[8:])
				n := be32(b[12:])
				if n > 1<<20 {
					return
				}
				m.data = make([]byte, n)
				if _, err := io.ReadFull(conn, m.data); err != nil {
					return
				}
			case be32(b[:4]) == wire.RequestMagic:
				if _, err := io.ReadFull(conn, b[4:28]); err != nil {
					return
				}
				m = clientMsg{isReq: true, flags: be16(b[4:]), cmd: be16(b[6:]), cookie: be64(b[8:]), off: be64(b[16:]), length: be32(b[24:])}
			default:
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
			got <- struct{}{}
		}
	}()
	go func() { // writer: play segments
		defer close(s.done)
		defer conn.Close()
		for i, seg := range segs {
			if i > 0 {
				t := time.NewTimer(silence)
				select {
				case <-got:
				case <-readerDone:
					// The client hung up or sent garbage: finish
					// quickly.
				case <-t.C:
				}
				t.Stop()
			}
			if len(seg) > 0 {
				if _, err := conn.Write(seg); err != nil {
					return
				}
			}
		}
		// Let the client read the last segment before hanging up.
		t := time.NewTimer(silence)
		select {
		case <-got:
		case <-readerDone:
		case <-t.C:
		}
		t.Stop()
	}()
	return s
}

// Builders of server messages.

func msgGreeting(hflags uint16) []byte {
	b := binary.BigEndian.AppendUint64(nil, wire.NBDMagic)
	b = binary.BigEndian.AppendUint64(b, wire.OptsMagic)
	return binary.BigEndian.AppendUint16(b, hflags)
}

func msgOptReply(opt, typ uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, wire.OptReplyMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func msgMetaContext(id uint32, name string) []byte {
	return msgOptReply(wire.OptSetMetaContext, wire.RepMetaContext, append(binary.BigEndian.AppendUint32(nil, id), name...))
}

func msgInfoExport(size uint64, flags uint16) []byte {
	d := binary.BigEndian.AppendUint16(nil, wire.InfoExport)
	d = binary.BigEndian.AppendUint64(d, size)
	d = binary.BigEndian.AppendUint16(d, flags)
	return msgOptReply(wire.OptGo, wire.RepInfo, d)
}

func msgInfoBlockSize(minB, pref, maxB uint32) []byte {
	d := binary.BigEndian.AppendUint16(nil, wire.InfoBlockSize)
	d = binary.BigEndian.AppendUint32(d, minB)
	d = binary.BigEndian.AppendUint32(d, pref)
	d = binary.BigEndian.AppendUint32(d, maxB)
	return msgOptReply(wire.OptGo, wire.RepInfo, d)
}

func msgSimple(errno uint32, cookie uint64, data []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, wire.SimpleReplyMagic)
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint64(b, cookie)
	return append(b, data...)
}

func msgChunk(flags, typ uint16, cookie uint64, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, wire.StructuredReplyMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, cookie)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// msgChunkClaim is a chunk header claiming n bytes of payload, without them.
func msgChunkClaim(flags, typ uint16, cookie uint64, n uint32) []byte {
	b := msgChunk(flags, typ, cookie, nil)
	binary.BigEndian.PutUint32(b[16:], n)
	return b
}

func msgData(flags uint16, cookie, off uint64, data []byte) []byte {
	return msgChunk(flags, wire.ReplyTypeOffsetData, cookie, append(binary.BigEndian.AppendUint64(nil, off), data...))
}

func msgHole(flags uint16, cookie, off uint64, n uint32) []byte {
	p := binary.BigEndian.AppendUint64(nil, off)
	return msgChunk(flags, wire.ReplyTypeOffsetHole, cookie, binary.BigEndian.AppendUint32(p, n))
}

func msgStatus(flags uint16, cookie uint64, id uint32, desc ...uint32) []byte {
	p := binary.BigEndian.AppendUint32(nil, id)
	for _, d := range desc {
		p = binary.BigEndian.AppendUint32(p, d)
	}
	return msgChunk(flags, wire.ReplyTypeBlockStatus, cookie, p)
}

func msgError(flags uint16, cookie uint64, errno uint32, msg string) []byte {
	p := binary.BigEndian.AppendUint32(nil, errno)
	p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
	return msgChunk(flags, wire.ReplyTypeError, cookie, append(p, msg...))
}

func msgNone(cookie uint64) []byte {
	return msgChunk(wire.ReplyFlagDone, wire.ReplyTypeNone, cookie, nil)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// handshakeSegs is a qemu-like handshake: fixed newstyle, no zeroes,
// structured replies, base:allocation as context 1 and a dirty bitmap
// "b0" as context 2, an export of size bytes.
func handshakeSegs(size uint64, minB, maxB uint32) [][]byte {
	return [][]byte{
		msgGreeting(wire.FlagFixedNewstyle | wire.FlagNoZeroes),
		nil, // after the client flags
		msgOptReply(wire.OptStructuredReply, wire.RepAck, nil),
		cat(msgMetaContext(1, BaseAllocation), msgMetaContext(2, DirtyBitmapContext("b0")), msgOptReply(wire.OptSetMetaContext, wire.RepAck, nil)),
		cat(msgInfoExport(size, wire.FlagHasFlags|wire.FlagReadOnly), msgInfoBlockSize(minB, 4096, maxB), msgOptReply(wire.OptGo, wire.RepAck, nil)),
	}
}

// dialScript connects a client to a scripted server over net.Pipe.
func dialScript(t *testing.T, segs [][]byte, opts Options) (*Client, *scripted, error) {
	t.Helper()
	cli, srv := net.Pipe()
	s := playScript(srv, segs, 200*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := NewClient(ctx, cli, opts)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, s, err
}

func TestScriptedReadReassembly(t *testing.T) {
	size := uint64(1 << 20)
	content := randomBytes(3, 3*4096)
	// Three pipelined requests of 4096 bytes, answered out of order with
	// chunks of one reply interleaved with another's.
	segs := append(handshakeSegs(size, 1, 4096),
		nil, nil,
		cat(
			msgData(0, 3, 8192+1000, content[8192+1000:]),
			msgData(0, 1, 0, content[:100]),
			msgHole(0, 2, 4096, 4096),
			msgData(0, 3, 8192, content[8192:8192+1000]),
			msgNone(3),
			msgData(wire.ReplyFlagDone, 1, 100, content[100:4096]),
			msgNone(2),
		),
		nil, // NBD_CMD_DISC
	)
	c, s, err := dialScript(t, segs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{0xee}, 3*4096)
	if n, err := c.ReadAt(buf, 0); n != len(buf) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	want := slices.Clone(content)
	clear(want[4096:8192])
	if !bytes.Equal(buf, want) {
		t.Fatalf("reassembled data differs at %d", firstDiff(buf, want))
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	msgs := s.messages()
	last := msgs[len(msgs)-1]
	if !last.isReq || last.cmd != wire.CmdDisc {
		t.Fatalf("last message %+v, want NBD_CMD_DISC", last)
	}
	for _, m := range msgs[:len(msgs)-1] {
		if m.isReq && (m.cmd != wire.CmdRead || m.length != 4096 || m.flags != 0) {
			t.Errorf("request %+v", m)
		}
	}
}

// TestScriptedShortBlockStatus: the server answers each query with two
// descriptors only; BlockStatus asks again until the range is covered, and
// ignores the other context's chunk.
func TestScriptedShortBlockStatus(t *testing.T) {
	segs := append(handshakeSegs(1<<20, 1, 1<<20),
		cat(msgStatus(0, 1, 2, 1<<20, 1), msgStatus(wire.ReplyFlagDone, 1, 1, 1000, 0, 2000, StateHole|StateZero)),
		cat(msgStatus(0, 2, 1, 500, StateHole|StateZero, 7000, StateZero), msgStatus(wire.ReplyFlagDone, 2, 2, 1<<19, 0)),
		// The final descriptor runs past the request: clipped.
		msgStatus(wire.ReplyFlagDone, 3, 1, 1<<20, 0),
	)
	c, _, err := dialScript(t, segs, Options{MetaContexts: []string{DirtyBitmapContext("b0")}})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Allocation(context.Background(), 0, 100000)
	if err != nil {
		t.Fatal(err)
	}
	want := []disk.Extent{
		{Offset: 0, Length: 1000, Kind: disk.Data},
		{Offset: 1000, Length: 2500, Kind: disk.Unallocated},
		{Offset: 3500, Length: 7000, Kind: disk.Zero},
		{Offset: 10500, Length: 100000 - 10500, Kind: disk.Data},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %s\nwant %s", fmtExtents(got), fmtExtents(want))
	}
}

// Each of these replies breaks the protocol; the client must fail the
// request with an error naming it, not panic, hang or hand out stale bytes.
func TestScriptedBadReplies(t *testing.T) {
	hs := handshakeSegs(1<<20, 1, 1<<20)
	cases := []struct {
		name  string
		reply []byte
		want  string
	}{
		{"data-outside", msgData(wire.ReplyFlagDone, 1, 4096, make([]byte, 10)), "outside the request"},
		{"data-before", msgData(wire.ReplyFlagDone, 1, 0, make([]byte, 10)), "outside the request"},
		{"overlap", cat(msgData(0, 1, 1000, make([]byte, 100)), msgHole(wire.ReplyFlagDone, 1, 1050, 10)), "overlaps"},
		{"short", msgData(wire.ReplyFlagDone, 1, 1000, make([]byte, 100)), "ended after 100 of 1000 bytes"},
		{"unknown-cookie", msgData(wire.ReplyFlagDone, 99, 1000, make([]byte, 1000)), "unknown handle"},
		{"bad-magic", []byte("garbage garbage garbage"), "bad reply magic"},
		{"status-for-read", msgStatus(wire.ReplyFlagDone, 1, 1, 1000, 0), "block status chunk in reply to read"},
		{"unknown-type", msgChunk(wire.ReplyFlagDone, 77, 1, nil), "unknown reply chunk type"},
		{"huge-error", msgChunkClaim(wire.ReplyFlagDone, wire.ReplyTypeError, 1, 70000), "error chunk of 70000 bytes"},
		{"huge-data", msgChunkClaim(wire.ReplyFlagDone, wire.ReplyTypeOffsetData, 1, 1<<31), "data chunk of 2147483640 bytes in reply to a read of 1000"},
		{"error-message-too-long", msgChunk(wire.ReplyFlagDone, wire.ReplyTypeError, 1, []byte{0, 0, 0, 5, 0, 9, 'x'}), "error message of 9 bytes"},
		{"server-error", msgError(wire.ReplyFlagDone, 1, 5, "disk on fire\n"), `server error EIO (input/output error): disk on fire\n`},
		{"hole-zero", msgHole(wire.ReplyFlagDone, 1, 1000, 0), "hole chunk of length 0"},
		{"simple-error", msgSimple(28, 1, nil), "ENOSPC"},
		{"hangup", msgData(0, 1, 1000, make([]byte, 10)), "server closed the connection"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := dialScript(t, append(slices.Clone(hs), tc.reply), Options{Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1000)
			n, err := c.ReadAt(buf, 1000)
			if err == nil || n != 0 || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "offset 1000") {
				t.Fatalf("ReadAt = %d, %v; want an error with %q naming offset 1000", n, err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
}

func TestScriptedBadBlockStatus(t *testing.T) {
	hs := handshakeSegs(1<<20, 1, 1<<20)
	cases := []struct {
		name  string
		reply []byte
		want  string
	}{
		{"past-end", msgStatus(wire.ReplyFlagDone, 1, 1, 500, 0, 600, 0, 100, 0), "run past the request end"},
		{"zero-length", msgStatus(wire.ReplyFlagDone, 1, 1, 0, 0), "has length 0"},
		{"unknown-context", msgStatus(wire.ReplyFlagDone, 1, 9, 100, 0), "unknown metadata context ID 9"},
		{"twice", cat(msgStatus(0, 1, 1, 100, 0), msgStatus(wire.ReplyFlagDone, 1, 1, 100, 0)), "two block status chunks"},
		{"missing", msgStatus(wire.ReplyFlagDone, 1, 2, 100, 0), "no block status for the context"},
		{"odd-length", msgChunk(wire.ReplyFlagDone, wire.ReplyTypeBlockStatus, 1, make([]byte, 13)), "block status chunk of 13 bytes"},
		{"too-short", msgChunk(wire.ReplyFlagDone, wire.ReplyTypeBlockStatus, 1, make([]byte, 4)), "block status chunk of 4 bytes"},
		{"huge", msgChunkClaim(wire.ReplyFlagDone, wire.ReplyTypeBlockStatus, 1, 1<<30+4), "block status chunk of 1073741828 bytes"},
		{"data-chunk", msgData(wire.ReplyFlagDone, 1, 0, []byte{1}), "data chunk in reply to block status"},
		{"simple-ok", msgSimple(0, 1, nil), "simple reply without block status"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := dialScript(t, append(slices.Clone(hs), tc.reply), Options{Timeout: 5 * time.Second, MetaContexts: []string{DirtyBitmapContext("b0")}})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.BlockStatus(context.Background(), 0, 1000, BaseAllocation)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "offset 0") {
				t.Fatalf("BlockStatus: %v; want an error with %q naming offset 0", err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
}

func TestScriptedBadHandshake(t *testing.T) {
	ok := handshakeSegs(1<<20, 1, 1<<20)
	with := func(i int, seg []byte) [][]byte {
		s := slices.Clone(ok)
		s[i] = seg
		return s[:i+1]
	}
	huge := binary.BigEndian.AppendUint64(nil, wire.OptReplyMagic)
	huge = binary.BigEndian.AppendUint32(huge, wire.OptStructuredReply)
	huge = binary.BigEndian.AppendUint32(huge, wire.RepAck)
	huge = binary.BigEndian.AppendUint32(huge, 1<<30)
	cases := []struct {
		name string
		segs [][]byte
		want string
	}{
		{"not-nbd", [][]byte{[]byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n")}, "not an NBD server"},
		{"oldstyle", [][]byte{cat(binary.BigEndian.AppendUint64(nil, wire.NBDMagic), binary.BigEndian.AppendUint64(nil, wire.OldstyleMagic))}, "oldstyle"},
		{"huge-option-reply", with(2, huge), "claims 1073741824 bytes"},
		{"wrong-option", with(2, msgOptReply(wire.OptGo, wire.RepAck, nil)), "is for NBD_OPT_GO"},
		{"tls", with(2, msgOptReply(wire.OptStructuredReply, wire.RepErrTLSReqd, []byte("use TLS"))), "requires TLS"},
		{"no-export-info", with(4, msgOptReply(wire.OptGo, wire.RepAck, nil)), "without NBD_INFO_EXPORT"},
		{"size-out-of-range", with(4, cat(msgInfoExport(1<<63, 1), msgOptReply(wire.OptGo, wire.RepAck, nil))), "out of range"},
		{"bad-min-block", with(4, cat(msgInfoExport(4096, 1), msgInfoBlockSize(3, 4096, 1<<20), msgOptReply(wire.OptGo, wire.RepAck, nil))), "minimum block size 3"},
		{"max-below-min", with(4, cat(msgInfoExport(4096, 1), msgInfoBlockSize(4096, 4096, 512), msgOptReply(wire.OptGo, wire.RepAck, nil))), "below the minimum"},
		{"unknown-export", with(4, msgOptReply(wire.OptGo, wire.RepErrUnknown, []byte("no such export"))), "export not found"},
		{"hangup", ok[:3], "server closed the connection"},
		{"duplicate-context-id", with(3, cat(msgMetaContext(1, BaseAllocation), msgMetaContext(1, "x:y"), msgOptReply(wire.OptSetMetaContext, wire.RepAck, nil))), "context ID 1 twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := dialScript(t, tc.segs, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("dial: %v; want an error with %q", err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
}

// TestScriptedOldServer: no NBD_OPT_GO, no structured replies: the client
// falls back to NBD_OPT_EXPORT_NAME and simple replies.
func TestScriptedOldServer(t *testing.T) {
	content := randomBytes(8, 5000)
	exp := binary.BigEndian.AppendUint64(nil, 5000)
	exp = binary.BigEndian.AppendUint16(exp, wire.FlagHasFlags)
	exp = append(exp, make([]byte, 124)...) // no NBD_FLAG_NO_ZEROES
	segs := [][]byte{
		msgGreeting(wire.FlagFixedNewstyle),
		nil,
		msgOptReply(wire.OptStructuredReply, wire.RepErrUnsup, nil),
		msgOptReply(wire.OptGo, wire.RepErrUnsup, nil),
		exp,
		msgSimple(0, 1, content[1000:3000]),
		msgSimple(5, 2, nil),
	}
	c, _, err := dialScript(t, segs, Options{Export: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if inf := c.Info(); inf.Structured || inf.Size != 5000 || len(inf.MetaContexts) != 0 {
		t.Fatalf("info %+v", inf)
	}
	buf := make([]byte, 2000)
	if _, err := c.ReadAt(buf, 1000); err != nil || !bytes.Equal(buf, content[1000:3000]) {
		t.Fatalf("read: %v", err)
	}
	if _, err := c.ReadAt(buf, 3000); !errors.Is(err, EIO) {
		t.Fatalf("read with error reply: %v", err)
	}
	// No base:allocation: everything is data.
	ext, err := c.Allocation(context.Background(), 0, 5000)
	if err != nil || !slices.Equal(ext, []disk.Extent{{Offset: 0, Length: 5000, Kind: disk.Data}}) {
		t.Fatalf("allocation %v %v", ext, err)
	}
}

// TestScriptedTimeout: a server that never answers fails the request after
// Options.Timeout; ReadAt does not return before the reader has let go of
// the buffer.
func TestScriptedTimeout(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	go playScript(srv, append(handshakeSegs(1<<20, 1, 1<<20), nil, nil), time.Hour)
	c, err := NewClient(context.Background(), cli, Options{Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	_, err = c.ReadAt(make([]byte, 100), 0)
	if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "offset 0") {
		t.Fatalf("read: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
		t.Errorf("timed out after %v", d)
	}
}

func TestParseURL(t *testing.T) {
	cases := []struct {
		in   string
		want Address
		bad  bool
	}{
		{in: "nbd://host/disk0", want: Address{"tcp", "host:10809", "disk0"}},
		{in: "nbd://127.0.0.1:1234/", want: Address{"tcp", "127.0.0.1:1234", ""}},
		{in: "nbd://[::1]:99/a%20b", want: Address{"tcp", "[::1]:99", "a b"}},
		{in: "nbd+unix:///vda?socket=/run/x.sock", want: Address{"unix", "/run/x.sock", "vda"}},
		{in: "unix:///tmp/x.sock?export=vda", want: Address{"unix", "/tmp/x.sock", "vda"}},
		{in: "unix:/tmp/x.sock", want: Address{"unix", "/tmp/x.sock", ""}},
		{in: "unix:rel.sock", want: Address{"unix", "rel.sock", ""}},
		{in: "nbd+unix:///vda", bad: true},
		{in: "nbd:///disk", bad: true},
		{in: "unix://host/x", bad: true},
		{in: "http://x/y", bad: true},
		{in: "nbd://h/x?socket=/s", bad: true},
	}
	for _, c := range cases {
		got, err := ParseURL(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("ParseURL(%q) = %+v, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseURL(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}
