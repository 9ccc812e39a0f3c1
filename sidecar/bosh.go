package sidecar

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// BOSH (XEP-0124, XEP-0206) at /http-bind: a browser's stream, attached
// to its PHP session's XMPP stream through the bridge (bridge.go).
const (
	// boshMaxWait caps the wait a client asks for: below Apache's default
	// 60 s proxy timeout.
	boshMaxWait = 55 * time.Second
	// boshInactivity is how long a BOSH session may go without a request
	// before it is detached (the user stays online).
	boshInactivity = 60 * time.Second
	// boshPolling is the shortest interval between empty requests of a
	// client that holds none (hold=0).
	boshPolling = 2 * time.Second
	// boshMaxHold caps hold; requests is hold+1.
	boshMaxHold = 2
	// boshMaxBody bounds a request body: one client stanza and the
	// <body/> around it, or a few small ones.
	boshMaxBody = maxClientStanza + 16<<10
	// boshMaxResponse is about the most a response carries; more waits
	// for the next request.
	boshMaxResponse = 256 << 10
	// boshRate and boshBurst bound the requests per second of one BOSH
	// session.
	boshRate, boshBurst = 10, 40
)

// boshServer holds the BOSH sessions by sid.
type boshServer struct {
	a        *api
	mu       sync.RWMutex // every request looks its sid up: readers share
	sessions map[string]*boshSession
}

func newBOSHServer(a *api) *boshServer {
	return &boshServer{a: a, sessions: map[string]*boshSession{}}
}

// boshSession is one browser BOSH session.
type boshSession struct {
	srv  *boshServer
	sid  string // never logged
	s    *session
	c    *bridgeClient
	wait time.Duration
	hold int

	// proc serializes processing in rid order.
	proc sync.Mutex

	mu       sync.Mutex
	rid      int64 // the last rid processed
	progress chan struct{}
	answers  map[int64][]byte // responses kept for retransmission
	held     []*boshWaiter
	idle     *time.Timer
	lastSeen time.Time // when a request last came or left
	authed   bool      // SASL done (or prebound)
	bound    bool      // restarted after SASL (or prebound)
	fails    int
	done     bool
	limiter  tokenBucket
	paused   time.Duration    // a pause asked for (boshopts.go), until the next request
	key      string           // key sequencing: the SHA-1 the next key must have ("" = none)
	keys     map[int64]string // the key each kept rid came with, for retransmissions
	carried  []carriedAnswer  // answers with numbered stanzas the page has not acknowledged
}

// carriedAnswer is an answer that carried stanzas numbered for Redis
// (bridgedurable.go): seq is the highest. They stay in Redis until the
// page acknowledges the answer (acknowledge).
type carriedAnswer struct {
	rid int64
	seq uint64
}

// boshWaiter is a held request: parked (p, boshpark.go) or waiting in
// its handler (wake).
type boshWaiter struct {
	rid  int64
	wake chan struct{} // closed to answer now
	p    *boshPark     // parked: fired to answer now
	gone bool          // superseded by a retransmission: answer nothing
}

