package sidecar

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// The bridge lets browser clients (BOSH, bosh.go; WebSocket,
// websocket.go) share the one XMPP stream a PHP session owns with the /v1
// calls and SSE. Each client gets the stanzas the server sends the user;
// what a client sends is checked and sent as the user's own. IQ answers
// reach only the client that asked: its ids are replaced by the bridge's
// own on the way out and restored on the way back.

const (
	// maxClientStanza bounds one stanza a browser client sends.
	maxClientStanza = 64 << 10
	// maxClientQueue bounds the bytes waiting for one client; a client
	// that lets more pile up is cut off (its page is gone or stuck).
	maxClientQueue = 1 << 20
	// maxHeldBytes bounds what is kept for the next client while none is
	// attached; the count bound is --event-buffer. The oldest go first.
	maxHeldBytes = 1 << 20
	// maxClientIQs bounds one client's IQs awaiting an answer.
	maxClientIQs = 64
	// clientIQTimeout is when an unanswered client IQ's route is dropped.
	clientIQTimeout = 2 * time.Minute
)

// Errors that end a client's stream (not the user's).
var (
	errClientBadStanza = errors.New("sidecar: bad stanza from a browser client")
	errBridgeClosed    = fmt.Errorf("%w: the user's stream is closing", ErrNotConnected)
	// ErrTooManyStreams: the PHP session already has --max-browser-streams
	// browser streams attached.
	ErrTooManyStreams = errors.New("sidecar: too many browser streams for this session (--max-browser-streams)")
	// ErrForbiddenOrigin: a browser request from an Origin not allowed
	// (--allowed-origins).
	ErrForbiddenOrigin = errors.New("sidecar: origin not allowed")
)

// bridge is one session's set of browser clients.
type bridge struct {
	s      *session
	cs     *clusterSession // the session's state in Redis; nil on a single node
	m      *metrics
	max    int // clients at most
	keep   int // stanzas kept while detached at most
	prefix string

	mu      sync.Mutex
	clients map[*bridgeClient]struct{}
	held    [][]byte // for the next client, while none is ready
	heldLen int      // bytes in held
	routes  map[string]iqRoute
	queries map[string]*bridgeClient // MAM query id → the client that asked
	rooms   map[string]*clientRoom   // rooms the clients joined themselves (bridgerooms.go)
	grace   offlineGrace             // a pending "offline" (bridgeoffline.go)
	seq     uint64
	book    heldBook // the stanzas numbered for Redis (bridgedurable.go)
	closed  bool
	reason  string
}

// iqRoute is where the answer to a client's IQ goes back to.
type iqRoute struct {
	c   *bridgeClient
	id  string // the client's own id
	to  string // the address the IQ went to, "" = the user's account
	exp time.Time
}

// bridgeClient is one attached browser stream. Its transport reads the
// queue and is woken through notify.
type bridgeClient struct {
	b *bridge

	mu        sync.Mutex
	ready     bool // bound: gets the user's stanzas
	queue     [][]byte
	queueLen  int
	iqs       int
	presented bool // sent its first available presence
	// deferBacklog (BOSH) keeps what waited for a client in backlog until
	// the client's first request after bind and session: Expresso 2.5's
	// messenger never reads the answers to those two requests.
	deferBacklog bool
	backlog      [][]byte
	carbons      bool   // asked for XEP-0280 carbons: gets copies of what the other tabs send
	ended        bool   // cut off or detached
	endCond      string // why, as a stream error condition ("" = detached cleanly)
	endText      string
	notify       func() // wakes the transport; never blocks
	// live reports whether a page is still behind the client (BOSH: a
	// request held or just made; an abandoned page's session lingers until
	// its inactivity timeout); nil: while attached (bridgeoffline.go).
	live func() bool
}

