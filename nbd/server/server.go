package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"lifeboat/disk"
)

// Export is one disk the server offers.
type Export struct {
	// Name is the export name clients ask for. A client asking for ""
	// gets the export named "", or the only export when there is one.
	Name        string
	Description string
	// Overlay serves a writable disk (writable unless ReadOnly).
	Overlay *Overlay
	// Image serves a disk image (its whole chain) read-only, when
	// Overlay is nil.
	Image disk.Image
	// ReadOnly refuses writes (EPERM) and announces NBD_FLAG_READ_ONLY.
	ReadOnly bool
	// MinBlockSize is the minimum block size announced: 1 (the default)
	// or 512. Requests of any alignment are served either way.
	MinBlockSize uint32
}

// backend is what an export reads from and writes to.
type backend interface {
	Size() int64
	ReadAt(p []byte, off int64) (int, error)
	Extents(ctx context.Context, off, length int64) ([]disk.Extent, error)
	WriteAt(p []byte, off int64) (int, error)
	WriteZeroes(off, n int64) error
	Trim(off, n int64) error
	Flush() error
}

type export struct {
	Export
	b        backend
	readOnly bool
}

// imageBackend serves a disk.Image read-only.
type imageBackend struct{ disk.Image }

func (b imageBackend) Extents(ctx context.Context, off, length int64) ([]disk.Extent, error) {
	return disk.ResolvedExtents(ctx, b.Image, off, length)
}

var errReadOnly = errors.New("read-only export")

func (imageBackend) WriteAt([]byte, int64) (int, error) { return 0, errReadOnly }
func (imageBackend) WriteZeroes(int64, int64) error     { return errReadOnly }
func (imageBackend) Trim(int64, int64) error            { return errReadOnly }
func (imageBackend) Flush() error                       { return nil }

// Server is an NBD server (fixed newstyle negotiation, structured replies,
// base:allocation, no TLS) for a set of exports. Set its fields before
// serving.
type Server struct {
	// Logf, when set, receives one line per connection problem.
	Logf func(format string, args ...any)
	// HandshakeTimeout bounds the negotiation phase; 0 means a minute.
	HandshakeTimeout time.Duration
	// Workers is how many requests of one connection run at once; 0
	// means 4.
	Workers int

	exports []*export
}

// New makes a server for the exports; names must be unique.
func New(exports ...Export) (*Server, error) {
	s := &Server{}
	seen := map[string]bool{}
	for _, e := range exports {
		if seen[e.Name] {
			return nil, fmt.Errorf("nbd server: export %q given twice", e.Name)
		}
		seen[e.Name] = true
		if len(e.Name) > maxStringLen || len(e.Description) > maxStringLen {
			return nil, fmt.Errorf("nbd server: export %q: name or description longer than %d bytes", e.Name, maxStringLen)
		}
		switch e.MinBlockSize {
		case 0:
			e.MinBlockSize = 1
		case 1, 512:
		default:
			return nil, fmt.Errorf("nbd server: export %q: minimum block size %d is not 1 or 512", e.Name, e.MinBlockSize)
		}
		x := &export{Export: e, readOnly: e.ReadOnly}
		switch {
		case e.Overlay != nil:
			x.b = e.Overlay
		case e.Image != nil:
			x.b = imageBackend{e.Image}
			x.readOnly = true
		default:
			return nil, fmt.Errorf("nbd server: export %q has neither an overlay nor an image", e.Name)
		}
		if size := x.b.Size(); size%int64(e.MinBlockSize) != 0 {
			return nil, fmt.Errorf("nbd server: export %q: size %d is not a multiple of the minimum block size %d", e.Name, size, e.MinBlockSize)
		}
		s.exports = append(s.exports, x)
	}
	return s, nil
}

func (s *Server) lookup(name string) *export {
	for _, e := range s.exports {
		if e.Name == name {
			return e
		}
	}
	if name == "" && len(s.exports) == 1 {
		return s.exports[0]
	}
	return nil
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// ListenUnix listens on a unix socket at path, replacing a stale socket
// file left by an earlier server, and makes it accessible to its owner
// only.
func ListenUnix(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("nbd server: %s: %w", path, syscall.EADDRINUSE)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("nbd server: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("nbd server: %w", err)
	}
	return l, nil
}

// Serve accepts connections on l (unix socket or TCP) and serves each
// until ctx is cancelled; then it closes l and every connection, waits for
// their goroutines, and returns nil. Other accept errors end Serve the
// same way and are returned.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			l.Close()
			return fmt.Errorf("nbd server: accept: %w", err)
		}
		delay = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.ServeConn(ctx, c); err != nil && ctx.Err() == nil {
				s.logf("nbd server: %s: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

// ServeConn runs one session on conn and closes it: negotiation, then
// requests until the client disconnects, the connection fails or ctx is
// cancelled. Requests in flight finish before it returns.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	hsTimeout := s.HandshakeTimeout
	if hsTimeout <= 0 {
		hsTimeout = handshakeLength * time.Second
	}
	conn.SetDeadline(time.Now().Add(hsTimeout))
	sess, err := s.negotiate(conn)
	if err != nil || sess == nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	conn.SetDeadline(time.Time{})
	err = s.transmit(ctx, conn, sess)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
