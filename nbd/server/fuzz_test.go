package server

import (
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"lifeboat/disk"
	"lifeboat/nbd/internal/wire"
)

// inputConn is the server's end of a net.Pipe whose reads come from the
// fuzz input instead: the session ends when the input does, and the
// replies still go through the pipe to a reader that drains them.
type inputConn struct {
	net.Conn
	r io.Reader
}

func (c inputConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// fuzzSeeds are whole client sessions: handshakes of each kind and every
// command, valid and not.
func fuzzSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	cflags := func(f uint32) []byte { return be.AppendUint32(nil, f) }
	p := randomBytes(5, 9000)
	commands := cat(
		encReq(0, wire.CmdRead, 1, 0, 70000, nil),
		encReq(wire.CmdFlagDF, wire.CmdRead, 2, 250<<10, 100<<10, nil),
		encReq(0, wire.CmdWrite, 3, 4000, 9000, p),
		encReq(wire.CmdFlagFUA, wire.CmdWrite, 4, mib+100-9000, 9000, p),
		encReq(wire.CmdFlagNoHole, wire.CmdWriteZeroes, 5, 100, 20000, nil),
		encReq(0, wire.CmdTrim, 6, 8192, 70000, nil),
		encReq(0, wire.CmdFlush, 7, 0, 0, nil),
		encReq(0, wire.CmdBlockStatus, 8, 0, mib+100, nil),
		encReq(wire.CmdFlagReqOne, wire.CmdBlockStatus, 9, 5000, 1000, nil),
		encReq(0, wire.CmdRead, 10, mib+50, 100, nil),
		encReq(0, wire.CmdWrite, 11, mib, 200, make([]byte, 200)),
		encReq(0, wire.CmdRead, 12, 0, MaxBlockSize+1, nil),
		encReq(0, 77, 13, 0, 0, nil),
		encReq(0, wire.CmdRead, 14, 4000, 9000, nil),
		encReq(0, wire.CmdDisc, 0, 0, 0, nil),
	)
	structured := cat(
		[]byte{0},
		cflags(wire.FlagFixedNewstyle|wire.FlagNoZeroes),
		encOpt(wire.OptStructuredReply, nil),
		encOpt(wire.OptListMetaContext, metaData("a")),
		encOpt(wire.OptSetMetaContext, metaData("a", metaBaseAllocation)),
		encOpt(wire.OptInfo, goData("a", wire.InfoName, wire.InfoDescription, wire.InfoBlockSize)),
		encOpt(wire.OptGo, goData("a", wire.InfoBlockSize)),
		commands,
	)
	oldStyle := cat(
		[]byte{1},
		cflags(0),
		encOpt(wire.OptExportName, []byte("a")),
		commands,
	)
	readOnly := cat(
		[]byte{0},
		cflags(wire.FlagFixedNewstyle),
		encOpt(wire.OptList, nil),
		encOpt(wire.OptStructuredReply, nil),
		encOpt(wire.OptSetMetaContext, metaData("ro", metaBaseAllocation, "base:")),
		encOpt(wire.OptGo, goData("ro")),
		commands,
	)
	abort := cat(
		[]byte{0},
		cflags(wire.FlagFixedNewstyle|wire.FlagNoZeroes),
		encOpt(wire.OptInfo, goData("nope")),
		encOpt(wire.OptStartTLS, nil),
		encOpt(wire.OptList, nil),
		encOpt(wire.OptAbort, nil),
	)
	return [][]byte{structured, oldStyle, readOnly, abort}
}

// fuzzSession serves one fuzzed client and checks the overlay after.
func fuzzSession(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	base := memBase()
	ov, err := OpenOverlay(base, OverlayOptions{}) // unlinked at once
	if err != nil {
		t.Fatal(err)
	}
	defer ov.Close()
	srv, err := New(Export{Name: "a", Overlay: ov}, Export{Name: "ro", Image: base})
	if err != nil {
		t.Fatal(err)
	}
	if data[0]&1 != 0 {
		srv.Workers = 1
	}
	cli, sc := net.Pipe()
	drained := make(chan struct{})
	go func() {
		io.Copy(io.Discard, cli)
		close(drained)
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeConn(context.Background(), inputConn{sc, bytes.NewReader(data[1:])})
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("session hung:\n%s", buf[:runtime.Stack(buf, true)])
	}
	cli.Close()
	<-drained

	// Nothing was written outside the export, and the base is untouched.
	if st, err := ov.f.Stat(); err != nil || st.Size() != ov.Size() {
		t.Fatalf("overlay file: %v, %v (export %d bytes)", st.Size(), err, ov.Size())
	}
	if !bytes.Equal(base.b, memBaseBytes) {
		t.Fatal("base changed")
	}
	ext, err := ov.Extents(context.Background(), 0, ov.Size())
	if err != nil {
		t.Fatal(err)
	}
	if err := disk.CheckExtents(ext, 0, ov.Size()); err != nil {
		t.Fatal(err)
	}
	view := make([]byte, ov.Size())
	if n, err := ov.ReadAt(view, 0); n != len(view) || err != nil {
		t.Fatalf("read view: %d, %v", n, err)
	}
	for _, e := range ext {
		if e.Kind != disk.Data && !allZero(view[e.Offset:e.End()]) {
			t.Fatalf("extent %+v holds data", e)
		}
	}
}

// FuzzServerRequests plays fuzzed bytes as the client side of a session
// (handshake and requests) against an in-process server: it must never
// panic or hang, never allocate beyond its caps whatever lengths the client
// claims, and never write outside the export.
func FuzzServerRequests(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		fuzzSession(t, data)
		runtime.ReadMemStats(&after)
		// The export is 1 MiB: buffers for it, the connection's
		// readers and writers, and what the input holds come to well
		// under this. A length taken from the client and trusted would
		// not (up to 4 GiB).
		if d := after.TotalAlloc - before.TotalAlloc; d > 48<<20+32*uint64(len(data)) {
			t.Fatalf("session allocated %d MiB", d>>20)
		}
	})
}

// TestFuzzSeeds checks the seeds get through the handshake and that the
// sessions do what they say.
func TestFuzzSeeds(t *testing.T) {
	for i, s := range fuzzSeeds() {
		fuzzSession(t, s)
		if i == 0 {
			// The structured session's writes land.
			base := memBase()
			ov := openOverlay(t, base, "")
			srv, _ := New(Export{Name: "a", Overlay: ov})
			cli, sc := net.Pipe()
			go io.Copy(io.Discard, cli)
			srv.ServeConn(context.Background(), inputConn{sc, bytes.NewReader(s[1:])})
			cli.Close()
			if ov.Allocated() == 0 {
				t.Fatal("structured seed wrote nothing")
			}
			got := make([]byte, 9000)
			ov.ReadAt(got, mib+100-9000)
			mustEqual(t, "seed write", got, randomBytes(5, 9000))
		}
	}
}
