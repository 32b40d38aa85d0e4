package server

import (
	"math/bits"
	"sync/atomic"
)

// bitmap is a fixed-size bitmap whose words are updated atomically, so
// readers never lock and range updates from different goroutines never
// lose each other's bits.
type bitmap struct {
	w []atomic.Uint64
	n int64 // bits
}

func newBitmap(n int64) *bitmap {
	return &bitmap{w: make([]atomic.Uint64, (n+63)/64), n: n}
}

func (b *bitmap) get(i int64) bool {
	return b.w[i>>6].Load()&(1<<(uint(i)&63)) != 0
}

// rangeMasks calls f for each word of [lo, hi) with the mask of its bits.
func rangeMasks(lo, hi int64, f func(w int64, mask uint64)) {
	for lo < hi {
		w := lo >> 6
		first := uint(lo & 63)
		last := uint(min(hi-w*64, 64)) // exclusive
		mask := ^uint64(0) << first
		if last < 64 {
			mask &= (1 << last) - 1
		}
		f(w, mask)
		lo = (w + 1) * 64
	}
}

func (b *bitmap) setRange(lo, hi int64) {
	rangeMasks(lo, hi, func(w int64, m uint64) { b.w[w].Or(m) })
}

func (b *bitmap) clearRange(lo, hi int64) {
	rangeMasks(lo, hi, func(w int64, m uint64) { b.w[w].And(^m) })
}

// snapshot copies the words (each one atomically).
func (b *bitmap) snapshot() []uint64 {
	s := make([]uint64, len(b.w))
	for i := range b.w {
		s[i] = b.w[i].Load()
	}
	return s
}

// swap copies the words and clears them, each word atomically: a bit set
// concurrently lands either in the copy or in the bitmap, never nowhere.
func (b *bitmap) swap() []uint64 {
	s := make([]uint64, len(b.w))
	for i := range b.w {
		if b.w[i].Load() != 0 {
			s[i] = b.w[i].Swap(0)
		}
	}
	return s
}

func (b *bitmap) load(words []uint64) {
	for i := range b.w {
		b.w[i].Store(words[i])
	}
}

func (b *bitmap) count() int64 {
	var n int64
	for i := range b.w {
		n += int64(bits.OnesCount64(b.w[i].Load()))
	}
	return n
}

// runs calls f for each maximal run [lo, hi) of set bits in words.
func runs(words []uint64, n int64, f func(lo, hi int64) error) error {
	start := int64(-1)
	for w, v := range words {
		switch {
		case v == 0 && start < 0, v == ^uint64(0) && start >= 0:
			continue
		}
		for bit := range 64 {
			i := int64(w)*64 + int64(bit)
			if i >= n {
				break
			}
			set := v&(1<<uint(bit)) != 0
			if set && start < 0 {
				start = i
			} else if !set && start >= 0 {
				if err := f(start, i); err != nil {
					return err
				}
				start = -1
			}
		}
	}
	if start >= 0 {
		return f(start, n)
	}
	return nil
}
