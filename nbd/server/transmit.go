package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sync/semaphore"

	"lifeboat/disk"
	"lifeboat/nbd/internal/wire"
)

// request is one command in flight.
type request struct {
	flags  uint16
	cmd    uint16
	cookie uint64
	off    uint64
	length uint32
	buf    []byte // NBD_CMD_WRITE payload
	budget int64
}

// conn is the transmission phase of one connection. The reader goroutine
// parses requests (and reads write payloads) and hands them to a pool of
// workers; replies are written whole under wmu.
type conn struct {
	ctx    context.Context
	s      *Server
	nc     net.Conn
	sess   *session
	r      *bufio.Reader
	b      backend
	budget *semaphore.Weighted // bytes of request buffers in flight
	work   chan *request

	wmu  sync.Mutex
	w    *bufio.Writer
	werr error
}

func (s *Server) transmit(ctx context.Context, nc net.Conn, sess *session) error {
	workers := s.Workers
	if workers <= 0 {
		workers = defaultWorkers
	}
	c := &conn{
		ctx:    ctx,
		s:      s,
		nc:     nc,
		sess:   sess,
		r:      sess.r,
		w:      sess.w,
		b:      sess.exp.b,
		budget: semaphore.NewWeighted(connBudget),
		work:   make(chan *request, workers),
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range c.work {
				c.handle(r)
			}
		}()
	}
	err := c.readLoop()
	close(c.work)
	wg.Wait()
	c.wmu.Lock()
	if c.werr == nil {
		c.werr = c.w.Flush()
	}
	werr := c.werr
	c.wmu.Unlock()
	if err == nil && werr != nil {
		err = fmt.Errorf("sending replies: %w", werr)
	}
	return err
}

// readLoop reads requests until NBD_CMD_DISC, the client's end of the
// connection, or a protocol violation.
func (c *conn) readLoop() error {
	var h [28]byte
	for {
		if _, err := io.ReadFull(c.r, h[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // hung up between requests
			}
			return c.readErr(err)
		}
		if m := be.Uint32(h[:]); m != wire.RequestMagic {
			return protoErr("request magic %#x", m)
		}
		r := &request{
			flags:  be.Uint16(h[4:]),
			cmd:    be.Uint16(h[6:]),
			cookie: be.Uint64(h[8:]),
			off:    be.Uint64(h[16:]),
			length: be.Uint32(h[24:]),
		}
		if r.cmd == wire.CmdDisc {
			return nil
		}
		errno, msg := c.check(r)
		if r.cmd == wire.CmdWrite {
			if errno != 0 || r.length == 0 {
				// The payload must be consumed whatever happens to it.
				if _, err := io.CopyN(io.Discard, c.r, int64(r.length)); err != nil {
					return c.readErr(err)
				}
			} else {
				if err := c.acquire(r, int64(r.length)); err != nil {
					return err
				}
				r.buf = getBuf(int(r.length))
				if _, err := io.ReadFull(c.r, r.buf); err != nil {
					c.release(r)
					return c.readErr(err)
				}
			}
		}
		if errno != 0 {
			c.replyErr(r, errno, msg)
			continue
		}
		if r.cmd == wire.CmdRead {
			if err := c.acquire(r, int64(r.length)); err != nil {
				return err
			}
		}
		select {
		case c.work <- r:
		case <-c.ctx.Done():
			c.release(r)
			return c.ctx.Err()
		}
	}
}

