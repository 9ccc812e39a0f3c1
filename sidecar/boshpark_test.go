package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"

	"expressolivre.org/imsidecar/xmppconn"
)

// heldBOSH counts the parked BOSH requests not yet fired.
func (h *harness) heldBOSH() int {
	h.api.parked.mu.Lock()
	defer h.api.parked.mu.Unlock()
	n := 0
	for p := range h.api.parked.bosh {
		if !p.fired.Load() {
			n++
		}
	}
	return n
}

func (h *harness) waitHeldBOSH(n int) {
	h.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); h.heldBOSH() != n; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			h.t.Fatalf("%d BOSH requests parked, want %d", h.heldBOSH(), n)
		}
	}
}

// rawBOSH sends one request of c's session with the next rid over its
// own connection and returns the connection, the answer unread.
func rawBOSH(t testing.TB, srv *httptest.Server, c *BOSHClient, payload string) net.Conn {
	t.Helper()
	c.RID++
	body := `<body xmlns="http://jabber.org/protocol/httpbind" rid="` + strconv.FormatInt(c.RID, 10) + `" sid="` + c.SID + `">` + payload + `</body>`
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /http-bind HTTP/1.1\r\nHost: %s\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n%s",
		srv.Listener.Addr(), len(body), body)
	return conn
}

// TestBOSHParked: a held request waits parked, with no handler; a stanza
// answers it over the same connection, which then serves the next
// request; the wait running out answers it empty.
func TestBOSHParked(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.tab(srv)
	conn := rawBOSH(t, srv, c, "")
	defer conn.Close()
	h.waitHeldBOSH(1)
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="p1"><body>parked</body></message>`)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/xml; charset=utf-8" || resp.Close ||
		!strings.Contains(string(data), "parked") {
		t.Fatalf("parked answer: %d %v close=%v %s", resp.StatusCode, resp.Header, resp.Close, data)
	}
	h.waitHeldBOSH(0)
	// The same connection serves the next request, which is held and
	// answered empty when its wait (3 s) runs out.
	c.RID++
	body := `<body xmlns="http://jabber.org/protocol/httpbind" rid="` + strconv.FormatInt(c.RID, 10) + `" sid="` + c.SID + `"/>`
	start := time.Now()
	fmt.Fprintf(conn, "POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	h.waitHeldBOSH(1)
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ = io.ReadAll(resp.Body)
	b, err := parseBOSHBody(data)
	if err != nil || len(b.kids) != 0 || b.attrs["type"] != "" || time.Since(start) < 2*time.Second {
		t.Fatalf("expired wait answered %s after %v (%v)", data, time.Since(start), err)
	}
	// A retransmission of that rid gets the same answer.
	c.RID--
	if c.Send("", ""); c.Last != string(data) {
		t.Fatalf("retransmission answered %s, want %s", c.Last, data)
	}
}

// TestBOSHParkedOwnServerOnly: a request that reached the same handler
// through another server — the cluster's peer listener, serving one that
// another node forwarded — is held in its handler, not parked: its
// connection is not the API listener's to hand back. It is answered all
// the same.
func TestBOSHParkedOwnServerOnly(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.tab(srv)
	other := httptest.NewServer(h.srv)
	defer other.Close()
	conn := rawBOSH(t, other, c, "")
	defer conn.Close()
	bs := h.bosh().get(c.SID)
	held := func() int {
		bs.mu.Lock()
		defer bs.mu.Unlock()
		return len(bs.held)
	}
	for deadline := time.Now().Add(10 * time.Second); held() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests held, want 1", held())
		}
	}
	if n := h.heldBOSH(); n != 0 {
		t.Fatalf("%d requests of the other server parked, want none", n)
	}
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="o1"><body>in handler</body></message>`)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(data), "in handler") {
		t.Fatalf("answer through the other server: %d %s", resp.StatusCode, data)
	}
}

