package server

import (
	"context"
	"errors"
	"fmt"

	"lifeboat/api"
	"lifeboat/catalog"
	"lifeboat/disk"
	"lifeboat/recovery"
	"lifeboat/repo"
	"lifeboat/tape"
	"lifeboat/tape/vtl"
)

// Copy to tape (recovery method 4) as a server job: the server holds the
// repository, so it writes the point to a library it reaches and records
// in the tape catalog which cartridges hold which part of which point.
// The tape stays readable without that catalog (`lifeboat tape scan`);
// the catalog is what lets the console answer "where is this point on
// tape" without loading a cartridge.

// checkTapeParams validates a tape job's params before it is queued.
func checkTapeParams(p api.TapeWriteParams) error {
	if !repo.ValidPointID(p.Point) {
		return fmt.Errorf("point %q is not a point ID", p.Point)
	}
	if err := api.CheckAbsPath("library", p.Library); err != nil {
		return err
	}
	return nil
}

// writeTape runs a tape job.
func (s *Server) writeTape(ctx context.Context, p api.TapeWriteParams) (*tape.Result, error) {
	if err := checkTapeParams(p); err != nil {
		return nil, err
	}
	lib, err := vtl.Open(p.Library)
	if err != nil {
		return nil, fmt.Errorf("tape library %s: %w", p.Library, err)
	}
	pt, err := s.repo.LoadPoint(ctx, p.Point)
	if err != nil {
		return nil, err
	}
	res, err := tape.WritePoints(ctx, s.repo, []*repo.Point{pt}, lib, tape.WriteOptions{Overwrite: p.Overwrite, Plaintext: p.Plaintext})
	if err != nil {
		return nil, err
	}
	if err := s.recordTapeCopy(ctx, p.Library, lib, res); err != nil {
		// The tape is written and self-describing; only the server's
		// index of it is behind, which a scan can rebuild.
		return res, fmt.Errorf("point %s is on tape set %s, but the tape catalog was not updated: %w", p.Point, res.Set, err)
	}
	return res, nil
}

// recordTapeCopy saves the written cartridges and the copies' segments.
func (s *Server) recordTapeCopy(ctx context.Context, library string, lib *vtl.Library, res *tape.Result) error {
	inv, err := lib.Inventory(ctx)
	if err != nil {
		return err
	}
	slots := map[string]tape.Cartridge{}
	for _, c := range inv {
		slots[c.Barcode] = c
	}
	ids := map[string]int64{}
	for _, ci := range res.Cartridges {
		if ci.Label == nil {
			continue
		}
		// A cartridge written again gets a new label ID: what the
		// catalog said it held is gone.
		if old, err := s.cat.CartridgeByBarcode(ctx, library, ci.Barcode); err == nil && old.LabelID != ci.Label.ID {
			if _, err := s.cat.ForgetCartridgeContents(ctx, old.ID); err != nil {
				return err
			}
			if err := s.cat.DeleteCartridge(ctx, old.ID); err != nil {
				return err
			}
		} else if err != nil && !errors.Is(err, catalog.ErrNotFound) {
			return err
		}
		inv := slots[ci.Barcode]
		c, err := s.cat.SaveCartridge(ctx, catalog.Cartridge{Library: library, Barcode: ci.Barcode, Slot: inv.Slot,
			LabelID: ci.Label.ID, State: "written", Capacity: inv.Capacity, Used: inv.Used, Written: ci.Label.Time})
		if err != nil {
			return err
		}
		ids[ci.Barcode] = c.ID
	}
	var segs []catalog.TapeSegment
	for _, cp := range res.Copies {
		for _, part := range cp.Parts {
			id, ok := ids[part.Barcode]
			if !ok {
				return fmt.Errorf("copy of %s: cartridge %s was not reported written", cp.Point, part.Barcode)
			}
			segs = append(segs, catalog.TapeSegment{CopyID: cp.Set + "/" + cp.Point, Seq: part.Seq, PointID: cp.Point, CartridgeID: id,
				FileNumber: int64(part.File), Offset: part.FirstBlock * int64(part.BlockSize),
				Length: (part.LastBlock - part.FirstBlock + 1) * int64(part.BlockSize), Final: !part.Continues, Written: cp.Written})
		}
	}
	return s.cat.RecordTapeSegments(ctx, segs)
}

