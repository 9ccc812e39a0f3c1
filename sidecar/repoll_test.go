package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
)

// TestRepoll: the request that follows an answered parked poll on its
// connection, served by the parker itself when it is a plain long poll
// (repoll.go) and by net/http otherwise, answers the same bytes as a
// server that never parks (net/http throughout), and the connection goes
// on serving the same way; the hostile and unusual requests are net/http's
// to answer, as before.
func TestRepoll(t *testing.T) {
	poll := func(cur cursor, extra string) string { return pollRequest(cur, 25, extra) }
	tests := []struct {
		name    string
		second  func(cur cursor) string // the request after the answered poll
		early   bool                    // an event is waiting when it comes
		parks   bool                    // it parks and a message answers it
		viaHTTP bool                    // net/http serves it, not the parker
		status  int
	}{
		{name: "parks again", second: func(c cursor) string { return poll(c, "") }, parks: true, status: 200},
		{name: "an event is waiting", second: func(c cursor) string { return poll(c, "") }, early: true, status: 200},
		{name: "bad cursor", second: func(cursor) string {
			return "GET /v1/events?cursor=nonsense&wait=25 HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: " + goodID + "\r\n\r\n"
		}, status: 400},
		{name: "bad wait", second: func(c cursor) string { return pollRequest(c, 99, "") }, status: 400},
		{name: "unknown session", second: func(c cursor) string {
			return strings.Replace(poll(c, ""), goodID, "nosuchsession0123456789abcdefghij", 1)
		}, status: 401},
		{name: "wait 0", second: func(c cursor) string { return pollRequest(c, 0, "") }, status: 200},
		{name: "invalid header value", second: func(c cursor) string { return poll(c, "X-Odd: a\x7fb\r\n") }, viaHTTP: true, status: 400},
		{name: "no Host", second: func(c cursor) string { return strings.Replace(poll(c, ""), "Host: sidecar\r\n", "", 1) }, viaHTTP: true, status: 400},
		{name: "connection close", second: func(c cursor) string { return poll(c, "Connection: close\r\n") }, parks: true, viaHTTP: true, status: 200},
		{name: "other route", second: func(cursor) string {
			return "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: " + goodID + "\r\n\r\n"
		}, viaHTTP: true, status: 200},
		{name: "pipelined", second: func(c cursor) string {
			return pollRequest(c, 0, "") + "GET /v1/me HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: " + goodID + "\r\n\r\n"
		}, viaHTTP: true, status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var answers []string
			for _, park := range []bool{false, true} {
				var fresh atomic.Int64 // connections net/http began to serve
				ps := startParkServer(t, park, 16, func(s *http.Server) {
					s.ConnState = func(_ net.Conn, st http.ConnState) {
						if st == http.StateNew {
							fresh.Add(1)
						}
					}
				})
				cur := ps.connect(t, goodID, "alice")
				c, br := dialHTTP1(t, ps.addr)
				// The first poll waits (parked or held) and a message
				// answers it.
				io.WriteString(c, poll(cur, ""))
				ps.waitPolling(t, park)
				ps.message("first")
				if _, err := readRaw(br); err != nil {
					t.Fatal(err)
				}
				cur.offset++
				if tt.early {
					ps.message("early")
				}
				io.WriteString(c, tt.second(cur))
				if tt.parks {
					ps.waitPolling(t, park)
					ps.message("second")
				}
				raw, err := readAnswer(br)
				if err != nil {
					t.Fatalf("second answer: %v (%q)", err, raw)
				}
				if !strings.HasPrefix(raw, "HTTP/1.1 "+strconv.Itoa(tt.status)+" ") {
					t.Fatalf("second answer %q, want status %d", raw, tt.status)
				}
				answers = append(answers, raw)
				if want := int64(1); park && tt.viaHTTP {
					if fresh.Load() != 2 {
						t.Errorf("net/http began %d connections, want 2: the request was not its to serve", fresh.Load())
					}
				} else if fresh.Load() != want {
					t.Errorf("net/http began %d connections, want %d", fresh.Load(), want)
				}
				if strings.Contains(tt.second(cur), "Connection: close") || strings.Contains(raw, "Connection: close") {
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					if n, err := br.Read(make([]byte, 1)); err != io.EOF {
						t.Errorf("connection open after the answer: read %d, %v", n, err)
					}
					continue
				}
				if tt.name == "pipelined" {
					if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
						t.Fatalf("the pipelined request: %v", err)
					}
				}
				// The connection serves on: the next poll waits and is answered.
				next := ps.h.reg.get(goodID).log.head()
				io.WriteString(c, poll(next, ""))
				ps.waitPolling(t, park)
				ps.message("third")
				if raw, err := readRaw(br); err != nil || !strings.Contains(raw, `"body":"third"`) {
					t.Fatalf("the poll after: %v %q", err, raw)
				}
				if n := ps.accepts.Load(); n != 1 {
					t.Errorf("%d TCP connections, want 1", n)
				}
			}
			if a, b := maskVolatile(answers[0]), maskVolatile(answers[1]); a != b {
				t.Errorf("net/http answered\n%q\nthe parker\n%q", a, b)
			}
		})
	}
}

