package sidecar

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A JSON long poll that finds nothing to return is parked: its handler
// hijacks the connection from net/http and returns, and the poll waits as
// a parkedPoll — the net.Conn, the few fields needed to answer, a timer
// and a waiter on the event log — with no goroutine and none of
// net/http's per-connection buffers. The first event, the wait running
// out or the shutdown answers it on a short-lived goroutine, which writes
// the HTTP/1.1 response itself and, once the next request starts, hands a
// kept-alive connection back to the same http.Server through the
// resumeListener. An online user's
// pending poll cost ≈ 10 KB of net/http buffers and two goroutines; parked
// it costs a few hundred bytes (BenchmarkPendingPollMemory).
//
// A client that goes away while its poll is parked is not noticed (nothing
// reads the connection) until the answer's write fails, within the wait
// (≤ 55 s); the connection, and its --max-connections slot, are then
// released.

// errParked is what the events handler returns once it has parked the
// poll (and the BOSH and WebSocket handlers once the parker has their
// request or stream): wrap and browserHandler then neither answer nor
// record; the parker does both.
var errParked = errors.New("sidecar: poll parked")

// parkWriteTimeout bounds the write of a parked poll's answer.
const parkWriteTimeout = 10 * time.Second

// pollQuery is what a poll asked for.
type pollQuery struct {
	cur   cursor
	given bool
	limit int
}

// parker owns the parked polls and the goroutines that answer them. It
// takes only connections of its own server (srv, which serves ln): a
// request that came another way — through the cluster's peer listener —
// is never parked, since its connection is not ln's to hand back.
type parker struct {
	a    *api
	srv  *http.Server
	ln   *resumeListener // nil: every answered connection is closed
	idle time.Duration   // the server's IdleTimeout

	mu     sync.Mutex
	polls  map[*parkedPoll]struct{}
	bosh   map[*boshPark]struct{} // held BOSH requests (boshpark.go)
	ws     map[*wsStream]struct{} // upgraded WebSockets (websocket.go)
	idlers map[net.Conn]struct{}  // answered, waiting for the next request
	closed bool                   // shutting down: answer at once, keep nothing alive
	wg     sync.WaitGroup         // one per parked poll, until its connection is handed on

	// repoll, when set, serves the next long poll or BOSH request of an
	// answered connection without handing it back to net/http
	// (repoll.go): the API's handler. repollBase is the context of those
	// requests: srv's, naming srv as net/http's own do, and ended by
	// shutdown (endRepolls) as srv.Shutdown ends net/http's, so that a
	// request waiting in its handler (a BOSH request for an earlier rid)
	// does not hold the shutdown.
	repoll     http.Handler
	repollBase context.Context
	endRepolls context.CancelFunc

	// answerers is where an idle answerer (boshpark.go) takes the next
	// parked request to answer; idleAnswerers counts those waiting.
	answerers     chan func()
	idleAnswerers atomic.Int32
}

// newParker returns the parker of srv's connections, which srv accepts
// from ln.
func newParker(a *api, ln *resumeListener, srv *http.Server) *parker {
	base := context.Background()
	if srv.BaseContext != nil {
		base = srv.BaseContext(ln)
	}
	ctx, cancel := context.WithCancel(context.WithValue(base, http.ServerContextKey, srv))
	return &parker{a: a, srv: srv, ln: ln, idle: srv.IdleTimeout, repollBase: ctx, endRepolls: cancel,
		answerers: make(chan func()), polls: map[*parkedPoll]struct{}{}, bosh: map[*boshPark]struct{}{}, ws: map[*wsStream]struct{}{}, idlers: map[net.Conn]struct{}{}}
}

// serves reports whether r came through pk's server.
func (pk *parker) serves(r *http.Request) bool {
	return pk != nil && r.Context().Value(http.ServerContextKey) == pk.srv
}

