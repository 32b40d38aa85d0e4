package itemlevel

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"strconv"
	"strings"
	"testing"
)

// memDisk is a disk image in memory.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(m).ReadAt(p, off)
}

func gptDiskBytes(size int64, parts []part) memDisk {
	d := make(memDisk, size)
	for _, b := range gptStructures(size, parts) {
		copy(d[b.off:], b.data)
	}
	return d
}

func volSummary(vs []Volume) string {
	var s []string
	for _, v := range vs {
		s = append(s, strings.Join([]string{v.Scheme, strconv.Itoa(v.Index), strconv.Itoa(int(v.Start / 512)), strconv.Itoa(int(v.Length / 512)), v.Type}, ":"))
	}
	return strings.Join(s, " ")
}

func TestMBRLogicalPartitions(t *testing.T) {
	path := t.TempDir() + "/d.raw"
	makeMBRDisk(t, path, 16*mib, []part{
		{start: 1 * mib, size: 2 * mib, mbrType: 0x0C},
		{start: 3 * mib, size: 1 * mib, mbrType: 0x07},
		{start: 5 * mib, size: 2 * mib, mbrType: 0x83, logical: true},
		{start: 8 * mib, size: 3 * mib, mbrType: 0x82, logical: true},
		{start: 12 * mib, size: 4*mib - 512, mbrType: 0x8E, logical: true},
	})
	f, size := openFile(t, path)
	vols, err := OpenVolumes(context.Background(), f, size)
	if err != nil {
		t.Fatal(err)
	}
	want := "mbr:1:2048:4096:0x0c mbr:2:6144:2048:0x07 mbr:5:10240:4096:0x83 mbr:6:16384:6144:0x82 mbr:7:24576:8191:0x8e"
	if got := volSummary(vols); got != want {
		t.Errorf("volumes\n got %s\nwant %s", got, want)
	}
	for _, v := range vols {
		if v.FS != FSUnknown {
			t.Errorf("empty volume %d detected as %s", v.Index, v.FS)
		}
	}
	if vols[4].TypeName != "Linux LVM" {
		t.Errorf("type name %q", vols[4].TypeName)
	}
}