func newBridge(s *session, maxClients, keep int, m *metrics) *bridge {
	var rnd [6]byte
	crand.Read(rnd[:])
	return &bridge{s: s, m: m, max: maxClients, keep: keep, prefix: "b" + hex.EncodeToString(rnd[:]) + "-",
		clients: map[*bridgeClient]struct{}{}}
}

// bridgeOf returns the session's bridge, made on first use: sessions no
// browser ever attached to keep nothing for one.
func (s *session) bridgeOf(maxClients, keep int, m *metrics) *bridge {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bridge == nil {
		b := newBridge(s, maxClients, keep, m)
		if s.durable != nil {
			s.durable.noteBrowser()
			b.cs = s.durable
			b.seedHeld(s.durable.heldSeed())
		}
		s.bridge = b
	}
	return s.bridge
}

// tap receives the stanzas xmppconn hands the user's clients.
func (s *session) tap(st *xmppconn.Stanza) {
	s.mu.Lock()
	b := s.bridge
	s.mu.Unlock()
	if b != nil {
		b.fromServer(st)
	}
}

// attach adds a client; it gets stanzas once ready.
func (b *bridge) attach(notify func()) (*bridgeClient, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errBridgeClosed
	}
	if len(b.clients) >= b.max {
		return nil, ErrTooManyStreams
	}
	c := &bridgeClient{b: b, notify: notify}
	b.clients[c] = struct{}{}
	b.m.browserStreams.Inc()
	return c, nil
}

// markReady makes c receive the user's stanzas (it bound a resource, or
// was prebound). It gets what was kept while no client was ready, and a
// copy of what the other clients have not taken yet: a page that was
// reloaded leaves a client that will never read again, and the message
// waiting in it must reach the new page.
func (b *bridge) markReady(c *bridgeClient) {
	b.mu.Lock()
	b.cancelGraceLocked() // a page attached: the one that left reloaded
	var pending [][]byte
	pending = append(pending, b.held...)
	b.held, b.heldLen = nil, 0
	for o := range b.clients {
		if o != c {
			pending = append(pending, o.unsent()...)
		}
	}
	b.mu.Unlock()
	pending = dedup(pending)
	c.mu.Lock()
	c.ready = true
	if c.deferBacklog {
		c.backlog = append(c.backlog, pending...)
		pending = nil
	}
	c.mu.Unlock()
	c.push(pending...)
}

// releaseBacklog hands c what markReady kept back for it.
func (c *bridgeClient) releaseBacklog() {
	c.mu.Lock()
	backlog := c.backlog
	c.backlog = nil
	c.mu.Unlock()
	c.push(backlog...)
}

// dedup drops repeated stanzas (two clients may hold the same one).
func dedup(list [][]byte) [][]byte {
	seen := make(map[string]bool, len(list))
	out := list[:0]
	for _, raw := range list {
		if !seen[string(raw)] {
			seen[string(raw)] = true
			out = append(out, raw)
		}
	}
	return out
}

// detach removes c. What it had not taken is kept for the next client if
// no other is left.
func (b *bridge) detach(c *bridgeClient) {
	c.mu.Lock()
	rest := append(c.backlog, c.queue...)
	c.queue, c.queueLen, c.ended, c.backlog = nil, 0, true, nil
	c.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.clients[c]; !ok {
		return
	}
	delete(b.clients, c)
	b.m.browserStreams.Dec()
	for id, r := range b.routes {
		if r.c == c {
			delete(b.routes, id)
		}
	}
	for q, qc := range b.queries {
		if qc == c {
			delete(b.queries, q)
		}
	}
	if b.readyLocked() == 0 {
		for _, raw := range rest {
			b.keepLocked(raw)
		}
	}
}

// readyLocked counts the ready clients. b.mu is held.
func (b *bridge) readyLocked() int {
	n := 0
	for c := range b.clients {
		c.mu.Lock()
		if c.ready && !c.ended {
			n++
		}
		c.mu.Unlock()
	}
	return n
}