// newSID returns a session id of 160 random bits.
func newSID() string {
	var b [20]byte
	crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// mintSID returns a new BOSH sid for s: 160 random bits, followed in
// cluster mode by the session key of its PHP session (sidSessionKey, a
// hash of the PHP session id: nothing secret), so that a request reaching
// any node is sent to the node holding the BOSH session.
func (h *boshServer) mintSID(s *session) string {
	if h.a.cluster != nil {
		return newSID() + s.key
	}
	return newSID()
}

// create registers a BOSH session for a bridge client.
func (h *boshServer) create(s *session, c *bridgeClient, rid int64, wait time.Duration, hold int, prebound bool) *boshSession {
	bs := &boshSession{srv: h, sid: h.mintSID(s), s: s, c: c, wait: wait, hold: hold, rid: rid,
		progress: make(chan struct{}), answers: map[int64][]byte{}, keys: map[int64]string{}, authed: prebound, bound: prebound,
		limiter: tokenBucket{rate: boshRate, burst: boshBurst}}
	bs.lastSeen = time.Now()
	bs.idle = time.AfterFunc(boshInactivity, bs.idleCheck)
	h.mu.Lock()
	h.sessions[bs.sid] = bs
	h.mu.Unlock()
	return bs
}

func (h *boshServer) get(sid string) *boshSession {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.sessions[sid]
}

// notify wakes the oldest held request: data or an end is there.
func (bs *boshSession) notify() {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for _, w := range bs.held {
		if !w.gone {
			bs.release(w)
			return
		}
	}
}

// release answers w now; bs.mu is held.
func (bs *boshSession) release(w *boshWaiter) {
	if w.p != nil {
		w.p.fire()
		return
	}
	select {
	case <-w.wake:
	default:
		close(w.wake)
	}
}

// idleCheck detaches a session that held no request and got none for
// boshInactivity (or the pause it asked for); otherwise it looks again
// when that could be true.
func (bs *boshSession) idleCheck() {
	bs.mu.Lock()
	left := bs.inactivityLocked() - time.Since(bs.lastSeen)
	idle := len(bs.held) == 0 && !bs.done && left <= 0
	if !idle && !bs.done {
		bs.idle.Reset(max(left, time.Second))
	}
	bs.mu.Unlock()
	if idle {
		bs.finish()
	}
}

// seen notes a request coming or going.
func (bs *boshSession) seen() {
	bs.mu.Lock()
	bs.lastSeen = time.Now()
	bs.mu.Unlock()
}

// finish ends the session: the client detaches (the user stays online),
// its sid is forgotten, held requests answer.
func (bs *boshSession) finish() {
	bs.mu.Lock()
	if bs.done {
		bs.mu.Unlock()
		return
	}
	bs.done = true
	bs.idle.Stop()
	for _, w := range bs.held {
		bs.release(w)
	}
	bs.mu.Unlock()
	// A page that stops requesting almost always read its last answers
	// (it navigated): on a live node they count as acknowledged. Only a
	// dead node leaves them in Redis for the next page.
	bs.ackUpTo(math.MaxInt64)
	bs.srv.mu.Lock()
	delete(bs.srv.sessions, bs.sid)
	bs.srv.mu.Unlock()
	bs.c.b.detach(bs.c)
}

// handle serves a request to /http-bind (through browserHandler) that
// reached via: the API, or the peer listener (cluster.go) for a request
// another node forwarded, which checked the API token itself.
func (h *boshServer) handle(via *api, w http.ResponseWriter, r *http.Request) (string, error) {
	data, err := readBOSHBody(r)
	if err != nil {
		return "", err
	}
	body, err := parseBOSHBody(data)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	rid, err := body.ridOf()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	sid := body.attrs["sid"]
	if sid == "" {
		return h.open(via, w, r, body, rid)
	}
	bs := h.get(sid)
	if bs == nil {
		// HTTP 404 with the terminate: Expresso 2.5's messenger ignores
		// type="terminate" and would poll a dead sid for ever; an HTTP
		// error is what stops it (Strophe stops on either).
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotFound)
		w.Write(terminateBody("item-not-found", ""))
		return "", nil
	}
	foreign, ended := h.a.sameBrowserSession(r, bs.s)
	if foreign {
		writeBOSH(w, terminateBody("item-not-found", ""))
		return "", nil
	}
	if ended != "" {
		bs.c.end("not-authorized", ended)
		bs.writeEnd(w)
		return bs.s.user, nil
	}
	if bs.serve(w, r, body, rid) {
		return bs.s.user, errParked
	}
	return bs.s.user, nil
}

// readBOSHBody reads a request's body, at most boshMaxBody bytes: into
// one buffer of its Content-Length when it has one.
func readBOSHBody(r *http.Request) ([]byte, error) {
	n := r.ContentLength
	switch {
	case n > boshMaxBody:
		return nil, fmt.Errorf("%w: body over %d bytes", ErrTooLarge, boshMaxBody)
	case n < 0:
		return readCapped(r.Body, boshMaxBody)
	}
	// net/http's body reader ends at Content-Length: one buffer of its
	// size, read whole.
	data := make([]byte, n)
	if _, err := io.ReadFull(r.Body, data); err != nil {
		return nil, fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
	}
	return data, nil
}

