// Package nbd is a client for the Network Block Device protocol, enough of
// it to pull disk data out of QEMU (libvirt's backup API in pull mode,
// qemu-nbd, qemu-storage-daemon): fixed newstyle negotiation with
// NBD_OPT_GO, structured replies, metadata contexts (base:allocation and
// qemu:dirty-bitmap:NAME), pipelined NBD_CMD_READ and NBD_CMD_BLOCK_STATUS,
// over a unix socket or TCP. It is read-only and has no TLS.
//
// The client never trusts the server: every length and offset is checked
// against the request it answers, nothing the server says makes the client
// allocate beyond fixed limits, and a server that breaks the protocol ends
// the connection with a *ProtocolError naming the request.
//
// Pulling a backup from libvirt (virDomainBackupBegin in pull mode exports
// each disk on the socket of its <server>, named after the disk, with the
// incremental bitmap as qemu:dirty-bitmap:NAME):
//
//	c, err := nbd.Dial(ctx, "unix", "/run/backup.sock", nbd.Options{
//		Export:       "vda",
//		MetaContexts: []string{nbd.DirtyBitmapContext("backup-vda")},
//		Timeout:      time.Minute,
//	})
//	changed, err := c.Dirty(ctx, "backup-vda", 0, c.Size())
//	alloc, err := c.Allocation(ctx, 0, c.Size())
//	n, err := c.ReadAt(buf, off)
//	img := nbd.NewImage(c) // a disk.Image for the repository
package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"lifeboat/nbd/internal/wire"
)

// Options tune a connection.
type Options struct {
	// Export is the export name ("" is the server's default export).
	Export string
	// MetaContexts are metadata contexts to negotiate besides
	// base:allocation, which is always asked for (and used when granted).
	// Dial fails when one of these is not granted. Use DirtyBitmapContext
	// to name a QEMU dirty bitmap.
	MetaContexts []string
	// Timeout bounds every exchange with the server: the handshake when
	// the context has no earlier deadline, each write, and the wait for
	// the next reply message while requests are in flight. When it runs
	// out the connection is dropped and every pending request fails.
	// 0 means no limit.
	Timeout time.Duration
	// MaxRequest caps the length of one read request; 0 means
	// DefaultMaxRequest. The server's maximum block size also applies.
	MaxRequest int
	// MaxInFlight caps pipelined requests; 0 means DefaultMaxInFlight.
	MaxInFlight int
}

// Client is a connection to one export. Its methods are safe for
// concurrent use.
type Client struct {
	conn     net.Conn
	br       *bufio.Reader
	info     ExportInfo
	contexts map[string]uint32 // name -> ID
	ctxNames map[uint32]string
	minBlock int64
	maxRead  int64 // multiple of minBlock
	timeout  time.Duration

	sem  chan struct{}
	dead chan struct{} // closed when the connection has failed

	wmu sync.Mutex // serialises request writes

	mu      sync.Mutex
	pending map[uint64]*request
	cookie  uint64
	err     error // why the connection is unusable; set once
	closing bool

	readerDone chan struct{}
	closeOnce  sync.Once
	closeErr   error
}