// keepLocked keeps raw for the next client, dropping the oldest past the
// bounds. b.mu is held.
func (b *bridge) keepLocked(raw []byte) {
	b.held = append(b.held, raw)
	b.heldLen += len(raw)
	for len(b.held) > 1 && (len(b.held) > b.keep || b.heldLen > maxHeldBytes) {
		b.heldLen -= len(b.held[0])
		b.held[0] = nil
		b.held = b.held[1:]
	}
}

// close ends every client with a stream error (logout, expiry, shutdown)
// and refuses new ones.
func (b *bridge) close(reason string) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed, b.reason = true, reason
	b.cancelGraceLocked()
	list := make([]*bridgeClient, 0, len(b.clients))
	for c := range b.clients {
		list = append(list, c)
	}
	b.held, b.heldLen = nil, 0
	b.mu.Unlock()
	cond := "not-authorized"
	if reason == "shutdown" {
		cond = "system-shutdown"
	}
	for _, c := range list {
		c.end(cond, reason)
	}
}

// end cuts c off with a stream error condition; the transport says so to
// the browser and then detaches.
func (c *bridgeClient) end(cond, text string) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended, c.endCond, c.endText = true, cond, text
	c.mu.Unlock()
	c.notify()
}

// ending reports whether c was cut off, and why.
func (c *bridgeClient) ending() (bool, string, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ended, c.endCond, c.endText
}

// push queues stanzas for c and wakes its transport. A client over its
// queue bound is cut off.
func (c *bridgeClient) push(list ...[]byte) {
	if len(list) == 0 {
		return
	}
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	for _, raw := range list {
		c.queue = append(c.queue, raw)
		c.queueLen += len(raw)
	}
	over := c.queueLen > maxClientQueue
	c.mu.Unlock()
	if over {
		c.end("policy-violation", "too much unread")
		return
	}
	c.notify()
}

// takeUnacked returns the queued stanzas, up to about max bytes (at
// least one), without forgetting anything in Redis: it reports the
// highest number among what it took (0: none numbered), for acked once
// the page proves it read them (BOSH: its later requests; WebSocket: the
// pong of a ping sent after them, wsack.go).
func (c *bridgeClient) takeUnacked(max int) ([][]byte, uint64) {
	c.mu.Lock()
	n, size := 0, 0
	for n < len(c.queue) && (n == 0 || size+len(c.queue[n]) <= max) {
		size += len(c.queue[n])
		n++
	}
	out := append([][]byte(nil), c.queue[:n]...)
	clear(c.queue[:n])
	c.queue = c.queue[n:]
	c.queueLen -= size
	if len(c.queue) == 0 {
		c.queue = nil
	}
	c.mu.Unlock()
	return out, c.b.topOf(out)
}

// pending reports whether stanzas wait for c.
func (c *bridgeClient) pending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue) > 0
}

// unsent is a copy of what waits for c.
func (c *bridgeClient) unsent() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.queue...)
}

