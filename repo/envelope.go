package repo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// Every object but config is an envelope:
//
//	magic "LB" | version 1 | type (C chunk, I index, M manifest, L lock) | flags
//	payload
//	[32-byte SHA-256 of everything before, when flagSum is set]
//
// flags: bit 0 payload is zstd-compressed; bit 1 payload is
// nonce(12) || AES-256-GCM ciphertext with the 5 header bytes and the object
// key as associated data (so objects cannot be swapped); bit 2 a SHA-256
// trailer follows. Chunks carry no trailer: their key is the hash of their
// plaintext, which verify recomputes. Unencrypted indexes and manifests
// carry the trailer so corruption is named, not misparsed.
const (
	envMagic0, envMagic1 = 'L', 'B'
	envVersion           = 1
	envHeaderLen         = 5

	typeChunk    = 'C'
	typeIndex    = 'I'
	typeManifest = 'M'
	typeLock     = 'L'

	flagZstd    = 1 << 0
	flagAESGCM  = 1 << 1
	flagSum     = 1 << 2
	knownFlags  = flagZstd | flagAESGCM | flagSum
	maxDecoded  = 256 << 20 // no object decodes larger than this
	minSavedPct = 3         // compress only when it saves at least 3%
)

// codec holds the reusable compression state. zstd encoders and decoders
// are expensive to build and safe for concurrent EncodeAll/DecodeAll.
type codec struct {
	// sampler is zstd's fastest level, used only to judge a chunk from
	// samples; enc is its default level, used for every chunk that the
	// samples say compresses: restic stores at that level, and the fastest
	// one leaves the repository 2.4% larger than restic's on the benchmark
	// image for about a quarter less time (docs/PERFORMANCE.md).
	sampler *zstd.Encoder
	enc     *zstd.Encoder
	dec     *zstd.Decoder
	keys    *keys
	hash    string
	pool    sync.Pool // *[]byte scratch for compression samples
}

func newCodec(k *keys, hashName string) (*codec, error) {
	// One encoder per core: EncodeAll calls beyond the concurrency queue
	// for a free encoder, and every backup worker compresses. Frames carry
	// no xxhash of their own: a chunk's ID is the hash of its plaintext, and
	// other objects have a SHA-256 trailer or GCM tag, so it would only be
	// a second check of the same bytes.
	sampler, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(maxDecoded))
	if err != nil {
		return nil, err
	}
	return &codec{sampler: sampler, enc: enc, dec: dec, keys: k, hash: hashName}, nil
}

// ID is a content identifier: the hash of an object's plaintext, keyed
// when the repository is encrypted so IDs reveal nothing about content.
type ID [32]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// ParseID reads the hex form.
func ParseID(s string) (ID, error) {
	var id ID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("invalid object id %q", s)
	}
	copy(id[:], b)
	return id, nil
}

func (c *codec) newHash() hash.Hash {
	if c.hash == HashSHA256 {
		if c.keys != nil {
			return newHMAC(c.keys.id)
		}
		return sha256.New()
	}
	if c.keys != nil {
		h, _ := blake3.NewKeyed(c.keys.id)
		return h
	}
	return blake3.New()
}

func (c *codec) sum(data []byte) ID {
	var id ID
	if c.hash == HashBLAKE3 && c.keys == nil {
		return ID(blake3.Sum256(data))
	}
	if c.hash == HashSHA256 && c.keys == nil {
		return ID(sha256.Sum256(data))
	}
	h := c.newHash()
	h.Write(data)
	h.Sum(id[:0])
	return id
}

// seal builds an envelope in a new buffer.
func (c *codec) seal(typ byte, key string, plain []byte, compress bool) ([]byte, error) {
	return c.sealTo(nil, typ, key, plain, compress)
}