// Dial connects to an NBD server ("unix" with a socket path, or "tcp" with
// host:port) and negotiates opts.Export. ctx bounds the connection and the
// handshake.
func Dial(ctx context.Context, network, addr string, opts Options) (*Client, error) {
	var d net.Dialer
	if opts.Timeout > 0 {
		d.Timeout = opts.Timeout
	}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	c, err := NewClient(ctx, conn, opts)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// DialURL connects to an NBD URI (see ParseURL). An export name in the URI
// is used when opts.Export is empty; naming two different exports is an
// error.
func DialURL(ctx context.Context, uri string, opts Options) (*Client, error) {
	a, err := ParseURL(uri)
	if err != nil {
		return nil, err
	}
	if a.Export != "" {
		if opts.Export != "" && opts.Export != a.Export {
			return nil, fmt.Errorf("nbd: URI %q names export %q but options name %q", uri, a.Export, opts.Export)
		}
		opts.Export = a.Export
	}
	return Dial(ctx, a.Network, a.Addr, opts)
}

// withDeadline applies ctx and timeout to conn for the duration of f.
func withDeadline(ctx context.Context, conn net.Conn, timeout time.Duration, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dl, ok := ctx.Deadline()
	if timeout > 0 {
		if t := time.Now().Add(timeout); !ok || t.Before(dl) {
			dl, ok = t, true
		}
	}
	if ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	err := f()
	if !stop() && ctx.Err() != nil {
		return fmt.Errorf("nbd: handshake: %w", ctx.Err())
	}
	conn.SetDeadline(time.Time{})
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("nbd: handshake timed out: %w", err)
	}
	return err
}

// NewClient runs the handshake on an established connection and starts the
// transmission phase. The client owns conn from then on, also on error.
func NewClient(ctx context.Context, conn net.Conn, opts Options) (*Client, error) {
	if len(opts.Export) > maxStringLen {
		conn.Close()
		return nil, fmt.Errorf("nbd: export name of %d bytes is longer than %d", len(opts.Export), maxStringLen)
	}
	for _, m := range opts.MetaContexts {
		if m == "" || len(m) > maxStringLen {
			conn.Close()
			return nil, fmt.Errorf("nbd: bad metadata context name %q", m)
		}
	}
	var s *session
	err := withDeadline(ctx, conn, opts.Timeout, func() error {
		var err error
		s, err = negotiate(conn, &opts)
		return err
	})
	if err != nil {
		conn.Close()
		return nil, err
	}
	c := &Client{
		conn:       conn,
		br:         s.r,
		info:       *s.info,
		contexts:   s.contexts,
		ctxNames:   map[uint32]string{},
		minBlock:   int64(s.info.MinBlock),
		timeout:    opts.Timeout,
		dead:       make(chan struct{}),
		pending:    map[uint64]*request{},
		readerDone: make(chan struct{}),
	}
	for n, id := range s.contexts {
		c.ctxNames[id] = n
	}
	maxRead := int64(opts.MaxRequest)
	if maxRead <= 0 {
		maxRead = DefaultMaxRequest
	}
	maxRead = min(maxRead, int64(s.info.MaxBlock))
	c.maxRead = max(maxRead-maxRead%c.minBlock, c.minBlock)
	inflight := opts.MaxInFlight
	if inflight <= 0 {
		inflight = DefaultMaxInFlight
	}
	c.sem = make(chan struct{}, inflight)
	go c.readLoop()
	return c, nil
}

// Probe connects, describes an export (size, block sizes, and every
// metadata context the server offers for it, such as the dirty bitmaps a
// backup job exports) with NBD_OPT_INFO and NBD_OPT_LIST_META_CONTEXT, and
// disconnects without entering it.
func Probe(ctx context.Context, network, addr, export string, timeout time.Duration) (*ExportInfo, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("nbd: dial %s %s: %w", network, addr, err)
	}
	defer conn.Close()
	var inf *ExportInfo
	err = withDeadline(ctx, conn, timeout, func() error {
		var err error
		inf, err = probe(conn, export)
		return err
	})
	return inf, err
}

// Info describes the export.
func (c *Client) Info() ExportInfo {
	inf := c.info
	inf.MetaContexts = slices.Clone(inf.MetaContexts)
	return inf
}

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.info.Size }

// HasMetaContext says whether a metadata context was negotiated.
func (c *Client) HasMetaContext(name string) bool {
	_, ok := c.contexts[name]
	return ok
}

