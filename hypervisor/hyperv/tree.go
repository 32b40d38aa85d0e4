package hyperv

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// Kind is the type of a Node's value. Both configuration formats carry the
// same typed key tree; XML names the types in a type attribute, VMCX in
// each key entry.
type Kind uint8

const (
	KindNode   Kind = iota // a container of child keys
	KindString             // XML type="string"; VMCX type 6 (UTF-16)
	KindInt                // XML type="integer"; VMCX type 3 (int64)
	KindUint               // VMCX type 4 (uint64)
	KindBool               // XML type="bool"; VMCX type 8
	KindBytes              // XML type="bytes" (base64); VMCX type 7
	KindDouble             // VMCX type 5
)

func (k Kind) String() string {
	switch k {
	case KindNode:
		return "node"
	case KindString:
		return "string"
	case KindInt:
		return "integer"
	case KindUint:
		return "unsigned"
	case KindBool:
		return "bool"
	case KindBytes:
		return "bytes"
	case KindDouble:
		return "double"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Node is one key of a configuration: a container (KindNode) or a typed
// value. Names need not be unique among siblings (metrics repeat
// "devicetype"); Child returns the first.
type Node struct {
	Name     string
	Kind     Kind
	Str      string // KindString
	Int      int64  // KindInt
	Uint     uint64 // KindUint
	Bool     bool   // KindBool
	Bytes    []byte // KindBytes
	Double   float64
	Children []*Node
	// Pos says where the key is in the file ("line 84", "key table 3
	// offset 0x4a5e"), for error messages.
	Pos string
	// Err is set when the value could not be decoded (an XML integer that
	// is not a number). Parsing goes on, because most keys are never
	// read; reading this one reports Err.
	Err error
}

// Child returns the first child named name, compared exactly and then
// case-insensitively (Hyper-V spells "Connection" and "connection" in
// different devices), or nil.
func (n *Node) Child(name string) *Node {
	if n == nil {
		return nil
	}
	for _, c := range n.Children {
		if c.Name == name {
			return c
		}
	}
	for _, c := range n.Children {
		if strings.EqualFold(c.Name, name) {
			return c
		}
	}
	return nil
}

// Lookup follows a slash-separated path of child names ("settings/memory/
// bank/size"), or returns nil.
func (n *Node) Lookup(path string) *Node {
	for part := range strings.SplitSeq(path, "/") {
		n = n.Child(part)
		if n == nil {
			return nil
		}
	}
	return n
}

// errMissing marks a key that is not there, as opposed to one with a bad
// value.
var errMissing = errors.New("missing")

// valueError says which key of which file is wrong.
func valueError(n *Node, path, want string) error {
	if n == nil {
		return fmt.Errorf("%s: %w", path, errMissing)
	}
	if n.Err != nil {
		return fmt.Errorf("%s (%s): %w", path, n.Pos, n.Err)
	}
	return fmt.Errorf("%s (%s): is %s, want %s", path, n.Pos, n.Kind, want)
}

// stringAt returns the string at path below n.
func stringAt(n *Node, path string) (string, error) {
	v := n.Lookup(path)
	if v == nil || v.Err != nil || v.Kind != KindString {
		return "", valueError(v, path, "string")
	}
	return v.Str, nil
}

// intAt returns the integer at path below n, whichever integer kind holds it.
func intAt(n *Node, path string) (int64, error) {
	v := n.Lookup(path)
	if v != nil && v.Err == nil {
		switch v.Kind {
		case KindInt:
			return v.Int, nil
		case KindUint:
			if v.Uint <= math.MaxInt64 {
				return int64(v.Uint), nil
			}
		}
	}
	return 0, valueError(v, path, "integer")
}

// boolAt returns the bool at path below n.
func boolAt(n *Node, path string) (bool, error) {
	v := n.Lookup(path)
	if v == nil || v.Err != nil || v.Kind != KindBool {
		return false, valueError(v, path, "bool")
	}
	return v.Bool, nil
}

// bytesAt returns the bytes at path below n.
func bytesAt(n *Node, path string) ([]byte, error) {
	v := n.Lookup(path)
	if v == nil || v.Err != nil || v.Kind != KindBytes {
		return nil, valueError(v, path, "bytes")
	}
	return v.Bytes, nil
}
