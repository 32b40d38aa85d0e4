package hyperv

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"testing"

	"lifeboat/internal/testenv"
)

// Run with, e.g.:
//
//	go test ./hypervisor/hyperv -run '^$' -fuzz '^FuzzParseXML$' -fuzztime 2m -fuzzminimizetime 10x -parallel 1
//	go test ./hypervisor/hyperv -run '^$' -fuzz '^FuzzParseVMCX$' -fuzztime 2m -fuzzminimizetime 10x -parallel 1
//
// -fuzzminimizetime 10x matters: the seeds are real files of 20–80 KB, and
// minimising each new interesting input by the default 60 s otherwise takes
// most of the run (the exec counter does not move meanwhile). Without
// -fuzz the seeds run as ordinary tests.

// summarize exercises everything a caller does with a parsed file.
func summarize(t *testing.T, c *Config) {
	if c.Root == nil || c.Root.Name != "configuration" {
		t.Fatalf("parsed without a configuration root: %+v", c.Root)
	}
	vm, err := c.VM()
	if err == nil {
		if err := vm.Validate(); err != nil {
			t.Fatalf("VM() returned a summary that fails Validate: %v", err)
		}
	}
	if _, err := json.Marshal(vm); err != nil {
		t.Fatal(err)
	}
	_ = vm.DiskOrder()
	_ = c.CreationTime()
}

func seedFile(f *testing.F, name string) []byte {
	b, err := os.ReadFile(testenv.HyperV(f, name))
	if err != nil {
		f.Fatal(err)
	}
	return b
}

func FuzzParseXML(f *testing.F) {
	vm := seedFile(f, "vm.XML")
	f.Add(vm)
	f.Add(utf16LE(vm, true))
	f.Add([]byte(`<?xml version="1.0" encoding="UTF-16"?><configuration><properties><name type="string">a</name>` +
		`<global_id type="string">0AA394FA-7C4A-4070-BA32-773D43B28A68</global_id></properties>` +
		`<settings><processors><count type="integer">2</count></processors><memory><bank><size type="integer">512</size></bank></memory></settings>` +
		`<_83f8638b-8dca-4152-9eda-2ca8b33039b4_><controller0><drive0><pathname type="string">C:\a.vhd</pathname><type type="string">VHD</type></drive0></controller0></_83f8638b-8dca-4152-9eda-2ca8b33039b4_>` +
		`<_55225880-49c0-4438-9ce2-5a01402fd8cb_><MacAddress type="string">00-15-5D-01-07-DC</MacAddress></_55225880-49c0-4438-9ce2-5a01402fd8cb_>` +
		`</configuration>`))
	f.Add([]byte(`<configuration><a type="bytes">AAAA</a><b type="bool">True</b></configuration>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseXML("fuzz.xml", data)
		if err != nil {
			if _, ok := err.(*ParseError); !ok {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
			return
		}
		summarize(t, c)
	})
}

func FuzzParseVMCX(f *testing.F) {
	vmcx := seedFile(f, "test.vmcx")
	vmrs := seedFile(f, "test.VMRS")
	f.Add(vmcx)
	f.Add(vmrs)
	f.Add(vmcx[:0x3000])
	f.Add(smallVMCX())
	f.Fuzz(func(t *testing.T, data []byte) {
		// As given, and with every checksum made right, so that mutations
		// get past the CRCs into the table and tree code.
		for _, fix := range []bool{false, true} {
			if fix {
				data = bytes.Clone(data) // the fuzzer's input must not change
				fixCRCs(data)
			}
			if c, err := ParseVMCX("fuzz.vmcx", data); err == nil {
				summarize(t, c)
			} else if _, ok := err.(*ParseError); !ok {
				t.Fatalf("error %T is not a *ParseError: %v", err, err)
			}
		}
	})
}

// fixCRCs rewrites the checksum of every structure it can find, without
// trusting any offset or size in data.
func fixCRCs(b []byte) {
	in := func(off, n uint64) bool { return off <= uint64(len(b)) && n <= uint64(len(b))-off }
	for _, h := range []uint64{0, 0x1000} {
		if in(h, vmcxHeaderSize) {
			setCRC(b[h:h+vmcxHeaderSize], 4)
		}
	}
	if in(26, 8) {
		if r := binary.LittleEndian.Uint64(b[26:]); in(r, vmcxReplayHeaderSize) {
			setCRC(b[r:r+vmcxReplayHeaderSize], 4)
		}
	}
	if !in(vmcxObjectTableAt, 8) {
		return
	}
	count := uint64(binary.LittleEndian.Uint32(b[vmcxObjectTableAt+4:]))
	for i := range min(count, 4096) {
		at := vmcxObjectTableAt + 8 + i*vmcxObjectEntrySize
		if !in(at, vmcxObjectEntrySize) {
			return
		}
		e := b[at : at+vmcxObjectEntrySize]
		setCRC(e, 1)
		off, size := binary.LittleEndian.Uint64(e[5:]), uint64(binary.LittleEndian.Uint32(e[13:]))
		if e[0] != 2 || !in(off, size) || size < vmcxKeyTableHeader {
			continue
		}
		kt := b[off : off+size]
		setCRC(kt[:vmcxKeyTableHeader], 6)
		for p := uint64(vmcxKeyTableHeader); p+vmcxKeyEntryHeader <= size; {
			es := uint64(binary.LittleEndian.Uint32(kt[p+2:]))
			if es < vmcxKeyEntryHeader || es > size-p {
				break
			}
			eb := kt[p : p+es]
			p += es
			typ := binary.LittleEndian.Uint16(eb)
			do := uint64(eb[20])
			var vs uint64
			switch typ & 0xFF {
			case 3, 4, 5:
				vs = 8
			case 8:
				vs = 4
			case 9:
				vs = 12
			case 6, 7:
				vs = 12
				if typ>>8&1 == 0 && vmcxKeyEntryHeader+do+4 <= es {
					vs = 4 + uint64(binary.LittleEndian.Uint32(eb[vmcxKeyEntryHeader+do:]))
				}
			default:
				continue
			}
			if n := vmcxKeyEntryHeader + do + vs; n <= es {
				setCRC(eb[:n], 12)
			}
		}
	}
}
