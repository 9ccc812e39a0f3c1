package xmppconn

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrBadStanza is wrapped by ParseStanza's errors: what a client sent is
// not one well-formed jabber:client stanza within the size bound.
var ErrBadStanza = errors.New("xmppconn: bad stanza")

// xmlURL is the namespace Go's decoder gives the xml: prefix.
const xmlURL = "http://www.w3.org/XML/1998/namespace"

// Stanza is one raw top-level stanza (message, presence or iq) as it
// travels between the server and a bridged client (a browser speaking
// BOSH or WebSocket through the sidecar): its routing attributes parsed,
// everything else kept as it was written.
type Stanza struct {
	Kind string // message, presence or iq
	Type string
	ID   string
	From string
	To   string
	// Payload is the first child element's name, e.g. {jabber:iq:roster
	// query} for a roster IQ; empty when there is none.
	Payload xml.Name
	n       *node
}

// ParseStanza checks what a client sent: exactly one element, at most max
// bytes, well-formed, named message, presence or iq in jabber:client (or
// with no namespace, which the client stream makes jabber:client), no
// comments, processing instructions or DTDs. Errors wrap ErrBadStanza.
func ParseStanza(raw []byte, max int) (*Stanza, error) {
	if len(raw) > max {
		return nil, fmt.Errorf("%w: over %d bytes", ErrBadStanza, max)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '<' {
		return nil, fmt.Errorf("%w: not an element", ErrBadStanza)
	}
	var fr framer
	fr.max = max
	fr.reset(&byteReader{r: bytes.NewReader(append(append([]byte(nil), stdHeader...), raw...))})
	defer fr.release()
	if kind, _, err := fr.next(); err != nil || kind != frameStreamOpen {
		return nil, fmt.Errorf("%w: framing", ErrBadStanza)
	}
	kind, frame, err := fr.next()
	if err != nil || kind != frameElement {
		return nil, fmt.Errorf("%w: not one complete element", ErrBadStanza)
	}
	if len(frame) != len(raw) {
		return nil, fmt.Errorf("%w: more than one element", ErrBadStanza)
	}
	n, err := parseElement(stdHeader, frame)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadStanza, err)
	}
	if n.name.Space != nsClient {
		return nil, fmt.Errorf("%w: <%s xmlns=%q> is not a client stanza", ErrBadStanza, n.name.Local, n.name.Space)
	}
	switch n.name.Local {
	case "message", "presence", "iq":
	default:
		return nil, fmt.Errorf("%w: <%s> is not a stanza", ErrBadStanza, n.name.Local)
	}
	for _, a := range n.attr {
		if a.Name.Space != "" && a.Name.Space != "xmlns" && a.Name.Space != xmlURL {
			return nil, fmt.Errorf("%w: attribute %s:%s", ErrBadStanza, a.Name.Space, a.Name.Local)
		}
	}
	return stanzaOf(n), nil
}

func stanzaOf(n *node) *Stanza {
	st := &Stanza{Kind: n.name.Local, Type: n.get("type"), ID: n.get("id"), From: n.get("from"), To: n.get("to"), n: n}
	if len(n.kids) > 0 {
		st.Payload = n.kids[0].name
	}
	return st
}

// Bytes renders the stanza with xmlns="jabber:client" on its element, as
// XEP-0206 and RFC 7395 want every stanza, the current From, To, ID and
// Type, and an explicit end tag; its other attributes and content are as
// received.
func (st *Stanza) Bytes() []byte {
	var b bytes.Buffer
	b.WriteString(`<` + st.Kind + ` xmlns="` + nsClient + `"`)
	attr(&b, "from", st.From)
	attr(&b, "to", st.To)
	attr(&b, "id", st.ID)
	attr(&b, "type", st.Type)
	for _, a := range st.n.attr {
		switch {
		case a.Name.Space == "" && (a.Name.Local == "xmlns" || a.Name.Local == "from" || a.Name.Local == "to" || a.Name.Local == "id" || a.Name.Local == "type"):
		case a.Name.Space == "":
			attr(&b, a.Name.Local, a.Value)
		case a.Name.Space == "xmlns":
			b.WriteString(` xmlns:` + a.Name.Local + `="`)
			esc(&b, a.Value)
			b.WriteByte('"')
		case a.Name.Space == xmlURL:
			attr(&b, "xml:"+a.Name.Local, a.Value)
		}
	}
	// Always an end tag, never <presence/>: clients that read stanzas
	// as HTML (Expresso 2.5's messenger) would nest what follows.
	b.WriteByte('>')
	b.Write(st.n.inner)
	b.WriteString(`</` + st.Kind + `>`)
	return b.Bytes()
}