// open creates a BOSH session for the browser's PHP session cookie
// (session creation request, XEP-0124 §7.1). The client authenticates with
// SASL PLAIN as the session's user; the password it sends is ignored.
func (h *boshServer) open(a *api, w http.ResponseWriter, r *http.Request, body *boshBody, rid int64) (string, error) {
	if to := body.attrs["to"]; to != "" && to != a.cfg.XMPPDomain {
		writeBOSH(w, terminateBody("host-unknown", ""))
		return "", nil
	}
	s, err := a.browserSession(r)
	if err != nil {
		return "", err
	}
	if k := body.attrs["newkey"]; k != "" && !validKey(strings.ToLower(k)) {
		writeBOSH(w, terminateBody("bad-request", ""))
		return s.user, nil
	}
	bs, err := h.attach(s, rid, body, false)
	if err != nil {
		return s.user, err
	}
	bs.key = strings.ToLower(body.attrs["newkey"])
	resp := h.creationBody(bs, body, streamFeatures(false))
	bs.keep(rid, resp)
	writeBOSH(w, resp)
	return s.user, nil
}

// attach makes a bridge client and its BOSH session; rid is the last rid
// the client used.
func (h *boshServer) attach(s *session, rid int64, body *boshBody, prebound bool) (*boshSession, error) {
	b := s.bridgeOf(h.a.cfg.MaxBrowserStreams, h.a.cfg.EventBuffer, h.a.metrics)
	var bsp atomic.Pointer[boshSession]
	c, err := b.attach(func() {
		if bs := bsp.Load(); bs != nil {
			bs.notify()
		}
	})
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.deferBacklog = true // see bridgeClient
	c.live = func() bool { bs := bsp.Load(); return bs == nil || bs.present() }
	c.mu.Unlock()
	wait := boshMaxWait
	hold := 1
	if body != nil {
		if v := body.intAttr("wait", int(boshMaxWait/time.Second)); time.Duration(v)*time.Second < wait {
			wait = time.Duration(v) * time.Second
		}
		hold = min(body.intAttr("hold", 1), boshMaxHold)
	}
	bs := h.create(s, c, rid, wait, hold, prebound)
	bsp.Store(bs)
	if prebound {
		b.markReady(c)
	}
	return bs, nil
}

func (h *boshServer) creationBody(bs *boshSession, body *boshBody, features string) []byte {
	var sb strings.Builder
	sb.WriteString(`<body xmlns="` + nsHTTPBind + `" xmlns:xmpp="` + nsXBOSH + `" xmlns:stream="http://etherx.jabber.org/streams"`)
	attrs := [][2]string{
		{"sid", bs.sid}, {"authid", bs.sid},
		{"wait", strconv.Itoa(int(bs.wait / time.Second))},
		{"inactivity", strconv.Itoa(int(boshInactivity / time.Second))},
		{"polling", strconv.Itoa(int(boshPolling / time.Second))},
		{"maxpause", strconv.Itoa(int(h.maxPause() / time.Second))},
		{"requests", strconv.Itoa(bs.hold + 1)},
		{"hold", strconv.Itoa(bs.hold)},
		{"ver", "1.6"},
		{"from", h.a.cfg.XMPPDomain},
		{"secure", "true"},
		{"xmpp:version", "1.0"},
		{"xmpp:restartlogic", "true"},
	}
	if body != nil && body.attrs["ack"] != "" {
		attrs = append(attrs, [2]string{"ack", body.attrs["rid"]})
	}
	for _, kv := range attrs {
		sb.WriteString(` ` + kv[0] + `="` + xmlEsc(kv[1]) + `"`)
	}
	sb.WriteString(`>` + features + `</body>`)
	return []byte(sb.String())
}