func (c *conn) readErr(err error) error {
	c.wmu.Lock()
	werr := c.werr
	c.wmu.Unlock()
	if werr != nil {
		return fmt.Errorf("sending replies: %w", werr)
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading request: %w", err)
}

func (c *conn) acquire(r *request, n int64) error {
	if err := c.budget.Acquire(c.ctx, n); err != nil {
		return err
	}
	r.budget = n
	return nil
}

func (c *conn) release(r *request) {
	if r.buf != nil {
		putBuf(r.buf)
		r.buf = nil
	}
	if r.budget > 0 {
		c.budget.Release(r.budget)
		r.budget = 0
	}
}

// check validates a request before anything is done for it.
func (c *conn) check(r *request) (uint32, string) {
	size := uint64(c.b.Size())
	inRange := r.off <= size && uint64(r.length) <= size-r.off
	ro := c.sess.exp.readOnly
	flags := func(allowed uint16) bool { return r.flags&^(allowed|wire.CmdFlagFUA) == 0 }
	switch r.cmd {
	case wire.CmdRead:
		switch {
		case !flags(wire.CmdFlagDF), r.flags&wire.CmdFlagDF != 0 && !c.sess.structured:
			return wire.ErrInval, "unsupported flags"
		case r.length > MaxBlockSize:
			return wire.ErrOverflow, fmt.Sprintf("read of %d bytes is larger than %d", r.length, MaxBlockSize)
		case !inRange:
			return wire.ErrInval, "read past the end of the export"
		}
	case wire.CmdWrite, wire.CmdWriteZeroes, wire.CmdTrim:
		allowed := uint16(0)
		if r.cmd == wire.CmdWriteZeroes {
			allowed = wire.CmdFlagNoHole | wire.CmdFlagFastZero
		}
		switch {
		case !flags(allowed):
			return wire.ErrInval, "unsupported flags"
		case ro:
			return wire.ErrPerm, "read-only export"
		case r.cmd == wire.CmdWrite && r.length > MaxBlockSize:
			return wire.ErrOverflow, fmt.Sprintf("write of %d bytes is larger than %d", r.length, MaxBlockSize)
		case !inRange && r.cmd == wire.CmdTrim:
			return wire.ErrInval, "trim past the end of the export"
		case !inRange:
			return wire.ErrNoSpc, "write past the end of the export"
		}
	case wire.CmdFlush:
		if !flags(0) {
			return wire.ErrInval, "unsupported flags"
		}
	case wire.CmdBlockStatus:
		switch {
		case !flags(wire.CmdFlagReqOne):
			return wire.ErrInval, "unsupported flags"
		case !c.sess.metaAlloc:
			return wire.ErrInval, "no metadata context negotiated"
		case r.length == 0, !inRange:
			return wire.ErrInval, "block status range outside the export"
		}
	default:
		return wire.ErrInval, fmt.Sprintf("unknown command %d", r.cmd)
	}
	return 0, ""
}

// errno maps a backend error to an NBD error value.
func errno(err error) uint32 {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT), errors.Is(err, syscall.EFBIG):
		return wire.ErrNoSpc
	case errors.Is(err, ErrOutOfRange):
		return wire.ErrInval
	case errors.Is(err, errReadOnly):
		return wire.ErrPerm
	case errors.Is(err, ErrClosed):
		return wire.ErrShutdown
	}
	return wire.ErrIO
}

func (c *conn) handle(r *request) {
	defer c.release(r)
	off := int64(r.off)
	var err error
	switch r.cmd {
	case wire.CmdRead:
		c.read(r)
		return
	case wire.CmdBlockStatus:
		c.blockStatus(r)
		return
	case wire.CmdWrite:
		if r.length > 0 {
			_, err = c.b.WriteAt(r.buf, off)
		}
	case wire.CmdWriteZeroes:
		err = c.b.WriteZeroes(off, int64(r.length))
	case wire.CmdTrim:
		err = c.b.Trim(off, int64(r.length))
	case wire.CmdFlush:
		err = c.b.Flush()
	}
	if err == nil && r.flags&wire.CmdFlagFUA != 0 && r.cmd != wire.CmdFlush {
		err = c.b.Flush()
	}
	if err != nil {
		c.s.logf("nbd server: export %q: %s of %d bytes at %d: %v", c.sess.exp.Name, cmdName(r.cmd), r.length, r.off, err)
		c.replyErr(r, errno(err), err.Error())
		return
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.simpleHdr(r.cookie, 0)
	c.flushLocked()
}

func cmdName(cmd uint16) string {
	switch cmd {
	case wire.CmdRead:
		return "read"
	case wire.CmdWrite:
		return "write"
	case wire.CmdFlush:
		return "flush"
	case wire.CmdTrim:
		return "trim"
	case wire.CmdWriteZeroes:
		return "write zeroes"
	case wire.CmdBlockStatus:
		return "block status"
	case wire.CmdCache:
		return "cache"
	}
	return fmt.Sprintf("command %d", cmd)
}

// Reply writers; the caller holds wmu.

func (c *conn) simpleHdr(cookie uint64, errno uint32) {
	var h [16]byte
	be.PutUint32(h[0:], wire.SimpleReplyMagic)
	be.PutUint32(h[4:], errno)
	be.PutUint64(h[8:], cookie)
	c.write(h[:])
}

func (c *conn) chunkHdr(flags, typ uint16, cookie uint64, length uint32) {
	var h [20]byte
	be.PutUint32(h[0:], wire.StructuredReplyMagic)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], cookie)
	be.PutUint32(h[16:], length)
	c.write(h[:])
}