// waitPolling waits until the session's poll waits: parked, or held in
// its handler on the server that does not park.
func (ps *parkServer) waitPolling(t *testing.T, parked bool) {
	t.Helper()
	if parked {
		ps.waitParked(t, 1)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := ps.h.reg.get(goodID).log
		l.mu.Lock()
		n := len(l.waiters)
		l.mu.Unlock()
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the poll does not wait")
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzParseRepoll: parseRepoll reads bytes a client sent. It never panics,
// and what it accepts is exactly one complete HTTP/1.1 GET of /v1/events
// (no body) or POST of /http-bind (its whole Content-Length body) that
// net/http reads alike, with nothing after it, no Connection header but
// keep-alive, and headers free of control bytes; everything else goes
// back to net/http.
func FuzzParseRepoll(f *testing.F) {
	for _, s := range []string{
		"GET /v1/events?wait=25&cursor=a:1 HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Session-Id: abc\r\n\r\n",
		"GET /v1/events HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		"GET /v1/events HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n",
		"GET /v1/events HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
		"GET /v1/events HTTP/1.0\r\nHost: h\r\n\r\n",
		"GET /v1/events HTTP/1.1\r\nHost: h\r\n\r\nGET /v1/events HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /v1/events HTTP/1.1\r\nHost: h\r\nX: \x01\r\n\r\n",
		"GET /v1/eventsX HTTP/1.1\r\n\r\n",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\n<b/>x",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n<b/>",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n<b/>",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n<b/>",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n<b/>\r\n0\r\n\r\n",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n<b/>",
		"POST /http-bind HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nContent-Length: 4\r\n\r\n<b/>",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := parseRepoll(raw)
		if req == nil {
			return
		}
		events := req.Method == http.MethodGet && strings.HasPrefix(req.RequestURI, "/v1/events")
		bosh := req.Method == http.MethodPost && strings.HasPrefix(req.RequestURI, "/http-bind")
		if (!events && !bosh) || req.ProtoMinor != 1 || req.Close {
			t.Fatalf("accepted %q as %s %s HTTP/1.%d close=%v", raw, req.Method, req.RequestURI, req.ProtoMinor, req.Close)
		}
		end := bytes.Index(raw, []byte("\r\n\r\n"))
		if end < 0 || int64(end+4)+req.ContentLength != int64(len(raw)) || (events && req.ContentLength != 0) {
			t.Fatalf("accepted %q: not exactly one request ending at its body", raw)
		}
		again, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || again.URL.String() != req.URL.String() || again.Host != req.Host || again.ContentLength != req.ContentLength {
			t.Fatalf("accepted %q, which net/http reads as %v, %v", raw, again, err)
		}
		if body, err := io.ReadAll(req.Body); err != nil || !bytes.Equal(body, raw[end+4:]) {
			t.Fatalf("accepted %q with body %q, %v", raw, body, err)
		}
		if v := req.Header.Values("Connection"); len(v) > 1 || (len(v) == 1 && !strings.EqualFold(v[0], "keep-alive")) {
			t.Fatalf("accepted %q with Connection %q", raw, v)
		}
		for k, vv := range req.Header {
			for _, v := range append(vv, k) {
				if !plainHeader(v) {
					t.Fatalf("accepted %q with header %q: %q", raw, k, v)
				}
			}
		}
	})
}

// boshRepollServer serves the harness as boshHarness does (park: held
// BOSH requests parked, the next request of an answered connection served
// by the parker) or with net/http throughout; fresh counts, per client
// address, the connections net/http began to serve.
func boshRepollServer(t *testing.T, park bool) (*harness, *httptest.Server, func(addr string) int) {
	h := newHarness(t, "")
	srv := httptest.NewUnstartedServer(h.srv)
	var mu sync.Mutex
	fresh := map[string]int{}
	srv.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			mu.Lock()
			fresh[c.RemoteAddr().String()]++
			mu.Unlock()
		}
	}
	srv.Config.IdleTimeout = 120 * time.Second
	if park {
		rl := newResumeListener(newLimitListener(srv.Listener, 1000, func() {}))
		srv.Listener = rl
		h.api.parked = newParker(h.api, rl, srv.Config)
		h.api.parked.repoll = h.srv
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			h.api.parked.shutdown(ctx)
		})
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return h, srv, func(addr string) int {
		mu.Lock()
		defer mu.Unlock()
		return fresh[addr]
	}
}