// fromServer routes one inbound stanza.
func (b *bridge) fromServer(st *xmppconn.Stanza) {
	if st.Kind == "iq" && (st.Type == "result" || st.Type == "error") {
		b.iqAnswer(st)
		return
	}
	if st.Kind == "message" {
		if r, ok := st.Child(nsMAM2, "result"); ok {
			b.mu.Lock()
			c := b.queries[r.Attr("queryid")]
			b.mu.Unlock()
			if c != nil && b.fromOwnAccount(st.From) {
				c.push(st.Bytes())
			}
			return
		}
	}
	raw := st.Bytes()
	var seq uint64
	if b.cs != nil && durableKind(st.Kind, st.Type) && len(raw) > 0 {
		defer func() {
			if seq > 0 {
				b.cs.keepHeld(seq, raw, b.keep)
			}
		}()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.cs != nil && durableKind(st.Kind, st.Type) && len(raw) > 0 {
		seq = b.numberLocked(raw) // before any client can take it
	}
	if len(b.rooms) > 0 && (st.Kind == "presence" || st.Kind == "message") {
		b.roomStanzaLocked(st, raw)
	}
	delivered := false
	for c := range b.clients {
		c.mu.Lock()
		ready := c.ready && !c.ended
		c.mu.Unlock()
		if ready {
			c.push(raw)
			delivered = true
		}
	}
	if delivered {
		return
	}
	// Nobody is attached: keep what the next client cannot learn from
	// the replay of the current state (attach): messages and
	// subscription requests. Presences are replayed as they are then.
	if st.Kind == "message" || (st.Kind == "presence" && st.Type == "subscribe") {
		b.keepLocked(raw)
	}
}

const nsMAM2 = "urn:xmpp:mam:2"

// fromOwnAccount reports whether from is the user's bare JID or absent:
// the only sender of the user's archive results.
func (b *bridge) fromOwnAccount(from string) bool {
	return from == "" || bareOf(from) == b.s.jid && !strings.Contains(from, "/")
}

// iqAnswer hands an IQ result or error to the client whose request it
// answers, with the client's own id; anything else is dropped.
func (b *bridge) iqAnswer(st *xmppconn.Stanza) {
	b.mu.Lock()
	r, ok := b.routes[st.ID]
	if ok && b.answerFrom(r.to, st.From) {
		delete(b.routes, st.ID)
	} else {
		ok = false
	}
	b.mu.Unlock()
	if !ok {
		return
	}
	r.c.mu.Lock()
	r.c.iqs--
	r.c.mu.Unlock()
	st.ID = r.id
	r.c.push(st.Bytes())
}

// answerFrom reports whether from may answer an IQ sent to want ("" = the
// user's account or server).
func (b *bridge) answerFrom(want, from string) bool {
	if want == "" {
		if from == "" {
			return true
		}
		j, err := xmppconn.ParseJID(from)
		if err != nil {
			return false
		}
		return (j.Bare().String() == b.s.jid && (j.Resource == "" || j.String() == b.s.fullJIDNow())) ||
			(j.Local == "" && j.Resource == "" && j.Domain == domainOf(b.s.jid))
	}
	j, err := xmppconn.ParseJID(from)
	return err == nil && j.String() == want
}

func domainOf(bare string) string {
	_, d, _ := strings.Cut(bare, "@")
	return d
}

func (s *session) fullJIDNow() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fullJID
}

// fromClient handles one stanza a ready (or binding) client sent. An error
// wraps errClientBadStanza and ends that client's stream only.
func (b *bridge) fromClient(ctx context.Context, c *bridgeClient, raw []byte) error {
	st, err := xmppconn.ParseStanza(raw, maxClientStanza)
	if err != nil {
		b.m.browserRejected.Inc()
		return fmt.Errorf("%w: %w", errClientBadStanza, err)
	}
	now := time.Now()
	b.s.lastPoll.Store(now.UnixNano())
	conn, err := b.s.stream()
	if err != nil {
		return err
	}
	if st.Kind == "iq" && (st.Type == "result" || st.Type == "error") {
		return nil // answers to the server's pushes: the Conn answered them
	}
	// What a browser sends counts against the session's --rate-limit, as
	// the /v1 calls do: a page cannot flood the user's stream.
	b.s.mu.Lock()
	ok := b.s.limiter.allow(now)
	b.s.mu.Unlock()
	if !ok {
		c.push(stanzaError(st, "wait", "resource-constraint"))
		return nil
	}
	switch st.Kind {
	case "iq":
		return b.clientIQ(ctx, c, conn, st)
	case "presence":
		if st.To == "" && (st.Type == "" || st.Type == "unavailable") {
			return b.clientPresence(ctx, c, conn, st)
		}
		if b.clientJoin(c, conn, st) {
			return nil // already in the room: replayed to this client
		}
		b.clientLeave(st)
	case "message":
		if err := b.send(ctx, c, conn, st); err != nil {
			return err
		}
		b.carbonCopy(c, st)
		return nil
	}
	return b.send(ctx, c, conn, st)
}