// heldConn is a connection taken from net/http to answer a request
// later: a parked long poll's, or a held BOSH request's (boshpark.go).
type heldConn struct {
	conn   net.Conn
	unread []byte      // bytes net/http had read past this request (pipelined)
	header http.Header // set before the request parked (nil: none)
	keep   bool        // the client keeps the connection alive
	http11 bool
}

// hijack takes r's connection from net/http; it reports false, leaving
// the request untouched, where it cannot (no parker, a request another
// server took, HTTP/2, a request body not read to its end, a writer that
// cannot be hijacked).
func (pk *parker) hijack(w http.ResponseWriter, r *http.Request, bodyRead bool) (heldConn, bool) {
	rec, ok := w.(*statusRecorder)
	if !pk.serves(r) || !ok || r.ProtoMajor != 1 || (!bodyRead && (r.ContentLength != 0 || len(r.TransferEncoding) > 0)) {
		return heldConn{}, false
	}
	header := rec.Header()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return heldConn{}, false
	}
	h := heldConn{conn: conn, http11: r.ProtoAtLeast(1, 1), keep: r.ProtoAtLeast(1, 1) && !r.Close}
	if len(header) > 0 {
		h.header = header.Clone()
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		h.unread = append([]byte(nil), b...)
	}
	if rc, ok := conn.(*resumedConn); ok {
		// A connection parked before: what it still had to give follows
		// what net/http had buffered from it.
		h.unread = append(h.unread, rc.rest...)
		h.conn = rc.Conn
	}
	h.conn.SetDeadline(time.Time{})
	return h, true
}

// writeHead writes what net/http writes before a body of n bytes of
// contentType: the status line 200 in the request's version, the headers
// (header's, sorted, with Content-Type and Cache-Control: no-store, and
// Content-Length when the handler sets it itself, as writeBOSH does:
// ownLength), Date, Content-Length (unless ownLength) and Connection.
func (h *heldConn) writeHead(b *bytes.Buffer, header http.Header, contentType string, now time.Time, n int, ownLength, keep bool) {
	if h.http11 {
		b.WriteString("HTTP/1.1 200 OK\r\n")
	} else {
		b.WriteString("HTTP/1.0 200 OK\r\n")
	}
	switch {
	case header != nil:
		header.Set("Content-Type", contentType)
		header.Set("Cache-Control", "no-store")
		if ownLength {
			header.Set("Content-Length", strconv.Itoa(n))
		}
		header.Write(b)
	case ownLength:
		// What Header.Write gives for the three, sorted.
		b.WriteString("Cache-Control: no-store\r\nContent-Length: ")
		b.Write(strconv.AppendInt(b.AvailableBuffer(), int64(n), 10))
		b.WriteString("\r\nContent-Type: " + contentType + "\r\n")
	default:
		b.WriteString("Cache-Control: no-store\r\nContent-Type: " + contentType + "\r\n")
	}
	b.WriteString("Date: ")
	b.Write(now.UTC().AppendFormat(b.AvailableBuffer(), http.TimeFormat))
	if !ownLength {
		b.WriteString("\r\nContent-Length: ")
		b.Write(strconv.AppendInt(b.AvailableBuffer(), int64(n), 10))
	}
	b.WriteString("\r\n")
	if !keep && h.http11 {
		b.WriteString("Connection: close\r\n")
	}
	b.WriteString("\r\n")
}

// handBack gives an answered connection back to the HTTP server for its
// next request, or closes it (a failed write, no keep-alive).
func (pk *parker) handBack(h *heldConn, keep bool) {
	switch {
	case !keep:
		h.conn.Close()
	case len(h.unread) > 0:
		pk.ln.resume(&resumedConn{Conn: h.conn, rest: h.unread})
	default:
		pk.awaitNext(h.conn)
	}
}

// parkedPoll is one pending long poll held without net/http.
type parkedPoll struct {
	pk *parker
	heldConn
	s     *session
	q     pollQuery
	route string
	user  string
	start time.Time

	mu      sync.Mutex // held while parking; the answer waits for it
	timer   *time.Timer
	fired   atomic.Bool
	tracked bool // counted in pk.wg
}

