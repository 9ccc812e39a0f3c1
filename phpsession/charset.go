package phpsession

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/htmlindex"
)

// Charset converts session strings to UTF-8. Expresso writes its sessions
// in ISO-8859-1; the zero Charset is UTF-8.
type Charset struct {
	name string
	enc  encoding.Encoding // nil for UTF-8
}

// ParseCharset accepts the WHATWG/IANA names golang.org/x/text knows:
// "UTF-8", "ISO-8859-1", "latin1", "windows-1252", ...
func ParseCharset(name string) (Charset, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	if n == "" || n == "utf-8" || n == "utf8" {
		return Charset{name: "UTF-8"}, nil
	}
	if n == "iso-8859-1" || n == "iso8859-1" || n == "latin1" || n == "l1" {
		// Strict ISO-8859-1 (bytes 0x80-0x9f are C1 controls), as PHP's
		// mb_convert_encoding reads it; WHATWG would map it to windows-1252.
		return Charset{name: name, enc: charmap.ISO8859_1}, nil
	}
	enc, err := htmlindex.Get(n)
	if err != nil {
		return Charset{}, fmt.Errorf("%w: unknown charset %q", ErrConfig, name)
	}
	canon, _ := htmlindex.Name(enc)
	if canon == "utf-8" {
		return Charset{name: "UTF-8"}, nil
	}
	return Charset{name: name, enc: enc}, nil
}

// Name is the charset's name as configured.
func (c Charset) Name() string {
	if c.name == "" {
		return "UTF-8"
	}
	return c.name
}

// String converts b to UTF-8. Invalid UTF-8 in a UTF-8 session becomes
// U+FFFD rather than passing through.
func (c Charset) String(b []byte) string {
	if c.enc == nil {
		if utf8.Valid(b) {
			return string(b)
		}
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	out, err := c.enc.NewDecoder().Bytes(b)
	if err != nil {
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	return string(out)
}

// Encode converts a UTF-8 string back to the bytes the session stores, the
// inverse of String: how PHP wrote it. A character the charset cannot hold
// is an error.
func (c Charset) Encode(s string) ([]byte, error) {
	if c.enc == nil {
		return []byte(s), nil
	}
	b, err := c.enc.NewEncoder().Bytes([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("phpsession: %s cannot hold the string: %w", c.Name(), err)
	}
	return b, nil
}