// carbonCopy gives the other tabs that asked for carbons (XEP-0280) a
// "sent" copy of a chat message c sent (nil: /v1 sent it): all tabs share
// one resource, and the server copies only to the user's other resources.
func (b *bridge) carbonCopy(c *bridgeClient, st *xmppconn.Stanza) {
	if st.Type == "groupchat" || st.Type == "error" || st.Type == "headline" {
		return
	}
	if _, ok := st.Child("", "body"); !ok {
		return
	}
	if _, private := st.Child(nsCarbons, "private"); private {
		return
	}
	if _, noCopy := st.Child("urn:xmpp:hints", "no-copy"); noCopy {
		return
	}
	full := b.s.fullJIDNow()
	st.From = full
	var m bytes.Buffer
	m.WriteString(`<message xmlns="jabber:client"`)
	xmlAttr(&m, "from", b.s.jid)
	xmlAttr(&m, "to", full)
	typ := st.Type
	if typ == "" {
		typ = "normal"
	}
	m.WriteString(` type="` + xmlEsc(typ) + `"><sent xmlns="` + nsCarbons + `"><forwarded xmlns="urn:xmpp:forward:0">`)
	m.Write(st.Bytes())
	m.WriteString(`</forwarded></sent></message>`)
	raw := m.Bytes()
	b.mu.Lock()
	defer b.mu.Unlock()
	for o := range b.clients {
		if o == c {
			continue
		}
		o.mu.Lock()
		want := o.ready && !o.ended && o.carbons
		o.mu.Unlock()
		if want {
			o.push(raw)
		}
	}
}

// copySent gives the attached clients that asked for carbons (XEP-0280) a
// "sent" copy of a message the web app sent through POST /v1/messages, as
// carbonCopy does for a tab's: a page shows what the user wrote from
// another part of the site. id is the one the stream sent it with.
func (s *session) copySent(m xmppconn.Message, id string) {
	s.mu.Lock()
	b := s.bridge
	s.mu.Unlock()
	if b == nil {
		return
	}
	var x bytes.Buffer
	x.WriteString(`<message xmlns="jabber:client"`)
	xmlAttr(&x, "to", m.To)
	xmlAttr(&x, "type", string(m.Type))
	xmlAttr(&x, "id", id)
	x.WriteString(`><body>` + xmlEsc(m.Body) + `</body>`)
	if m.Thread != "" {
		x.WriteString(`<thread>` + xmlEsc(m.Thread) + `</thread>`)
	}
	if m.ChatState != "" {
		x.WriteString(`<` + string(m.ChatState) + ` xmlns="http://jabber.org/protocol/chatstates"/>`)
	}
	if m.Receipt {
		x.WriteString(`<request xmlns="urn:xmpp:receipts"/>`)
	}
	x.WriteString(`</message>`)
	st, err := xmppconn.ParseStanza(x.Bytes(), maxClientStanza+len(m.Body))
	if err != nil {
		return
	}
	b.carbonCopy(nil, st)
}

// send sends st as the user's; a stanza the stream refuses (the server
// down too long) is bounced to the client as a stanza error.
func (b *bridge) send(ctx context.Context, c *bridgeClient, conn stanzaRelay, st *xmppconn.Stanza) error {
	err := conn.SendStanza(ctx, st)
	if errors.Is(err, xmppconn.ErrBadStanza) {
		return fmt.Errorf("%w: %w", errClientBadStanza, err)
	}
	if errors.Is(err, xmppconn.ErrSendTooLarge) {
		c.push(stanzaError(st, "modify", "policy-violation"))
		return nil
	}
	if err != nil && st.Type != "error" && st.Type != "result" {
		c.push(stanzaError(st, "wait", "remote-server-timeout"))
	}
	return nil
}