func TestMBRLoopAndOutOfRange(t *testing.T) {
	d := make(memDisk, 4*mib)
	d[510], d[511] = 0x55, 0xAA
	mbrEntryBytes(d[446:], 0, 0x83, 2048, 100000) // runs past the end
	mbrEntryBytes(d[462:], 0, 0x07, 1<<30, 10)    // starts past the end
	mbrEntryBytes(d[478:], 0, 0x05, 4096, 2048)   // extended
	// An EBR whose link points back to itself.
	ebr := d[4096*512:]
	ebr[510], ebr[511] = 0x55, 0xAA
	mbrEntryBytes(ebr[446:], 0, 0x83, 1, 10)
	mbrEntryBytes(ebr[462:], 0, 0x05, 0, 2048)
	vols, err := OpenVolumes(context.Background(), d, int64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := volSummary(vols), "mbr:1:2048:6144:0x83 mbr:5:4097:10:0x83"; got != want {
		t.Errorf("volumes\n got %s\nwant %s", got, want)
	}
	if !vols[0].Truncated {
		t.Error("volume running past the end not marked truncated")
	}
}

func TestGPT(t *testing.T) {
	ctx := context.Background()
	size := int64(8 * mib)
	parts := []part{
		{start: mib, size: 2 * mib, gptType: gptBasicData, name: "Basic data partition"},
		{start: 3 * mib, size: 4 * mib, gptType: gptLinuxFS, name: "root"},
	}
	want := "gpt:1:2048:4096:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 gpt:2:6144:8192:0FC63DAF-8483-4772-8E79-3D69D8477DE4"

	d := gptDiskBytes(size, parts)
	vols, err := OpenVolumes(ctx, d, size)
	if err != nil {
		t.Fatal(err)
	}
	if got := volSummary(vols); got != want {
		t.Errorf("volumes\n got %s\nwant %s", got, want)
	}
	if vols[0].Name != "Basic data partition" || vols[0].GUID != "11111111-2222-3333-4444-000000000001" {
		t.Errorf("name %q guid %q", vols[0].Name, vols[0].GUID)
	}

	// A damaged primary header: the backup is used.
	d = gptDiskBytes(size, parts)
	d[512+40] ^= 0xFF
	if vols, err := OpenVolumes(ctx, d, size); err != nil || volSummary(vols) != want {
		t.Errorf("with a damaged primary header: %s, %v", volSummary(vols), err)
	}
	// Damaged primary entries: the backup is used.
	d = gptDiskBytes(size, parts)
	d[2*512+10] ^= 0xFF
	if vols, err := OpenVolumes(ctx, d, size); err != nil || volSummary(vols) != want {
		t.Errorf("with damaged primary entries: %s, %v", volSummary(vols), err)
	}
	// A primary header wiped out, protective MBR intact: the backup.
	d = gptDiskBytes(size, parts)
	clear(d[512:1024])
	if vols, err := OpenVolumes(ctx, d, size); err != nil || volSummary(vols) != want {
		t.Errorf("with no primary header: %s, %v", volSummary(vols), err)
	}
	// Both copies damaged: an error naming both.
	d = gptDiskBytes(size, parts)
	d[2*512+10] ^= 0xFF
	d[int64(len(d))-33*512+10] ^= 0xFF
	if _, err := OpenVolumes(ctx, d, size); err == nil || !strings.Contains(err.Error(), "CRC32") {
		t.Errorf("with both copies damaged: %v", err)
	}
	// Protective MBR, no GPT at all.
	d = gptDiskBytes(size, parts)
	clear(d[512:1024])
	clear(d[len(d)-512:])
	if _, err := OpenVolumes(ctx, d, size); err == nil || !strings.Contains(err.Error(), "protective MBR") {
		t.Errorf("protective MBR without GPT: %v", err)
	}
}

func TestGPT4KSectors(t *testing.T) {
	const ss = 4096
	size := int64(4 * mib)
	d := make(memDisk, size)
	last := size/ss - 1
	d[510], d[511] = 0x55, 0xAA
	mbrEntryBytes(d[446:], 0, 0xEE, 1, uint32(last))
	entries := make([]byte, 128*128)
	copy(entries, guidBytes(gptLinuxFS))
	binary.LittleEndian.PutUint64(entries[32:], 256)
	binary.LittleEndian.PutUint64(entries[40:], 511)
	h := gptStructures(size, nil)[1].data[:92]
	hdr := make([]byte, ss)
	copy(hdr, h)
	binary.LittleEndian.PutUint64(hdr[24:], 1)
	binary.LittleEndian.PutUint64(hdr[32:], uint64(last))
	binary.LittleEndian.PutUint64(hdr[72:], 2)
	binary.LittleEndian.PutUint32(hdr[88:], crc32.ChecksumIEEE(entries))
	binary.LittleEndian.PutUint32(hdr[16:], 0)
	binary.LittleEndian.PutUint32(hdr[16:], crc32.ChecksumIEEE(hdr[:92]))
	copy(d[ss:], hdr)
	copy(d[2*ss:], entries)
	vols, err := OpenVolumes(context.Background(), d, size)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 || vols[0].Start != 256*ss || vols[0].Length != 256*ss {
		t.Errorf("volumes %+v", vols)
	}
}

func TestNoTable(t *testing.T) {
	ctx := context.Background()
	d := make(memDisk, mib)
	vols, err := OpenVolumes(ctx, d, int64(len(d)))
	if err != nil || len(vols) != 1 || vols[0].Index != 0 || vols[0].FS != FSUnknown || vols[0].Length != mib {
		t.Errorf("blank disk: %+v, %v", vols, err)
	}
	if _, err := OpenFS(ctx, d, vols[0]); err == nil {
		t.Error("OpenFS of an unknown volume succeeded")
	}
	if _, err := OpenVolumes(ctx, d[:100], 100); err == nil {
		t.Error("100-byte disk accepted")
	}
	// Signatures of filesystems that are recognised but not opened.
	for sig, want := range map[string]string{"LUKS\xba\xbe": FSLUKS} {
		d := make(memDisk, mib)
		copy(d, sig)
		if vols, _ := OpenVolumes(ctx, d, mib); len(vols) != 1 || vols[0].FS != want {
			t.Errorf("%q: %+v", sig, vols)
		}
	}
	d = make(memDisk, mib)
	copy(d[3:], "EXFAT   ")
	if vols, _ := OpenVolumes(ctx, d, mib); len(vols) != 1 || vols[0].FS != FSExFAT {
		t.Errorf("exfat: %+v", vols)
	} else if _, err := OpenFS(ctx, d, vols[0]); err == nil || !strings.Contains(err.Error(), "unsupported") {
		t.Errorf("OpenFS(exfat) = %v", err)
	}
}

func TestCP437(t *testing.T) {
	if got := cp437([]byte{'A', 0x80, 0x81, 0xE1, 0xFF}); got != "AÇüß\u00a0" {
		t.Errorf("cp437 = %q", got)
	}
}