// park hijacks the connection of a poll that found nothing and leaves it
// waiting; it reports false, leaving the request untouched, where it
// cannot (no parker, a request body, HTTP/2, a writer that cannot be
// hijacked): the caller then waits as before.
func (a *api) park(w http.ResponseWriter, r *http.Request, c *caller, s *session, q pollQuery, wait time.Duration) bool {
	pk := a.parked
	if r.Method != http.MethodGet {
		return false
	}
	h, ok := pk.hijack(w, r, false)
	if !ok {
		return false
	}
	p := &parkedPoll{pk: pk, heldConn: h, s: s, q: q, route: r.Pattern, start: w.(*statusRecorder).start}
	if p.route == "" {
		p.route = "GET /v1/events"
	}
	if c != nil && c.php != nil {
		p.user = c.php.Identity.User
	}
	pk.hold(p, wait)
	return true
}

// hold registers p and arms its timer and its waiter on the event log.
func (pk *parker) hold(p *parkedPoll, wait time.Duration) {
	pk.mu.Lock()
	if pk.closed {
		pk.mu.Unlock()
		p.fired.Store(true)
		p.answer()
		return
	}
	pk.polls[p] = struct{}{}
	pk.wg.Add(1)
	p.tracked = true
	p.mu.Lock()
	pk.mu.Unlock()
	defer p.mu.Unlock()
	p.timer = time.AfterFunc(wait, p.wake)
	if _, waiting := p.s.log.readOrWait(p.q.cur, p.q.given, p.q.limit, p); !waiting {
		p.wake() // an event arrived since the handler's read
	}
}

// wake answers the poll, once, on a goroutine of its own: it is called by
// the event log's append, the timer and the shutdown.
func (p *parkedPoll) wake() {
	if p.fired.CompareAndSwap(false, true) {
		go p.answer()
	}
}

// answer writes the poll's response and then hands the connection back to
// the HTTP server, or closes it.
func (p *parkedPoll) answer() {
	pk := p.pk
	// hold arms the poll under p.mu and may wake it before it has done so:
	// taking the lock waits for the arming, and what it set is read under it.
	p.mu.Lock()
	timer, tracked := p.timer, p.tracked
	p.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	p.s.log.cancelWait(p)
	res := p.s.log.read(p.q.cur, p.q.given, p.q.limit)
	now := time.Now()
	p.s.lastPoll.Store(now.UnixNano())
	pk.mu.Lock()
	keep := p.keep && pk.ln != nil && !pk.closed && !pk.a.draining.Load()
	pk.mu.Unlock()
	msg := p.response(res, keep, now)
	// Recorded when answered, as wrap does before net/http flushes.
	pk.a.record(context.Background(), p.route, http.StatusOK, p.start, p.user)
	p.conn.SetWriteDeadline(now.Add(parkWriteTimeout))
	_, err := p.conn.Write(msg)
	p.conn.SetWriteDeadline(time.Time{})

	pk.mu.Lock()
	delete(pk.polls, p)
	keep = keep && !pk.closed
	pk.mu.Unlock()
	p.s.releasePoll() // counted since the handler; answered now
	pk.handBack(&p.heldConn, err == nil && keep)
	if tracked {
		pk.wg.Done()
	}
}

// awaitNext waits, on the answering goroutine, for the connection's next
// request, up to the server's IdleTimeout, and then hands the connection
// back with what it read of the request: net/http treats a connection it
// accepts as new, starting its ReadHeaderTimeout at once, while a
// kept-alive one may idle for IdleTimeout before its next request. PHP
// asks again at once, so the wait is short.
func (pk *parker) awaitNext(c net.Conn) {
	for pk.awaitOne(c) {
	}
}