// clientIQ answers bind and session itself (the stream is bound already)
// and sends any other request with an id of the bridge's. Answers a
// client sends (to the roster pushes it got) are dropped: the Conn
// answered them already.
func (b *bridge) clientIQ(ctx context.Context, c *bridgeClient, conn stanzaRelay, st *xmppconn.Stanza) error {
	if st.Type != "get" && st.Type != "set" {
		return nil
	}
	// An IQ without an id (Expresso 2.5's roster request) is answered
	// without one, as it asked.
	if st.Payload.Space == nsCarbons && st.Type == "set" {
		c.mu.Lock()
		c.carbons = st.Payload.Local == "enable"
		c.mu.Unlock()
	}
	switch st.Payload.Space {
	case nsBindNS:
		full := b.s.fullJIDNow()
		c.push([]byte(`<iq xmlns="jabber:client" type="result" id="` + xmlEsc(st.ID) + `"><bind xmlns="` + nsBindNS + `"><jid>` + xmlEsc(full) + `</jid></bind></iq>`))
		b.markReady(c)
		return nil
	case nsSessionNS:
		c.push([]byte(`<iq xmlns="jabber:client" type="result" id="` + xmlEsc(st.ID) + `"></iq>`))
		return nil
	}
	to := ""
	if st.To != "" {
		j, err := xmppconn.ParseJID(st.To)
		if err != nil {
			c.push(stanzaError(st, "modify", "jid-malformed"))
			return nil
		}
		if !(j.Bare().String() == b.s.jid && j.Resource == "") {
			to = j.String()
		}
	}
	now := time.Now()
	b.mu.Lock()
	for id, r := range b.routes {
		if now.After(r.exp) {
			delete(b.routes, id)
			r.c.mu.Lock()
			r.c.iqs--
			r.c.mu.Unlock()
		}
	}
	c.mu.Lock()
	full := c.iqs >= maxClientIQs
	if !full {
		c.iqs++
	}
	c.mu.Unlock()
	if full {
		b.mu.Unlock()
		c.push(stanzaError(st, "wait", "resource-constraint"))
		return nil
	}
	b.seq++
	id := b.prefix + strconv.FormatUint(b.seq, 36)
	if b.routes == nil {
		b.routes = map[string]iqRoute{}
	}
	b.routes[id] = iqRoute{c: c, id: st.ID, to: to, exp: now.Add(clientIQTimeout)}
	if q, ok := st.Child(nsMAM2, "query"); ok && q.Attr("queryid") != "" {
		if b.queries == nil {
			b.queries = map[string]*bridgeClient{}
		}
		if _, taken := b.queries[q.Attr("queryid")]; !taken {
			b.queries[q.Attr("queryid")] = c
		}
	}
	b.mu.Unlock()
	own := st.ID
	st.ID = id
	if err := conn.SendStanza(ctx, st); err != nil {
		b.mu.Lock()
		if _, ok := b.routes[id]; ok {
			delete(b.routes, id)
			c.mu.Lock()
			c.iqs--
			c.mu.Unlock()
		}
		b.mu.Unlock()
		st.ID = own
		c.push(stanzaError(st, "wait", "remote-server-timeout"))
	}
	return nil
}

