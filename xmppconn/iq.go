package xmppconn

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"time"
)

type iqResult struct {
	n   *node
	err error
}

type iqWait struct {
	to string // bare-normalized address the request went to ("" = our server/account)
	ch chan iqResult
}

// SendIQ sends an IQ of type "get" or "set" to the given address ("" = the
// user's own account on the server) with payload as its child element(s),
// and returns the inner XML of the result. An error reply is a
// *StanzaError. It fails with ErrNotConnected while the stream is down and
// with ErrTimeout after Config.IQTimeout. payload is written as is: it
// must be well-formed XML with its own namespace declarations.
func (c *Conn) SendIQ(ctx context.Context, typ, to string, payload []byte) ([]byte, error) {
	n, err := c.iq(ctx, typ, to, payload)
	if err != nil {
		return nil, err
	}
	return n.inner, nil
}

func (c *Conn) iq(ctx context.Context, typ, to string, payload []byte) (*node, error) {
	if typ != "get" && typ != "set" {
		return nil, fmt.Errorf("xmppconn: IQ type %q is not get or set", typ)
	}
	var norm string
	if to != "" {
		j, err := ParseJID(to)
		if err != nil {
			return nil, err
		}
		to = j.String()
		norm = to
		if j.Bare() == c.own && j.Resource == "" {
			norm = ""
		}
	}
	if err := wellFormed(payload); err != nil {
		return nil, err
	}
	id := c.newID()
	var b bytes.Buffer
	b.WriteString(`<iq type="` + typ + `" id="` + id + `"`)
	attr(&b, "to", to)
	b.WriteByte('>')
	b.Write(payload)
	b.WriteString(`</iq>`)
	w := &iqWait{to: norm, ch: make(chan iqResult, 1)}
	c.mu.Lock()
	if c.pending == nil {
		c.pending = map[string]*iqWait{}
	}
	c.pending[id] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.pending = deleteKey(c.pending, id)
		c.mu.Unlock()
	}()
	if err := c.send(b.Bytes(), false); err != nil {
		return nil, err
	}
	t := time.NewTimer(c.cfg.IQTimeout)
	defer t.Stop()
	select {
	case r := <-w.ch:
		return r.n, r.err
	case <-t.C:
		return nil, fmt.Errorf("%w: no reply to IQ after %v", ErrTimeout, c.cfg.IQTimeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// deleteKey deletes k from m and returns m, or nil once m is empty, so
// that the map's slots are freed.
func deleteKey[V any](m map[string]V, k string) map[string]V {
	delete(m, k)
	if len(m) == 0 {
		return nil
	}
	return m
}

// handleIQResponse delivers a result or error to its waiter, if the sender
// is the one the request went to.
func (c *Conn) handleIQResponse(n *node) {
	id := n.get("id")
	from := n.get("from")
	c.mu.Lock()
	w := c.pending[id]
	ok := w != nil && c.sameAddr(w.to, from)
	if ok {
		c.pending = deleteKey(c.pending, id)
	}
	c.mu.Unlock()
	if !ok {
		return
	}
	if n.skipped > 0 {
		w.ch <- iqResult{err: fmt.Errorf("%w: a reply of %d bytes", ErrStanzaTooLarge, n.skipped)}
		return
	}
	if n.get("type") == "error" {
		w.ch <- iqResult{err: parseStanzaError(n)}
		return
	}
	w.ch <- iqResult{n: n}
}

// sameAddr reports whether from is an acceptable reply address for a
// request sent to want ("" = own account or server).
func (c *Conn) sameAddr(want, from string) bool {
	if from == "" {
		return want == ""
	}
	j, err := ParseJID(from)
	if err != nil {
		return false
	}
	if want == "" {
		return (j.Bare() == c.own && j.Resource == "") || j.String() == c.JID() || (j.Local == "" && j.Resource == "" && j.Domain == c.own.Domain)
	}
	return j.String() == want
}

// handleIQRequest answers a get/set addressed to us.
func (c *Conn) handleIQRequest(s *stream, n *node) {
	typ := n.get("type")
	q := (*node)(nil)
	if len(n.kids) == 1 {
		q = n.kids[0]
	}
	var payload string
	switch {
	case typ == "get" && q.is(nsPing, "ping"):
	case typ == "get" && q.is(nsDiscoI, "query"):
		payload = `<query xmlns="` + nsDiscoI + `"` + nodeAttr(q) + `><identity category="client" type="web" name="` + escAttr(c.cfg.SoftwareName) + `"/>`
		for _, f := range discoFeatures(&c.cfg) {
			payload += `<feature var="` + f + `"/>`
		}
		payload += `</query>`
	case typ == "get" && q.is(nsVersion, "query"):
		payload = `<query xmlns="` + nsVersion + `"><name>` + escText(c.cfg.SoftwareName) + `</name><version>` + escText(c.cfg.SoftwareVersion) + `</version></query>`
	case typ == "set" && q.is(nsRoster, "query") && c.fromServerOrSelf(n.get("from")):
		c.handleRosterPush(s, n, q)
		return
	default:
		c.replyError(s, n, "cancel", "service-unavailable")
		return
	}
	var b bytes.Buffer
	b.WriteString(`<iq type="result"`)
	attr(&b, "to", n.get("from"))
	attr(&b, "id", n.get("id"))
	if payload == "" {
		b.WriteString(`/>`)
	} else {
		b.WriteString(`>` + payload + `</iq>`)
	}
	c.writeStanzaOn(s, b.Bytes())
}

func nodeAttr(q *node) string {
	if v := q.get("node"); v != "" {
		return ` node="` + escAttr(v) + `"`
	}
	return ""
}

// replyError answers a request stanza with an error.
func (c *Conn) replyError(s *stream, n *node, typ, cond string) {
	var b bytes.Buffer
	b.WriteString(`<` + n.name.Local + ` type="error"`)
	attr(&b, "to", n.get("from"))
	attr(&b, "id", n.get("id"))
	b.WriteString(`><error type="` + typ + `"><` + cond + ` xmlns="` + nsStanzas + `"/></error></` + n.name.Local + `>`)
	c.writeStanzaOn(s, b.Bytes())
}

// fromServerOrSelf reports whether a stanza's from is absent, our bare JID
// or our server: the only senders allowed to push roster changes.
func (c *Conn) fromServerOrSelf(from string) bool {
	if from == "" {
		return true
	}
	j, err := ParseJID(from)
	if err != nil || j.Resource != "" {
		return false
	}
	return j == c.own || (j.Local == "" && j.Domain == c.own.Domain)
}

// wellFormed checks that payload is balanced, well-formed XML content
// without comments, processing instructions or directives, so that a bad
// payload fails the call instead of the whole stream.
func wellFormed(payload []byte) error {
	d := xml.NewDecoder(io.MultiReader(bytes.NewReader([]byte("<x>")), bytes.NewReader(payload), bytes.NewReader([]byte("</x>"))))
	d.Strict = true
	depth, started := 0, false
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			if depth != 0 {
				return fmt.Errorf("xmppconn: IQ payload: unbalanced")
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("xmppconn: IQ payload: %w", err)
		}
		if depth == 0 {
			if started {
				return fmt.Errorf("xmppconn: IQ payload: unbalanced")
			}
			started = true // the <x> wrapper
		}
		switch tok.(type) {
		case xml.StartElement:
			depth++
		case xml.EndElement:
			depth--
		case xml.ProcInst, xml.Directive, xml.Comment:
			return fmt.Errorf("xmppconn: IQ payload: restricted XML")
		}
	}
}
