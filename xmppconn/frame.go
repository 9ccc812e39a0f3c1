package xmppconn

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"sync"
)

// Namespaces used on the wire.
const (
	nsStream   = "http://etherx.jabber.org/streams"
	nsClient   = "jabber:client"
	nsTLS      = "urn:ietf:params:xml:ns:xmpp-tls"
	nsSASL     = "urn:ietf:params:xml:ns:xmpp-sasl"
	nsBind     = "urn:ietf:params:xml:ns:xmpp-bind"
	nsSession  = "urn:ietf:params:xml:ns:xmpp-session"
	nsStanzas  = "urn:ietf:params:xml:ns:xmpp-stanzas"
	nsStreams  = "urn:ietf:params:xml:ns:xmpp-streams"
	nsSM       = "urn:xmpp:sm:3"
	nsPing     = "urn:xmpp:ping"
	nsDiscoI   = "http://jabber.org/protocol/disco#info"
	nsVersion  = "jabber:iq:version"
	nsRoster   = "jabber:iq:roster"
	nsCarbons  = "urn:xmpp:carbons:2"
	nsForward  = "urn:xmpp:forward:0"
	nsDelay    = "urn:xmpp:delay"
	nsReceipts = "urn:xmpp:receipts"
	nsChat     = "http://jabber.org/protocol/chatstates"
)

// frameKind classifies what the framer read from the stream.
type frameKind int

const (
	frameElement     frameKind = iota // one complete top-level element
	frameStreamOpen                   // <stream:stream ...> (unclosed start tag)
	frameStreamClose                  // </stream:stream>
	frameSpace                        // whitespace keepalive, nothing else buffered
	frameSkipped                      // a complete element over the limit: its start tag only
)

// maxDepth bounds element nesting inside one stanza.
const maxDepth = 64

// skipFactor bounds how far the framer reads through one element over its
// limit: an element longer than skipFactor times the limit is not a stanza
// any server relays (Prosody and ejabberd refuse more than 256 or 512 KiB
// from a sender; re-escaping '"' or "'" as &quot; or &apos; grows that at
// most sixfold), so the stream is closed rather than read forever.
const skipFactor = 16

// framer cuts a byte stream into top-level XML elements without building a
// tree, counting bytes so that no element held can exceed max. An element
// inside the stream that is well-formed but larger is read through to its
// end without being kept (frameSkipped), so that one oversized stanza does
// not cost the whole stream; nesting stays bounded by maxDepth, and an
// element that goes on past skipFactor times max still fails. It rejects
// what RFC 6120 §11.1 forbids (comments, processing instructions after the
// header, DTDs).
type framer struct {
	r        *byteReader
	max      int
	inStream bool
	buf      []byte // element being read; nil between elements when large

	n    int  // bytes of the current element read so far
	skip bool // over max: bytes are counted, not kept
	// The top-level start tag, to give the start tag of a skipped element:
	// whether it was read whole, and in f.buf the end of its name and of
	// its last complete attribute.
	topDone                   bool
	topName, topAttrs, topEnd int
}

var errRestrictedXML = &StreamError{Condition: "restricted-xml"}

func (f *framer) reset(r *byteReader) {
	f.r = r
	f.inStream = false
	f.release()
}

// frameBufPool recycles the buffers elements are assembled in.
var frameBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// release gives the element buffer back once the frame was consumed, so an
// idle connection holds none and a large stanza leaves nothing behind.
func (f *framer) release() {
	if f.buf == nil {
		return
	}
	if cap(f.buf) <= 16<<10 {
		b := f.buf[:0]
		frameBufPool.Put(&b)
	}
	f.buf = nil
}

// skipped returns the size in bytes of the element last returned as
// frameSkipped.
func (f *framer) skipped() int { return f.n }

func (f *framer) byte() (byte, error) {
	c, err := f.r.ReadByte()
	if err != nil {
		return 0, err
	}
	f.n++
	if f.skip {
		if f.n > skipFactor*f.max {
			return 0, fmt.Errorf("%w: an element goes on past %d bytes", ErrStanzaTooLarge, skipFactor*f.max)
		}
		return c, nil
	}
	if len(f.buf) >= f.max {
		if !f.inStream {
			return 0, ErrStanzaTooLarge
		}
		f.startSkip()
		return c, nil
	}
	f.buf = append(f.buf, c)
	return c, nil
}

