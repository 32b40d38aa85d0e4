package server

import (
	"net/http"

	"lifeboat/server/console"
)

// consoleHandler is the web console at /, a client of api (the server's
// own API handler); notFound answers unknown /api/ paths as before.
func (s *Server) consoleHandler(api http.Handler, notFound http.HandlerFunc) http.Handler {
	c, err := console.New(console.Options{API: api, CheckToken: s.checkAdmin, NotFound: notFound,
		Version: s.cfg.Version, Log: s.log})
	if err != nil {
		// The templates are embedded: this is a build defect, not an
		// operator's problem; the API still serves.
		s.log.Error("web console unavailable", "err", err)
		return notFound
	}
	return c
}
