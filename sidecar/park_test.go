package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"expressolivre.org/imsidecar/xmppconn"
)

// parkServer is the real API handler (over the harness's fakes) served by
// a real http.Server on loopback TCP, behind the daemon's listener stack:
// the limit, then the resume listener. Without parking it is the old
// path, every pending poll held by net/http.
type parkServer struct {
	h       *harness
	addr    string
	accepts atomic.Int64 // TCP connections accepted from the kernel
	srv     *http.Server
	served  chan struct{}
	stopped atomic.Bool
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func startParkServer(tb testing.TB, park bool, maxConns int, opts ...func(*http.Server)) *parkServer {
	tb.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return startParkServerOn(tb, raw, park, maxConns, opts...)
}

// startParkServerOn is startParkServer on the listener raw.
func startParkServerOn(tb testing.TB, raw net.Listener, park bool, maxConns int, opts ...func(*http.Server)) *parkServer {
	tb.Helper()
	h := newHarness(tb, "")
	ps := &parkServer{h: h, addr: raw.Addr().String(), served: make(chan struct{})}
	var ln net.Listener = newLimitListener(countingListener{raw, &ps.accepts}, maxConns, func() {})
	ps.srv = &http.Server{Handler: h.srv, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	for _, o := range opts {
		o(ps.srv)
	}
	if park {
		rl := newResumeListener(ln)
		h.api.parked = newParker(h.api, rl, ps.srv)
		h.api.parked.repoll = h.srv // as serve sets it (repoll.go)
		ln = rl
	}
	go func() {
		defer close(ps.served)
		ps.srv.Serve(ln)
	}()
	tb.Cleanup(func() { ps.stop(tb) })
	return ps
}

// stop drains the server as serve does: parked polls first.
func (ps *parkServer) stop(tb testing.TB) {
	if ps.stopped.Swap(true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ps.h.api.draining.Store(true)
	if ps.h.api.parked != nil {
		ps.h.api.parked.shutdown(ctx)
	}
	ps.srv.Shutdown(ctx)
	ps.srv.Close()
	<-ps.served
	ps.h.reg.shutdown(ctx)
}

// connect makes the session id online and returns the cursor of its head.
func (ps *parkServer) connect(tb testing.TB, id, user string) cursor {
	tb.Helper()
	ps.h.reader.set(id, user, "pw")
	if rec := ps.h.do("POST", "/v1/connect", "", "X-Session-Id", id); rec.Code != http.StatusOK {
		tb.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	return ps.h.reg.get(id).log.head()
}

// waitParked waits until n polls are parked.
func (ps *parkServer) waitParked(tb testing.TB, n int) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for ps.h.api.parked.parkedCount() != n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d polls parked, want %d", ps.h.api.parked.parkedCount(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func (ps *parkServer) message(body string) {
	ps.h.handler.HandleEvent(&xmppconn.Message{From: "bob@example.test/web", ID: body, Type: "chat", Body: body})
}

// apiLines counts the debug log's access lines for a route and status.
func (ps *parkServer) apiLines(route string, status int) int {
	ps.h.logMu.Lock()
	defer ps.h.logMu.Unlock()
	return strings.Count(ps.h.logs.String(), fmt.Sprintf("msg=api route=%q status=%d ", route, status))
}

func pollRequest(cur cursor, wait int, extra string) string {
	return fmt.Sprintf("GET /v1/events?cursor=%s&wait=%d HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: %s\r\n%s\r\n", cur, wait, goodID, extra)
}

// TestParkKeepAlive: a parked poll answered by a message, then the next
// poll on the same TCP connection, many rounds; each poll is measured and
// logged once, at its answer.
func TestParkKeepAlive(t *testing.T) {
	ps := startParkServer(t, true, 16)
	cur := ps.connect(t, goodID, "alice")
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	defer hc.CloseIdleConnections()
	const rounds = 30
	var reused int
	for i := range rounds {
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
			if ci.Reused {
				reused++
			}
		}}
		ctx := httptrace.WithClientTrace(t.Context(), trace)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ps.addr+"/v1/events?wait=25&cursor="+cur.String(), nil)
		req.Header.Set("X-Session-Id", goodID)
		type answer struct {
			page string
			err  error
		}
		got := make(chan answer, 1)
		go func() {
			resp, err := hc.Do(req)
			if err != nil {
				got <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			got <- answer{string(b), err}
		}()
		ps.waitParked(t, 1)
		body := fmt.Sprintf("round %d", i)
		ps.message(body)
		a := <-got
		if a.err != nil || !strings.Contains(a.page, `"body":"`+body+`"`) {
			t.Fatalf("round %d: %v %q", i, a.err, a.page)
		}
		cur.offset++
		if !strings.Contains(a.page, `"cursor":"`+cur.String()+`","recovered":true}`) {
			t.Fatalf("round %d: page %q does not end at %s", i, a.page, cur)
		}
	}
	if n := ps.accepts.Load(); n != 1 || reused != rounds-1 {
		t.Errorf("%d rounds took %d TCP connections, %d reused; want 1 and %d", rounds, n, reused, rounds-1)
	}
	if n := ps.apiLines("GET /v1/events", 200); n != rounds {
		t.Errorf("%d access log lines for %d polls", n, rounds)
	}
}

// TestParkIdleTimeout: an answered connection may idle up to the server's
// IdleTimeout before its next request, as a kept-alive one does — not
// only its ReadHeaderTimeout, as a new one — and is closed when it has
// passed. In a synctest bubble over in-memory connections, so the clock
// is the bubble's: no load can stretch a wait past a timeout.
func TestParkIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const readHeader, idle = 300 * time.Millisecond, 1500 * time.Millisecond
		ln := newPipeListener()
		ps := startParkServerOn(t, ln, true, 16, func(s *http.Server) {
			s.ReadHeaderTimeout, s.IdleTimeout = readHeader, idle
		})
		cur := ps.connect(t, goodID, "alice")
		c, err := ln.dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		answer := func(what string) {
			t.Helper()
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: %v %v", what, resp, err)
			}
			io.Copy(io.Discard, resp.Body)
		}
		// Idle for all but the last moment of the IdleTimeout (far past
		// the ReadHeaderTimeout), then at once.
		for i, wait := range []time.Duration{idle - time.Millisecond, 0} {
			io.WriteString(c, pollRequest(cur, 25, ""))
			ps.waitParked(t, 1)
			ps.message(fmt.Sprintf("m%d", i))
			answer("poll")
			cur.offset++
			time.Sleep(wait)
			io.WriteString(c, "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: "+goodID+"\r\n\r\n")
			answer("the request after an idle answered connection")
		}
		io.WriteString(c, pollRequest(cur, 25, ""))
		ps.waitParked(t, 1)
		ps.message("last")
		answer("last poll")
		start := time.Now()
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("idle answered connection: %v, want EOF", err)
		}
		if d := time.Since(start); d != idle {
			t.Errorf("the idle connection was closed after %v, want the IdleTimeout, %v", d, idle)
		}
		if n := ps.accepts.Load(); n != 1 {
			t.Errorf("%d connections accepted, want 1", n)
		}
	})
}

