// Package tape copies recovery points from a repository to tape cartridges
// and brings them back, with no server and no repository needed to read a
// cartridge: every cartridge describes itself. This text is the
// specification of the Lifeboat tape format, version 1; tape/FORMAT.md and
// the package documentation hold it byte for byte.
//
// # Conventions
//
// All integers are little-endian. CRC32C is CRC-32 with the Castagnoli
// polynomial. IDs written as hex are lower case.
//
// # Cartridge layout
//
// A cartridge holds tape files separated by filemarks (FM):
//
//	file 0       label section     one 'L' record
//	file 1 … n   data sections     one per point, or per part of a point
//	file n+1     catalog section   a 'C' record, then a 'T' record
//	FM FM        end of data (the catalog's filemark and one more)
//
// The cartridges written by one run form a set (a random 16-byte set ID);
// each has a sequence number in the set, from 1. A point that does not fit
// continues on the next cartridge of the set ("spanning").
//
// # Blocks
//
// Every block of a cartridge has the same size B, a power of two from 4 KiB
// to 8 MiB (256 KiB by default), given in the label and in every block
// header. A block is written as one tape block of exactly B bytes:
//
//	offset size
//	0      4    magic "LBTB"
//	4      1    format version, 1
//	5      1    section kind: 'L' label, 'D' data, 'C' catalog
//	6      1    log2(B)
//	7      1    flags, 0
//	8      16   set ID
//	24     4    sequence number of the cartridge in the set
//	28     4    payload bytes used in this block, at most B - 48
//	32     8    block number: blocks written before this one on the
//	            cartridge, filemarks not counted (the label block is 0)
//	40     4    offset in the payload of the first record that starts in
//	            this block, 0xFFFFFFFF if none starts in it
//	44     4    CRC32C of the whole block computed with this field zero
//	48     …    payload, then zeros up to B
//
// A section is a stream of records: the payloads of its blocks joined in
// order. Records cross block boundaries freely; a section starts on a new
// block and its last block is padded with zeros. A reader checks the magic,
// version, size, set, sequence number, that block numbers follow each other
// and the CRC, and reports any failure with the cartridge's barcode and the
// block number: a damaged block is never skipped.
//
// # Records
//
//	offset size
//	0      1    type
//	1      1    flags: bit 0 "continued" (on 'P' and 'F', see Spanning)
//	2      2    zero
//	4      4    body length, at most 256 MiB
//	8      4    CRC32C of the body
//	12     4    CRC32C of bytes 0 to 11
//	16     …    body
//
// Record types:
//
//	'L'  label (JSON)
//	'P'  point header: the point's manifest, exactly the JSON a repository
//	     stores in points/<id> (repo.Point)
//	'F'  file header: u32 n | n bytes of JSON | the file's index in the
//	     repository's binary index form ("LBIX", see docs/ARCHITECTURE.md)
//	'K'  chunk: u64 slot | 32-byte chunk ID | 32-byte SHA-256 of the
//	     plaintext | plaintext
//	'Z'  end of point (JSON)
//	'C'  catalog (JSON)
//	'T'  trailer (binary)
//
// # Label
//
// The first record of every cartridge:
//
//	{"format": "lifeboat-tape", "version": 1, "id": "<32 hex, unique per
//	 cartridge written>", "barcode": "LB0001L8", "set": "<32 hex>",
//	 "seq": 1, "previous": "<barcode of seq-1, or empty>",
//	 "block_size": 262144, "time": "RFC 3339", "repository": "<repository
//	 ID>", "hash": "blake3", "chunk_size": 4194304, "encrypted": false,
//	 "writer": "lifeboat"}
//
// "encrypted" says that the source repository is encrypted: the chunks on
// the tape are plaintext all the same.
//
// # Data sections
//
// A data section holds one point, or the part of a point that is on this
// cartridge:
//
//	'P'                      point header
//	for each file of the point, in the manifest's order:
//	  'F'                    file header
//	  'K' …                  one per stored slot of the index, in slot order
//	'Z'                      end of point, only in the point's last part
//
// The JSON of 'F' is {"path": "<file path>", "index": "<index ID>",
// "chunks": <stored slots>, "first_slot": <slot>}. Holes (slots the index
// marks as holes) are not written. A 'K' record's plaintext is the slot's
// whole content: the chunk size, less for the last slot of a file. Its chunk
// ID is the repository's (keyed when the repository is encrypted); the
// SHA-256 lets any reader verify the plaintext. A reader checks that slots
// rise, that each is a stored slot of the index with that chunk ID, the
// length and the SHA-256.
//
// The JSON of 'Z' is {"point": "<id>", "files": n, "chunks": n, "bytes": n}:
// totals over the whole point, which the reader compares with what it read.
//
// # Spanning
//
// The writer treats the drive's early warning (and, where a drive knows it,
// too little room left for the next record and the catalog) as the end of
// the cartridge: before it writes a point header, a file header or a chunk
// it checks, and if the cartridge is full it ends the data section,
// writes the catalog (naming the next cartridge), the trailer and the
// filemarks, unloads, loads the next cartridge, writes its label with the
// next sequence number and continues: the new data section starts with the
// point's 'P' again with the continued flag, and, when the break fell inside
// a file, that file's 'F' again with the continued flag and "first_slot" set
// to the next slot to come. A section that ends without 'Z' continues on the
// next cartridge of the set.
//
// # Catalog and trailer
//
// The catalog section's 'C' record lists what the cartridge holds:
//
//	{"format": "lifeboat-tape-catalog", "version": 1, "label": "<label id>",
//	 "barcode": "…", "set": "…", "seq": 1, "block_size": 262144,
//	 "catalog_block": <first block of the catalog section>,
//	 "sections": [{"file": 1, "first_block": 1, "last_block": 80,
//	   "point": "<id>", "name": "…", "kind": "…", "time": "RFC 3339",
//	   "continued": false, "continues": true, "chunks": n, "bytes": n,
//	   "files": [{"path": "…", "first_block": 1, "last_block": 80,
//	     "first_slot": 0, "end_slot": 7, "chunks": 5, "bytes": n}]}],
//	 "next": {"seq": 2, "barcode": "LB0002L8"}}
//
// "continued" says the section continues a point from the previous
// cartridge, "continues" that it goes on in the next; "next" is present
// when the last section continues. "end_slot" is one past the last slot the
// section holds of the file; "bytes" counts chunk plaintext.
//
// The 'T' record follows in the same section:
//
//	offset size
//	0      8    magic "LBTRAILR"
//	8      4    version, 1
//	12     4    sequence number
//	16     16   set ID
//	32     8    first block of the catalog section
//	40     4    number of data sections
//	44     4    flags: bit 0 the last section continues on the next cartridge
//	48     32   SHA-256 of the 'C' record's body
//
// # Reading
//
// A reader rewinds, reads the label (with a buffer of 8 MiB, since the block
// size is not known yet), then spaces over data sections one filemark at a
// time, reading only the first block of each, until the catalog section. If
// the catalog is missing (a cartridge never closed, or truncated) or
// damaged, the reader rebuilds it by reading every data section; a verify
// reads every block in any case. To restore a point it positions on the
// point's section with the catalog's file number and follows the parts
// from cartridge to cartridge.
//
// # Virtual tape library
//
// Package tape/vtl keeps cartridges as files, <barcode>.tape in the
// library's folder, beside library.json (slots and their cartridges).
// A cartridge file starts with a 32-byte header: magic "LBVTAPE1", u64
// capacity, u64 early-warning position and u64 zero; the tape follows as
// entries:
//
//	block      u32 n (1 ≤ n ≤ 8 MiB) | n bytes | u32 n
//	filemark   u32 0
//
// The end of the file is the end of data. Positions count bytes after the
// header: the capacity bounds them, and early warning is on from the
// early-warning position. Writing at a position discards everything after
// it, as on tape.
package tape
