package sidecar

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
)

const (
	nsHTTPBind = "http://jabber.org/protocol/httpbind"
	nsXBOSH    = "urn:xmpp:xbosh"
	// maxBOSHChildren bounds the elements one request body carries.
	maxBOSHChildren = 100
	// maxBOSHDepth bounds element nesting in a request body.
	maxBOSHDepth = 64
)

var errBOSHBody = errors.New("sidecar: bad BOSH body")

// boshBody is a parsed XEP-0124 request <body/>.
type boshBody struct {
	attrs map[string]string // unqualified attributes, plus "xmpp:restart" and "xmpp:version"
	// kids are the raw top-level child elements, in order, with their
	// resolved names; a child without a namespace of its own is in the
	// body's, which the bridge reads as jabber:client (XEP-0206 clients
	// send xmlns="jabber:client"; some older ones send none).
	kids []boshChild
}

type boshChild struct {
	name xml.Name
	raw  []byte
}

// parseBOSHBody parses a request body: one <body/> in the httpbind
// namespace, nothing after it, no DTD, comments or processing
// instructions after the XML declaration, at most maxBOSHChildren
// children nested at most maxBOSHDepth deep. The caller bounds the size.
// It never panics (fuzzed: FuzzParseBOSHBody).
//
// A body without children — the poll, two of the three requests a BOSH
// message takes — is read by parseEmptyBOSHBody without encoding/xml;
// anything else, or anything that scan is not sure of, by decodeBOSHBody.
func parseBOSHBody(data []byte) (*boshBody, error) {
	if b, ok := parseEmptyBOSHBody(data); ok {
		return b, nil
	}
	return decodeBOSHBody(data)
}

// decodeBOSHBody is parseBOSHBody on encoding/xml: every body.
func decodeBOSHBody(data []byte) (*boshBody, error) {
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	b := &boshBody{attrs: map[string]string{}}
	depth, start, sawRoot, sawDecl := 0, int64(0), false, false
	var kidName xml.Name
	for {
		off := d.InputOffset()
		tok, err := d.Token()
		if err == io.EOF {
			if !sawRoot || depth != 0 {
				return nil, fmt.Errorf("%w: incomplete", errBOSHBody)
			}
			return b, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errBOSHBody, err)
		}
		switch t := tok.(type) {
		case xml.ProcInst:
			if sawRoot || sawDecl || t.Target != "xml" {
				return nil, fmt.Errorf("%w: processing instruction", errBOSHBody)
			}
			sawDecl = true
		case xml.Directive, xml.Comment:
			return nil, fmt.Errorf("%w: DTD or comment", errBOSHBody)
		case xml.CharData:
			if depth == 0 && len(bytes.TrimSpace(t)) > 0 {
				return nil, fmt.Errorf("%w: text outside <body/>", errBOSHBody)
			}
		case xml.StartElement:
			switch {
			case depth == 0 && sawRoot:
				return nil, fmt.Errorf("%w: more than one root element", errBOSHBody)
			case depth == 0:
				if t.Name.Space != nsHTTPBind || t.Name.Local != "body" {
					return nil, fmt.Errorf("%w: root is not <body xmlns=%q/>", errBOSHBody, nsHTTPBind)
				}
				sawRoot = true
				for _, a := range t.Attr {
					switch a.Name.Space {
					case "":
						b.attrs[a.Name.Local] = a.Value
					case nsXBOSH:
						b.attrs["xmpp:"+a.Name.Local] = a.Value
					}
				}
			case depth == 1:
				if len(b.kids) >= maxBOSHChildren {
					return nil, fmt.Errorf("%w: more than %d elements", errBOSHBody, maxBOSHChildren)
				}
				start, kidName = off, t.Name
			case depth >= maxBOSHDepth:
				return nil, fmt.Errorf("%w: nested too deep", errBOSHBody)
			}
			depth++
		case xml.EndElement:
			depth--
			if depth == 1 {
				b.kids = append(b.kids, boshChild{name: kidName, raw: data[start:d.InputOffset():d.InputOffset()]})
			}
		}
	}
}

// maxFastAttrs is the most attributes parseEmptyBOSHBody reads; a body
// with more goes to encoding/xml.
const maxFastAttrs = 24