// awaitOne waits for one request on c and serves it as a re-poll
// (repoll.go) or hands c back to net/http; it reports whether it served
// and answered a request itself and c waits for the next.
func (pk *parker) awaitOne(c net.Conn) bool {
	pk.mu.Lock()
	if pk.closed {
		pk.mu.Unlock()
		c.Close()
		return false
	}
	pk.idlers[c] = struct{}{}
	pk.mu.Unlock()
	if pk.idle > 0 {
		c.SetReadDeadline(time.Now().Add(pk.idle))
	}
	first := readNext(c)
	c.SetReadDeadline(time.Time{})
	pk.mu.Lock()
	delete(pk.idlers, c)
	closed := pk.closed
	pk.mu.Unlock()
	if len(first) == 0 || closed {
		c.Close()
		return false
	}
	if served, again := pk.serveRepoll(c, first); served {
		return again
	}
	pk.ln.resume(&resumedConn{Conn: c, rest: first})
	return false
}

// nextPool holds the buffers readNext reads into: one per read in
// progress, none while a connection waits.
var nextPool = sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}

// readNext waits until c has bytes to read, holding no buffer while it
// waits, and returns what one read gives: usually the whole next request,
// which net/http then parses without reading the socket again. It returns
// nothing when the connection ended or the read deadline passed. A
// connection that is not a socket (tests' pipes) is read a byte at a time.
func readNext(c net.Conn) []byte {
	sc, ok := c.(syscall.Conn)
	var rc syscall.RawConn
	var err error
	if ok {
		rc, err = sc.SyscallConn()
	}
	if !ok || err != nil {
		var one [1]byte
		n, _ := c.Read(one[:])
		return append([]byte(nil), one[:n]...)
	}
	var got []byte
	err = rc.Read(func(fd uintptr) bool {
		bp := nextPool.Get().(*[]byte)
		defer nextPool.Put(bp)
		for {
			n, err := syscall.Read(int(fd), *bp)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false // not yet: wait for the poller
			case n > 0:
				got = append([]byte(nil), (*bp)[:n]...)
			}
			return true // the bytes, or EOF or an error: the connection is done
		}
	})
	if err != nil {
		return nil
	}
	return got
}

// response is the bytes net/http writes for the same answer: the status
// line in the request's version, the handler's headers (sorted), Date,
// Content-Length, Connection and the JSON page. (net/http chunks a page
// over 2 KB; this always gives its length.)
func (p *parkedPoll) response(res pollResult, keep bool, now time.Time) []byte {
	body := eventsPage(res)
	b := bytes.NewBuffer(make([]byte, 0, 192+len(body)))
	p.writeHead(b, p.header, "application/json", now, len(body), false, keep)
	b.WriteString(body)
	return b.Bytes()
}

// shutdown answers every parked poll and held BOSH request with what it
// has and closes its connection, ends every adopted WebSocket, and closes
// the answered connections waiting for their next request; polls that
// would park from now on are answered at once.
// When ctx ends first, the connections still being written are closed.
func (pk *parker) shutdown(ctx context.Context) {
	pk.mu.Lock()
	pk.closed = true
	polls := make([]*parkedPoll, 0, len(pk.polls))
	for p := range pk.polls {
		polls = append(polls, p)
	}
	held := make([]*boshPark, 0, len(pk.bosh))
	for p := range pk.bosh {
		held = append(held, p)
	}
	streams := make([]*wsStream, 0, len(pk.ws))
	for t := range pk.ws {
		streams = append(streams, t)
	}
	for c := range pk.idlers {
		c.Close() // answered and idle, as http.Server.Shutdown closes its idle ones
	}
	pk.mu.Unlock()
	pk.endRepolls()
	for _, p := range polls {
		p.wake()
	}
	for _, p := range held {
		p.fire()
	}
	for _, t := range streams {
		t.cancel()
	}
	done := make(chan struct{})
	go func() { // ends when the last answer is written
		pk.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	pk.mu.Lock()
	for p := range pk.polls {
		p.conn.Close() // the pending write fails at once
	}
	for p := range pk.bosh {
		p.conn.Close()
	}
	for t := range pk.ws {
		t.ws.CloseNow()
	}
	pk.mu.Unlock()
	// An answer whose connection is closed ends at once, but the answering
	// goroutine goes on to serve the connection's next request (awaitNext,
	// a re-poll): one that claimed its session's lease waits for the
	// login, up to takeoverLoginTimeout, which closing its connection does
	// not end. Like http.Server.Shutdown, the shutdown does not wait for
	// it past its deadline (issue 20: a SIGTERM at 2,000 users waited more
	// than 30 s here for a login on an overloaded Jabber server).
	t := time.NewTimer(parkShutdownGrace)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		pk.a.logger.Warn("shutdown timeout: calls on parked connections still being served; not waiting for them")
	}
}

