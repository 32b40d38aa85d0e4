// Command mkimage builds the benchmark's test images deterministically: the
// same bytes on every machine and every run, from fixed seeds.
//
//	mkimage image  OUT                      4 GiB sparse raw image, 2.5 GiB of mixed data
//	mkimage change [-writes N] [-seed S] IMAGE MAP
//	                                        N scattered 1 MiB random writes into IMAGE's data
//	                                        regions; MAP gets the change map [[offset,length],…]
//	mkimage sparse [-size 2T] OUT           a huge sparse image with a few MiB of data;
//	                                        prints the data ranges as "offset length" lines
//	mkimage layout                          prints the regions of "image" as "kind offset length"
//
// The 4 GiB image holds, as separate regions with holes between them and
// nothing allocated after them:
//
//   - 1 GiB of text-like data: log lines from 800 message templates with
//     timestamps, hosts, numbers and hex identifiers, and prose paragraphs
//     from stock phrases and a Zipf-distributed generated vocabulary
//     (zstd -1 compresses it 3.0x, zstd -3 3.7x);
//   - 1 GiB of random bytes (incompressible);
//   - 0.5 GiB of synthetic binary-like data: pages of "machine code" built
//     from a dictionary of instruction snippets, symbol string tables,
//     relocation-like integer tables, zero padding and compressed-looking
//     sections (zstd -1 1.9x).
//
// Data is generated in 4 MiB blocks, each seeded from its region and block
// number, so generation runs in parallel and stays deterministic.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
)

const (
	miB       = 1 << 20
	giB       = 1 << 30
	blockSize = 4 * miB
	imageSize = 4 * giB
)

type region struct {
	kind string
	off  int64
	len  int64
}

