package xmppconn

import (
	"bytes"
	"errors"
	"strconv"
	"time"
)

// handle processes one inbound top-level element on the reading goroutine.
// Stanzas advance the XEP-0198 inbound counter after the Handler returned.
func (c *Conn) handle(s *stream, n *node) {
	switch {
	case c.handleSM(s, n):
		return
	case n.name.Space != nsClient:
		c.log.Debug("xmppconn: ignoring element", "name", n.name.Local, "ns", n.name.Space)
		return
	case c.redelivered(n):
		return
	case n.skipped > 0:
		c.handleSkipped(s, n)
		c.countInbound()
		return
	}
	tap := c.cfg.Tap != nil && c.tappable(n)
	switch n.name.Local {
	case "message":
		c.handleMessage(s, n)
	case "presence":
		c.handlePresence(s, n)
	case "iq":
		switch n.get("type") {
		case "result", "error":
			c.handleIQResponse(n)
		case "get", "set":
			c.handleIQRequest(s, n)
		}
	default:
		return
	}
	if tap {
		c.cfg.Tap(stanzaOf(n))
	}
	c.countInbound()
}

// redelivered reports whether n is a stanza the server sends again on a
// resumed stream that this Conn handled on the old one (resume sets how
// many): XEP-0198 has the server send them in their first order, right
// after <resumed/>, so the count alone tells them.
func (c *Conn) redelivered(n *node) bool {
	if c.redeliver.Load() == 0 {
		return false
	}
	switch n.name.Local {
	case "message", "presence", "iq":
	default:
		if n.skipped == 0 {
			return false
		}
	}
	c.redeliver.Add(^uint32(0))
	return true
}

// handleSkipped deals with a stanza over MaxStanzaSize that was read
// through without being kept: an IQ request is refused (the sender must
// get an answer), a reply fails its request, and the user is told.
func (c *Conn) handleSkipped(s *stream, n *node) {
	d := &Dropped{Stanza: n.name.Local, From: n.get("from"), ID: n.get("id"), Type: n.get("type"), Bytes: n.skipped}
	c.log.Warn("xmppconn: dropped a stanza over the size limit", "stanza", d.Stanza, "from", d.From, "bytes", d.Bytes, "limit", c.cfg.MaxStanzaSize)
	if d.Stanza == "iq" {
		switch d.Type {
		case "get", "set":
			c.replyError(s, n, "modify", "policy-violation")
		case "result", "error":
			c.handleIQResponse(n)
		}
	}
	c.emit(d)
}

func (c *Conn) handleMessage(s *stream, n *node) {
	if c.claimed(s, n) {
		return // a feature's (an archive result)
	}
	carbon := ""
	var fwdDelay time.Time
	for _, dir := range []string{"sent", "received"} {
		w := n.child(nsCarbons, dir)
		if w == nil {
			continue
		}
		if !c.fromOwnBare(n.get("from")) {
			c.log.Warn("xmppconn: dropping carbon not from own account", "from", n.get("from"))
			return
		}
		fwd := w.child(nsForward, "forwarded")
		inner := fwd.child("", "message") // jabber:client, or inherited from forwarded
		if inner == nil {
			return
		}
		fwdDelay = parseDelay(fwd)
		carbon = dir
		n = inner
		break
	}
	msg, hasBody, hasSubject := parseMessage(n)
	m := &msg
	m.Carbon = carbon
	if m.Delay.IsZero() {
		m.Delay = fwdDelay
	}
	if r := n.child(nsReceipts, "received"); r != nil {
		id := r.get("id")
		if id == "" {
			id = m.ID
		}
		c.emit(&Receipt{From: m.From, ID: id})
		if !hasBody {
			return
		}
	}
	if !c.deliverable(m, hasSubject) {
		return
	}
	if m.Type == ErrorMessage && carbon == "" {
		if se := parseStanzaError(n); errors.Is(se, ErrPolicyViolation) {
			// The server (or the recipient's) refused a message we
			// sent; it counted it, so it is not in the resend queue.
			c.emit(&SendFailed{Stanza: "message", To: m.From, ID: m.ID, Reason: se.Condition})
		}
	}
	switch {
	case hasBody || m.Type == ErrorMessage:
		c.emit(m)
	case m.ChatState != "":
		c.emit(&ChatState{From: m.From, To: m.To, State: m.ChatState})
	default:
		return
	}
	if m.Receipt && hasBody && carbon == "" && m.ID != "" && m.From != "" && m.Type != GroupChatMessage && m.Type != ErrorMessage {
		var b bytes.Buffer
		b.WriteString(`<message`)
		attr(&b, "to", m.From)
		attr(&b, "id", c.newID())
		attr(&b, "type", string(m.Type))
		b.WriteString(`><received xmlns="` + nsReceipts + `"`)
		attr(&b, "id", m.ID)
		b.WriteString(`/></message>`)
		c.writeStanzaOn(s, b.Bytes())
	}
}