// serve handles one request of an existing session, in rid order. It
// reports whether the request was parked (hold1): its answer is then the
// parker's.
func (bs *boshSession) serve(w http.ResponseWriter, r *http.Request, body *boshBody, rid int64) bool {
	bs.s.lastPoll.Store(time.Now().UnixNano())
	bs.seen()
	defer bs.seen()
	window := int64(bs.hold + 1)
	bs.mu.Lock()
	ok := bs.limiter.allow(time.Now())
	bs.paused = 0 // a pause lasts until the next request
	bs.mu.Unlock()
	if !ok {
		bs.c.end("policy-violation", "too many requests")
		bs.writeEnd(w)
		return false
	}
	for {
		if ended, _, _ := bs.c.ending(); ended {
			bs.writeEnd(w)
			return false
		}
		bs.mu.Lock()
		if bs.done {
			bs.mu.Unlock()
			bs.writeEnd(w)
			return false
		}
		last := bs.rid
		switch {
		case rid <= last && rid > last-window && !bs.retransmitKeyOK(rid, body):
			bs.mu.Unlock()
			bs.refuse(w, "item-not-found")
			return false
		case rid <= last && rid > last-window:
			// A retransmission: the response again, or take over the
			// request still held for that rid.
			if resp, ok := bs.answers[rid]; ok && resp != nil {
				bs.mu.Unlock()
				writeBOSH(w, resp)
				return false
			}
			bs.mu.Unlock()
			return bs.hold1(w, r, rid)
		case rid <= last || rid > last+window:
			bs.mu.Unlock()
			bs.c.end("", "")
			writeBOSH(w, terminateBody("item-not-found", ""))
			bs.finish()
			return false
		case rid > last+1:
			// An earlier request is still on its way: wait for it.
			ch := bs.progress
			bs.mu.Unlock()
			t := time.NewTimer(bs.wait)
			select {
			case <-ch:
				t.Stop()
				continue
			case <-t.C:
				bs.c.end("", "")
				writeBOSH(w, terminateBody("item-not-found", ""))
				bs.finish()
				return false
			case <-r.Context().Done():
				t.Stop()
				return false
			}
		}
		bs.mu.Unlock()
		// The next rid: process it, unless a copy of this request
		// (a retransmission) got there first.
		bs.proc.Lock()
		bs.mu.Lock()
		next := bs.rid == rid-1
		keyOK := !next || bs.checkKeyLocked(rid, body)
		bs.mu.Unlock()
		if !keyOK {
			// XEP-0124 §15.3: not processed, the session ends.
			bs.proc.Unlock()
			bs.refuse(w, "item-not-found")
			return false
		}
		if next {
			break
		}
		bs.proc.Unlock()
	}
	bs.acknowledge(rid, body)
	pause, pausing, err := bs.srv.pauseOf(body)
	if err != nil {
		bs.proc.Unlock()
		bs.refuse(w, "policy-violation")
		return false
	}
	resp, hold := bs.process(r.Context(), body)
	bs.mu.Lock()
	bs.rid = rid
	close(bs.progress)
	bs.progress = make(chan struct{})
	bs.mu.Unlock()
	bs.proc.Unlock()
	if resp != nil {
		bs.keep(rid, resp)
		writeBOSH(w, resp)
		if body.attrs["type"] == "terminate" || bytesHasTerminate(resp) {
			bs.finish()
		}
		return false
	}
	if pausing {
		// Every held request answers now; this one, without payloads.
		bs.pause(pause)
		resp := boshPayload("")
		bs.keep(rid, resp)
		writeBOSH(w, resp)
		return false
	}
	if !hold {
		bs.answer(w, rid)
		return false
	}
	return bs.hold1(w, r, rid)
}

func bytesHasTerminate(resp []byte) bool {
	return strings.Contains(string(resp[:min(len(resp), 200)]), `type="terminate"`)
}

