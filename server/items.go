package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"

	"lifeboat/api"
	"lifeboat/itemlevel"
	"lifeboat/repo"
	"lifeboat/repo/storage"
)

// Item-level recovery through the API: the server reads the point's disks
// from its own repository, on demand through the index, so browsing and
// downloading need no agent and no hypervisor. Every path is resolved
// inside the point's filesystem by package itemlevel, which refuses ".."
// and never follows links out of the volume: a download cannot leave the
// point.

// itemsTarget is what one items request opened: the point, the disk's
// image and, unless only volumes were asked for, the filesystem.
type itemsTarget struct {
	point *repo.Point
	disk  string
	img   *repo.FileImage
	vols  []itemlevel.Volume
	fsys  itemlevel.FS
	vol   itemlevel.Volume
}

func (t *itemsTarget) Close() {
	if t.fsys != nil {
		t.fsys.Close()
	}
	if t.img != nil {
		t.img.Close()
	}
}

// openItems resolves ?disk=&volume= of a point. With needFS false and
// neither given, it opens nothing (the caller lists every disk's
// volumes). On failure it has answered.
func (s *Server) openItems(w http.ResponseWriter, r *http.Request, needFS bool) (*itemsTarget, bool) {
	id := r.PathValue("id")
	if !repo.ValidPointID(id) {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%q is not a point ID", id))
		return nil, false
	}
	q := r.URL.Query()
	volume := -1
	if v := q.Get("volume"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1<<16 {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("volume %q is not a volume index", v))
			return nil, false
		}
		volume = n
	}
	p, err := s.repo.LoadPoint(r.Context(), id)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("no point %s", id))
		} else {
			s.internal(w, r, err)
		}
		return nil, false
	}
	t := &itemsTarget{point: p, disk: q.Get("disk")}
	if t.disk == "" {
		tops := p.TopDisks()
		if !needFS && volume < 0 && q.Get("path") == "" {
			return t, true
		}
		if len(tops) != 1 {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("point %s has %d disks %v: choose one with disk=", id, len(tops), tops))
			return nil, false
		}
		t.disk = tops[0]
	}
	if !isDisk(p, t.disk) {
		fail(w, http.StatusNotFound, "not_found", fmt.Sprintf("point %s has no disk %q", id, t.disk))
		return nil, false
	}
	if t.img, err = s.repo.OpenFile(r.Context(), p, t.disk); err != nil {
		s.internal(w, r, fmt.Errorf("open point %s disk %s: %w", id, t.disk, err))
		return nil, false
	}
	if t.vols, err = itemlevel.OpenVolumes(r.Context(), t.img, t.img.Size()); err != nil {
		t.Close()
		fail(w, http.StatusUnprocessableEntity, "unreadable", fmt.Sprintf("point %s disk %s: %v", id, t.disk, err))
		return nil, false
	}
	if !needFS && volume < 0 && q.Get("path") == "" {
		return t, true
	}
	if t.vol, err = itemlevel.PickVolume(t.vols, volume); err != nil {
		t.Close()
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("point %s disk %s: %v", id, t.disk, err))
		return nil, false
	}
	if t.fsys, err = itemlevel.OpenFS(r.Context(), t.img, t.vol); err != nil {
		t.Close()
		fail(w, http.StatusUnprocessableEntity, "unreadable", fmt.Sprintf("point %s disk %s %s: %v", id, t.disk, t.vol, err))
		return nil, false
	}
	return t, true
}

func isDisk(p *repo.Point, name string) bool {
	for _, f := range p.Files {
		if f.Path == name && f.Disk != nil {
			return true
		}
	}
	return false
}

// itemPath checks a path inside a guest filesystem; "" and "/" are the
// root.
func itemPath(w http.ResponseWriter, p string) (string, bool) {
	clean := strings.Trim(p, "/")
	for _, c := range strings.Split(clean, "/") {
		if c == ".." || c == "." || strings.IndexByte(c, 0) >= 0 {
			fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("path %q: \".\" and \"..\" are not allowed", p))
			return "", false
		}
	}
	if strings.Contains(clean, "//") || len(clean) > 4096 {
		fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("path %q is not a clean path", p))
		return "", false
	}
	return clean, true
}

