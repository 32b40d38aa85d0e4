package hyperv

import (
	"bytes"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// maxDepth bounds nesting in both formats. Hyper-V's deepest keys are
// about eight levels down; the bound keeps hostile input from exhausting
// the stack of anything that walks the tree.
const maxDepth = 64

// ParseError is a configuration file that could not be read. It names the
// file, and where it knows them the line (XML) or byte offset (VMCX) and
// the key path.
type ParseError struct {
	File   string
	Line   int    // XML line, 0 if unknown
	Offset int64  // VMCX byte offset, -1 if unknown
	Path   string // slash-separated key path, "" if none
	Err    error
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString("hyperv: ")
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Offset >= 0 {
		fmt.Fprintf(&b, " at offset %#x", e.Offset)
	}
	if e.Path != "" {
		fmt.Fprintf(&b, " (%s)", e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ParseError) Unwrap() error { return e.Err }

// ParseXML parses an XML-format Hyper-V configuration (Windows Server 2008
// R2 to 2012 R2: "Virtual Machines/<GUID>.xml" and "Snapshots/<GUID>.xml").
// name is used only in errors.
//
// Hyper-V writes these files as UTF-16LE with a BOM and declares
// encoding="UTF-16"; copies that went through other tools are often plain
// ASCII or UTF-8 that still carry the UTF-16 declaration. Both are read:
// real UTF-16 (by BOM, or by the NUL bytes of an ASCII-range document) is
// transcoded to UTF-8 first, and the declared charset is then taken as a
// label only.
func ParseXML(name string, data []byte) (*Config, error) {
	perr := func(line int, path string, err error) error {
		return &ParseError{File: name, Line: line, Offset: -1, Path: path, Err: err}
	}
	text, err := utf8Text(data)
	if err != nil {
		return nil, perr(0, "", err)
	}
	d := xml.NewDecoder(bytes.NewReader(text))
	d.CharsetReader = charsetReader
	var (
		root  *Node
		stack []*Node
		texts [][]byte
	)
	pathOf := func() string {
		var parts []string
		for _, n := range stack {
			parts = append(parts, n.Name)
		}
		return strings.Join(parts, "/")
	}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		line, _ := d.InputPos()
		if err != nil {
			var se *xml.SyntaxError
			if errors.As(err, &se) {
				return nil, perr(se.Line, pathOf(), errors.New(se.Msg))
			}
			return nil, perr(line, pathOf(), err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(stack) == 0 && root != nil {
				return nil, perr(line, "", fmt.Errorf("second root element <%s>", t.Name.Local))
			}
			if len(stack) >= maxDepth {
				return nil, perr(line, pathOf(), fmt.Errorf("nested deeper than %d elements", maxDepth))
			}
			n := &Node{Name: t.Name.Local, Pos: fmt.Sprintf("line %d", line)}
			for _, a := range t.Attr {
				if a.Name.Local == "type" && a.Name.Space == "" {
					n.Kind, n.Err = xmlKind(a.Value)
				}
			}
			if len(stack) > 0 {
				parent := stack[len(stack)-1]
				if parent.Kind != KindNode {
					return nil, perr(line, pathOf(), fmt.Errorf("typed (%s) element has a child element <%s>", parent.Kind, t.Name.Local))
				}
				parent.Children = append(parent.Children, n)
			} else {
				if n.Name != "configuration" {
					return nil, perr(line, "", fmt.Errorf("root element is <%s>, not <configuration>: not a Hyper-V VM configuration", n.Name))
				}
				root = n
			}
			stack = append(stack, n)
			texts = append(texts, nil)
		case xml.CharData:
			if len(stack) > 0 {
				texts[len(texts)-1] = append(texts[len(texts)-1], t...)
			}
		case xml.EndElement:
			n := stack[len(stack)-1]
			setXMLValue(n, string(texts[len(texts)-1]))
			stack = stack[:len(stack)-1]
			texts = texts[:len(texts)-1]
		}
	}
	if root == nil {
		return nil, perr(0, "", errors.New("no <configuration> element: not a Hyper-V VM configuration"))
	}
	return &Config{File: name, Format: FormatXML, Root: root}, nil
}

// xmlKind maps a type attribute to a Kind. An unknown type is kept as a
// string, with the reason in Err only if someone reads it as another kind.
func xmlKind(t string) (Kind, error) {
	switch strings.ToLower(t) {
	case "string":
		return KindString, nil
	case "integer":
		return KindInt, nil
	case "bool", "boolean":
		return KindBool, nil
	case "bytes":
		return KindBytes, nil
	}
	return KindString, nil
}

// setXMLValue decodes an element's text into its typed value. An untyped
// element without children but with text is taken as a string.
func setXMLValue(n *Node, text string) {
	if n.Err != nil {
		return
	}
	switch n.Kind {
	case KindNode:
		if len(n.Children) == 0 && strings.TrimSpace(text) != "" {
			n.Kind, n.Str = KindString, text
		}
	case KindString:
		n.Str = text
	case KindInt:
		s := strings.TrimSpace(text)
		if v, err := strconv.ParseInt(s, 10, 64); err == nil {
			n.Int = v
		} else if u, err := strconv.ParseUint(s, 10, 64); err == nil {
			n.Kind, n.Uint = KindUint, u
		} else {
			n.Err = fmt.Errorf("integer %q: %w", truncate(s), strconv.ErrSyntax)
		}
	case KindBool:
		switch strings.ToLower(strings.TrimSpace(text)) {
		case "true", "1":
			n.Bool = true
		case "false", "0":
		default:
			n.Err = fmt.Errorf("bool %q is neither True nor False", truncate(text))
		}
	case KindBytes:
		s := strings.Map(func(r rune) rune {
			if r == ' ' || r == '\n' || r == '\r' || r == '\t' {
				return -1
			}
			return r
		}, text)
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			n.Err = fmt.Errorf("bytes: bad base64: %w", err)
		}
		n.Bytes = b
	}
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// utf8Text returns data as UTF-8, transcoding UTF-16 (with a BOM, or
// without one when the NUL bytes of ASCII-range text give it away).
func utf8Text(data []byte) ([]byte, error) {
	switch {
	case bytes.HasPrefix(data, []byte{0xEF, 0xBB, 0xBF}):
		return data[3:], nil
	case bytes.HasPrefix(data, []byte{0xFF, 0xFE}):
		return fromUTF16(data[2:], false)
	case bytes.HasPrefix(data, []byte{0xFE, 0xFF}):
		return fromUTF16(data[2:], true)
	case len(data) >= 2 && data[0] != 0 && data[1] == 0:
		return fromUTF16(data, false)
	case len(data) >= 2 && data[0] == 0 && data[1] != 0:
		return fromUTF16(data, true)
	}
	return data, nil
}

func fromUTF16(b []byte, bigEndian bool) ([]byte, error) {
	if len(b)%2 != 0 {
		return nil, fmt.Errorf("UTF-16 text has an odd length (%d bytes): truncated file?", len(b))
	}
	u := make([]uint16, len(b)/2)
	for i := range u {
		if bigEndian {
			u[i] = uint16(b[2*i])<<8 | uint16(b[2*i+1])
		} else {
			u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
		}
	}
	runes := utf16.Decode(u)
	out := make([]byte, 0, len(runes))
	for _, r := range runes {
		out = utf8.AppendRune(out, r)
	}
	return out, nil
}

// charsetReader accepts the declared encodings Hyper-V configurations
// carry. By the time the decoder asks, the bytes are already UTF-8 (real
// UTF-16 was transcoded by utf8Text, and ASCII "UTF-16" files never were
// UTF-16), so UTF-16 labels pass the bytes through. Latin-1 is mapped
// byte-for-rune; anything else is refused by name.
func charsetReader(label string, in io.Reader) (io.Reader, error) {
	switch strings.ToLower(strings.TrimSpace(label)) {
	case "utf-16", "utf-16le", "utf-16be", "ucs-2", "unicode", "utf-8", "utf8", "us-ascii", "ascii":
		return in, nil
	case "iso-8859-1", "latin1", "latin-1", "l1":
		b, err := io.ReadAll(in)
		if err != nil {
			return nil, err
		}
		out := make([]byte, 0, len(b))
		for _, c := range b {
			out = utf8.AppendRune(out, rune(c))
		}
		return bytes.NewReader(out), nil
	}
	return nil, fmt.Errorf("unsupported declared encoding %q", label)
}
