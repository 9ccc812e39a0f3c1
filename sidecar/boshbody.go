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
func parseBOSHBody(data []byte) (*boshBody, error) {
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
