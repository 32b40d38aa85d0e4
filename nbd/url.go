package nbd

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// DefaultPort is the IANA port of NBD.
const DefaultPort = "10809"

// Address is where an export is: a network and address for net.Dial and
// the export name.
type Address struct {
	Network string // "unix" or "tcp"
	Addr    string // socket path, or host:port
	Export  string
}

// ParseURL reads an export address in one of these forms:
//
//	nbd://HOST[:PORT]/EXPORT          TCP (the NBD URI standard; port 10809)
//	nbd+unix:///EXPORT?socket=PATH    unix socket (the NBD URI standard)
//	unix:///PATH?export=EXPORT        unix socket
//	unix:PATH                         unix socket, default export
//
// The export name is the URI path without its leading slash, unescaped.
func ParseURL(s string) (Address, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Address{}, fmt.Errorf("nbd: bad URI: %w", err)
	}
	bad := func(format string, args ...any) (Address, error) {
		return Address{}, fmt.Errorf("nbd: bad URI %q: %s", s, fmt.Sprintf(format, args...))
	}
	q := u.Query()
	export := strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd", "nbd+tcp":
		if u.Host == "" {
			return bad("no host")
		}
		if q.Has("socket") {
			return bad("socket= belongs to nbd+unix://")
		}
		port := u.Port()
		if port == "" {
			port = DefaultPort
		}
		return Address{Network: "tcp", Addr: net.JoinHostPort(u.Hostname(), port), Export: export}, nil
	case "nbd+unix":
		if u.Host != "" {
			return bad("nbd+unix:// takes no host")
		}
		sock := q.Get("socket")
		if sock == "" {
			return bad("no socket= parameter")
		}
		return Address{Network: "unix", Addr: sock, Export: export}, nil
	case "unix":
		path := u.Path
		if u.Opaque != "" {
			path, err = url.PathUnescape(u.Opaque)
			if err != nil {
				return bad("%v", err)
			}
		}
		if u.Host != "" {
			return bad("unix:// takes no host (use unix:///abs/path)")
		}
		if path == "" {
			return bad("no socket path")
		}
		return Address{Network: "unix", Addr: path, Export: q.Get("export")}, nil
	}
	return bad("scheme must be nbd, nbd+unix or unix")
}