// request is one command in flight. Only the reader goroutine touches its
// reply state until done is closed.
type request struct {
	cookie uint64
	cmd    uint16
	off    int64
	length int64
	buf    []byte // NBD_CMD_READ destination, len == length

	chunks  int
	covered []span // sorted, merged parts of buf the reply filled

	want    uint32 // NBD_CMD_BLOCK_STATUS context of interest
	seen    []uint32
	extents []Extent

	err  error
	done chan struct{}
}

type span struct{ start, end int64 }

func (r *request) protoErr(format string, args ...any) error {
	return &ProtocolError{Op: cmdName(r.cmd), Offset: r.off, Length: r.length, Msg: fmt.Sprintf(format, args...)}
}

// setErr records the first error of a request.
func (r *request) setErr(err error) {
	if r.err == nil {
		r.err = err
	}
}

// start registers and sends a request. On success the reader goroutine
// will close req.done, whatever happens to the connection.
func (c *Client) start(ctx context.Context, req *request, flags uint16) error {
	select {
	case c.sem <- struct{}{}:
	case <-c.dead:
		return c.connErr()
	case <-ctx.Done():
		return ctx.Err()
	}
	req.done = make(chan struct{})
	var hdr [28]byte
	binary.BigEndian.PutUint32(hdr[0:], wire.RequestMagic)
	binary.BigEndian.PutUint16(hdr[4:], flags)
	binary.BigEndian.PutUint16(hdr[6:], req.cmd)
	binary.BigEndian.PutUint64(hdr[16:], uint64(req.off))
	binary.BigEndian.PutUint32(hdr[24:], uint32(req.length))

	// Registering and writing under wmu keeps every request ahead of the
	// NBD_CMD_DISC that Close sends.
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.err != nil || c.closing {
		err := c.err
		if c.closing {
			err = ErrClosed
		}
		c.mu.Unlock()
		<-c.sem
		return err
	}
	c.cookie++
	req.cookie = c.cookie
	c.pending[req.cookie] = req
	if c.timeout > 0 {
		c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	}
	c.mu.Unlock()
	binary.BigEndian.PutUint64(hdr[8:], req.cookie)
	if err := c.write(hdr[:]); err != nil {
		// The request stays pending: the reader fails it once the
		// closed connection stops its read.
		c.fail(&ConnError{Msg: fmt.Sprintf("sending %s request at offset %d", cmdName(req.cmd), req.off), Err: err})
	}
	return nil
}

// write sends b; the caller holds wmu.
func (c *Client) write(b []byte) error {
	if c.timeout > 0 {
		c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	_, err := c.conn.Write(b)
	return err
}

// connErr is the error requests get once the connection has failed.
func (c *Client) connErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return ErrClosed
	}
	if c.err != nil {
		return c.err
	}
	return ErrClosed
}

// fail marks the connection dead and closes it, which stops the reader.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		if c.closing {
			err = ErrClosed
		}
		c.err = err
		close(c.dead)
	}
	c.mu.Unlock()
	c.conn.Close()
}

// readLoop reads every reply and hands it to its request.
func (c *Client) readLoop() {
	defer close(c.readerDone)
	err := c.readReplies()
	c.fail(err)
	c.mu.Lock()
	err = c.err
	if c.closing {
		err = ErrClosed
	}
	pend := c.pending
	c.pending = nil
	c.mu.Unlock()
	for _, r := range pend {
		r.setErr(err)
		close(r.done)
		<-c.sem
	}
}

// complete hands a finished request back to its caller.
func (c *Client) complete(r *request) {
	c.mu.Lock()
	delete(c.pending, r.cookie)
	if c.timeout > 0 {
		if len(c.pending) == 0 {
			c.conn.SetReadDeadline(time.Time{})
		} else {
			c.conn.SetReadDeadline(time.Now().Add(c.timeout))
		}
	}
	c.mu.Unlock()
	close(r.done)
	<-c.sem
}

// lookup finds the request a reply is for.
func (c *Client) lookup(cookie uint64) *request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[cookie]
}