// parseEmptyBOSHBody reads a body without children: optional white
// space, <body, attributes, /> (or > white space </body>), white space.
// It takes only a strict subset of what decodeBOSHBody accepts — plain
// ASCII names with at most one colon, quoted values of printable ASCII
// without '&', '<' or a carriage return, no duplicate attribute, the
// default namespace the httpbind one, no empty prefix declaration, at
// most maxFastAttrs attributes — and reports false for anything else,
// whose bytes decodeBOSHBody then judges. When it reports true, its body
// is the one decodeBOSHBody returns for the same bytes
// (FuzzEmptyBOSHBody checks it differentially).
func parseEmptyBOSHBody(data []byte) (*boshBody, bool) {
	type span struct{ name, colon, value [2]int } // colon: index in name, -1 for none
	var attrs [maxFastAttrs]span
	n := 0
	i := xmlSpaceEnd(data, 0)
	if !bytes.HasPrefix(data[i:], []byte("<body")) {
		return nil, false
	}
	i += len("<body")
	for {
		j := xmlSpaceEnd(data, i)
		if j == len(data) {
			return nil, false
		}
		if data[j] == '/' || data[j] == '>' {
			i = j
			break
		}
		if j == i || n == maxFastAttrs {
			return nil, false // attributes apart, and not too many
		}
		a := span{colon: [2]int{-1}}
		a.name[0], i = j, j
		for i < len(data) && fastNameByte(data[i]) {
			if data[i] == ':' {
				if a.colon[0] >= 0 {
					return nil, false
				}
				a.colon[0] = i - j
			}
			i++
		}
		a.name[1] = i
		name := data[a.name[0]:a.name[1]]
		if len(name) == 0 || !fastNameStart(name[0]) ||
			(a.colon[0] >= 0 && (a.colon[0] == len(name)-1 || !fastNameStart(name[a.colon[0]+1]))) {
			return nil, false
		}
		for _, o := range attrs[:n] {
			if bytes.Equal(data[o.name[0]:o.name[1]], name) {
				return nil, false
			}
		}
		i = xmlSpaceEnd(data, i)
		if i == len(data) || data[i] != '=' {
			return nil, false
		}
		i = xmlSpaceEnd(data, i+1)
		if i == len(data) || (data[i] != '"' && data[i] != '\'') {
			return nil, false
		}
		quote := data[i]
		i++
		a.value[0] = i
		for i < len(data) && data[i] != quote {
			if c := data[i]; c == '<' || c == '&' || c > '~' || (c < ' ' && c != '\t' && c != '\n') {
				return nil, false
			}
			i++
		}
		if i == len(data) {
			return nil, false
		}
		a.value[1] = i
		i++
		attrs[n] = a
		n++
	}
	if data[i] == '/' {
		if !bytes.HasPrefix(data[i:], []byte("/>")) {
			return nil, false
		}
		i += len("/>")
	} else {
		i = xmlSpaceEnd(data, i+1)
		if !bytes.HasPrefix(data[i:], []byte("</body")) {
			return nil, false
		}
		i = xmlSpaceEnd(data, i+len("</body"))
		if i == len(data) || data[i] != '>' {
			return nil, false
		}
		i++
	}
	if xmlSpaceEnd(data, i) != len(data) {
		return nil, false
	}
	// One string for every name and value: they are its substrings.
	s := string(data)
	str := func(p [2]int) string { return s[p[0]:p[1]] }
	prefixNS := func(prefix string) (string, bool) {
		for _, a := range attrs[:n] {
			if a.colon[0] >= 0 && str(a.name)[:a.colon[0]] == "xmlns" && str(a.name)[a.colon[0]+1:] == prefix {
				return str(a.value), true
			}
		}
		return "", false
	}
	b := &boshBody{attrs: make(map[string]string, n)}
	for _, a := range attrs[:n] {
		name := str(a.name)
		if a.colon[0] < 0 {
			b.attrs[name] = str(a.value)
			continue
		}
		prefix, local := name[:a.colon[0]], name[a.colon[0]+1:]
		switch ns, ok := prefixNS(prefix); {
		case prefix == "xmlns" && a.value[0] == a.value[1]:
			return nil, false // an empty prefix declaration: encoding/xml's own reading
		case prefix == "xmlns" || prefix == "xml" || !ok:
			// A declaration, xml:lang and the like, or an unbound
			// prefix: in no namespace the bridge reads.
		case ns == nsXBOSH:
			b.attrs["xmpp:"+local] = str(a.value)
		case ns == "":
			return nil, false
		}
	}
	if b.attrs["xmlns"] != nsHTTPBind {
		return nil, false
	}
	return b, true
}

// xmlSpaceEnd returns the index of the first byte at or after i that is
// not XML white space.
func xmlSpaceEnd(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

func fastNameStart(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_'
}

func fastNameByte(c byte) bool {
	return fastNameStart(c) || '0' <= c && c <= '9' || c == '-' || c == '.' || c == ':'
}

// ridOf parses the rid attribute: 1..2^53-1, as XEP-0124 requires.
func (b *boshBody) ridOf() (int64, error) {
	v, ok := b.attrs["rid"]
	if !ok {
		return 0, fmt.Errorf("%w: no rid", errBOSHBody)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || n > 1<<53-1 {
		return 0, fmt.Errorf("%w: rid %q", errBOSHBody, v)
	}
	return n, nil
}

// intAttr parses a small non-negative integer attribute, def when absent
// or malformed.
func (b *boshBody) intAttr(name string, def int) int {
	n, err := strconv.Atoi(b.attrs[name])
	if err != nil || n < 0 {
		return def
	}
	return n
}