// startSkip stops keeping the element: what stays is a copy of its start
// tag (or of as much of it as was read, closed after its last complete
// attribute), for the caller to tell whom it came from.
func (f *framer) startSkip() {
	var tag []byte
	switch {
	case f.topEnd > 0:
		tag = f.buf[:f.topEnd]
	case f.topAttrs > 0:
		tag = append(f.buf[:f.topAttrs], '>')
	case f.topName > 0:
		tag = append(f.buf[:f.topName], '>')
	}
	small := (*frameBufPool.Get().(*[]byte))[:0]
	small = append(small, tag...)
	f.release()
	f.buf = small
	f.skip = true
}

// next returns the next frame. The returned bytes are valid until the next
// call. For frameSkipped they are the element's start tag (nil if not even
// its name fitted in max) and skipped() its size.
func (f *framer) next() (frameKind, []byte, error) {
	f.release()
	f.buf = (*frameBufPool.Get().(*[]byte))[:0]
	f.n, f.skip = 0, false
	f.topDone, f.topName, f.topAttrs, f.topEnd = false, 0, 0, 0
	for {
		c, err := f.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		switch c {
		case ' ', '\t', '\r', '\n':
			if f.r.Buffered() == 0 {
				return frameSpace, nil, nil
			}
			continue
		case '<':
		default:
			if c == 0xEF && !f.inStream { // UTF-8 byte order mark
				b1, err1 := f.r.ReadByte()
				b2, err2 := f.r.ReadByte()
				if err1 == nil && err2 == nil && b1 == 0xBB && b2 == 0xBF {
					continue
				}
			}
			return 0, nil, fmt.Errorf("%w: text at stream level", ErrProtocol)
		}
		break
	}
	f.buf = append(f.buf, '<')
	f.n = 1
	c, err := f.byte()
	if err != nil {
		return 0, nil, err
	}
	switch c {
	case '?':
		if f.inStream {
			return 0, nil, errRestrictedXML
		}
		if err := f.until("?>"); err != nil {
			return 0, nil, err
		}
		return f.next()
	case '!':
		return 0, nil, errRestrictedXML
	case '/':
		if !f.inStream {
			return 0, nil, fmt.Errorf("%w: end tag before stream start", ErrProtocol)
		}
		if _, _, err := f.tag(newNameHash()); err != nil {
			return 0, nil, err
		}
		f.inStream = false
		return frameStreamClose, f.buf, nil
	}
	closed, name, err := f.tag(newNameHash().add(c))
	if err != nil {
		return 0, nil, err
	}
	f.topDone = true
	if !f.skip {
		f.topEnd = len(f.buf)
	}
	if !f.inStream {
		if closed || !isStreamTag(f.buf) {
			return 0, nil, fmt.Errorf("%w: expected stream header", ErrProtocol)
		}
		f.inStream = true
		return frameStreamOpen, f.buf, nil
	}
	if closed {
		return f.done()
	}
	// open holds a hash of the name of each open element, so that a
	// mismatched end tag fails at once instead of swallowing the stanzas
	// after it, even in an element being skipped; encoding/xml checks the
	// names themselves of the elements kept.
	var openBuf [8]nameHash
	open := append(openBuf[:0], name)
	for len(open) > 0 {
		c, err := f.byte()
		if err != nil {
			return 0, nil, err
		}
		if c != '<' {
			continue
		}
		c, err = f.byte()
		if err != nil {
			return 0, nil, err
		}
		switch c {
		case '/':
			_, name, err := f.tag(newNameHash())
			if err != nil {
				return 0, nil, err
			}
			if name != open[len(open)-1] {
				return 0, nil, fmt.Errorf("%w: end tag does not match", ErrProtocol)
			}
			open = open[:len(open)-1]
		case '!':
			if err := f.expect("[CDATA["); err != nil {
				return 0, nil, err
			}
			if err := f.until("]]>"); err != nil {
				return 0, nil, err
			}
		case '?':
			return 0, nil, errRestrictedXML
		default:
			closed, name, err := f.tag(newNameHash().add(c))
			if err != nil {
				return 0, nil, err
			}
			if !closed {
				if len(open) >= maxDepth {
					return 0, nil, fmt.Errorf("%w: elements nested too deep", ErrStanzaTooLarge)
				}
				open = append(open, name)
			}
		}
	}
	return f.done()
}