// handleItems is GET /points/{id}/items: the volumes of the point's disks,
// or the entries of one folder.
func (s *Server) handleItems(w http.ResponseWriter, r *http.Request) {
	p, ok := itemPath(w, r.URL.Query().Get("path"))
	if !ok {
		return
	}
	listing := r.URL.Query().Get("volume") != "" || r.URL.Query().Get("path") != ""
	t, ok := s.openItems(w, r, listing)
	if !ok {
		return
	}
	defer t.Close()
	out := api.ItemList{Point: t.point.ID, Disk: t.disk, Volume: -1, Path: "/" + p}
	if !listing {
		disks := []string{t.disk}
		if t.img == nil {
			disks = t.point.TopDisks()
		}
		for _, d := range disks {
			vols := t.vols
			if t.img == nil {
				var err error
				if vols, err = s.diskVolumes(r.Context(), t.point, d); err != nil {
					out.Volumes = append(out.Volumes, api.ItemVolume{Disk: d, Index: -1, FS: "unreadable: " + err.Error()})
					continue
				}
			}
			for _, v := range vols {
				out.Volumes = append(out.Volumes, api.ItemVolume{Disk: d, Index: v.Index, FS: v.FS, Label: v.Label, Offset: v.Start, Size: v.Length})
			}
		}
		if out.Volumes == nil {
			out.Volumes = []api.ItemVolume{}
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	out.Volume = t.vol.Index
	ents, err := t.fsys.ReadDir(p)
	if err != nil {
		s.itemError(w, r, err)
		return
	}
	out.Entries = make([]api.ItemEntry, 0, len(ents))
	for _, e := range ents {
		out.Entries = append(out.Entries, api.ItemEntry{Name: e.Name, Path: "/" + e.Path, IsDir: e.IsDir, Size: e.Size,
			ModTime: e.ModTime, Link: e.LinkTarget, Invalid: e.Invalid})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) diskVolumes(ctx context.Context, p *repo.Point, d string) ([]itemlevel.Volume, error) {
	img, err := s.repo.OpenFile(ctx, p, d)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return itemlevel.OpenVolumes(ctx, img, img.Size())
}

// handleItemsDownload is GET /points/{id}/items/download: a file or folder
// of the point's filesystem as a tar stream.
func (s *Server) handleItemsDownload(w http.ResponseWriter, r *http.Request) {
	p, ok := itemPath(w, r.URL.Query().Get("path"))
	if !ok {
		return
	}
	t, ok := s.openItems(w, r, true)
	if !ok {
		return
	}
	defer t.Close()
	// Stat first, so that a missing path is a 404 and not a broken
	// stream after a 200.
	st, err := t.fsys.Stat(p)
	if err != nil {
		s.itemError(w, r, err)
		return
	}
	name := st.Name
	if p == "" || name == "" {
		name = "volume-" + strconv.Itoa(t.vol.Index)
	}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", fmt.Sprintf("attachment; filename=%q", safeFileName(name)+".tar"))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-store")
	res, err := itemlevel.WriteTar(r.Context(), t.fsys, []string{p}, w)
	if err != nil {
		// The status is sent: abort the stream so the client sees a
		// broken transfer, not a short archive that looks whole.
		s.log.Error("item download", "point", t.point.ID, "path", p, "err", err)
		panic(http.ErrAbortHandler)
	}
	s.log.Info("item download", "point", t.point.ID, "disk", t.disk, "path", p, "files", res.Files, "bytes", res.Bytes, "skipped", len(res.Skipped))
}

func safeFileName(s string) string {
	s = path.Base(s)
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == '"' || r == '\\' || r == '/' || r == 0x7f {
			return '_'
		}
		return r
	}, s)
}

func (s *Server) itemError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, itemlevel.ErrInvalidPath):
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
	case errors.Is(err, itemlevel.ErrNotExist):
		fail(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, itemlevel.ErrNotDir), errors.Is(err, itemlevel.ErrIsDir):
		fail(w, http.StatusBadRequest, "bad_request", err.Error())
	default:
		fail(w, http.StatusUnprocessableEntity, "unreadable", err.Error())
	}
}

// handlePointNames is GET /point-names: every VM name that has points,
// with their count and the newest's time (recovery pickers, also of VMs
// no host reports any more), counted by the catalog.
func (s *Server) handlePointNames(w http.ResponseWriter, r *http.Request) {
	ns, err := s.cat.PointNames(r.Context())
	if err != nil {
		s.catalogError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ns))
}