// pipeListener is a listener of in-memory connections (net.Pipe), for a
// server in a synctest bubble: a goroutine waiting on a socket would keep
// the bubble's clock from advancing, one waiting on a pipe does not.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

// dial opens a connection to the listener's server.
func (l *pipeListener) dial() (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		client.Close()
		server.Close()
		return nil, net.ErrClosed
	}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

// maskVolatile hides the Date and the cursors' epochs, which differ
// between two servers.
var volatile = regexp.MustCompile(`Date: [^\r]*|\d{10,}:`)

func maskVolatile(s string) string { return volatile.ReplaceAllString(s, "X") }

// TestParkAnswerBytes: a poll that times out answers the same bytes
// parked as held by net/http (the old path), for a kept-alive, a
// Connection: close and an HTTP/1.0 request; the last two close the
// connection after the answer, the first serves the next request on it.
func TestParkAnswerBytes(t *testing.T) {
	tests := []struct {
		name  string
		proto string
		extra string
		close bool
	}{
		{"keep-alive", "HTTP/1.1", "", false},
		{"connection close", "HTTP/1.1", "Connection: close\r\n", true},
		{"HTTP/1.0", "HTTP/1.0", "", true},
	}
	held, parked := startParkServer(t, false, 16), startParkServer(t, true, 16)
	held.connect(t, goodID, "alice")
	parked.connect(t, goodID, "alice")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var answers []string
			for _, ps := range []*parkServer{held, parked} {
				c, err := net.Dial("tcp", ps.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				req := strings.Replace(pollRequest(ps.h.reg.get(goodID).log.head(), 1, tt.extra), "HTTP/1.1", tt.proto, 1)
				io.WriteString(c, req)
				br := bufio.NewReader(c)
				raw, err := readRaw(br)
				if err != nil {
					t.Fatal(err)
				}
				answers = append(answers, raw)
				if tt.close {
					if n, err := br.Read(make([]byte, 1)); err != io.EOF {
						t.Errorf("connection open after the answer: read %d, %v", n, err)
					}
					continue
				}
				io.WriteString(c, "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: "+goodID+"\r\n\r\n")
				if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("next request on the connection: %v", err)
				}
			}
			if a, b := maskVolatile(answers[0]), maskVolatile(answers[1]); a != b || !strings.Contains(a, `{"events":[],"cursor":"X`) {
				t.Errorf("held answer\n%q\nparked answer\n%q", a, b)
			}
		})
	}
}