// process handles the payload of a request in order. It returns a
// response to send at once, or nil with whether to hold the request.
func (bs *boshSession) process(ctx context.Context, body *boshBody) ([]byte, bool) {
	terminate := body.attrs["type"] == "terminate"
	bs.mu.Lock()
	authed, bound := bs.authed, bs.bound
	bs.mu.Unlock()
	if !authed {
		if len(body.kids) == 0 {
			return nil, true
		}
		k := body.kids[0]
		if len(body.kids) != 1 || k.name.Space != nsSASL || k.name.Local != "auth" {
			return terminateBody("remote-stream-error", streamErrorXML("not-authorized", "")), false
		}
		if !checkAuth(k.raw, bs.s.user, bs.s.jid) {
			bs.mu.Lock()
			bs.fails++
			fails := bs.fails
			bs.mu.Unlock()
			if fails >= 3 {
				return terminateBody("remote-stream-error", streamErrorXML("not-authorized", "")), false
			}
			return boshPayload(`<failure xmlns="` + nsSASL + `"><not-authorized/></failure>`), false
		}
		bs.mu.Lock()
		bs.authed = true
		bs.mu.Unlock()
		return boshPayload(`<success xmlns="` + nsSASL + `"></success>`), false
	}
	if !bound {
		if body.attrs["xmpp:restart"] != "true" && body.attrs["xmpp:restart"] != "1" {
			if len(body.kids) == 0 {
				return nil, true
			}
			return terminateBody("remote-stream-error", streamErrorXML("not-authorized", "")), false
		}
		bs.mu.Lock()
		bs.bound = true
		bs.mu.Unlock()
		return boshPayload(streamFeatures(true)), false
	}
	handshake, offline := false, false
	for _, k := range body.kids {
		if k.name.Local == "iq" && (strings.Contains(string(k.raw), nsBindNS) || strings.Contains(string(k.raw), nsSessionNS)) {
			handshake = true
		}
		if terminate && isBroadcastUnavailable(k.raw) {
			// A page going away says unavailable on its way out, and so
			// does Expresso 2.5's "offline" menu: the grace period
			// (bridgeoffline.go) tells them apart.
			offline = true
			continue
		}
		if k.name.Space == nsHTTPBind {
			k.raw = []byte(strings.Replace(string(k.raw), ` xmlns="`+nsHTTPBind+`"`, "", 1))
		}
		if err := bs.c.b.fromClient(ctx, bs.c, k.raw); err != nil {
			cond := "policy-violation"
			if errors.Is(err, ErrNotConnected) {
				cond = "remote-connection-failed"
			}
			bs.c.end(cond, "")
			return bs.endBody(), false
		}
	}
	if terminate {
		bs.c.end("", "")
		if offline {
			bs.c.b.startGrace(bs.srv.a.cfg.OfflineGrace, bs.srv.a.logger)
		}
		return terminateBody("", ""), false
	}
	if !handshake {
		bs.c.releaseBacklog()
	}
	return nil, true
}

// isBroadcastUnavailable reports whether raw is <presence type="unavailable"/> to nobody.
func isBroadcastUnavailable(raw []byte) bool {
	st, err := xmppconn.ParseStanza(raw, maxClientStanza)
	return err == nil && st.Kind == "presence" && st.To == "" && st.Type == "unavailable"
}

// keep stores a response for retransmission, forgetting those older than
// the window.
func (bs *boshSession) keep(rid int64, resp []byte) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	bs.answers[rid] = resp
	for k := range bs.answers {
		if k <= rid-int64(bs.hold+1) {
			delete(bs.answers, k)
		}
	}
	for k := range bs.keys {
		if k <= rid-int64(bs.hold+1) {
			delete(bs.keys, k)
		}
	}
}

// hold1 holds the request until stanzas are there, the wait runs out, a
// newer request needs it answered, or the browser goes away. Over
// HTTP/1.x through the API's own listener the request is parked
// (boshpark.go) and hold1 reports true; otherwise it waits here.
func (bs *boshSession) hold1(w http.ResponseWriter, r *http.Request, rid int64) bool {
	if bs.answerable(rid) {
		// Stanzas (or the end) already wait: no need to hold.
		bs.answer(w, rid)
		return false
	}
	hw := &boshWaiter{rid: rid, wake: make(chan struct{})}
	// The API's parker, which takes only its own listener's requests: a
	// request a peer forwarded (cluster.go) waits here.
	pk := bs.srv.a.parked
	if h, ok := pk.hijack(w, r, true); ok {
		p := &boshPark{pk: pk, heldConn: h, bs: bs, w: hw, start: w.(*statusRecorder).start}
		hw.p = p
		p.mu.Lock() // armed before it can answer
		bs.register(hw)
		p.arm(bs.wait)
		p.mu.Unlock()
		return true
	}
	if !bs.register(hw) {
		bs.writeEnd(w)
		return false
	}
	t := time.NewTimer(bs.wait)
	gone := false
	select {
	case <-hw.wake:
	case <-t.C:
	case <-r.Context().Done():
		gone = true
	}
	t.Stop()
	superseded := bs.unregister(hw)
	if gone && bs.srv.a.draining.Load() {
		bs.c.end("system-shutdown", "shutdown")
		bs.writeEnd(w)
		return false
	}
	if gone || superseded {
		// Nobody reads this answer: what waits stays for the next one.
		if superseded {
			writeBOSH(w, boshPayload(""))
		}
		return false
	}
	bs.answer(w, rid)
	return false
}

