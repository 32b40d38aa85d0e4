package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"lifeboat/nbd/internal/wire"
)

// Fuzz input: one option byte, then segments, each a big-endian uint16
// length and that many bytes, that the scripted server plays (see
// playScript).
func decodeSegments(data []byte) [][]byte {
	var segs [][]byte
	for len(data) >= 2 && len(segs) < 256 {
		n := min(int(be16(data)), len(data)-2)
		segs = append(segs, data[2:2+n])
		data = data[2+n:]
	}
	return segs
}

func encodeSegments(opt byte, segs [][]byte) []byte {
	b := []byte{opt}
	for _, s := range segs {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b
}

// fuzzSeeds are sessions the client's script below (fuzzSession) runs
// through: the fuzzer starts from working conversations.
func fuzzSeeds() [][]byte {
	const size = 20000
	content := randomBytes(11, size)
	desc := func(d ...uint32) []uint32 { return d }
	qemuLike := append(handshakeSegs(size, 1, 4096),
		// ReadAt(10000 at 0): three requests of at most 4096.
		msgData(wire.ReplyFlagDone, 1, 0, content[:4096]),
		cat(msgHole(0, 2, 4096, 4096), msgNone(2)),
		cat(msgData(0, 3, 9000, content[9000:10000]), msgData(wire.ReplyFlagDone, 3, 8192, content[8192:9000])),
		// ReadAt(100 at size-50): 50 bytes.
		msgData(wire.ReplyFlagDone, 4, size-50, content[size-50:]),
		// BlockStatus and Dirty over [0, size).
		cat(msgStatus(0, 5, 2, desc(8192, 1, size-8192, 0)...), msgStatus(wire.ReplyFlagDone, 5, 1, desc(4096, 0, 4096, 3, size-8192, 2)...)),
		cat(msgStatus(0, 6, 1, desc(size, 0)...), msgStatus(wire.ReplyFlagDone, 6, 2, desc(100, 1, 200, 0, size-300, 1)...)),
		nil, // NBD_CMD_DISC
	)
	aligned := append(handshakeSegs(size, 512, 4096),
		msgData(wire.ReplyFlagDone, 1, 0, content[:4096]),
		msgData(wire.ReplyFlagDone, 2, 4096, content[4096:8192]),
		msgData(wire.ReplyFlagDone, 3, 8192, content[8192:9728]),
		msgData(wire.ReplyFlagDone, 4, 9728, content[9728:10240]),
		msgData(wire.ReplyFlagDone, 5, 19456, content[19456:19968]),
		msgData(wire.ReplyFlagDone, 6, 19968, content[19968:]),
		cat(msgStatus(wire.ReplyFlagDone, 7, 1, desc(size, 0)...)),
	)
	errs := append(handshakeSegs(size, 1, 4096),
		msgError(wire.ReplyFlagDone, 1, 5, "bad sector"),
		cat(msgSimple(22, 2, nil)),
		cat(msgData(0, 3, 8192, content[8192:9000]), msgChunk(wire.ReplyFlagDone, wire.ReplyTypeErrorOffset, 3, append(append(binary.BigEndian.AppendUint32(nil, 5), 0, 2, 'h', 'i'), binary.BigEndian.AppendUint64(nil, 9000)...))),
	)
	exp := binary.BigEndian.AppendUint64(nil, size)
	exp = binary.BigEndian.AppendUint16(exp, wire.FlagHasFlags)
	old := [][]byte{
		msgGreeting(wire.FlagFixedNewstyle | wire.FlagNoZeroes),
		nil,
		msgOptReply(wire.OptStructuredReply, wire.RepErrUnsup, nil),
		msgOptReply(wire.OptGo, wire.RepErrUnsup, nil),
		exp,
		msgSimple(0, 1, content[:4096]),
		msgSimple(0, 2, content[4096:8192]),
		msgSimple(0, 3, content[8192:10000]),
		msgSimple(0, 4, content[size-50:]),
	}
	return [][]byte{
		encodeSegments(1, qemuLike),
		encodeSegments(0, qemuLike),
		encodeSegments(3, qemuLike),
		encodeSegments(0, aligned),
		encodeSegments(0, errs),
		encodeSegments(0, old),
	}
}

// fuzzSession runs a fixed client script against whatever the server says
// and checks what the client hands back. It may run off the test's
// goroutine, so it reports with Errorf. silence is the scripted server's
// patience (see playScript): short keeps a fuzzed script that answers too
// little from stalling the fuzzer.
func fuzzSession(t *testing.T, data []byte, silence time.Duration) {
	if len(data) == 0 {
		return
	}
	opts := Options{Timeout: 2 * time.Second, MaxRequest: 4096, MaxInFlight: 4}
	if data[0]&1 != 0 {
		opts.MetaContexts = []string{DirtyBitmapContext("b0")}
	}
	if data[0]&2 != 0 {
		opts.MaxInFlight = 1
	}
	cli, srv := net.Pipe()
	s := playScript(srv, decodeSegments(data[1:]), silence)
	defer func() {
		cli.Close()
		<-s.done
	}()
	ctx := context.Background()
	c, err := NewClient(ctx, cli, opts)
	if err != nil {
		return
	}
	defer c.Close()
	size := c.Size()
	if size < 0 {
		t.Errorf("negative size %d", size)
		return
	}
	inf := c.Info()
	if inf.MinBlock == 0 || inf.MinBlock > maxMinBlock || inf.MaxBlock < inf.MinBlock {
		t.Errorf("block sizes %d/%d/%d", inf.MinBlock, inf.PreferredBlock, inf.MaxBlock)
		return
	}
	read := func(n, off int64) {
		buf := make([]byte, n)
		got, err := c.ReadAt(buf, off)
		want := max(0, min(n, size-off))
		bad := got < 0 || got > len(buf) ||
			err == nil && int64(got) != n ||
			err == io.EOF && int64(got) != want ||
			err != nil && err != io.EOF && got != 0
		if bad {
			t.Errorf("ReadAt(%d at %d) = %d, %v (size %d)", n, off, got, err, size)
		}
	}
	read(min(size, 10000), 0)
	if size > 50 {
		read(100, size-50)
	}
	status := func(name string) {
		n := min(size, 1<<20)
		ext, err := c.BlockStatus(ctx, 0, n, name)
		if err != nil {
			return
		}
		pos := int64(0)
		for _, e := range ext {
			if e.Offset != pos || e.Length <= 0 {
				t.Errorf("%s extents not contiguous: %+v", name, ext)
				return
			}
			pos = e.End()
		}
		if pos != n {
			t.Errorf("%s extents end at %d, want %d", name, pos, n)
		}
	}
	if c.HasMetaContext(BaseAllocation) {
		status(BaseAllocation)
	}
	if c.HasMetaContext(DirtyBitmapContext("b0")) {
		status(DirtyBitmapContext("b0"))
	}
	c.Close()
}

// FuzzReplies plays fuzzed bytes as the server side of the handshake and
// of the replies to reads and block status queries: the client must never
// panic, hang, hand out inconsistent results, or allocate absurdly
// whatever the server claims.
func FuzzReplies(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		done := make(chan struct{})
		go func() {
			defer close(done)
			fuzzSession(t, data, 2*time.Millisecond)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("session hung:\n%s", buf[:n])
		}
		runtime.ReadMemStats(&after)
		// Buffers the script asks for, the readers' buffers and what the
		// input itself holds come to well under this; a length taken
		// from the server and trusted would not.
		if d := after.TotalAlloc - before.TotalAlloc; d > 32<<20+16*uint64(len(data)) {
			t.Fatalf("session allocated %d MiB", d>>20)
		}
	})
}