func (c *conn) write(b []byte) {
	if c.werr == nil {
		_, c.werr = c.w.Write(b)
		if c.werr != nil {
			c.nc.Close() // stops the reader
		}
	}
}

func (c *conn) flushLocked() {
	if c.werr == nil {
		if c.werr = c.w.Flush(); c.werr != nil {
			c.nc.Close()
		}
	}
}

// replyErr sends an error reply: an error chunk when structured replies
// are on (the message goes with it), else a simple reply.
func (c *conn) replyErr(r *request, errno uint32, msg string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.sess.structured {
		c.simpleHdr(r.cookie, errno)
		c.flushLocked()
		return
	}
	if len(msg) > maxStringLen {
		msg = msg[:maxStringLen]
	}
	c.chunkHdr(wire.ReplyFlagDone, wire.ReplyTypeError, r.cookie, uint32(6+len(msg)))
	var p [6]byte
	be.PutUint32(p[0:], errno)
	be.PutUint16(p[4:], uint16(len(msg)))
	c.write(p[:])
	c.write([]byte(msg))
	c.flushLocked()
}

// read answers NBD_CMD_READ. With structured replies, runs of zeros of a
// whole 4 KiB-aligned block or more go as hole chunks (unless the client
// asked for one chunk with NBD_CMD_FLAG_DF).
func (c *conn) read(r *request) {
	buf := getBuf(int(r.length))
	defer putBuf(buf)
	if r.length > 0 {
		n, err := c.b.ReadAt(buf, int64(r.off))
		if n == len(buf) {
			err = nil
		} else if err == nil || err == io.EOF {
			err = fmt.Errorf("short read: %d of %d bytes", n, len(buf))
		}
		if err != nil {
			c.s.logf("nbd server: export %q: read of %d bytes at %d: %v", c.sess.exp.Name, r.length, r.off, err)
			c.replyErr(r, errno(err), err.Error())
			return
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch {
	case !c.sess.structured:
		c.simpleHdr(r.cookie, 0)
		c.write(buf)
	case r.length == 0:
		c.chunkHdr(wire.ReplyFlagDone, wire.ReplyTypeNone, r.cookie, 0)
	case r.flags&wire.CmdFlagDF != 0:
		c.dataChunk(wire.ReplyFlagDone, r.cookie, r.off, buf)
	default:
		c.sparseChunks(r, buf)
	}
	c.flushLocked()
}

func (c *conn) dataChunk(flags uint16, cookie, off uint64, data []byte) {
	c.chunkHdr(flags, wire.ReplyTypeOffsetData, cookie, uint32(8+len(data)))
	var o [8]byte
	be.PutUint64(o[:], off)
	c.write(o[:])
	c.write(data)
}

func (c *conn) holeChunk(flags uint16, cookie, off uint64, n int) {
	c.chunkHdr(flags, wire.ReplyTypeOffsetHole, cookie, 12)
	var p [12]byte
	be.PutUint64(p[0:], off)
	be.PutUint32(p[8:], uint32(n))
	c.write(p[:])
}

// sparseChunks sends buf, read at r.off, as data and hole chunks.
func (c *conn) sparseChunks(r *request, buf []byte) {
	type seg struct {
		start, end int // in buf
		zero       bool
	}
	var cur seg
	emit := func(s seg, flags uint16) {
		if s.zero {
			c.holeChunk(flags, r.cookie, r.off+uint64(s.start), s.end-s.start)
		} else {
			c.dataChunk(flags, r.cookie, r.off+uint64(s.start), buf[s.start:s.end])
		}
	}
	pos := 0
	for pos < len(buf) {
		// Pieces end on absolute 4 KiB boundaries.
		e := min(len(buf), pos+BlockSize-int((r.off+uint64(pos))%BlockSize))
		z := e-pos == BlockSize && allZero(buf[pos:e])
		switch {
		case pos == 0:
			cur = seg{0, e, z}
		case z == cur.zero:
			cur.end = e
		default:
			emit(cur, 0)
			cur = seg{pos, e, z}
		}
		pos = e
	}
	emit(cur, wire.ReplyFlagDone)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// allocationFlags maps an extent kind to base:allocation flags.
func allocationFlags(k disk.ExtentKind) uint32 {
	switch k {
	case disk.Zero:
		return stateZero
	case disk.Unallocated:
		return stateHole | stateZero
	}
	return 0
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation, covering
// at most maxStatusLen bytes and maxDescriptors extents (clients ask
// again for the rest).
func (c *conn) blockStatus(r *request) {
	n := min(int64(r.length), maxStatusLen)
	ext, err := c.b.Extents(c.ctx, int64(r.off), n)
	if err != nil {
		c.s.logf("nbd server: export %q: block status of %d bytes at %d: %v", c.sess.exp.Name, r.length, r.off, err)
		c.replyErr(r, errno(err), err.Error())
		return
	}
	type desc struct{ length, flags uint32 }
	var ds []desc
	pos := int64(r.off)
	for _, e := range ext {
		// Trust nothing: stay inside [off, off+n) and contiguous.
		s, t := max(e.Offset, pos), min(e.End(), int64(r.off)+n)
		if s != pos || t <= s {
			break
		}
		f := allocationFlags(e.Kind)
		if k := len(ds); k > 0 && ds[k-1].flags == f {
			ds[k-1].length += uint32(t - s)
		} else {
			if len(ds) == maxDescriptors {
				break
			}
			ds = append(ds, desc{uint32(t - s), f})
		}
		pos = t
	}
	if len(ds) == 0 {
		ds = append(ds, desc{uint32(n), 0}) // "allocated", always safe
	}
	if r.flags&wire.CmdFlagReqOne != 0 {
		ds = ds[:1]
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.chunkHdr(wire.ReplyFlagDone, wire.ReplyTypeBlockStatus, r.cookie, uint32(4+8*len(ds)))
	p := be.AppendUint32(make([]byte, 0, 4+8*len(ds)), baseAllocationID)
	for _, d := range ds {
		p = be.AppendUint32(p, d.length)
		p = be.AppendUint32(p, d.flags)
	}
	c.write(p)
	c.flushLocked()
}

// Request buffers come from pools of power-of-two sizes from 4 KiB to
// MaxBlockSize.
var bufPools [14]sync.Pool // 4 KiB << 13 == MaxBlockSize

func bufClass(n int) int {
	if n <= BlockSize {
		return 0
	}
	return bits.Len(uint(n-1) / BlockSize)
}

func getBuf(n int) []byte {
	k := bufClass(n)
	if b, ok := bufPools[k].Get().(*[]byte); ok {
		return (*b)[:n]
	}
	return make([]byte, n, BlockSize<<k)
}

func putBuf(b []byte) {
	k := bufClass(cap(b))
	if cap(b) != BlockSize<<k {
		return
	}
	b = b[:cap(b)]
	bufPools[k].Put(&b)
}