// done ends a top-level element: kept whole, or skipped.
func (f *framer) done() (frameKind, []byte, error) {
	if f.skip {
		return frameSkipped, f.buf, nil
	}
	return frameElement, f.buf, nil
}

// nameHash is an FNV-1a hash of an element name, enough to match end tags
// to start tags without keeping the names.
type nameHash uint64

func newNameHash() nameHash { return 14695981039346656037 }

func (h nameHash) add(c byte) nameHash { return (h ^ nameHash(c)) * 1099511628211 }

// tag reads the rest of a tag up to '>', honouring quoted attribute values.
// h is the hash of the part of the name already read. It reports whether
// the tag was self-closing and the hash of the element name.
func (f *framer) tag(h nameHash) (selfClosed bool, name nameHash, err error) {
	var quote, prev byte
	inName := true
	for {
		c, err := f.byte()
		if err != nil {
			return false, 0, err
		}
		if inName {
			switch c {
			case ' ', '\t', '\r', '\n', '/', '>':
				inName = false
				if !f.topDone && !f.skip {
					f.topName = len(f.buf) - 1
				}
			default:
				h = h.add(c)
			}
		}
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
				if !f.topDone && !f.skip {
					f.topAttrs = len(f.buf)
				}
			} else if c == '<' {
				return false, 0, fmt.Errorf("%w: '<' in attribute value", ErrProtocol)
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '<':
			return false, 0, fmt.Errorf("%w: '<' inside a tag", ErrProtocol)
		case c == '>':
			return prev == '/', h, nil
		}
		prev = c
	}
}

// until reads up to and including end (at most 3 bytes long).
func (f *framer) until(end string) error {
	var last [3]byte
	for {
		c, err := f.byte()
		if err != nil {
			return err
		}
		last[0], last[1], last[2] = last[1], last[2], c
		if string(last[3-len(end):]) == end {
			return nil
		}
	}
}

func (f *framer) expect(s string) error {
	for i := 0; i < len(s); i++ {
		c, err := f.byte()
		if err != nil {
			return err
		}
		if c != s[i] {
			return errRestrictedXML
		}
	}
	return nil
}

// isStreamTag reports whether b starts with <prefix:stream or <stream.
func isStreamTag(b []byte) bool {
	b = b[1:]
	end := bytes.IndexAny(b, " \t\r\n/>")
	if end < 0 {
		return false
	}
	name := b[:end]
	if i := bytes.IndexByte(name, ':'); i >= 0 {
		name = name[i+1:]
	}
	return string(name) == "stream"
}

// node is a parsed element.
type node struct {
	name  xml.Name
	attr  []xml.Attr
	kids  []*node
	text  string
	inner []byte // raw bytes between the start and end tags (top level only)
	// skipped is the size of a stanza over the limit that was read
	// through and not kept: the node has its start tag only.
	skipped int
}

func (n *node) get(local string) string {
	if n == nil {
		return ""
	}
	for _, a := range n.attr {
		if a.Name.Local == local && a.Name.Space == "" {
			return a.Value
		}
	}
	return ""
}

// child returns the first child with the given namespace (any if "") and
// local name (any if "").
func (n *node) child(space, local string) *node {
	if n == nil {
		return nil
	}
	for _, k := range n.kids {
		if (space == "" || k.name.Space == space) && (local == "" || k.name.Local == local) {
			return k
		}
	}
	return nil
}

func (n *node) is(space, local string) bool {
	return n != nil && n.name.Space == space && n.name.Local == local
}