func (c *Client) readErr(err error, what string) error {
	c.mu.Lock()
	closing, n := c.closing, len(c.pending)
	c.mu.Unlock()
	if closing {
		return ErrClosed
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &ConnError{Msg: fmt.Sprintf("no reply from server within %v (%d requests in flight)", c.timeout, n), Err: err}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return &ConnError{Msg: fmt.Sprintf("server closed the connection (%d requests in flight) while sending %s", n, what), Err: io.ErrUnexpectedEOF}
	}
	return &ConnError{Msg: "reading " + what, Err: err}
}

// readReplies loops over reply messages until the connection fails; the
// error says why.
func (c *Client) readReplies() error {
	var hdr [20]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:4]); err != nil {
			if errors.Is(err, io.EOF) && c.idle() {
				return &ConnError{Msg: "server closed the connection", Err: io.EOF}
			}
			return c.readErr(err, "a reply")
		}
		switch m := be32(hdr[:4]); m {
		case wire.SimpleReplyMagic:
			if _, err := io.ReadFull(c.br, hdr[4:16]); err != nil {
				return c.readErr(err, "a reply header")
			}
			errno, cookie := be32(hdr[4:]), be64(hdr[8:])
			r := c.lookup(cookie)
			if r == nil {
				return &ProtocolError{Op: "reply", Offset: -1, Msg: fmt.Sprintf("simple reply for unknown handle %#x", cookie)}
			}
			if err := c.simpleReply(r, errno); err != nil {
				return err
			}
			c.complete(r)
		case wire.StructuredReplyMagic:
			if _, err := io.ReadFull(c.br, hdr[4:20]); err != nil {
				return c.readErr(err, "a reply chunk header")
			}
			flags, typ, cookie, length := be16(hdr[4:]), be16(hdr[6:]), be64(hdr[8:]), be32(hdr[16:])
			r := c.lookup(cookie)
			if r == nil {
				return &ProtocolError{Op: "reply", Offset: -1, Msg: fmt.Sprintf("reply chunk for unknown handle %#x", cookie)}
			}
			if err := c.chunk(r, typ, length); err != nil {
				return err
			}
			if flags&wire.ReplyFlagDone != 0 {
				r.finish()
				c.complete(r)
			} else if typ == wire.ReplyTypeNone {
				return r.protoErr("NBD_REPLY_TYPE_NONE chunk without the done flag")
			}
		default:
			return &ProtocolError{Op: "reply", Offset: -1, Msg: fmt.Sprintf("bad reply magic %#08x", m)}
		}
	}
}

func (c *Client) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending) == 0
}

// simpleReply handles a simple reply (the only kind without structured
// replies; with them, servers may use it for errors of other commands).
func (c *Client) simpleReply(r *request, errno uint32) error {
	if r.chunks > 0 {
		return r.protoErr("simple reply after %d structured chunks", r.chunks)
	}
	if errno != 0 {
		r.err = &Error{Op: cmdName(r.cmd), Offset: r.off, Length: r.length, Errno: Errno(errno), At: -1}
		return nil
	}
	switch r.cmd {
	case wire.CmdRead:
		if _, err := io.ReadFull(c.br, r.buf); err != nil {
			return c.readErr(err, fmt.Sprintf("data of read at offset %d", r.off))
		}
	case wire.CmdBlockStatus:
		r.err = r.protoErr("simple reply without block status")
	}
	return nil
}

