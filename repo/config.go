package repo

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/scrypt"

	"lifeboat/repo/storage"
)

// FormatName marks a repository config; a new server adopting a folder or
// bucket checks it before trusting anything else there.
const FormatName = "lifeboat-repository"

// Hash algorithms for chunk and index identifiers.
const (
	HashBLAKE3 = "blake3"
	HashSHA256 = "sha256"
)

// DefaultChunkSize is the fixed chunk size. Measured (docs/PERFORMANCE.md):
// with 4 MiB chunks, 5% of scattered 1 MiB guest writes dirtied 30% of the
// chunks, so an incremental re-read and re-stored six times what changed;
// 1 MiB chunks match the granularity of guest writes and dirty bitmaps,
// and a 2 TiB disk still has an index of 2 Mi slots (64 MiB at most).
const DefaultChunkSize = 1 << 20

// Config is the plaintext object "config": everything needed to read the
// repository except the password.
type Config struct {
	Format      string      `json:"format"`
	Version     int         `json:"version"`
	ID          string      `json:"id"`
	Created     time.Time   `json:"created"`
	ChunkSize   int         `json:"chunk_size"`
	Hash        string      `json:"hash"`
	Compression string      `json:"compression"`
	Encryption  *Encryption `json:"encryption,omitempty"`
}

// Encryption holds the master keys wrapped under a key derived from the
// password, so the password can change without rewriting data.
type Encryption struct {
	Cipher string `json:"cipher"` // aes-256-gcm
	KDF    string `json:"kdf"`    // scrypt
	N      int    `json:"n"`
	R      int    `json:"r"`
	P      int    `json:"p"`
	Salt   []byte `json:"salt"`
	// Wrapped is nonce(12) || AES-GCM(kek, dataKey(32) || idKey(32)).
	Wrapped []byte `json:"wrapped"`
}

// InitOptions choose a new repository's parameters.
type InitOptions struct {
	ChunkSize int
	Hash      string
	// Password, when non-empty, encrypts every object but config.
	Password string
	// ScryptN overrides the KDF cost (tests use a small one).
	ScryptN int
}

// Init writes a new repository's config into an empty backend.
func Init(ctx context.Context, b storage.Backend, opts InitOptions) (*Repository, error) {
	if _, err := b.Stat(ctx, "config"); err == nil {
		return nil, fmt.Errorf("init repository at %s: a repository already exists there", b.Location())
	} else if !errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("init repository at %s: %w", b.Location(), err)
	}
	cfg := Config{
		Format: FormatName, Version: 1, ID: randomHex(16), Created: time.Now().UTC(),
		ChunkSize: opts.ChunkSize, Hash: opts.Hash, Compression: "zstd",
	}
	if cfg.ChunkSize == 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.Hash == "" {
		cfg.Hash = HashBLAKE3
	}
	if cfg.ChunkSize < 64<<10 || cfg.ChunkSize > 64<<20 || cfg.ChunkSize&(cfg.ChunkSize-1) != 0 {
		return nil, fmt.Errorf("init repository: chunk size %d is not a power of two from 64 KiB to 64 MiB", cfg.ChunkSize)
	}
	if cfg.Hash != HashBLAKE3 && cfg.Hash != HashSHA256 {
		return nil, fmt.Errorf("init repository: unknown hash %q (blake3 or sha256)", cfg.Hash)
	}
	var k *keys
	if opts.Password != "" {
		n := opts.ScryptN
		if n == 0 {
			n = 1 << 15
		}
		enc := &Encryption{Cipher: "aes-256-gcm", KDF: "scrypt", N: n, R: 8, P: 1, Salt: randomBytes(32)}
		k = &keys{data: randomBytes(32), id: randomBytes(32)}
		kek, err := enc.kek(opts.Password)
		if err != nil {
			return nil, err
		}
		nonce := randomBytes(12)
		enc.Wrapped = append(nonce, kek.Seal(nil, nonce, append(append([]byte{}, k.data...), k.id...), []byte(cfg.ID))...)
		cfg.Encryption = enc
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := b.Put(ctx, "config", append(data, '\n')); err != nil {
		return nil, fmt.Errorf("init repository at %s: %w", b.Location(), err)
	}
	return newRepository(b, cfg, k)
}

type keys struct {
	data []byte // AES-256-GCM key for object payloads
	id   []byte // key for chunk/index identifiers (keyed hash)
}

func (e *Encryption) kek(password string) (cipher.AEAD, error) {
	if e.KDF != "scrypt" || e.Cipher != "aes-256-gcm" {
		return nil, fmt.Errorf("unsupported encryption %s/%s", e.KDF, e.Cipher)
	}
	if e.N < 2 || e.N > 1<<22 || e.R < 1 || e.R > 64 || e.P < 1 || e.P > 16 {
		return nil, fmt.Errorf("scrypt parameters N=%d r=%d p=%d out of range", e.N, e.R, e.P)
	}
	k, err := scrypt.Key([]byte(password), e.Salt, e.N, e.R, e.P, 32)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	return newGCM(k)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// ErrPassword is returned when the password does not unwrap the keys.
var ErrPassword = errors.New("wrong password for this repository")

// ErrNeedPassword is returned when opening an encrypted repository
// without a password.
var ErrNeedPassword = errors.New("repository is encrypted: give LIFEBOAT_PASSWORD or --password-file")

// Open reads the config and, for an encrypted repository, unwraps the keys.
func Open(ctx context.Context, b storage.Backend, password string) (*Repository, error) {
	data, err := b.Get(ctx, "config")
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("open repository at %s: no config: not a Lifeboat repository (run `lifeboat repo init`)", b.Location())
	}
	if err != nil {
		return nil, fmt.Errorf("open repository at %s: %w", b.Location(), err)
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("open repository at %s: config: %w", b.Location(), err)
	}
	if cfg.Format != FormatName || cfg.Version != 1 {
		return nil, fmt.Errorf("open repository at %s: config is %q version %d, want %q version 1", b.Location(), cfg.Format, cfg.Version, FormatName)
	}
	if cfg.ChunkSize < 64<<10 || cfg.ChunkSize > 64<<20 || (cfg.Hash != HashBLAKE3 && cfg.Hash != HashSHA256) {
		return nil, fmt.Errorf("open repository at %s: config has chunk size %d, hash %q: not supported", b.Location(), cfg.ChunkSize, cfg.Hash)
	}
	var k *keys
	if cfg.Encryption != nil {
		if password == "" {
			return nil, fmt.Errorf("open repository at %s: %w", b.Location(), ErrNeedPassword)
		}
		kek, err := cfg.Encryption.kek(password)
		if err != nil {
			return nil, fmt.Errorf("open repository at %s: %w", b.Location(), err)
		}
		w := cfg.Encryption.Wrapped
		if len(w) < 12 {
			return nil, fmt.Errorf("open repository at %s: wrapped key too short", b.Location())
		}
		plain, err := kek.Open(nil, w[:12], w[12:], []byte(cfg.ID))
		if err != nil || len(plain) != 64 {
			return nil, fmt.Errorf("open repository at %s: %w", b.Location(), ErrPassword)
		}
		k = &keys{data: plain[:32], id: plain[32:]}
	}
	return newRepository(b, cfg, k)
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return b
}

func randomHex(n int) string { return hex.EncodeToString(randomBytes(n)) }