// parseElement parses one frame, in the namespace context of the stream
// header hdr (the raw <stream:stream ...> tag).
func parseElement(hdr, frame []byte) (*node, error) {
	data := make([]byte, 0, len(hdr)+len(frame))
	data = append(append(data, hdr...), frame...)
	d := xml.NewDecoder(bytes.NewReader(data))
	d.Strict = true
	if _, err := d.Token(); err != nil {
		return nil, fmt.Errorf("%w: stream header: %v", ErrProtocol, err)
	}
	var stack []*node
	var root *node
	var innerStart int64
	for {
		tok, err := d.Token()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			n := &node{name: t.Name, attr: t.Attr}
			if len(stack) == 0 {
				root = n
				innerStart = d.InputOffset()
			} else {
				p := stack[len(stack)-1]
				p.kids = append(p.kids, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			stack = stack[:len(stack)-1]
			if len(stack) == 0 {
				start := int(innerStart) - len(hdr)
				end := bytes.LastIndexByte(frame, '<')
				if start >= 0 && end > start && frame[len(frame)-2] != '/' {
					root.inner = data[len(hdr)+start : len(hdr)+end : len(hdr)+end]
				}
				return root, nil
			}
		case xml.CharData:
			if len(stack) > 0 {
				n := stack[len(stack)-1]
				n.text += string(t)
			}
		}
	}
}

// parseStartTag parses the start tag of a skipped element, in the namespace
// context of the stream header hdr, into a node without children.
func parseStartTag(hdr, tag []byte) (*node, error) {
	if len(tag) == 0 {
		return nil, fmt.Errorf("%w: no start tag", ErrProtocol)
	}
	data := make([]byte, 0, len(hdr)+len(tag))
	d := xml.NewDecoder(bytes.NewReader(append(append(data, hdr...), tag...)))
	d.Strict = true
	if _, err := d.Token(); err != nil {
		return nil, fmt.Errorf("%w: stream header: %v", ErrProtocol, err)
	}
	tok, err := d.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	se, ok := tok.(xml.StartElement)
	if !ok {
		return nil, fmt.Errorf("%w: not a start tag", ErrProtocol)
	}
	return &node{name: se.Name, attr: se.Attr}, nil
}

// parseHeader reads the attributes of a stream header.
func parseHeader(hdr []byte) (map[string]string, error) {
	d := xml.NewDecoder(bytes.NewReader(hdr))
	d.Strict = true
	tok, err := d.Token()
	if err != nil {
		return nil, fmt.Errorf("%w: stream header: %v", ErrProtocol, err)
	}
	se, ok := tok.(xml.StartElement)
	if !ok || se.Name.Space != nsStream || se.Name.Local != "stream" {
		return nil, fmt.Errorf("%w: not a stream header", ErrProtocol)
	}
	m := make(map[string]string, len(se.Attr))
	for _, a := range se.Attr {
		switch a.Name.Space {
		case "":
			m[a.Name.Local] = a.Value
		case "xmlns":
			m["xmlns:"+a.Name.Local] = a.Value
		}
	}
	return m, nil
}

// esc appends s escaped for use in XML text or a quoted attribute.
func esc(b *bytes.Buffer, s string) {
	xml.EscapeText(b, []byte(s))
}

// attr appends ` name='value'` when value is not empty.
func attr(b *bytes.Buffer, name, value string) {
	if value == "" {
		return
	}
	b.WriteByte(' ')
	b.WriteString(name)
	b.WriteString(`="`)
	esc(b, value)
	b.WriteByte('"')
}

func escText(s string) string {
	var b bytes.Buffer
	esc(&b, s)
	return b.String()
}

func escAttr(s string) string { return escText(s) }

// stdHeader is the namespace context of nearly every server's stream
// header; sharing it saves each connection a copy of its own.
var stdHeader = []byte(`<stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">`)

// headerContext returns what parseElement needs of a stream header: the
// shared stdHeader when the server declared the usual namespaces, else a
// copy of the header.
func headerContext(frame []byte, attrs map[string]string) []byte {
	if bytes.HasPrefix(frame, []byte("<stream:stream")) && attrs["xmlns"] == nsClient && attrs["xmlns:stream"] == nsStream {
		return stdHeader
	}
	return bytes.Clone(frame)
}