// chunk reads one structured reply chunk's payload into r. The error is
// fatal for the connection; errors of the request land in r.err.
func (c *Client) chunk(r *request, typ uint16, length uint32) error {
	r.chunks++
	switch typ {
	case wire.ReplyTypeNone:
		if length != 0 {
			return r.protoErr("NBD_REPLY_TYPE_NONE with %d bytes of payload", length)
		}
		return nil
	case wire.ReplyTypeOffsetData:
		if r.cmd != wire.CmdRead {
			return r.protoErr("data chunk in reply to %s", cmdName(r.cmd))
		}
		if length < 9 || int64(length-8) > r.length {
			return r.protoErr("data chunk of %d bytes in reply to a read of %d", length-min(length, 8), r.length)
		}
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return c.readErr(err, "a data chunk")
		}
		rel, err := r.claim(be64(b[:]), uint64(length-8), "data")
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(c.br, r.buf[rel:rel+int64(length-8)]); err != nil {
			return c.readErr(err, fmt.Sprintf("data of read at offset %d", r.off))
		}
		return nil
	case wire.ReplyTypeOffsetHole:
		if r.cmd != wire.CmdRead {
			return r.protoErr("hole chunk in reply to %s", cmdName(r.cmd))
		}
		if length != 12 {
			return r.protoErr("hole chunk of %d bytes, want 12", length)
		}
		var b [12]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return c.readErr(err, "a hole chunk")
		}
		size := uint64(be32(b[8:]))
		if size == 0 {
			return r.protoErr("hole chunk of length 0 at offset %d", be64(b[:]))
		}
		rel, err := r.claim(be64(b[:]), size, "hole")
		if err != nil {
			return err
		}
		clear(r.buf[rel : rel+int64(size)])
		return nil
	case wire.ReplyTypeBlockStatus:
		return c.blockStatusChunk(r, length)
	}
	if typ&wire.ReplyTypeErrBit == 0 {
		return r.protoErr("unknown reply chunk type %d", typ)
	}
	// An error chunk, known or not.
	if length < 6 || length > maxErrorPayload {
		return r.protoErr("error chunk of %d bytes", length)
	}
	b := make([]byte, length)
	if _, err := io.ReadFull(c.br, b); err != nil {
		return c.readErr(err, "an error chunk")
	}
	errno, mlen := be32(b), int(be16(b[4:]))
	if mlen > len(b)-6 {
		return r.protoErr("error message of %d bytes in a %d-byte chunk", mlen, length)
	}
	e := &Error{Op: cmdName(r.cmd), Offset: r.off, Length: r.length, Errno: Errno(errno), Message: printable(b[6 : 6+mlen]), At: -1}
	if errno == 0 {
		e.Errno = EIO
		e.Message = "(server sent error 0) " + e.Message
	}
	switch typ {
	case wire.ReplyTypeError:
	case wire.ReplyTypeErrorOffset:
		if len(b)-6-mlen != 8 {
			return r.protoErr("error-offset chunk with %d trailing bytes", len(b)-6-mlen)
		}
		at := be64(b[6+mlen:])
		if at < uint64(r.off) || at-uint64(r.off) >= uint64(r.length) {
			return r.protoErr("error at offset %d outside the request", at)
		}
		e.At = int64(at)
	default:
		e.Message = fmt.Sprintf("(error chunk type %#x) %s", typ, e.Message)
	}
	r.setErr(e)
	return nil
}

// claim checks that a content chunk [off, off+n) lies inside the read
// request and overlaps nothing received before, and records it. It returns
// the chunk's offset inside r.buf.
func (r *request) claim(off, n uint64, what string) (int64, error) {
	if off < uint64(r.off) || off-uint64(r.off) > uint64(r.length) || n > uint64(r.length)-(off-uint64(r.off)) {
		return 0, r.protoErr("%s chunk of %d bytes at offset %d lies outside the request", what, n, off)
	}
	s := span{int64(off) - r.off, int64(off) - r.off + int64(n)}
	i, _ := slices.BinarySearchFunc(r.covered, s.start, func(x span, t int64) int {
		switch {
		case x.start < t:
			return -1
		case x.start > t:
			return 1
		}
		return 0
	})
	if (i > 0 && r.covered[i-1].end > s.start) || (i < len(r.covered) && r.covered[i].start < s.end) {
		return 0, r.protoErr("%s chunk of %d bytes at offset %d overlaps an earlier chunk", what, n, off)
	}
	// Merge with neighbours: in-order replies keep the list at one span.
	switch {
	case i > 0 && r.covered[i-1].end == s.start && i < len(r.covered) && r.covered[i].start == s.end:
		r.covered[i-1].end = r.covered[i].end
		r.covered = slices.Delete(r.covered, i, i+1)
	case i > 0 && r.covered[i-1].end == s.start:
		r.covered[i-1].end = s.end
	case i < len(r.covered) && r.covered[i].start == s.end:
		r.covered[i].start = s.start
	default:
		if len(r.covered) >= maxReadIntervals {
			return 0, r.protoErr("reply scattered in more than %d pieces", maxReadIntervals)
		}
		r.covered = slices.Insert(r.covered, i, s)
	}
	return s.start, nil
}