// readRaw reads one answer as its bytes: the header block as sent, then
// the Content-Length bytes of body.
func readRaw(br *bufio.Reader) (string, error) {
	var b strings.Builder
	length := -1
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return b.String(), err
		}
		b.WriteString(line)
		if line == "\r\n" {
			break
		}
		if v, ok := strings.CutPrefix(line, "Content-Length: "); ok {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if length < 0 {
		return b.String(), fmt.Errorf("no Content-Length in %q", b.String())
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(br, body); err != nil {
		return b.String(), err
	}
	b.Write(body)
	return b.String(), nil
}

// TestParkPipelined: requests pipelined behind a parked poll — read by
// net/http before the poll parked — are served in order after it, through
// two parkings on the same connection.
func TestParkPipelined(t *testing.T) {
	ps := startParkServer(t, true, 16)
	cur := ps.connect(t, goodID, "alice")
	next := cursor{cur.epoch, cur.offset + 1}
	c, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	me := "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: " + goodID + "\r\n\r\n"
	io.WriteString(c, pollRequest(cur, 25, "")+pollRequest(next, 25, "")+me)
	ps.waitParked(t, 1)
	ps.h.api.parked.mu.Lock()
	for p := range ps.h.api.parked.polls {
		if len(p.unread) == 0 {
			t.Errorf("the pipelined requests were not buffered at the park")
		}
	}
	ps.h.api.parked.mu.Unlock()
	br := bufio.NewReader(c)
	for i, want := range []string{`"body":"one"`, `"body":"two"`, `"user":"alice"`} {
		if i < 2 {
			ps.waitParked(t, 1)
			ps.message([]string{"one", "two"}[i])
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if !strings.Contains(string(b), want) {
			t.Fatalf("answer %d = %q, want %s", i, b, want)
		}
	}
	if n := ps.accepts.Load(); n != 1 {
		t.Errorf("%d connections accepted, want 1", n)
	}
}

// TestParkClientGone: a client that hangs up while parked keeps its
// --max-connections slot until the poll's answer, then the connection is
// closed and the slot given back; nothing is left behind.
func TestParkClientGone(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ps := startParkServer(t, true, 1)
	cur := ps.connect(t, goodID, "alice")
	c, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, pollRequest(cur, 1, ""))
	ps.waitParked(t, 1)
	c.Close()
	// Parked, the gone client still holds the only slot.
	get := func() int { // on a connection of its own
		c, err := net.Dial("tcp", ps.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		go io.WriteString(c, "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := get(); st != http.StatusServiceUnavailable {
		t.Errorf("a second connection while parked got %d, want 503", st)
	}
	ps.waitParked(t, 0)
	deadline := time.Now().Add(10 * time.Second)
	for get() != http.StatusUnauthorized { // served: no session id
		if time.Now().After(deadline) {
			t.Fatal("the slot of the gone client was never released")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ps.stop(t)
}

// TestParkShutdown: the drain answers every parked poll at once, closes
// its connection and leaves no goroutine.
func TestParkShutdown(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const n = 40
	ps := startParkServer(t, true, 2*n)
	ps.h.api.cfg.MaxPolls = n // one session's n polls, here
	cur := ps.connect(t, goodID, "alice")
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", ps.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, pollRequest(cur, 55, ""))
		conns = append(conns, c)
	}
	ps.waitParked(t, n)
	start := time.Now()
	ps.stop(t)
	for i, c := range conns {
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK || !resp.Close {
			t.Fatalf("poll %d at shutdown: %v %v", i, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("poll %d: connection open after the shutdown answer: %v", i, err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the drain took %v", d)
	}
}

// TestParkEventWhileParking: an event appended while a poll is parking —
// between the handler's read and the waiter's registration — is
// delivered, not left for the wait to run out. Many rounds, under -race.
func TestParkEventWhileParking(t *testing.T) {
	ps := startParkServer(t, true, 16)
	cur := ps.connect(t, goodID, "alice")
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	rounds := 300
	if testing.Short() {
		rounds = 50
	}
	for i := range rounds {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+ps.addr+"/v1/events?wait=30&cursor="+cur.String(), nil)
		req.Header.Set("X-Session-Id", goodID)
		var wg sync.WaitGroup
		wg.Go(func() {
			// Land anywhere in the poll: before, during or after parking.
			for range i % 7 {
				runtime.Gosched()
			}
			ps.message(fmt.Sprintf("m%d", i))
		})
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("round %d: the event appended while parking was missed: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		wg.Wait()
		if !strings.Contains(string(b), fmt.Sprintf(`"body":"m%d"`, i)) {
			t.Fatalf("round %d: %q", i, b)
		}
		cur.offset++
	}
}

// BenchmarkPendingPollMemory: N pending long polls over loopback TCP
// against the real handler, parked and held by net/http (the old path)
// measured in the same run: the live heap and goroutine stacks each adds,
// and its goroutines. The client ends of the connections are in the same
// process and counted in both; sockets-B/poll is what N bare connections
// (both ends, accepted and held, nothing read) cost, so parked minus
// sockets is what parking itself holds.
func BenchmarkPendingPollMemory(b *testing.B) {
	const polls = 500
	sockets := func() float64 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		before, _ := liveMemory()
		var conns []net.Conn
		for range polls {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			s, err := ln.Accept()
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c, s)
		}
		after, _ := liveMemory()
		for _, c := range conns {
			c.Close()
		}
		return float64(after-before) / polls
	}
	measure := func(park bool) (perPoll float64, goroutines float64) {
		ps := startParkServer(b, park, 4*polls)
		defer ps.stop(b)
		ids := make([]string, polls)
		heads := make([]cursor, polls)
		for i := range ids {
			ids[i] = fmt.Sprintf("benchsession%021d", i)
			heads[i] = ps.connect(b, ids[i], fmt.Sprintf("user%d", i))
		}
		before, g0 := liveMemory()
		conns := make([]net.Conn, polls)
		for i := range conns {
			c, err := net.Dial("tcp", ps.addr)
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = c
			fmt.Fprintf(c, "GET /v1/events?cursor=%s&wait=55 HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: %s\r\n\r\n", heads[i], ids[i])
		}
		deadline := time.Now().Add(30 * time.Second)
		for waiting := 0; waiting < polls; {
			waiting = 0
			for _, id := range ids {
				l := ps.h.reg.get(id).log
				l.mu.Lock()
				waiting += len(l.waiters)
				l.mu.Unlock()
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d polls pending", waiting, polls)
			}
			time.Sleep(5 * time.Millisecond)
		}
		after, g1 := liveMemory()
		for _, c := range conns {
			c.Close()
		}
		return float64(after-before) / polls, float64(g1-g0) / polls
	}
	// A fixed number of rounds, whatever b.N (make bench runs ./sidecar
	// at 2000x): each round sets up 1,500 loopback connections.
	const rounds = 3
	var parked, held, parkedG, heldG, bare float64
	for range rounds {
		p, pg := measure(true)
		h, hg := measure(false)
		parked, held, parkedG, heldG = parked+p, held+h, parkedG+pg, heldG+hg
		bare += sockets()
	}
	for b.Loop() {
	}
	n := float64(rounds)
	b.ReportMetric(bare/n, "sockets-B/poll")
	b.ReportMetric(parked/n, "parked-B/poll")
	b.ReportMetric(held/n, "held-B/poll")
	b.ReportMetric(parkedG/n, "parked-goroutines/poll")
	b.ReportMetric(heldG/n, "held-goroutines/poll")
	b.ReportMetric(parked/held, "parked/held")
}

// liveMemory is the heap in use plus the goroutine stacks after a full
// collection, and the number of goroutines.
func liveMemory() (int64, int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc + m.StackInuse), runtime.NumGoroutine()
}

// TestPollCapPerSession: one session opening 25 long polls against
// --max-connections 20 once held every connection and starved bob. Its
// polls in flight are now capped (a parked poll counts until answered):
// the ones over the cap get 429 too_many_polls and their connection is
// closed, so bob's poll gets a slot; once answered, the cap is free again.
func TestPollCapPerSession(t *testing.T) {
	for _, park := range []bool{true, false} {
		t.Run(fmt.Sprintf("parked=%v", park), func(t *testing.T) {
			const maxConns, polls, capN = 20, 25, 8
			ps := startParkServer(t, park, maxConns)
			bobCur := ps.connect(t, otherID, "bob")
			cur := ps.connect(t, goodID, "alice") // last: ps.message goes to alice
			s := ps.h.reg.get(goodID)
			if ps.h.api.cfg.MaxPolls != capN {
				t.Fatalf("default --max-polls-per-session = %d, want %d", ps.h.api.cfg.MaxPolls, capN)
			}
			type answer struct {
				status int
				body   string
				closed bool // the server closed the connection after it
			}
			answers := make(chan answer, polls)
			for range polls {
				c, err := net.Dial("tcp", ps.addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				go func() {
					if _, err := io.WriteString(c, pollRequest(cur, 55, "")); err != nil {
						answers <- answer{status: -1, body: err.Error()}
						return
					}
					c.SetReadDeadline(time.Now().Add(30 * time.Second))
					br := bufio.NewReader(c)
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						answers <- answer{status: -1, body: err.Error()}
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					closed := false
					if resp.Close {
						_, err = br.ReadByte()
						closed = err == io.EOF
					}
					answers <- answer{resp.StatusCode, string(b), closed}
				}()
			}
			// capN polls wait; every other one is answered at once.
			counts := map[int]int{}
			for range polls - capN {
				a := <-answers
				counts[a.status]++
				switch {
				case a.status == http.StatusTooManyRequests && strings.Contains(a.body, `"too_many_polls"`) && a.closed:
				case a.status == http.StatusServiceUnavailable && strings.Contains(a.body, `"too_many_connections"`):
				default:
					t.Fatalf("a poll over the cap: %+v", a)
				}
			}
			if counts[http.StatusTooManyRequests] == 0 {
				t.Fatalf("no poll was refused too_many_polls: %v", counts)
			}
			if park {
				ps.waitParked(t, capN)
			}
			if n := s.polls.Load(); n != capN {
				t.Fatalf("%d polls counted, want %d", n, capN)
			}
			// Bob gets a connection and his answer.
			c, err := net.Dial("tcp", ps.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			fmt.Fprintf(c, "GET /v1/events?cursor=%s&wait=0 HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: %s\r\n\r\n", bobCur, otherID)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("bob's poll while alice holds her %d: %v %v", capN, resp, err)
			}
			resp.Body.Close()
			// Alice's waiting polls are answered by her next event and
			// give their places back.
			ps.message("hello")
			for range capN {
				if a := <-answers; a.status != http.StatusOK || !strings.Contains(a.body, "hello") {
					t.Fatalf("a waiting poll: %+v", a)
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for s.polls.Load() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("%d polls still counted after every one was answered", s.polls.Load())
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// TestSSEReaderStopsReading: a client that opens an SSE stream and then
// stops reading while events keep coming once held its handler goroutine
// and its connection for the stream's 10 minutes. Each write now has a
// deadline: the stream ends, its goroutine returns and the connection is
// closed, while the events stay in the log for the next poll.
func TestSSEReaderStopsReading(t *testing.T) {
	ps := startParkServer(t, true, 16)
	ps.h.api.sseWrite = 300 * time.Millisecond
	cur := ps.connect(t, goodID, "alice")
	s := ps.h.reg.get(goodID)
	c, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	fmt.Fprintf(c, "GET /v1/events?cursor=%s HTTP/1.1\r\nHost: sidecar\r\nAccept: text/event-stream\r\nCookie: sessionid=%s\r\n\r\n", cur, goodID)
	br := bufio.NewReaderSize(c, 64)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE: %v %v", resp, err)
	}
	if s.polls.Load() != 1 {
		t.Fatalf("%d streams counted", s.polls.Load())
	}
	// The client reads no more; events keep coming (16 KiB each) until
	// the stream gives up.
	body := strings.Repeat("x", 16<<10)
	stop := make(chan struct{})
	produced := make(chan int)
	go func() {
		n := 0
		defer func() { produced <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			n++
			ps.h.handler.HandleEvent(&xmppconn.Message{From: "bob@example.test/web", ID: strconv.Itoa(n), Type: "chat", Body: body})
			if n%50 == 0 {
				time.Sleep(5 * time.Millisecond)
			}
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for s.polls.Load() != 0 || streamGoroutines() != 0 {
		if time.Now().After(deadline) {
			close(stop)
			t.Fatalf("the stream of a client that stopped reading still runs after 30 s (%d events produced, %d handler goroutines)", <-produced, streamGoroutines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	n := <-produced
	// The connection gave its --max-connections slot back: 16 others
	// (the cap) are all served at once.
	for i := range 16 {
		o, err := net.Dial("tcp", ps.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		o.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(o, "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: %s\r\n\r\n", goodID)
		resp, err := http.ReadResponse(bufio.NewReader(o), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("connection %d of 16 after the stream ended: %v %v", i+1, resp, err)
		}
		resp.Body.Close()
	}
	t.Logf("stream ended after %d events of 16 KiB", n)
	// Nothing is lost: the next poll finds the events in the log.
	rec := ps.h.do("GET", "/v1/events?wait=0&cursor="+cur.String(), "", "X-Session-Id", goodID)
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), body) {
		t.Fatalf("a poll after the stream ended: %d", rec.Code)
	}
}

// streamGoroutines counts the goroutines inside an SSE handler.
func streamGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "sidecar.(*api).stream(")
}

// TestParkShutdownBounded: the parker's shutdown ends at its deadline
// even when an answered connection's next request, a re-poll served on
// the answering goroutine, does not end: in a cluster such a re-poll may
// claim its session and wait for the login up to takeoverLoginTimeout,
// which closing its connection does not cut short. A SIGTERM at 2,000
// users waited more than 30 s there. Real TCP: the re-poll path reads a
// socket (readNext).
func TestParkShutdownBounded(t *testing.T) {
	ps := startParkServer(t, true, 16)
	cur := ps.connect(t, goodID, "alice")
	release := make(chan struct{})
	entered := make(chan struct{})
	real := ps.h.api.parked.repoll
	ps.h.api.parked.repoll = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release // a login that outlives the shutdown's deadline
		real.ServeHTTP(w, r)
	})
	c, err := net.Dial("tcp", ps.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	io.WriteString(c, pollRequest(cur, 25, ""))
	ps.waitParked(t, 1)
	ps.message("m")
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("poll: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	cur.offset++
	io.WriteString(c, pollRequest(cur, 0, "")) // the re-poll
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the next request on the answered connection was not served as a re-poll")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	ended := make(chan struct{})
	go func() {
		ps.h.api.parked.shutdown(ctx)
		close(ended)
	}()
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		close(release)
		<-ended
		t.Fatal("the parker's shutdown waited for the re-poll past its deadline")
	}
	ps.h.logMu.Lock()
	said := strings.Contains(ps.h.logs.String(), "not waiting for them")
	ps.h.logMu.Unlock()
	if !said {
		t.Error("the shutdown did not say it left a call being served")
	}
	close(release)
}
