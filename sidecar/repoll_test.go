package sidecar

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
				c, err := net.Dial("tcp", ps.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				br := bufio.NewReader(c)
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
				raw, err := readRaw(br)
				if err != nil && strings.Contains(raw, "Connection: close") {
					// net/http's own 400s: no length, the body runs to the close.
					rest, _ := io.ReadAll(br)
					raw, err = raw+string(rest), nil
				}
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
// and what it accepts is exactly one complete HTTP/1.1 GET of
// /v1/events that net/http reads alike, with nothing after it, no body,
// and headers free of control bytes; everything else goes back to
// net/http.
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
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		req := parseRepoll(raw)
		if req == nil {
			return
		}
		if req.Method != http.MethodGet || !strings.HasPrefix(req.RequestURI, "/v1/events") || req.ProtoMinor != 1 || req.Close {
			t.Fatalf("accepted %q as %s %s HTTP/1.%d close=%v", raw, req.Method, req.RequestURI, req.ProtoMinor, req.Close)
		}
		if !bytes.HasSuffix(raw, []byte("\r\n\r\n")) || bytes.Count(raw, []byte("\r\n\r\n")) != 1 {
			t.Fatalf("accepted %q: not exactly one request ending at its headers", raw)
		}
		again, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil || again.URL.String() != req.URL.String() || again.Host != req.Host {
			t.Fatalf("accepted %q, which net/http reads as %v, %v", raw, again, err)
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