// sealTo builds an envelope, reusing dst's storage: on the backup path the
// compressed bytes land right after the header with no extra copy.
func (c *codec) sealTo(dst []byte, typ byte, key string, plain []byte, compress bool) ([]byte, error) {
	hdr := [envHeaderLen]byte{envMagic0, envMagic1, envVersion, typ, 0}
	out := append(dst[:0], hdr[:]...)
	packed := false
	if compress {
		if sampleRatio(c, plain) < 0.90 {
			out = c.enc.EncodeAll(plain, out)
			if len(out)-envHeaderLen < len(plain)-len(plain)*minSavedPct/100 {
				out[4] |= flagZstd
				packed = true
			} else {
				out = out[:envHeaderLen]
			}
		}
	}
	if !packed {
		out = append(out, plain...)
	}
	if c.keys != nil {
		out[4] |= flagAESGCM
		gcm, err := newGCM(c.keys.data)
		if err != nil {
			return nil, err
		}
		payload := append([]byte(nil), out[envHeaderLen:]...)
		nonce := randomBytes(12)
		out = append(out[:envHeaderLen], nonce...)
		return gcm.Seal(out, nonce, payload, aad(out[:envHeaderLen], key)), nil
	}
	if typ != typeChunk {
		out[4] |= flagSum
		s := sha256.Sum256(out)
		out = append(out, s[:]...)
	}
	return out, nil
}

func aad(hdr []byte, key string) []byte {
	return append(append([]byte{}, hdr...), key...)
}

// sampleRatio estimates how well a chunk compresses from two 32 KiB
// samples (start and middle, so a header does not decide alone): random or
// already compressed data would cost a full zstd pass for nothing. It
// returns the better sample's compressed/plain ratio; small chunks are
// simply tried.
func sampleRatio(c *codec, plain []byte) float64 {
	const sample = 32 << 10
	if len(plain) <= 4*sample {
		return 0.5
	}
	bp, _ := c.pool.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	best := 1.0
	for _, off := range []int{0, len(plain) / 2} {
		out := c.sampler.EncodeAll(plain[off:off+sample], (*bp)[:0])
		*bp = out
		best = min(best, float64(len(out))/sample)
		if best < 0.5 {
			break
		}
	}
	c.pool.Put(bp)
	return best
}

// ErrCorrupt is wrapped by every decoding failure.
var ErrCorrupt = errors.New("corrupt object")

// open checks and decodes an envelope of the given type.
func (c *codec) open(typ byte, key string, obj []byte) ([]byte, error) {
	return c.openTo(nil, typ, key, obj)
}

// openTo is open that decompresses into dst's storage when it has room.
// Uncompressed payloads are returned as they lie in obj.
func (c *codec) openTo(dst []byte, typ byte, key string, obj []byte) ([]byte, error) {
	if len(obj) < envHeaderLen || obj[0] != envMagic0 || obj[1] != envMagic1 || obj[2] != envVersion {
		return nil, fmt.Errorf("%s: bad envelope header: %w", key, ErrCorrupt)
	}
	if obj[3] != typ {
		return nil, fmt.Errorf("%s: object type %q, want %q: %w", key, obj[3], typ, ErrCorrupt)
	}
	flags := obj[4]
	if flags&^knownFlags != 0 {
		return nil, fmt.Errorf("%s: unknown flags %#x: %w", key, flags, ErrCorrupt)
	}
	hdr := obj[:envHeaderLen]
	payload := obj[envHeaderLen:]
	switch {
	case flags&flagAESGCM != 0:
		if c.keys == nil {
			return nil, fmt.Errorf("%s: object is encrypted but the repository config is not", key)
		}
		if len(payload) < 12 {
			return nil, fmt.Errorf("%s: truncated ciphertext: %w", key, ErrCorrupt)
		}
		gcm, err := newGCM(c.keys.data)
		if err != nil {
			return nil, err
		}
		p, err := gcm.Open(nil, payload[:12], payload[12:], aad(hdr, key))
		if err != nil {
			return nil, fmt.Errorf("%s: authentication failed: %w", key, ErrCorrupt)
		}
		payload = p
	case c.keys != nil:
		return nil, fmt.Errorf("%s: object is not encrypted in an encrypted repository: %w", key, ErrCorrupt)
	case flags&flagSum != 0:
		if len(payload) < 32 {
			return nil, fmt.Errorf("%s: truncated checksum: %w", key, ErrCorrupt)
		}
		body := obj[:len(obj)-32]
		if s := sha256.Sum256(body); string(s[:]) != string(obj[len(obj)-32:]) {
			return nil, fmt.Errorf("%s: checksum mismatch: %w", key, ErrCorrupt)
		}
		payload = payload[:len(payload)-32]
	}
	if flags&flagZstd != 0 {
		p, err := c.dec.DecodeAll(payload, dst[:0])
		if err != nil {
			return nil, fmt.Errorf("%s: decompress: %v: %w", key, err, ErrCorrupt)
		}
		payload = p
	}
	return payload, nil
}