// tapePreflight checks a copy to tape without writing: the library opens,
// the point's data fits on the blank cartridges, and an encrypted
// repository is not copied to plaintext tape unasked.
func (s *Server) tapePreflight(ctx context.Context, req api.RecoveryRequest, pt catalog.Point) *api.RecoveryPlan {
	plan := &api.RecoveryPlan{OK: true, Method: "tape", Point: req.Point, Node: "server", VM: pt.Name, Dir: req.Library, Checks: []api.RecoveryCheck{}}
	lib, err := vtl.Open(req.Library)
	if err != nil {
		plan.Check("tape library", false, err.Error())
		plan.Refuse(recovery.CodeTargetPath, fmt.Sprintf("%s is not a tape library the server can open: %v", req.Library, err),
			"create one with `lifeboat tape library-create --library DIR` and add cartridges with `lifeboat tape add`, on the server's host")
		return plan
	}
	inv, err := lib.Inventory(ctx)
	if err != nil {
		plan.Check("tape library", false, err.Error())
		plan.Refuse(recovery.CodeTargetPath, fmt.Sprintf("tape library %s: %v", req.Library, err), "check the library's folder")
		return plan
	}
	var free int64
	blank := 0
	for _, c := range inv {
		if c.Blank {
			blank++
			free += c.Capacity
		}
	}
	plan.Check("tape library", true, fmt.Sprintf("%d cartridges, %d blank (%d bytes)", len(inv), blank, free))
	rp, err := s.repo.LoadPoint(ctx, req.Point)
	if err != nil {
		plan.Check("point", false, err.Error())
		plan.Refuse(codePointUnusable, fmt.Sprintf("point %s cannot be read from the repository: %v", req.Point, err), "run `lifeboat verify`; choose another point")
		return plan
	}
	var need int64
	for _, f := range rp.Files {
		img, err := s.repo.OpenFile(ctx, rp, f.Path)
		if err != nil {
			plan.Check("point", false, err.Error())
			plan.Refuse(codePointUnusable, fmt.Sprintf("point %s: %s: %v", req.Point, f.Path, err), "run `lifeboat verify`; choose another point")
			return plan
		}
		ext, _ := img.Extents(ctx, 0, img.Size())
		for _, e := range ext {
			if e.Kind == disk.Data {
				need += e.Length
			}
		}
		img.Close()
	}
	plan.Check("point", true, fmt.Sprintf("%d files, %d bytes of data to copy (holes are left out)", len(rp.Files), need))
	if s.repo.Config().Encryption != nil {
		plan.Check("encryption", false, "the repository is encrypted; tapes hold chunks in plaintext")
		plan.Refuse(recovery.CodeTapePlaintext, "the repository is encrypted and a tape copy holds the data in plaintext",
			"copy it with `lifeboat point tape ID --library DIR --plaintext` if plaintext tapes are acceptable here")
		return plan
	}
	// Data plus its labels, indexes and catalogs: a margin of 1/16.
	if want := need + need/16 + 1<<20; free < want {
		plan.Check("space", false, fmt.Sprintf("%d bytes blank, about %d needed", free, want))
		plan.Refuse(recovery.CodeNoSpace, fmt.Sprintf("the blank cartridges of %s hold %d bytes; the point needs about %d", req.Library, free, want),
			"add blank cartridges (`lifeboat tape add`), or overwrite old ones with `lifeboat point tape --overwrite`")
		return plan
	}
	plan.Check("space", true, fmt.Sprintf("%d bytes blank, about %d needed", free, need+need/16+1<<20))
	plan.Disks = append(plan.Disks, api.RecoveryDisk{File: rp.Name, Path: req.Library, Format: "tape", Bytes: need})
	plan.Notes = append(plan.Notes, "the copy runs on the server; the cartridges are self-describing (`lifeboat tape scan` reads them without the catalog)")
	return plan
}