// register adds hw to the held requests, releasing it at once when
// stanzas or the end wait, and the oldest (the lowest rid) when too many are held. It
// reports false, releasing a parked hw, when the session is over.
func (bs *boshSession) register(hw *boshWaiter) bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.done {
		if hw.p != nil {
			bs.release(hw)
		}
		return false
	}
	for _, o := range bs.held {
		if o.rid == hw.rid {
			// A retransmission takes over: the copy nobody reads
			// answers empty and takes nothing.
			o.gone = true
			bs.release(o)
		}
	}
	// In rid order, whatever order they came in (a request that waited
	// for an earlier rid registers after it only once that one is
	// processed, and may register first): the lowest answers first.
	i := len(bs.held)
	for i > 0 && bs.held[i-1].rid > hw.rid {
		i--
	}
	bs.held = slices.Insert(bs.held, i, hw)
	// Too many held: the oldest answers now, so the client can send.
	live := 0
	for _, o := range bs.held {
		if !o.gone {
			live++
		}
	}
	for i := 0; live > bs.hold && i < len(bs.held)-1; i++ {
		if o := bs.held[i]; !o.gone {
			bs.release(o)
			live--
		}
	}
	if bs.c.pending() {
		bs.release(hw)
	}
	if ended, _, _ := bs.c.ending(); ended {
		bs.release(hw)
	}
	return true
}

// answerable reports whether a request for rid can be answered at once:
// stanzas or the end wait, and no copy of it is held.
func (bs *boshSession) answerable(rid int64) bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.done {
		return false
	}
	for _, o := range bs.held {
		if o.rid == rid {
			return false
		}
	}
	ended, _, _ := bs.c.ending()
	return ended || bs.c.pending()
}

// unregister removes an answered hw from the held requests and reports
// whether a retransmission superseded it.
func (bs *boshSession) unregister(hw *boshWaiter) bool {
	bs.mu.Lock()
	for i, o := range bs.held {
		if o == hw {
			bs.held = append(bs.held[:i], bs.held[i+1:]...)
			break
		}
	}
	bs.lastSeen = time.Now()
	superseded := hw.gone
	bs.mu.Unlock()
	bs.s.lastPoll.Store(time.Now().UnixNano())
	return superseded
}

// answer writes what waits for the client (or its end) and keeps it.
func (bs *boshSession) answer(w http.ResponseWriter, rid int64) {
	resp, end := bs.reply(rid)
	writeBOSH(w, resp)
	if end {
		bs.finish()
	}
}

// reply is the answer to rid: what waits for the client, kept for a
// retransmission, or the client's end (end: the session is over once it
// is written).
func (bs *boshSession) reply(rid int64) (resp []byte, end bool) {
	if ended, _, _ := bs.c.ending(); ended {
		return bs.endBody(), true
	}
	list, seq := bs.c.takeUnacked(boshMaxResponse)
	resp = boshPayloadOf(list)
	bs.keep(rid, resp)
	if seq > 0 {
		bs.mu.Lock()
		bs.carried = append(bs.carried, carriedAnswer{rid: rid, seq: seq})
		bs.mu.Unlock()
	}
	return resp, false
}

// acknowledge forgets in Redis (bridgedurable.go) the stanzas of the
// answers request rid proves the page has: those to rids hold+1 or more
// below it (a page keeps at most hold+1 requests out, so it had them all
// back before sending rid), and to the rid of its XEP-0124 ack attribute
// when it sends one. A retransmission acknowledges nothing.
func (bs *boshSession) acknowledge(rid int64, body *boshBody) {
	upTo := rid - int64(bs.hold+1)
	if a, err := strconv.ParseInt(body.attrs["ack"], 10, 64); err == nil && a < rid {
		upTo = max(upTo, a)
	}
	bs.ackUpTo(upTo)
}

