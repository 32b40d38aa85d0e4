package nbd

import (
	"fmt"
	"math/rand/v2"
	"strings"

	"lifeboat/disk"
)

const mib = 1 << 20

// randomBytes is reproducible noise, so that a byte read from the wrong
// offset cannot match by chance.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func fmtExtents(l []disk.Extent) string {
	var s []string
	for _, e := range l {
		s = append(s, fmt.Sprintf("[%d,+%d %v]", e.Offset, e.Length, e.Kind))
	}
	return strings.Join(s, " ")
}
