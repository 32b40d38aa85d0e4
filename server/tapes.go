package server

import (
	"net/http"

	"lifeboat/catalog"
)

// tapeCartridge is one entry of GET /api/v1/tapes: a cartridge and the
// pieces of points' tape copies it holds, by copy and order.
type tapeCartridge struct {
	catalog.Cartridge
	Segments []catalog.TapeSegment `json:"segments"`
}

// handleListTapes is GET /api/v1/tapes[?library=L]: every cartridge the
// catalog knows (read-only; tape writes and reads run in `lifeboat tape`).
func (s *Server) handleListTapes(w http.ResponseWriter, r *http.Request) {
	carts, err := s.cat.ListCartridges(r.Context(), r.URL.Query().Get("library"))
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	out := make([]tapeCartridge, 0, len(carts))
	for _, c := range carts {
		segs, err := s.cat.CartridgeSegments(r.Context(), c.ID)
		if err != nil {
			s.catalogError(w, r, err)
			return
		}
		out = append(out, tapeCartridge{Cartridge: c, Segments: nonNil(segs)})
	}
	writeJSON(w, http.StatusOK, out)
}