// Child returns the first child element named space (any if "") and
// local, and whether there is one.
func (st *Stanza) Child(space, local string) (*Stanza, bool) {
	k := st.n.child(space, local)
	if k == nil {
		return nil, false
	}
	return &Stanza{Kind: k.name.Local, n: k}, true
}

// Children returns the child elements named local, in any namespace.
func (st *Stanza) Children(local string) []*Stanza {
	var out []*Stanza
	for _, k := range st.n.kids {
		if k.name.Local == local {
			out = append(out, &Stanza{Kind: k.name.Local, n: k})
		}
	}
	return out
}

// Attr returns the value of an unqualified attribute.
func (st *Stanza) Attr(name string) string { return st.n.get(name) }

// Text returns the element's character data.
func (st *Stanza) Text() string { return st.n.text }

// Presence returns the show, status and priority of a presence stanza.
func (st *Stanza) Presence() Presence { return *presenceOf(st.n) }

// presenceOf reads an available or unavailable presence.
func presenceOf(n *node) *Presence {
	p := &Presence{From: n.get("from"), To: n.get("to"), Type: "available"}
	if typ := n.get("type"); typ != "" {
		p.Type = typ
	}
	for _, k := range n.kids {
		if k.name.Space != nsClient {
			continue
		}
		switch k.name.Local {
		case "show":
			p.Show = Show(strings.TrimSpace(k.text))
		case "status":
			if p.Status == "" {
				p.Status = k.text
			}
		case "priority":
			if v, err := strconv.Atoi(strings.TrimSpace(k.text)); err == nil && v >= -128 && v <= 127 {
				p.Priority = v
			}
		}
	}
	p.Avatar = parseAvatarHash(n)
	return p
}

// SendStanza sends a stanza written by a bridged client as the user's own:
// its from is dropped (the server stamps the stream's JID). A broadcast
// presence (no to, available or unavailable) becomes the user's presence,
// as SendPresence's does: kept for a fresh stream and, when available,
// sent to the joined rooms too. Messages and presences are queued while
// the stream is down, like Send's; an IQ fails with ErrNotConnected.
func (c *Conn) SendStanza(ctx context.Context, st *Stanza) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st.From = ""
	raw := st.Bytes()
	if st.Kind == "iq" {
		return c.send(raw, false)
	}
	if st.Kind != "presence" || st.To != "" || (st.Type != "" && st.Type != "unavailable") {
		return c.send(raw, true)
	}
	p := st.Presence()
	if err := p.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadStanza, err)
	}
	shown := p
	shown.From = ""
	c.lastShown.Store(&shown)
	defer c.saveState()
	if err := c.send(raw, true); err != nil || p.Type == "unavailable" {
		return err
	}
	for _, r := range c.broadcasts(p) {
		if err := c.send(r, true); err != nil {
			return err
		}
	}
	return nil
}

// Presence returns the user's broadcast presence: the last one sent, else
// the initial one.
func (c *Conn) Presence() Presence { return c.currentPresence() }

// tappable reports whether an inbound jabber:client stanza is one for the
// user's clients (Config.Tap). It runs before the stanza is handled, so
// the Conn's own pending IQs and archive queries are still known.
func (c *Conn) tappable(n *node) bool {
	switch n.name.Local {
	case "presence":
		return true
	case "message":
		return !c.ownedByFeature(n)
	case "iq":
		switch n.get("type") {
		case "result", "error":
			c.mu.Lock()
			_, own := c.pending[n.get("id")]
			c.mu.Unlock()
			return !own
		case "set":
			return len(n.kids) == 1 && n.kids[0].is(nsRoster, "query") && c.fromServerOrSelf(n.get("from"))
		}
	}
	return false
}