// clientPresence handles a broadcast presence: the user's presence. The
// client's first available presence gets the current state replayed, as a
// server sends contacts' presences after an initial presence; it is sent
// on only when it changes what contacts see, so a page load or a second
// tab makes no presence flap.
func (b *bridge) clientPresence(ctx context.Context, c *bridgeClient, conn stanzaRelay, st *xmppconn.Stanza) error {
	p := st.Presence()
	// Expresso 2.5's messenger says <show>null</show> when the user comes
	// back from auto-away: an unknown show is plain available, not a
	// reason to end the client.
	_, err := xmppconn.ParseShow(string(p.Show))
	known := err == nil
	if !known {
		p.Show = xmppconn.ShowAvailable
	}
	cur := conn.Presence()
	curType := cur.Type
	if curType == "" {
		curType = "available"
	}
	same := p.Type == curType && p.Show == cur.Show && p.Status == cur.Status && p.Priority == cur.Priority
	if !same {
		if !known {
			if err := conn.SendPresence(ctx, xmppconn.Presence{Type: p.Type, Status: p.Status, Priority: p.Priority, Avatar: p.Avatar}); err != nil {
				c.push(stanzaError(st, "wait", "remote-server-timeout"))
			}
		} else if err := b.send(ctx, c, conn, st); err != nil {
			return err
		}
	}
	c.mu.Lock()
	first := !c.presented && p.Type == "available"
	if first {
		c.presented = true
	}
	c.mu.Unlock()
	if first {
		// Under b.mu, as fromServer pushes: a stanza the stream reads
		// meanwhile is either in the snapshot or queued after the replay,
		// never before it, where the replay's older state would undo it.
		b.mu.Lock()
		c.push(b.replay(conn, p)...)
		b.mu.Unlock()
	}
	return nil
}

// replay is what a server sends a resource after its initial presence:
// the user's own presence, the contacts' current presences, and for each
// room the stream is in its occupants (the user last, with status 110)
// and subject. b.mu is held: the state it reads is updated before the
// stanza that changed it is tapped (fromServer, under b.mu), so such a
// stanza is in the snapshot or queued after it. A contact's presence is
// tracked by the Handler (trackPresence), which xmppconn runs before the
// Tap; a room's state is updated by xmppconn itself. s.mu and
// JoinedRooms's lock are leaves under b.mu.
func (b *bridge) replay(conn stanzaRelay, own xmppconn.Presence) [][]byte {
	full := b.s.fullJIDNow()
	own.From, own.To = full, full
	out := [][]byte{presenceXML(full, full, own.Show, own.Status, own.Priority, own.Avatar, "")}
	b.s.mu.Lock()
	for bare, list := range b.s.presence {
		for _, pi := range list {
			from := bare
			if pi.Resource != "" {
				from += "/" + pi.Resource
			}
			if from == full {
				continue
			}
			out = append(out, presenceXML(from, full, pi.Show, pi.Status, pi.Priority, pi.Avatar, ""))
		}
	}
	b.s.mu.Unlock()
	for _, r := range conn.JoinedRooms() {
		if r.Joined {
			out = append(out, roomReplay(r, full)...)
		}
	}
	return out
}

// roomReplay is what a room sends a joining occupant: the occupants (the
// user last, with status 110) and the subject.
func roomReplay(r xmppconn.JoinedRoom, full string) [][]byte {
	var out [][]byte
	var self []byte
	for _, o := range r.Occupants {
		var x bytes.Buffer
		x.WriteString(`<x xmlns="http://jabber.org/protocol/muc#user"><item`)
		xmlAttr(&x, "affiliation", o.Affiliation)
		xmlAttr(&x, "role", o.Role)
		xmlAttr(&x, "jid", o.JID)
		x.WriteString(`/>`)
		if o.Self {
			x.WriteString(`<status code="110"/>`)
		}
		x.WriteString(`</x>`)
		raw := presenceXML(r.Room+"/"+o.Nick, full, o.Show, o.Status, 0, nil, x.String())
		if o.Self {
			self = raw
			continue
		}
		out = append(out, raw)
	}
	if self != nil {
		out = append(out, self)
	}
	var m bytes.Buffer
	m.WriteString(`<message xmlns="jabber:client" type="groupchat"`)
	from := r.SubjectFrom // as the room sends it to whoever joins
	if from == "" {
		from = r.Room
	}
	xmlAttr(&m, "from", from)
	xmlAttr(&m, "to", full)
	m.WriteString(`><subject>` + xmlEsc(r.Subject) + `</subject></message>`)
	return append(out, m.Bytes())
}