// TestFuzzSeeds checks that the seeds really reach deep into the protocol,
// so the fuzzer does not start from sessions that fail at the handshake.
func TestFuzzSeeds(t *testing.T) {
	seeds := fuzzSeeds()
	for i, data := range seeds[:4] {
		opts := Options{Timeout: 5 * time.Second, MaxRequest: 4096, MaxInFlight: 4}
		if data[0]&1 != 0 {
			opts.MetaContexts = []string{DirtyBitmapContext("b0")}
		}
		if data[0]&2 != 0 {
			opts.MaxInFlight = 1
		}
		cli, srv := net.Pipe()
		playScript(srv, decodeSegments(data[1:]), 200*time.Millisecond)
		c, err := NewClient(context.Background(), cli, opts)
		if err != nil {
			t.Fatalf("seed %d: %v", i, err)
		}
		buf := make([]byte, 10000)
		if _, err := c.ReadAt(buf, 0); err != nil {
			t.Fatalf("seed %d: read: %v", i, err)
		}
		if _, err := c.ReadAt(buf[:100], c.Size()-50); err != io.EOF {
			t.Fatalf("seed %d: read at end: %v", i, err)
		}
		if _, err := c.BlockStatus(context.Background(), 0, c.Size(), BaseAllocation); err != nil {
			t.Fatalf("seed %d: block status: %v", i, err)
		}
		c.Close()
	}
	for _, s := range seeds {
		fuzzSession(t, s, 200*time.Millisecond)
	}
}