// layout of the 4 GiB image: 8 MiB leading hole, then the regions with
// 64 MiB holes between them; after 2696 MiB the image is unallocated.
var layout = []region{
	{"text", 8 * miB, 1024 * miB},
	{"random", (8 + 1024 + 64) * miB, 1024 * miB},
	{"binary", (8 + 1024 + 64 + 1024 + 64) * miB, 512 * miB},
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "image":
		err = cmdImage(os.Args[2:])
	case "change":
		err = cmdChange(os.Args[2:])
	case "sparse":
		err = cmdSparse(os.Args[2:])
	case "sample": // sample KIND MiB: a region's generator output on stdout, for tuning
		err = cmdSample(os.Args[2:])
	case "layout":
		for _, r := range layout {
			fmt.Printf("%s %d %d\n", r.kind, r.off, r.len)
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: mkimage image OUT | change [-writes N] [-seed S] IMAGE MAP | sparse [-size 2T] OUT | layout")
	os.Exit(2)
}

// create makes OUT afresh (so no old bytes linger in the holes) at size.
func create(path string, size int64) (*os.File, error) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func cmdImage(args []string) error {
	fs := flag.NewFlagSet("image", flag.ExitOnError)
	fs.Parse(args)
	if fs.NArg() != 1 {
		usage()
	}
	f, err := create(fs.Arg(0), imageSize)
	if err != nil {
		return err
	}
	for ri, r := range layout {
		gen := map[string]func(*rand.Rand, []byte){"text": genText, "random": genRandom, "binary": genBinary}[r.kind]
		if err := fill(f, r, uint64(ri+1), gen); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// fill writes region r block by block, blocks generated in parallel.
func fill(f *os.File, r region, seed uint64, gen func(*rand.Rand, []byte)) error {
	nblocks := int((r.len + blockSize - 1) / blockSize)
	workers := runtime.GOMAXPROCS(0)
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, blockSize)
			for b := range next {
				off := int64(b) * blockSize
				n := min(blockSize, r.len-off)
				rng := rand.New(rand.NewPCG(seed, uint64(b)))
				gen(rng, buf[:n])
				if _, err := f.WriteAt(buf[:n], r.off+off); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
	for b := 0; b < nblocks && err == nil; b++ {
		select {
		case next <- b:
		case err = <-errs:
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// --- text ---------------------------------------------------------------

var (
	vocabOnce sync.Once
	vocab     []string
	zipfTable []uint16 // 64 Ki entries: uniform 16-bit value → word index
	hosts     []string
	services  []string
)

// buildVocab makes 8000 pronounceable words from a fixed seed and a table
// that draws them with a Zipf distribution (s = 1.05), like natural text.
func buildVocab() {
	rng := rand.New(rand.NewPCG(42, 4242))
	cons := []string{"b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "st", "tr", "ch", "sh", "th", "pl", "gr"}
	vow := []string{"a", "e", "i", "o", "u", "ea", "io", "ou", "y"}
	seen := map[string]bool{}
	for len(vocab) < 8000 {
		var sb strings.Builder
		syl := 1 + rng.IntN(3)
		if rng.IntN(4) == 0 {
			syl++
		}
		for range syl {
			sb.WriteString(cons[rng.IntN(len(cons))])
			sb.WriteString(vow[rng.IntN(len(vow))])
		}
		if rng.IntN(3) == 0 {
			sb.WriteString(cons[rng.IntN(len(cons))])
		}
		w := sb.String()
		if !seen[w] {
			seen[w] = true
			vocab = append(vocab, w)
		}
	}
	// Short words first: frequent words are short in real languages.
	sort.SliceStable(vocab, func(i, j int) bool { return len(vocab[i]) < len(vocab[j]) })
	weights := make([]float64, len(vocab))
	var total float64
	for i := range weights {
		weights[i] = 1 / math.Pow(float64(i+1), 1.05)
		total += weights[i]
	}
	zipfTable = make([]uint16, 1<<16)
	var cum float64
	w := 0
	for i := range zipfTable {
		target := (float64(i) + 0.5) / float64(len(zipfTable)) * total
		for w < len(weights)-1 && cum+weights[w] < target {
			cum += weights[w]
			w++
		}
		zipfTable[i] = uint16(w)
	}
	for i := range 40 {
		hosts = append(hosts, "node-"+strconv.Itoa(i))
	}
	for range 25 {
		services = append(services, vocab[200+rng.IntN(2000)]+"d")
	}
}

var levels = []string{"INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"}

var (
	templatesOnce sync.Once
	templates     [][]string // log message templates: words, "%d", "%x" or "%w"
	templateTable []uint16   // Zipf-ish pick of a template
	phrases       []string   // stock phrases of prose
)

// buildTemplates makes 800 log messages: real logs repeat a few hundred
// messages with varying fields, which is what makes them compress well.
func buildTemplates() {
	rng := rand.New(rand.NewPCG(43, 4343))
	for range 800 {
		var t []string
		for range 3 + rng.IntN(9) {
			switch rng.IntN(10) {
			case 0:
				t = append(t, "%d")
			case 1:
				t = append(t, "%w")
			default:
				t = append(t, vocab[zipfTable[rng.Uint32()&0xffff]])
			}
		}
		switch rng.IntN(4) {
		case 0:
			t = append(t, "id=%x")
		case 1:
			t = append(t, "took", "%dms")
		}
		templates = append(templates, t)
	}
	for range 2000 {
		var ws []string
		for range 2 + rng.IntN(4) {
			ws = append(ws, vocab[zipfTable[rng.Uint32()&0xffff]])
		}
		phrases = append(phrases, strings.Join(ws, " "))
	}
	templateTable = make([]uint16, 1<<12)
	for i := range templateTable {
		// Quadratic skew: low-numbered templates are the frequent ones.
		u := float64(i) / float64(len(templateTable))
		templateTable[i] = uint16(u * u * float64(len(templates)))
	}
}

// genText fills b with log lines (85%) and prose paragraphs (15%).
func genText(rng *rand.Rand, b []byte) {
	vocabOnce.Do(buildVocab)
	templatesOnce.Do(buildTemplates)
	out := b[:0]
	word := func() string { return vocab[zipfTable[rng.Uint32()&0xffff]] }
	// A slowly advancing clock, so timestamps share prefixes as in real logs.
	t := int64(rng.IntN(86400 * 365))
	for len(out) < len(b) {
		if rng.IntN(100) < 85 {
			t += int64(rng.IntN(3))
			day, sec := t/86400, t%86400
			h, sv := rng.IntN(len(hosts)), rng.IntN(len(services))
			out = fmt.Appendf(out, "2026-%02d-%02d %02d:%02d:%02d.%03d %s %s[%d]: %s",
				1+day/28%12, 1+day%28, sec/3600, sec/60%60, sec%60, rng.IntN(1000),
				hosts[h], services[sv], 1000+(h*31+sv*17)%900, // one pid per service and host
				levels[rng.IntN(len(levels))])
			for _, w := range templates[templateTable[rng.Uint32()&0xfff]] {
				out = append(out, ' ')
				switch w {
				case "%d":
					out = strconv.AppendInt(out, int64(rng.IntN(1000)), 10)
				case "%dms":
					out = strconv.AppendInt(out, int64(rng.IntN(5000)), 10)
					out = append(out, "ms"...)
				case "%w":
					out = append(out, word()...)
				case "id=%x":
					out = fmt.Appendf(out, "id=%08x", rng.Uint32())
				default:
					out = append(out, w...)
				}
			}
			out = append(out, '\n')
		} else {
			for range 2 + rng.IntN(6) { // sentences of stock phrases and words
				w := word()
				out = append(out, strings.ToUpper(w[:1])...)
				out = append(out, w[1:]...)
				for range 2 + rng.IntN(6) {
					out = append(out, ' ')
					if rng.IntN(3) == 0 {
						out = append(out, word()...)
					} else {
						out = append(out, phrases[templateTable[rng.Uint32()&0xfff]%uint16(len(phrases))]...)
					}
					if rng.IntN(8) == 0 {
						out = append(out, ',')
					}
				}
				out = append(out, ". "...)
			}
			out[len(out)-1] = '\n'
			out = append(out, '\n')
		}
	}
	// out may have grown past b's capacity and been reallocated: copy back.
	copy(b, out[:len(b)])
}

// --- random -------------------------------------------------------------

func genRandom(rng *rand.Rand, b []byte) {
	var seed [32]byte
	for i := 0; i < 32; i += 8 {
		binary.LittleEndian.PutUint64(seed[i:], rng.Uint64())
	}
	rand.NewChaCha8(seed).Read(b)
}

// --- binary-like --------------------------------------------------------

var (
	snippetsOnce sync.Once
	snippets     [][]byte
)

// buildSnippets makes 1024 "instructions" of 1-8 bytes: a few opcodes and
// operand patterns recur, as in compiled code.
func buildSnippets() {
	rng := rand.New(rand.NewPCG(7, 77))
	common := make([]byte, 48)
	for i := range common {
		common[i] = byte(rng.Uint32())
	}
	for range 1024 {
		n := 1 + rng.IntN(8)
		s := make([]byte, n)
		for i := range s {
			if rng.IntN(6) > 0 {
				s[i] = common[rng.IntN(len(common))]
			} else {
				s[i] = byte(rng.Uint32())
			}
		}
		snippets = append(snippets, s)
	}
}

// genBinary fills b page by page (4 KiB) with a mix resembling /usr/lib:
// code 45%, string tables 15%, integer tables 15%, zero-padded 15%,
// compressed sections 10%.
func genBinary(rng *rand.Rand, b []byte) {
	snippetsOnce.Do(buildSnippets)
	vocabOnce.Do(buildVocab)
	const page = 4096
	for p := 0; p < len(b); p += page {
		pg := b[p:min(p+page, len(b))]
		switch k := rng.IntN(100); {
		case k < 45: // code: snippets, sometimes with a random 32-bit immediate
			i := 0
			for i < len(pg) {
				s := snippets[int(zipfTable[rng.Uint32()&0xffff])%len(snippets)]
				i += copy(pg[i:], s)
				if rng.IntN(8) == 0 && i < len(pg) {
					var imm [4]byte
					binary.LittleEndian.PutUint32(imm[:], uint32(rng.IntN(1<<20)))
					i += copy(pg[i:], imm[:])
				}
			}
		case k < 60: // string table: symbol names, NUL-terminated
			i := 0
			for i < len(pg) {
				name := "_Z" + strconv.Itoa(rng.IntN(40)) + vocab[zipfTable[rng.Uint32()&0xffff]] + "_" + vocab[zipfTable[rng.Uint32()&0xffff]]
				i += copy(pg[i:], name)
				if i < len(pg) {
					pg[i] = 0
					i++
				}
			}
		case k < 75: // relocation-like table: increasing offsets, small types
			base := uint64(rng.IntN(1 << 24))
			for i := 0; i+16 <= len(pg); i += 16 {
				base += uint64(8 * (1 + rng.IntN(8)))
				binary.LittleEndian.PutUint64(pg[i:], base)
				binary.LittleEndian.PutUint64(pg[i+8:], uint64(rng.IntN(16))<<32|uint64(7))
			}
		case k < 90: // mostly zero page with a little data
			clear(pg)
			n := rng.IntN(512)
			for i := range n {
				pg[i] = byte(rng.Uint32())
			}
		default: // compressed section
			for i := 0; i+8 <= len(pg); i += 8 {
				binary.LittleEndian.PutUint64(pg[i:], rng.Uint64())
			}
		}
	}
}

func cmdSample(args []string) error {
	if len(args) != 2 {
		usage()
	}
	gen := map[string]func(*rand.Rand, []byte){"text": genText, "random": genRandom, "binary": genBinary}[args[0]]
	n, err := strconv.Atoi(args[1])
	if gen == nil || err != nil {
		usage()
	}
	buf := make([]byte, blockSize)
	for b := range (n*miB + blockSize - 1) / blockSize {
		gen(rand.New(rand.NewPCG(1, uint64(b))), buf)
		if _, err := os.Stdout.Write(buf); err != nil {
			return err
		}
	}
	return nil
}

// --- change -------------------------------------------------------------

func cmdChange(args []string) error {
	fs := flag.NewFlagSet("change", flag.ExitOnError)
	// 5% of the 4 GiB image in 1 MiB writes.
	writes := fs.Int("writes", 205, "number of 1 MiB writes")
	seed := fs.Uint64("seed", 5, "seed of the offsets and data")
	fs.Parse(args)
	if fs.NArg() != 2 {
		usage()
	}
	// Every 1 MiB-aligned slot of the data regions is a candidate.
	var cands []int64
	for _, r := range layout {
		for off := r.off; off+miB <= r.off+r.len; off += miB {
			cands = append(cands, off)
		}
	}
	if *writes > len(cands) {
		return fmt.Errorf("%d writes exceed the %d MiB of data", *writes, len(cands))
	}
	rng := rand.New(rand.NewPCG(*seed, 0xc4a96e))
	rng.Shuffle(len(cands), func(i, j int) { cands[i], cands[j] = cands[j], cands[i] })
	offs := append([]int64(nil), cands[:*writes]...)
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })

	f, err := os.OpenFile(fs.Arg(0), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, miB)
	var cm [][2]int64
	for i, off := range offs {
		genRandom(rand.New(rand.NewPCG(*seed, uint64(i))), buf)
		if _, err := f.WriteAt(buf, off); err != nil {
			f.Close()
			return err
		}
		cm = append(cm, [2]int64{off, miB})
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	data, _ := json.Marshal(cm)
	return os.WriteFile(fs.Arg(1), append(data, '\n'), 0o644)
}

// --- sparse -------------------------------------------------------------

func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "T"):
		mult, s = 1<<40, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n * mult, err
}

func cmdSparse(args []string) error {
	fs := flag.NewFlagSet("sparse", flag.ExitOnError)
	sizeS := fs.String("size", "2T", "virtual size (suffix T, G or M)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		usage()
	}
	size, err := parseSize(*sizeS)
	if err != nil || size < 64*miB {
		return fmt.Errorf("bad -size %q", *sizeS)
	}
	f, err := create(fs.Arg(0), size)
	if err != nil {
		return err
	}
	// A boot area, a few scattered extents (one unaligned), and the end.
	ranges := [][2]int64{
		{0, 4 * miB},
		{size / 7 / miB * miB, 1 * miB},
		{size/3 + 12345, 2*miB + 100},
		{size / 2 / miB * miB, 3 * miB},
		{size - 1*miB, 1 * miB},
	}
	rng := rand.New(rand.NewPCG(9, 99))
	for i, r := range ranges {
		buf := make([]byte, r[1])
		if i%2 == 0 {
			genText(rng, buf)
		} else {
			genRandom(rng, buf)
		}
		if _, err := f.WriteAt(buf, r[0]); err != nil {
			f.Close()
			return err
		}
		fmt.Printf("%d %d\n", r[0], r[1])
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