// TestBOSHParkedBrowserGone (hostile case): a page that goes away while
// its request is parked takes nothing with it: the message stays for the
// page's next request.
func TestBOSHParkedBrowserGone(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.tab(srv)
	conn := rawBOSH(t, srv, c, "")
	h.waitHeldBOSH(1)
	conn.Close()
	time.Sleep(50 * time.Millisecond) // the FIN reaches the server's socket
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="g1"><body>kept</body></message>`)
	h.waitHeldBOSH(0)
	c.WaitFor(5*time.Second, "the message the gone request did not take", func(s string) bool { return strings.Contains(s, "kept") })
}

// TestBOSHParkedShutdown: the shutdown answers a parked request with the
// stream's end.
func TestBOSHParkedShutdown(t *testing.T) {
	h, srv := boshHarness(t)
	c := h.tab(srv)
	conn := rawBOSH(t, srv, c, "")
	defer conn.Close()
	h.waitHeldBOSH(1)
	h.api.draining.Store(true)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	h.api.parked.shutdown(ctx)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	if !resp.Close || !strings.Contains(string(data), `type="terminate"`) || !strings.Contains(string(data), "system-shutdown") {
		t.Fatalf("shutdown answered close=%v %s", resp.Close, data)
	}
	if h.bosh().get(c.SID) != nil {
		t.Fatal("session kept after the shutdown's answer")
	}
}

// BenchmarkHeldBOSHMemory: N logged-in BOSH sessions (one PHP session
// each) with a request held, parked and held in its handler (as over
// HTTP/2, and before parking) measured in the same run; and N WebSockets
// adopted by the parker against run in their handlers. Per held request
// or stream: the live heap and goroutine stacks it adds, and its
// goroutines. The client ends are in the same process and counted in both.
// (The WebSocket "handler" figure is this code without adoption: one
// goroutine, the writer runs on demand either way.)
func BenchmarkHeldBOSHMemory(b *testing.B) {
	const n = 200
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("benchbosh%024d", i)
	}
	bosh := func(start func(testing.TB) (*harness, *httptest.Server)) (float64, float64) {
		h, srv := start(b)
		defer srv.Close()
		clients := make([]*BOSHClient, n)
		for i, id := range ids {
			h.reader.set(id, fmt.Sprintf("user%d", i), "pw")
			clients[i] = h.newBOSH(srv, id)
			clients[i].Create("example.test")
			clients[i].Login(fmt.Sprintf("user%d", i), "x")
			// The initial presence, answered at once with the replay:
			// the client's steady state.
			clients[i].Send("", `<presence xmlns="jabber:client"/>`)
			clients[i].hc.CloseIdleConnections()
		}
		// The server ends the idle connections.
		for g := -1; g != runtime.NumGoroutine(); time.Sleep(200 * time.Millisecond) {
			g = runtime.NumGoroutine()
		}
		before, g0 := liveMemory()
		conns := make([]net.Conn, n)
		for i, c := range clients {
			conns[i] = rawBOSH(b, srv, c, "")
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			held := 0
			for _, c := range clients {
				bs := h.bosh().get(c.SID)
				bs.mu.Lock()
				held += len(bs.held)
				bs.mu.Unlock()
			}
			if held == n {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d requests held", held, n)
			}
		}
		after, g1 := liveMemory()
		for _, c := range conns {
			c.Close()
		}
		return float64(after-before) / n, float64(g1-g0) / n
	}
	ws := func(start func(testing.TB) (*harness, *httptest.Server)) (float64, float64) {
		h, srv := start(b)
		defer srv.Close()
		before, g0 := liveMemory()
		streams := make([]*websocket.Conn, n)
		for i, id := range ids {
			h.reader.set(id, fmt.Sprintf("user%d", i), "pw")
			hdr := http.Header{"Origin": {srv.URL}, "Cookie": {"sessionid=" + id}}
			c, _, err := websocket.Dial(b.Context(), "ws"+strings.TrimPrefix(srv.URL, "http")+"/xmpp-websocket",
				&websocket.DialOptions{Subprotocols: []string{"xmpp"}, HTTPHeader: hdr})
			if err != nil {
				b.Fatal(err)
			}
			// One exchange, as a client's login starts: the stream runs.
			c.Write(b.Context(), websocket.MessageText, []byte(`<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="example.test" version="1.0"/>`))
			c.Read(b.Context())
			c.Read(b.Context())
			streams[i] = c
		}
		after, g1 := liveMemory()
		for _, c := range streams {
			c.CloseNow()
		}
		return float64(after-before) / n, float64(g1-g0) / n
	}
	// A fixed number of rounds, whatever b.N (make bench runs ./sidecar
	// at 2000x).
	const rounds = 2
	var m [4][2]float64
	for range rounds {
		for i, f := range []func() (float64, float64){
			func() (float64, float64) { return bosh(boshHarness) },
			func() (float64, float64) { return bosh(boshHarnessUnparked) },
			func() (float64, float64) { return ws(boshHarness) },
			func() (float64, float64) { return ws(boshHarnessUnparked) },
		} {
			bytes, g := f()
			m[i][0] += bytes / rounds
			m[i][1] += g / rounds
		}
	}
	for b.Loop() {
	}
	// A parked request's own cost is within the noise of this figure
	// (a few hundred bytes: the boshPark and the socket's end): the
	// saving is the figure.
	b.ReportMetric(m[1][0], "handler-B/held")
	b.ReportMetric(m[1][0]-m[0][0], "saved-B/held")
	b.ReportMetric(m[0][1], "parked-goroutines/held")
	b.ReportMetric(m[1][1], "handler-goroutines/held")
	b.ReportMetric(m[2][0], "ws-adopted-B/stream")
	b.ReportMetric(m[3][0], "ws-handler-B/stream")
	b.ReportMetric(m[2][1], "ws-adopted-goroutines/stream")
	b.ReportMetric(m[3][1], "ws-handler-goroutines/stream")
	b.ReportMetric(m[2][0]/m[3][0], "ws-adopted/handler")
}

// BenchmarkBOSHExchange is the daemon's work for one BOSH message as the
// load test's sidecar-bosh path drives it (issue 15 item 7): over real
// loopback TCP through the listener stack and the parker, a tab with
// hold=1 sends a message on one kept-alive connection while its poll is
// parked on another (the poll answers empty, the send parks, the next
// poll parks and answers the send), and a message from the server
// answers the parked poll, whose next poll parks again: four requests,
// a message each way. The XMPP stream is the tests' fake.
//
// The baseline, timed in the same run, is the same exchange with every
// request after a parked answer handed back to net/http as a new
// connection (the parker without repoll.go, as before issue 15 item 7):
// repoll/handback is the time, cpu/handback the process's CPU (client
// and server), allocs/handback the allocations, per exchange.
func BenchmarkBOSHExchange(b *testing.B) {
	const payload = `<message xmlns="jabber:client" to="bob@example.test" type="chat" id="s1"><body>Olá Bob, a reunião foi para as 15h</body></message>`
	setup := func(repoll bool) (round func(i int), stop func()) {
		h, srv := boshHarness(b)
		if !repoll {
			h.api.parked.repoll = nil
		}
		h.api.logger = slog.New(slog.DiscardHandler) // production runs at warn: no access log
		h.api.cfg.RateLimit = 1e12                   // the session's stanzas: none refused
		c := h.tab(srv)
		c.Send("", `<presence xmlns="jabber:client"/>`)
		bs := h.bosh().get(c.SID)
		bs.mu.Lock()
		bs.limiter = tokenBucket{rate: 1e12, burst: 1e12}
		bs.mu.Unlock()
		stanzas := make([]*xmppconn.Stanza, 4096)
		for i := range stanzas {
			st, err := xmppconn.ParseStanza([]byte(`<message from="bob@example.test/d" to="alice@example.test/web" type="chat" id="in`+
				strconv.Itoa(i)+`"><body>Olá Alice, combinado</body></message>`), 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			st.From = st.Attr("from")
			stanzas[i] = st
		}
		addr := srv.Listener.Addr().String()
		send, poll := dialRaw(b, addr), dialRaw(b, addr)
		req := func(payload string) string {
			c.RID++
			body := boshBodyOf(c.RID, c.SID, payload)
			return "POST /http-bind HTTP/1.1\r\nHost: " + addr + "\r\nCookie: sessionid=" + goodID + "\r\nOrigin: http://" + addr +
				"\r\nContent-Type: text/xml; charset=utf-8\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
		}
		poll.write(b, req(""))
		h.waitHeld(c.SID, 1)
		round = func(i int) {
			send.write(b, req(payload)) // answers the poll, and parks
			poll.read(b, http.StatusOK)
			poll.write(b, req("")) // parks, and answers the send
			send.read(b, http.StatusOK)
			h.tap(stanzas[i%len(stanzas)]) // answers the poll, held since the send's answer
			if body := poll.read(b, http.StatusOK); !bytes.Contains(body, []byte("combinado")) {
				b.Fatalf("poll answered %s", body)
			}
			poll.write(b, req("")) // parks (the next send waits for it, in rid order)
			if i%1024 == 0 {
				h.conn.mu.Lock()
				h.conn.stanzas = h.conn.stanzas[:0]
				h.conn.mu.Unlock()
			}
		}
		return round, func() { send.Close(); poll.Close() }
	}
	measure := func(round func(int), n int) (ns, cpuUs, allocs, bytes float64) {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		cpu, start := processCPU(), time.Now()
		for i := range n {
			round(i)
		}
		elapsed, cpuUsed := time.Since(start), processCPU()-cpu
		runtime.ReadMemStats(&m1)
		return float64(elapsed.Nanoseconds()) / float64(n), float64(cpuUsed.Microseconds()) / float64(n),
			float64(m1.Mallocs-m0.Mallocs) / float64(n), float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
	}
	old, stopOld := setup(false)
	old(0)
	baseNs, baseCPU, baseAllocs, baseBytes := measure(old, 2000)
	stopOld()

	round, stop := setup(true)
	defer stop()
	round(0)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	cpu0 := processCPU()
	i := 0
	for b.Loop() {
		i++
		round(i)
	}
	runtime.ReadMemStats(&m1)
	n := float64(b.N)
	cpu := float64((processCPU() - cpu0).Microseconds()) / n
	allocs := float64(m1.Mallocs-m0.Mallocs) / n
	bytes := float64(m1.TotalAlloc-m0.TotalAlloc) / n
	b.ReportMetric(cpu, "cpu-us/op")
	b.ReportMetric(allocs, "allocs/exchange")
	b.ReportMetric(bytes, "B/exchange")
	b.ReportMetric(baseBytes, "handback-B/exchange")
	b.ReportMetric(bytes/baseBytes, "bytes/handback")
	b.ReportMetric(baseNs, "handback-ns/op")
	b.ReportMetric(baseCPU, "handback-cpu-us/op")
	b.ReportMetric(baseAllocs, "handback-allocs/exchange")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n/baseNs, "repoll/handback")
	b.ReportMetric(cpu/baseCPU, "cpu/handback")
	b.ReportMetric(allocs/baseAllocs, "allocs/handback")
}