// finish checks a structured reply once its last chunk is in.
func (r *request) finish() {
	if r.err != nil {
		return
	}
	switch r.cmd {
	case wire.CmdRead:
		if len(r.covered) != 1 || r.covered[0].start != 0 || r.covered[0].end != r.length {
			var got int64
			for _, s := range r.covered {
				got += s.end - s.start
			}
			r.err = r.protoErr("reply ended after %d of %d bytes", got, r.length)
		}
	case wire.CmdBlockStatus:
		if !slices.Contains(r.seen, r.want) {
			r.err = r.protoErr("reply has no block status for the context asked for")
		}
	}
}

// blockStatusChunk reads an NBD_REPLY_TYPE_BLOCK_STATUS payload.
func (c *Client) blockStatusChunk(r *request, length uint32) error {
	if r.cmd != wire.CmdBlockStatus {
		return r.protoErr("block status chunk in reply to %s", cmdName(r.cmd))
	}
	if length < 12 || (length-4)%8 != 0 || (length-4)/8 > maxDescriptors {
		return r.protoErr("block status chunk of %d bytes", length)
	}
	var b [4096]byte
	if _, err := io.ReadFull(c.br, b[:4]); err != nil {
		return c.readErr(err, "a block status chunk")
	}
	id := be32(b[:])
	if _, ok := c.ctxNames[id]; !ok {
		return r.protoErr("block status for unknown metadata context ID %d", id)
	}
	if slices.Contains(r.seen, id) {
		return r.protoErr("two block status chunks for metadata context ID %d", id)
	}
	r.seen = append(r.seen, id)
	keep := id == r.want
	n := int((length - 4) / 8)
	pos, end := r.off, r.off+r.length
	for i := 0; i < n; {
		k := min(n-i, len(b)/8)
		if _, err := io.ReadFull(c.br, b[:8*k]); err != nil {
			return c.readErr(err, "a block status chunk")
		}
		for j := range k {
			l, flags := int64(be32(b[8*j:])), be32(b[8*j+4:])
			if l == 0 {
				return r.protoErr("block status descriptor %d has length 0", i+j)
			}
			if l > end-pos {
				// Some servers stretch the final extent past the
				// request; clip it. Anything else past the end is
				// a broken reply.
				if i+j != n-1 || pos >= end {
					return r.protoErr("block status descriptors run past the request end (descriptor %d at offset %d, length %d)", i+j, pos, l)
				}
				l = end - pos
			}
			if keep {
				r.extents = appendExtent(r.extents, Extent{Offset: pos, Length: l, Flags: flags})
			}
			pos += l
		}
		i += k
	}
	return nil
}

// wait waits for a request to finish.
func (c *Client) wait(ctx context.Context, r *request) error {
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		// Block status replies land in the request, not in caller
		// memory: leave the reader to finish it.
		return ctx.Err()
	}
}

// ReadAt reads len(p) bytes at off, splitting the read into pipelined
// requests of at most the server's maximum size and aligning them to its
// minimum block size. Like any io.ReaderAt it returns io.EOF when the read
// reaches past the end of the export. It is safe for concurrent use.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("nbd: read at negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= c.info.Size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > c.info.Size-off {
		p = p[:c.info.Size-off]
		eof = io.EOF
	}
	if err := c.read(p, off); err != nil {
		return 0, withRequest(err, off, int64(len(p)), "read of %d bytes at offset %d", len(p), off)
	}
	return len(p), eof
}