// waitHeld waits until sid's session holds n requests (parked or in
// their handlers).
func (h *harness) waitHeld(sid string, n int) {
	h.t.Helper()
	bs := h.bosh().get(sid)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		bs.mu.Lock()
		held := 0
		for _, w := range bs.held {
			if !w.gone {
				held++
			}
		}
		bs.mu.Unlock()
		if held == n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d BOSH requests held, want %d", held, n)
		}
	}
}

// boshRaw is a BOSH request as a browser on host sends it over HTTP/1.1,
// with the session cookie of id and extra headers.
func boshRaw(host, id, extra, body string) string {
	return "POST /http-bind HTTP/1.1\r\nHost: " + host + "\r\nCookie: sessionid=" + id + "\r\nOrigin: http://" + host +
		"\r\nContent-Type: text/xml; charset=utf-8\r\n" + extra + "Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}

func boshBodyOf(rid int64, sid, payload string) string {
	return `<body xmlns="http://jabber.org/protocol/httpbind" rid="` + strconv.FormatInt(rid, 10) + `" sid="` + sid + `">` + payload + `</body>`
}

// TestBOSHRepoll: the BOSH request that follows an answered parked one on
// its connection, served by the parker itself when it is a plain one
// (repoll.go) and by net/http otherwise, answers the same bytes as a
// server that never parks, and the connection goes on serving. A request
// on that kept connection is judged as on a fresh one: another tab's sid
// is served for that tab, an unknown sid, another PHP session's sid, a
// cookie of a logged-out session, a foreign Origin, a bad or oversized
// body, a rid out of the window each get what they get anywhere.
func TestBOSHRepoll(t *testing.T) {
	type env struct {
		h     *harness
		host  string
		c     *BOSHClient // the connection's tab
		tab2  *BOSHClient // another tab of the same PHP session
		bob   *BOSHClient // another PHP session's
		first int64       // the rid of the answered request
	}
	next := func(e *env, payload string) string {
		e.c.RID++
		return boshRaw(e.host, goodID, "", boshBodyOf(e.c.RID, e.c.SID, payload))
	}
	tests := []struct {
		name    string
		second  func(e *env) []string // the request after the answered one, in writes
		early   bool                  // a stanza waits when it comes
		parks   string                // it parks; this sid's tab gets the stanza that answers it
		viaHTTP bool                  // net/http serves it, not the parker
		status  int
		want    string // in the answer
		ends    bool   // the tab's session is over after it
		closes  bool   // the connection is closed after the answer
		cont    bool   // net/http answers 100 Continue first
	}{
		{name: "parks again", second: func(e *env) []string { return []string{next(e, "")} }, parks: "c", status: 200, want: "second"},
		{name: "browser keep-alive", second: func(e *env) []string {
			e.c.RID++
			return []string{boshRaw(e.host, goodID, "Connection: keep-alive\r\n", boshBodyOf(e.c.RID, e.c.SID, ""))}
		}, parks: "c", status: 200, want: "second"},
		{name: "a stanza waits", second: func(e *env) []string { return []string{next(e, "")} }, early: true, status: 200, want: "early"},
		{name: "a message", second: func(e *env) []string {
			return []string{next(e, `<message xmlns="jabber:client" to="bob@example.test" type="chat" id="out1"><body>sent</body></message>`)}
		}, parks: "c", status: 200, want: "second"},
		{name: "retransmission", second: func(e *env) []string {
			return []string{boshRaw(e.host, goodID, "", boshBodyOf(e.first, e.c.SID, ""))}
		}, status: 200, want: "first"},
		{name: "another tab's sid", second: func(e *env) []string {
			e.tab2.RID++
			return []string{boshRaw(e.host, goodID, "", boshBodyOf(e.tab2.RID, e.tab2.SID, ""))}
		}, parks: "tab2", status: 200, want: "second"},
		{name: "unknown sid", second: func(e *env) []string {
			return []string{boshRaw(e.host, goodID, "", boshBodyOf(e.c.RID+1, strings.Repeat("ab", 20), ""))}
		}, status: 404, want: `condition="item-not-found"`},
		{name: "another PHP session's sid", second: func(e *env) []string {
			e.bob.RID++
			return []string{boshRaw(e.host, goodID, "", boshBodyOf(e.bob.RID, e.bob.SID, ""))}
		}, status: 200, want: `condition="item-not-found"`},
		{name: "another PHP session's cookie", second: func(e *env) []string {
			return []string{boshRaw(e.host, otherID, "", boshBodyOf(e.c.RID+1, e.c.SID, ""))}
		}, status: 200, want: `condition="item-not-found"`},
		{name: "logged out", second: func(e *env) []string {
			e.h.reader.mu.Lock()
			e.h.reader.errs[goodID] = phpsession.ErrNotFound
			e.h.reader.mu.Unlock()
			return []string{next(e, "")}
		}, status: 200, want: `condition="remote-stream-error"`, ends: true},
		{name: "foreign origin", second: func(e *env) []string {
			req := strings.Replace(next(e, ""), "Origin: http://"+e.host, "Origin: https://evil.example", 1)
			e.c.RID--
			return []string{req}
		}, status: 403, want: "origin_forbidden"},
		{name: "bad body", second: func(e *env) []string {
			return []string{boshRaw(e.host, goodID, "", `<iq xmlns="jabber:client"/>`)}
		}, status: 400, want: "bad_request"},
		{name: "rid out of window", second: func(e *env) []string {
			return []string{boshRaw(e.host, goodID, "", boshBodyOf(e.c.RID+5, e.c.SID, ""))}
		}, status: 200, want: `condition="item-not-found"`, ends: true},
		{name: "oversized body", second: func(e *env) []string {
			return []string{boshRaw(e.host, goodID, "", boshBodyOf(e.c.RID+1, e.c.SID, strings.Repeat("x", boshMaxBody)))}
		}, viaHTTP: true, status: 413, want: "too_large"},
		{name: "body in a second write", second: func(e *env) []string {
			req := next(e, "")
			cut := strings.Index(req, "\r\n\r\n") + 4
			return []string{req[:cut], req[cut:]}
		}, parks: "c", viaHTTP: true, status: 200, want: "second"},
		{name: "chunked", second: func(e *env) []string {
			e.c.RID++
			body := boshBodyOf(e.c.RID, e.c.SID, "")
			return []string{"POST /http-bind HTTP/1.1\r\nHost: " + e.host + "\r\nCookie: sessionid=" + goodID + "\r\nTransfer-Encoding: chunked\r\n\r\n" +
				strconv.FormatInt(int64(len(body)), 16) + "\r\n" + body + "\r\n0\r\n\r\n"}
		}, parks: "c", viaHTTP: true, status: 200, want: "second"},
		{name: "expect continue", second: func(e *env) []string {
			e.c.RID++
			return []string{boshRaw(e.host, goodID, "Expect: 100-continue\r\n", boshBodyOf(e.c.RID, e.c.SID, ""))}
		}, parks: "c", viaHTTP: true, cont: true, status: 200, want: "second"},
		{name: "connection close", second: func(e *env) []string {
			e.c.RID++
			return []string{boshRaw(e.host, goodID, "Connection: close\r\n", boshBodyOf(e.c.RID, e.c.SID, ""))}
		}, parks: "c", viaHTTP: true, closes: true, status: 200, want: "second"},
		{name: "pipelined", second: func(e *env) []string {
			bad := boshRaw(e.host, goodID, "", boshBodyOf(e.c.RID+1, strings.Repeat("ab", 20), ""))
			return []string{bad + bad}
		}, viaHTTP: true, status: 404, want: `condition="item-not-found"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var answers []string
			for _, park := range []bool{false, true} {
				h, srv, fresh := boshRepollServer(t, park)
				host := srv.Listener.Addr().String()
				// Bob's stream first: the harness's server stanzas go to
				// the stream dialed last, Alice's.
				h.reader.set(otherID, "bob", "pw")
				bob := h.newBOSH(srv, otherID)
				bob.Create("example.test")
				e := &env{h: h, host: host, bob: bob, c: h.tab(srv), tab2: h.tab(srv)}
				conn, br := dialHTTP1(t, host)
				// The first request waits (parked or held) and a stanza
				// answers it.
				io.WriteString(conn, next(e, ""))
				e.first = e.c.RID
				h.waitHeld(e.c.SID, 1)
				h.serverStanza(`<message from="bob@example.test/d" type="chat" id="r1"><body>first</body></message>`)
				if raw, err := readRaw(br); err != nil || !strings.Contains(raw, "first") {
					t.Fatalf("first answer: %v %q", err, raw)
				}
				// The other tab takes its copy, so that only the stanzas
				// below wait for it.
				e.tab2.WaitFor(5*time.Second, "the first stanza", func(s string) bool { return strings.Contains(s, "first") })
				if tt.early {
					h.serverStanza(`<message from="bob@example.test/d" type="chat" id="r2"><body>early</body></message>`)
				}
				for i, part := range tt.second(e) {
					if i > 0 {
						time.Sleep(50 * time.Millisecond)
					}
					io.WriteString(conn, part)
				}
				if tt.cont {
					if line, err := br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
						t.Fatalf("no 100 Continue: %q %v", line, err)
					}
					br.ReadString('\n')
				}
				if tt.parks != "" {
					sid := e.c.SID
					if tt.parks == "tab2" {
						sid = e.tab2.SID
					}
					h.waitHeld(sid, 1)
					h.serverStanza(`<message from="bob@example.test/d" type="chat" id="r3"><body>second</body></message>`)
				}
				raw, err := readAnswer(br)
				if err != nil {
					t.Fatalf("second answer: %v (%q)", err, raw)
				}
				if !strings.HasPrefix(raw, "HTTP/1.1 "+strconv.Itoa(tt.status)+" ") || !strings.Contains(raw, tt.want) {
					t.Fatalf("second answer %q, want status %d with %q", raw, tt.status, tt.want)
				}
				for _, sid := range []string{e.c.SID, e.tab2.SID, e.bob.SID} {
					raw = strings.ReplaceAll(raw, sid, "SID")
				}
				answers = append(answers, raw)
				want := 1
				if park && tt.viaHTTP {
					want = 2
				}
				if n := fresh(conn.LocalAddr().String()); n != want {
					t.Errorf("net/http began serving the connection %d times, want %d", n, want)
				}
				if tt.name == "a message" {
					h.conn.mu.Lock()
					got := h.conn.stanzas
					if len(got) == 0 || !strings.Contains(got[len(got)-1], "sent") {
						t.Errorf("the message did not reach the stream: %q", got)
					}
					h.conn.mu.Unlock()
				}
				if tt.name == "pipelined" {
					if raw, err := readRaw(br); err != nil || !strings.HasPrefix(raw, "HTTP/1.1 404 ") {
						t.Fatalf("the pipelined request: %v %q", err, raw)
					}
				}
				if tt.closes {
					conn.SetReadDeadline(time.Now().Add(5 * time.Second))
					if n, err := br.Read(make([]byte, 1)); err != io.EOF {
						t.Errorf("connection open after the answer: read %d, %v", n, err)
					}
					continue
				}
				if tt.ends {
					if h.bosh().get(e.c.SID) != nil {
						t.Error("the session outlived its end")
					}
					continue
				}
				if tt.parks == "tab2" {
					// The connection's tab takes its copy too.
					e.c.WaitFor(5*time.Second, "the second stanza", func(s string) bool { return strings.Contains(s, "second") })
				}
				// The connection serves on: the next request waits and is
				// answered.
				io.WriteString(conn, next(e, ""))
				h.waitHeld(e.c.SID, 1)
				h.serverStanza(`<message from="bob@example.test/d" type="chat" id="r4"><body>third</body></message>`)
				if raw, err := readRaw(br); err != nil || !strings.Contains(raw, "third") {
					t.Fatalf("the request after: %v %q", err, raw)
				}
			}
			if a, b := maskVolatile(answers[0]), maskVolatile(answers[1]); a != b {
				t.Errorf("net/http answered\n%q\nthe parker\n%q", a, b)
			}
		})
	}
}

// TestBOSHRepollShutdown: a request the parker serves that waits in its
// handler for an earlier rid (a browser's requests crossing on two
// connections) does not hold the shutdown: it ends with the parker's.
func TestBOSHRepollShutdown(t *testing.T) {
	h, srv, _ := boshRepollServer(t, true)
	host := srv.Listener.Addr().String()
	c := h.newBOSH(srv, goodID)
	c.Wait = 50
	c.Create("example.test")
	c.Login("alice", "x")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	c.RID++
	io.WriteString(conn, boshRaw(host, goodID, "", boshBodyOf(c.RID, c.SID, "")))
	h.waitHeld(c.SID, 1)
	h.serverStanza(`<message from="bob@example.test/d" type="chat" id="s1"><body>first</body></message>`)
	if raw, err := readRaw(br); err != nil || !strings.Contains(raw, "first") {
		t.Fatalf("first answer: %v %q", err, raw)
	}
	// rid+2 before rid+1: it waits for rid+1, in the parker's goroutine.
	io.WriteString(conn, boshRaw(host, goodID, "", boshBodyOf(c.RID+2, c.SID, "")))
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	h.api.parked.shutdown(ctx)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the shutdown took %v", d)
	}
}

// dialHTTP1 opens a connection to addr for a test to write raw HTTP/1.1
// on, with a 20 s deadline; it is closed at the test's end.
func dialHTTP1(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// readAnswer reads one raw answer from br. net/http's own 400s carry no
// length and their body runs to the close, so such an answer is read to
// the end.
func readAnswer(br *bufio.Reader) (string, error) {
	raw, err := readRaw(br)
	if err != nil && strings.Contains(raw, "Connection: close") {
		rest, _ := io.ReadAll(br)
		raw, err = raw+string(rest), nil
	}
	return raw, err
}