// TestParkerAnswerers: an answered parked request leaves its goroutine
// waiting for the next answer, which it takes instead of a new goroutine;
// at most maxIdleAnswerers wait, for answererIdle at most, and none past
// the shutdown.
func TestParkerAnswerers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, shutdown := context.WithCancel(t.Context())
		pk := &parker{answerers: make(chan func()), repollBase: ctx}
		idle := func(want int32) {
			t.Helper()
			synctest.Wait()
			if n := pk.idleAnswerers.Load(); n != want {
				t.Fatalf("%d answerers wait, want %d", n, want)
			}
		}
		pk.answerOn(func() {})
		idle(1)
		// The waiting answerer takes the next answer: none waits while
		// it runs (a new goroutine would have left it waiting).
		release := make(chan struct{})
		pk.answerOn(func() { <-release })
		idle(0)
		close(release)
		idle(1)
		// A burst: every answer runs at once, and only
		// maxIdleAnswerers answerers stay.
		release = make(chan struct{})
		for range 3 * maxIdleAnswerers {
			pk.answerOn(func() { <-release })
		}
		idle(0)
		close(release)
		idle(maxIdleAnswerers)
		time.Sleep(answererIdle + time.Millisecond)
		idle(0)
		// The shutdown ends those waiting.
		pk.answerOn(func() {})
		idle(1)
		shutdown()
		idle(0)
	})
}
