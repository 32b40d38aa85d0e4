package repo

import (
	"testing"
	"time"

	"lifeboat/disk"
)

func FuzzUnmarshalIndex(f *testing.F) {
	x := &Index{Size: 2*mib + 512, ChunkSize: mib,
		Extents: []disk.Extent{{Offset: 0, Length: mib, Kind: disk.Data}, {Offset: mib, Length: mib + 512, Kind: disk.Unallocated}},
		Slots:   []Slot{{ID: ID{1}}, {Hole: true}, {Hole: true}}}
	b, _ := x.MarshalBinary()
	f.Add(b)
	f.Add([]byte("LBIX"))
	f.Fuzz(func(t *testing.T, data []byte) {
		x, err := UnmarshalIndex(data)
		if err != nil {
			return
		}
		if err := disk.CheckExtents(x.Extents, 0, x.Size); len(x.Extents) > 0 && err != nil {
			t.Fatalf("accepted bad extents: %v", err)
		}
		if int64(len(x.Slots)) != SlotCount(x.Size, x.ChunkSize) {
			t.Fatal("slot count mismatch accepted")
		}
	})
}

func FuzzDecodePoint(f *testing.F) {
	id := NewPointID(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	f.Add(id, []byte(`{"version":1,"id":"`+id+`","name":"vm","files":[{"path":"a/b.vhdx","role":"disk","index":"`+ID{1}.String()+`"}]}`))
	f.Add(id, []byte(`{"version":1,"id":"`+id+`","files":[{"path":"../x","index":"00"}]}`))
	f.Fuzz(func(t *testing.T, id string, data []byte) {
		p, err := DecodePoint(id, data)
		if err != nil {
			return
		}
		for _, fl := range p.Files {
			if _, err := CleanPath(fl.Path); err != nil {
				t.Fatalf("accepted unsafe path %q", fl.Path)
			}
		}
	})
}

// FuzzEnvelope feeds arbitrary objects to the decoder of every object type,
// plain and encrypted.
func FuzzEnvelope(f *testing.F) {
	plain, _ := newCodec(nil, HashBLAKE3)
	enc, _ := newCodec(&keys{data: make([]byte, 32), id: make([]byte, 32)}, HashSHA256)
	for _, c := range []*codec{plain, enc} {
		for _, typ := range []byte{typeChunk, typeIndex, typeManifest} {
			obj, _ := c.seal(typ, "k", []byte("hello hello hello hello"), true)
			f.Add(typ, obj)
		}
	}
	f.Fuzz(func(t *testing.T, typ byte, obj []byte) {
		for _, c := range []*codec{plain, enc} {
			c.open(typ, "k", obj)
		}
	})
}