// parkShutdownGrace is how long the parker's shutdown waits, past its
// deadline, for the answers of the connections it closed.
const parkShutdownGrace = 500 * time.Millisecond

// adopt takes an upgraded WebSocket over from its handler: its shutdown
// ends the stream. It reports false once shutting down.
func (pk *parker) adopt(t *wsStream) bool {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	if pk.closed {
		return false
	}
	pk.ws[t] = struct{}{}
	pk.wg.Add(1)
	return true
}

// release forgets an adopted WebSocket that has ended.
func (pk *parker) release(t *wsStream) {
	pk.mu.Lock()
	delete(pk.ws, t)
	pk.mu.Unlock()
	t.cancel()
	pk.wg.Done()
}

// parkedCount is how many polls are parked (tests).
func (pk *parker) parkedCount() int {
	pk.mu.Lock()
	defer pk.mu.Unlock()
	return len(pk.polls)
}

// resumeListener is the API server's listener: Accept yields the
// connections of the listener under it and the connections of answered
// parked polls handed back by resume, which net/http then serves as new
// (with fresh pooled buffers, its ReadHeaderTimeout and IdleTimeout). It
// sits above the limitListener, so a parked connection keeps its
// --max-connections slot until it is finally closed.
type resumeListener struct {
	net.Listener
	conns  chan accepted // from the pump and from resume
	done   chan struct{} // closed by Close
	pumped chan struct{} // closed when the pump has returned
	once   sync.Once
	err    error
}

type accepted struct {
	c   net.Conn
	err error
}

func newResumeListener(ln net.Listener) *resumeListener {
	l := &resumeListener{Listener: ln, conns: make(chan accepted), done: make(chan struct{}), pumped: make(chan struct{})}
	go l.pump() // owned by the listener; returns on Close
	return l
}

// pump hands the connections of the listener below to Accept.
func (l *resumeListener) pump() {
	defer close(l.pumped)
	for {
		c, err := l.Listener.Accept()
		select {
		case l.conns <- accepted{c, err}:
		case <-l.done:
			if c != nil {
				c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

func (l *resumeListener) Accept() (net.Conn, error) {
	select {
	case a := <-l.conns:
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// resume gives c back to the server; after Close it closes c.
func (l *resumeListener) resume(c net.Conn) {
	select {
	case <-l.done:
		c.Close()
		return
	default:
	}
	select {
	case l.conns <- accepted{c: c}:
	case <-l.done:
		c.Close()
	}
}

// Close closes the listener below and waits for the pump to return.
func (l *resumeListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		l.err = l.Listener.Close()
		<-l.pumped
	})
	return l.err
}

// resumedConn is a connection handed back with bytes read from it before
// (a pipelined request net/http had buffered): they are read first.
type resumedConn struct {
	net.Conn
	rest []byte
}

func (c *resumedConn) CloseWrite() error { return closeWrite(c.Conn) }

func (c *resumedConn) Read(b []byte) (int, error) {
	if len(c.rest) == 0 {
		return c.Conn.Read(b)
	}
	n := copy(b, c.rest)
	c.rest = c.rest[n:]
	return n, nil
}