// ackUpTo forgets in Redis the stanzas the answers to rids up to upTo
// carried.
func (bs *boshSession) ackUpTo(upTo int64) {
	bs.mu.Lock()
	var top uint64
	n := 0
	for _, a := range bs.carried {
		if a.rid <= upTo {
			top = max(top, a.seq)
			continue
		}
		bs.carried[n] = a
		n++
	}
	bs.carried = bs.carried[:n]
	bs.mu.Unlock()
	bs.c.b.acked(top)
}

// refuse ends the session with a terminal binding condition: the client
// detaches (the user stays online).
func (bs *boshSession) refuse(w http.ResponseWriter, cond string) {
	bs.c.end("", "")
	writeBOSH(w, terminateBody(cond, ""))
	bs.finish()
}

// endBody is the terminate body for a client the bridge cut off.
func (bs *boshSession) endBody() []byte {
	_, cond, text := bs.c.ending()
	if cond == "" {
		return terminateBody("", "")
	}
	return terminateBody("remote-stream-error", streamErrorXML(cond, text))
}

// writeEnd answers with the session's end and forgets it.
func (bs *boshSession) writeEnd(w http.ResponseWriter) {
	writeBOSH(w, bs.endBody())
	bs.finish()
}

const (
	boshPayloadHead = `<body xmlns="` + nsHTTPBind + `" xmlns:stream="http://etherx.jabber.org/streams">`
	boshPayloadTail = `</body>`
)

// boshEmptyPayload is the answer without stanzas, the most common one:
// shared by every session (and kept for retransmission without a copy),
// never written to (its capacity is its length, so an append copies).
var boshEmptyPayload = []byte(boshPayloadHead + boshPayloadTail)[:len(boshPayloadHead+boshPayloadTail):len(boshPayloadHead+boshPayloadTail)]

func boshPayload(inner string) []byte {
	if inner == "" {
		return boshEmptyPayload
	}
	return []byte(boshPayloadHead + inner + boshPayloadTail)
}

// boshPayloadOf is the body carrying stanzas, in one allocation.
func boshPayloadOf(stanzas [][]byte) []byte {
	if len(stanzas) == 0 {
		return boshEmptyPayload
	}
	n := len(boshPayloadHead) + len(boshPayloadTail)
	for _, raw := range stanzas {
		n += len(raw)
	}
	b := append(make([]byte, 0, n), boshPayloadHead...)
	for _, raw := range stanzas {
		b = append(b, raw...)
	}
	return append(b, boshPayloadTail...)
}

// terminateBody is a terminate response; condition "" is a clean end.
func terminateBody(cond, inner string) []byte {
	s := `<body xmlns="` + nsHTTPBind + `" xmlns:stream="http://etherx.jabber.org/streams" type="terminate"`
	if cond != "" {
		s += ` condition="` + cond + `"`
	}
	if inner == "" {
		return []byte(s + `/>`)
	}
	return []byte(s + `>` + inner + `</body>`)
}

func writeBOSH(w http.ResponseWriter, b []byte) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// prebind is POST /v1/prebind: the PHP side opens (or reuses) the user's
// stream and a BOSH session bound to it, and hands the browser jid, sid
// and rid (converse.js authentication "prebind", Strophe attach).
func (a *api) prebind(w http.ResponseWriter, r *http.Request, c *caller) error {
	if err := decode(r, &struct{}{}, true); err != nil {
		return err
	}
	// The login is the registry's (connectOwned), as a browser's is
	// (browserSession): a PHP call that gives up does not cut it.
	s, _, err := a.reg.connectOwned(r.Context(), c.id, c.php, nil)
	if err != nil {
		return err
	}
	a.reg.remember(s, c.id)
	s.lastPoll.Store(time.Now().UnixNano())
	// The browser's first request uses rid; any start is fine, a random
	// one keeps sessions apart in logs of proxies.
	rid := rand.Int64N(1<<40) + 1<<20
	bs, err := a.bosh.attach(s, rid-1, nil, true)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, prebindOut{JID: s.fullJIDNow(), SID: bs.sid, RID: rid, URL: a.cfg.BOSHURL})
	return nil
}