// parseMessage reads a <message/>: the one parse of a message, for live
// messages (after a carbon is unwrapped) and archive results alike. Type
// "" is NormalMessage (RFC 6121 §5.2.2); the first body, the last subject
// and thread in the message's own namespace are kept. hasBody is true when
// the message has a body or a subject element, even an empty one;
// hasSubject when it has a subject element (an empty one clears a room's
// subject).
func parseMessage(n *node) (m Message, hasBody, hasSubject bool) {
	m = Message{
		From:    n.get("from"),
		To:      n.get("to"),
		ID:      n.get("id"),
		Type:    MessageType(n.get("type")),
		Delay:   parseDelay(n),
		Receipt: n.child(nsReceipts, "request") != nil,
	}
	if m.Type == "" {
		m.Type = NormalMessage
	}
	seenBody := false
	ns := n.name.Space
	for _, k := range n.kids {
		switch {
		case k.name.Space == ns && k.name.Local == "body" && !seenBody:
			m.Body, seenBody = k.text, true
		case k.name.Space == ns && k.name.Local == "subject":
			m.Subject, hasSubject = k.text, true
		case k.name.Space == ns && k.name.Local == "thread":
			m.Thread = k.text
		case k.name.Space == nsChat:
			m.ChatState = ChatStateKind(k.name.Local)
		}
	}
	return m, seenBody || hasSubject, hasSubject
}

func (c *Conn) fromOwnBare(from string) bool {
	j, err := ParseJID(from)
	return err == nil && j == c.own
}

func parseDelay(n *node) time.Time {
	d := n.child(nsDelay, "delay")
	if d == nil {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, d.get("stamp"))
	if err != nil {
		return time.Time{}
	}
	return t
}

func (c *Conn) handlePresence(s *stream, n *node) {
	if c.claimed(s, n) {
		return // a feature's (a room's)
	}
	typ := n.get("type")
	switch typ {
	case "", "unavailable":
		c.emit(presenceOf(n))
	case "subscribe", "subscribed", "unsubscribe", "unsubscribed":
		c.emit(&Subscription{From: n.get("from"), To: n.get("to"), Type: typ})
	}
}

func (c *Conn) handleRosterPush(s *stream, n, q *node) {
	items := parseRosterItems(q)
	var b bytes.Buffer
	b.WriteString(`<iq type="result"`)
	attr(&b, "to", n.get("from"))
	attr(&b, "id", n.get("id"))
	b.WriteString(`/>`)
	if len(items) != 1 {
		c.replyError(s, n, "modify", "bad-request")
		return
	}
	c.writeStanzaOn(s, b.Bytes())
	c.emit(&RosterPush{Item: items[0]})
}

func parseRosterItems(q *node) []RosterItem {
	var items []RosterItem
	for _, k := range q.kids {
		if !k.is(nsRoster, "item") {
			continue
		}
		it := RosterItem{
			JID:          k.get("jid"),
			Name:         k.get("name"),
			Subscription: k.get("subscription"),
			Ask:          k.get("ask"),
			Groups:       []string{},
		}
		if it.Subscription == "" {
			it.Subscription = "none"
		}
		for _, g := range k.kids {
			if g.is(nsRoster, "group") {
				it.Groups = append(it.Groups, g.text)
			}
		}
		items = append(items, it)
	}
	return items
}

// encodeMessage renders an outgoing message.
func encodeMessage(m Message) []byte {
	var b bytes.Buffer
	b.WriteString(`<message`)
	attr(&b, "to", m.To)
	attr(&b, "id", m.ID)
	attr(&b, "type", string(m.Type))
	b.WriteByte('>')
	if m.Subject != "" {
		b.WriteString(`<subject>`)
		esc(&b, m.Subject)
		b.WriteString(`</subject>`)
	}
	if m.Body != "" {
		b.WriteString(`<body>`)
		esc(&b, m.Body)
		b.WriteString(`</body>`)
	}
	if m.Thread != "" {
		b.WriteString(`<thread>`)
		esc(&b, m.Thread)
		b.WriteString(`</thread>`)
	}
	if m.Receipt {
		b.WriteString(`<request xmlns="` + nsReceipts + `"/>`)
	}
	if m.ChatState != "" {
		b.WriteString(`<` + string(m.ChatState) + ` xmlns="` + nsChat + `"/>`)
	}
	b.WriteString(`</message>`)
	return b.Bytes()
}

// encodePresence renders an available or unavailable presence.
func encodePresence(p Presence) []byte {
	var b bytes.Buffer
	b.WriteString(`<presence`)
	attr(&b, "to", p.To)
	if p.Type == "unavailable" {
		attr(&b, "type", p.Type)
	}
	if p.Show == "" && p.Status == "" && p.Priority == 0 && p.Avatar == nil {
		b.WriteString(`/>`)
		return b.Bytes()
	}
	b.WriteByte('>')
	if p.Show != "" {
		b.WriteString(`<show>` + string(p.Show) + `</show>`)
	}
	if p.Status != "" {
		b.WriteString(`<status>`)
		esc(&b, p.Status)
		b.WriteString(`</status>`)
	}
	if p.Priority != 0 {
		b.WriteString(`<priority>` + strconv.Itoa(p.Priority) + `</priority>`)
	}
	if p.Avatar != nil {
		b.WriteString(`<x xmlns="` + nsVCardUpdate + `"><photo>`)
		esc(&b, *p.Avatar)
		b.WriteString(`</photo></x>`)
	}
	b.WriteString(`</presence>`)
	return b.Bytes()
}

func validJID(s string) (string, error) {
	j, err := ParseJID(s)
	if err != nil {
		return "", err
	}
	return j.String(), nil
}