// piece is one read request of a ReadAt.
type piece struct {
	off    int64
	buf    []byte // where the server's bytes go
	dst    []byte // for a bounced piece: where buf[skip:] is copied
	skip   int64
	bounce bool
}

// read reads p at off, inside the export.
func (c *Client) read(p []byte, off int64) error {
	var pieces []piece
	end := off + int64(len(p))
	m := c.minBlock
	// An unaligned head or tail goes through a buffer of one block; the
	// export's last block may be short.
	bounce := func(blk int64) piece {
		n := min(m, c.info.Size-blk)
		pc := piece{off: blk, buf: make([]byte, n), bounce: true}
		lo, hi := max(off, blk), min(end, blk+n)
		pc.skip = lo - blk
		pc.dst = p[lo-off : hi-off]
		return pc
	}
	pos := off
	if pos%m != 0 {
		pc := bounce(pos - pos%m)
		pieces = append(pieces, pc)
		pos = pc.off + int64(len(pc.buf))
	}
	midEnd := end - end%m
	if end == c.info.Size {
		midEnd = end
	}
	for pos < midEnd {
		n := min(c.maxRead, midEnd-pos)
		pieces = append(pieces, piece{off: pos, buf: p[pos-off : pos-off+n]})
		pos += n
	}
	if pos < end {
		pieces = append(pieces, bounce(pos))
	}

	reqs := make([]*request, 0, len(pieces))
	var firstErr error
	for _, pc := range pieces {
		r := &request{cmd: wire.CmdRead, off: pc.off, length: int64(len(pc.buf)), buf: pc.buf}
		if err := c.start(context.Background(), r, 0); err != nil {
			firstErr = err
			break
		}
		reqs = append(reqs, r)
	}
	// Wait for every request sent, even after an error, so that no reply
	// writes into p once ReadAt has returned.
	for _, r := range reqs {
		<-r.done
		if r.err != nil && firstErr == nil {
			firstErr = r.err
		}
	}
	if firstErr != nil {
		return firstErr
	}
	for _, pc := range pieces {
		if pc.bounce {
			copy(pc.dst, pc.buf[pc.skip:])
		}
	}
	return nil
}

// Close ends the session with NBD_CMD_DISC and closes the connection.
// Requests still in flight are answered by the server first where it
// manages within a short grace; after that they fail with ErrClosed.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		grace := 2 * time.Second
		if c.timeout > 0 && c.timeout < grace {
			grace = c.timeout
		}
		// A writer stuck on a server that does not read holds wmu:
		// drop the connection to free it.
		locked := make(chan struct{})
		go func() { c.wmu.Lock(); close(locked) }()
		t := time.NewTimer(grace)
		select {
		case <-locked:
		case <-t.C:
			c.fail(ErrClosed)
			<-locked
		}
		t.Stop()
		c.mu.Lock()
		c.closing = true
		alive := c.err == nil
		c.mu.Unlock()
		if alive {
			var hdr [28]byte
			binary.BigEndian.PutUint32(hdr[0:], wire.RequestMagic)
			binary.BigEndian.PutUint16(hdr[6:], wire.CmdDisc)
			if err := c.write(hdr[:]); err != nil {
				c.closeErr = &ConnError{Msg: "sending disconnect", Err: err}
			} else if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
		c.wmu.Unlock()
		if alive {
			// The server answers what is in flight, then hangs up.
			t := time.NewTimer(grace)
			select {
			case <-c.readerDone:
			case <-t.C:
			}
			t.Stop()
		}
		c.fail(ErrClosed)
		<-c.readerDone
	})
	return c.closeErr
}