func presenceXML(from, to string, show xmppconn.Show, status string, priority int, avatar *string, extra string) []byte {
	var b bytes.Buffer
	b.WriteString(`<presence xmlns="jabber:client"`)
	xmlAttr(&b, "from", from)
	xmlAttr(&b, "to", to)
	b.WriteByte('>')
	if show != "" {
		b.WriteString(`<show>` + xmlEsc(string(show)) + `</show>`)
	}
	if status != "" {
		b.WriteString(`<status>` + xmlEsc(status) + `</status>`)
	}
	if priority != 0 {
		b.WriteString(`<priority>` + strconv.Itoa(priority) + `</priority>`)
	}
	if avatar != nil {
		b.WriteString(`<x xmlns="vcard-temp:x:update"><photo>` + xmlEsc(*avatar) + `</photo></x>`)
	}
	b.WriteString(extra)
	b.WriteString(`</presence>`)
	return b.Bytes()
}

// stanzaError bounces st back to its client with an error.
func stanzaError(st *xmppconn.Stanza, typ, cond string) []byte {
	var b bytes.Buffer
	b.WriteString(`<` + st.Kind + ` xmlns="jabber:client" type="error"`)
	xmlAttr(&b, "id", st.ID)
	xmlAttr(&b, "from", st.To)
	b.WriteString(`><error type="` + typ + `"><` + cond + ` xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></error></` + st.Kind + `>`)
	return b.Bytes()
}

const (
	nsCarbons   = "urn:xmpp:carbons:2"
	nsBindNS    = "urn:ietf:params:xml:ns:xmpp-bind"
	nsSessionNS = "urn:ietf:params:xml:ns:xmpp-session"
	nsSASL      = "urn:ietf:params:xml:ns:xmpp-sasl"
	nsStreamsNS = "urn:ietf:params:xml:ns:xmpp-streams"
)

var xmlReplacer = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;")

func xmlEsc(s string) string { return xmlReplacer.Replace(s) }

func xmlAttr(b *bytes.Buffer, name, value string) {
	if value == "" {
		return
	}
	b.WriteString(` ` + name + `="` + xmlEsc(value) + `"`)
}

// streamFeatures are what a browser client is offered: SASL PLAIN before
// authentication, then bind and session. No stream management (the
// sidecar does XEP-0198 with the server) and no STARTTLS (the browser's
// leg is the site's HTTPS).
func streamFeatures(authenticated bool) string {
	if !authenticated {
		return `<stream:features><mechanisms xmlns="` + nsSASL + `"><mechanism>PLAIN</mechanism></mechanisms></stream:features>`
	}
	return `<stream:features><bind xmlns="` + nsBindNS + `"/><session xmlns="` + nsSessionNS + `"><optional/></session></stream:features>`
}

// checkPlain checks a SASL PLAIN <auth> from a browser: the identity must
// be the session's own user (or empty, which means the same); the password
// inside is ignored and never kept.
func checkPlain(payload string, user, bare string) bool {
	raw, err := decodeBase64(strings.TrimSpace(payload))
	if err != nil {
		return false
	}
	defer clear(raw)
	parts := bytes.SplitN(raw, []byte{0}, 3)
	if len(parts) != 3 {
		return false
	}
	authz, authc := string(parts[0]), string(parts[1])
	okAuthc := authc == "" || authc == user || authc == bare
	okAuthz := authz == "" || authz == user || authz == bare
	return okAuthc && okAuthz
}

// streamErrorXML is a stream error element for a browser client.
func streamErrorXML(cond, text string) string {
	s := `<stream:error><` + cond + ` xmlns="` + nsStreamsNS + `"/>`
	if text != "" {
		s += `<text xmlns="` + nsStreamsNS + `">` + xmlEsc(text) + `</text>`
	}
	return s + `</stream:error>`
}
