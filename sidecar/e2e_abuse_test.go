package sidecar_test

// Abuse tests against the real daemon: hostile session ids, planted session
// files, malformed and oversized bodies, header floods, slowloris and a
// connection cap, and hostile stanzas from the server side. Each case must
// get a clear error, leak nothing, and leave a conversation between two
// other users delivering. docs/RELIABILITY.md has the table of results.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// chatter is a conversation between two users that runs through a whole
// abuse test: a message each way every 100 ms, each checked on arrival.
type chatter struct {
	a, b           *user
	sent, received atomic.Int64
	sendErrs       atomic.Int64
	mu             sync.Mutex
	want           map[string]bool // bodies sent and not yet seen
	stopSending    context.CancelFunc
	stopPolling    context.CancelFunc
	sending        sync.WaitGroup
	polling        sync.WaitGroup
}

// startChatter connects a and b and keeps them talking until the test ends,
// then checks that every message arrived.
func startChatter(t *testing.T, a, b *user) *chatter {
	t.Helper()
	pa, pb := a.connect(t), b.connect(t)
	ctx, stopPolling := context.WithCancel(context.Background())
	sendCtx, stopSending := context.WithCancel(ctx)
	c := &chatter{a: a, b: b, want: map[string]bool{}, stopSending: stopSending, stopPolling: stopPolling}
	for _, p := range []*poller{pa, pb} {
		c.polling.Go(func() {
			cur := p.cursor
			for ctx.Err() == nil {
				page, err := p.c.events(ctx, cur, 5*time.Second, 0)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
					continue
				}
				cur = page.Cursor
				for _, ev := range page.Events {
					if ev.Event == "message" {
						c.mu.Lock()
						if c.want[ev.Body] {
							delete(c.want, ev.Body)
							c.received.Add(1)
						}
						c.mu.Unlock()
					}
				}
			}
		})
	}
	c.sending.Go(func() {
		ctx := sendCtx
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ctx.Err() == nil; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			from, to := a, b
			if n%2 == 1 {
				from, to = b, a
			}
			body := fmt.Sprintf("chatter %d", n)
			c.mu.Lock()
			c.want[body] = true
			c.mu.Unlock()
			var r struct{ ID string }
			if st, err := from.C.call(ctx, "POST", "/v1/messages", map[string]any{"to": to.Bare, "body": body}, &r); err != nil || st != http.StatusAccepted {
				if ctx.Err() == nil {
					c.sendErrs.Add(1)
				}
				c.mu.Lock()
				delete(c.want, body)
				c.mu.Unlock()
				continue
			}
			c.sent.Add(1)
		}
	})
	t.Cleanup(func() { c.finish(t) })
	return c
}

// alive fails unless a message sent now arrives within 10 s; it also checks
// that nothing sent so far is missing for more than that.
func (c *chatter) alive(t *testing.T, what string) {
	t.Helper()
	before := c.sent.Load()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		pending := len(c.want)
		c.mu.Unlock()
		if c.sent.Load() >= before+4 && pending <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: the other users' conversation stalled (sent %d, received %d, %d pending, %d send errors)",
				what, c.sent.Load(), c.received.Load(), pending, c.sendErrs.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := c.sendErrs.Load(); n > 0 {
		t.Fatalf("after %s: %d of the other users' sends failed", what, n)
	}
}

// finish stops sending, waits up to 10 s for what was sent to arrive, and
// fails on any message sent (202) and never received.
func (c *chatter) finish(t *testing.T) {
	c.stopSending()
	c.sending.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for c.received.Load() < c.sent.Load() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	c.stopPolling()
	c.polling.Wait()
	if lost := c.sent.Load() - c.received.Load(); lost > 0 {
		t.Errorf("conversation between %s and %s: %d sent, %d received, %d lost", c.a.Name, c.b.Name, c.sent.Load(), c.received.Load(), lost)
	}
	t.Logf("conversation between %s and %s during the abuse: %d sent, %d received, %d send errors",
		c.a.Name, c.b.Name, c.sent.Load(), c.received.Load(), c.sendErrs.Load())
}

// rawResponse sends raw bytes to the daemon's TCP API and reads one answer.
func rawResponse(t *testing.T, d *daemon, req string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(d.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	go io.WriteString(c, req) // the server may answer before reading it all
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer to a raw request: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body)
}

// jsonCode extracts error.code from an API error body ("" if none).
func jsonCode(body string) string {
	var e struct {
		Error struct{ Code string } `json:"error"`
	}
	json.Unmarshal([]byte(body), &e)
	return e.Error.Code
}

// TestAbuseAPI: hostile input on the API of a daemon on real Prosody and PHP
// sessions, while carol and dave keep chatting.
func TestAbuseAPI(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "carol", "dave")
	alice, carol, dave := e.login(t, "alice"), e.login(t, "carol"), e.login(t, "dave")
	chat := startChatter(t, carol, dave)
	pa := alice.connect(t)
	base := e.D.URL
	host := strings.TrimPrefix(base, "http://")

	t.Run("session ids", func(t *testing.T) {
		real := filepath.Join(e.Store.SavePath, "sess_"+carol.SID)
		ids := []struct{ name, id string }{
			{"traversal", "../../../../etc/passwd"},
			{"traversal to a real session", "../" + filepath.Base(filepath.Dir(real)) + "/sess_" + carol.SID},
			{"encoded separators", "..%2F..%2Fetc%2Fpasswd" + carol.SID},
			{"encoded NUL", carol.SID + "%00"},
			{"NUL", carol.SID[:10] + "\x00" + carol.SID[10:]},
			{"overlong", strings.Repeat("a", 5000)},
			{"unicode", "sessão-" + carol.SID},
			{"dot segments", "./" + carol.SID},
			{"backslash", `..\..\` + carol.SID},
			{"valid shape, no such session", strings.Repeat("z", 32)},
		}
		for _, tt := range ids {
			t.Run(tt.name+"/header", func(t *testing.T) {
				st, body := rawResponse(t, e.D, "GET /v1/me HTTP/1.1\r\nHost: "+host+"\r\nX-Session-Id: "+tt.id+"\r\nConnection: close\r\n\r\n")
				code := jsonCode(body)
				switch {
				case st == http.StatusBadRequest && code == "" && strings.ContainsAny(tt.id, "\x00"):
					// net/http refuses a control byte in a header value
					// before any handler runs.
				case st == http.StatusUnauthorized && (code == "session_invalid" || code == "session_not_found"):
				default:
					t.Fatalf("got %d %q %q", st, code, body)
				}
				if strings.Contains(body, carol.SID) || strings.Contains(body, "carol") || strings.Contains(body, "root:") {
					t.Fatalf("the answer leaks something: %q", body)
				}
				t.Logf("%d %s", st, code)
			})
			t.Run(tt.name+"/cookie", func(t *testing.T) {
				v := tt.id
				if strings.ContainsAny(v, "\x00;") {
					v = url.QueryEscape(v)
				}
				st, body := rawResponse(t, e.D, "GET /v1/me HTTP/1.1\r\nHost: "+host+"\r\nCookie: sessionid="+v+"\r\nConnection: close\r\n\r\n")
				code := jsonCode(body)
				if st != http.StatusUnauthorized || (code != "session_invalid" && code != "session_missing" && code != "session_not_found") {
					t.Fatalf("got %d %q %q", st, code, body)
				}
				if strings.Contains(body, carol.SID) || strings.Contains(body, "carol") {
					t.Fatalf("the answer leaks something: %q", body)
				}
				t.Logf("%d %s", st, code)
			})
		}
		chat.alive(t, "hostile session ids")
	})

	t.Run("planted session files", func(t *testing.T) {
		dir := e.Store.SavePath
		carolFile := filepath.Join(dir, "sess_"+carol.SID)
		carolData, err := os.ReadFile(carolFile)
		if err != nil {
			t.Fatal(err)
		}
		plant := func(t *testing.T, make func(path string) error) string {
			t.Helper()
			id := randomID()
			if err := make(filepath.Join(dir, "sess_"+id)); err != nil {
				t.Fatal(err)
			}
			return id
		}
		cases := []struct {
			name  string
			plant func(path string) error
			code  string
		}{
			{"garbage not written by PHP", func(p string) error {
				return os.WriteFile(p, []byte("\x00\xff<?php system('id'); ?>|a:9999999:{"), 0o600)
			}, "session_invalid"},
			{"truncated copy of a real session", func(p string) error { return os.WriteFile(p, carolData[:len(carolData)/2], 0o600) }, "session_invalid"},
			{"owned by another uid", func(p string) error {
				if err := os.WriteFile(p, carolData, 0o600); err != nil {
					return err
				}
				return os.Chown(p, 65534, 65534)
			}, "session_not_found"},
			{"symlink to another user's session", func(p string) error { return os.Symlink(carolFile, p) }, "session_not_found"},
			{"symlink to /etc/passwd", func(p string) error { return os.Symlink("/etc/passwd", p) }, "session_not_found"},
			{"FIFO", func(p string) error { return syscall.Mkfifo(p, 0o600) }, "session_not_found"},
			{"directory", func(p string) error { return os.Mkdir(p, 0o700) }, "session_not_found"},
		}
		for _, tt := range cases {
			t.Run(tt.name, func(t *testing.T) {
				id := plant(t, tt.plant)
				c := e.D.client(id)
				start := time.Now()
				for _, call := range []struct{ method, path string }{{"GET", "/v1/me"}, {"POST", "/v1/connect"}} {
					st, err := c.call(t.Context(), call.method, call.path, nil, nil)
					if st != http.StatusUnauthorized || errCode(err) != tt.code {
						t.Fatalf("%s %s: got %d %v, want 401 %s", call.method, call.path, st, err, tt.code)
					}
					if strings.Contains(err.Error(), "carol") || strings.Contains(err.Error(), "root") {
						t.Fatalf("the error leaks something: %v", err)
					}
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Fatalf("refusing took %v: a planted file must never block the reader", d)
				}
				t.Logf("401 %s", tt.code)
			})
		}
		if b, err := os.ReadFile(carolFile); err != nil || !bytes.Equal(b, carolData) {
			t.Fatalf("carol's session file changed: %v", err)
		}
		chat.alive(t, "planted session files")
	})

	t.Run("bodies", func(t *testing.T) {
		post := func(t *testing.T, body io.Reader, length int64, ctype string) (int, string) {
			t.Helper()
			req, err := http.NewRequestWithContext(t.Context(), "POST", base+"/v1/messages", body)
			if err != nil {
				t.Fatal(err)
			}
			req.ContentLength = length // -1: chunked, without a length
			req.Header.Set("X-Session-Id", alice.SID)
			if ctype != "" {
				req.Header.Set("Content-Type", ctype)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		msg := func(body string) string {
			b, _ := json.Marshal(map[string]string{"to": carol.Bare, "body": body})
			return string(b)
		}
		big := msg(strings.Repeat("x", 70<<10))
		deep := `{"to":"` + carol.Bare + `","body":"x","thread":` + strings.Repeat("[", 30000) + strings.Repeat("]", 30000) + `}`
		cases := []struct {
			name   string
			body   string
			length int64
			ctype  string
			status int
			code   string
		}{
			{"deep nesting", deep, int64(len(deep)), "application/json", 400, "bad_request"},
			{"over 64 KiB", big, int64(len(big)), "application/json", 413, "too_large"},
			{"over 64 KiB chunked without a length", big, -1, "application/json", 413, "too_large"},
			{"1 MiB chunked without a length", msg(strings.Repeat("y", 1<<20)), -1, "application/json", 413, "too_large"},
			{"truncated", `{"to":"` + carol.Bare + `","bo`, -2, "application/json", 400, "bad_request"},
			{"not JSON", `to=carol&body=hi`, -2, "application/x-www-form-urlencoded", 400, "bad_request"},
			{"a JSON array", `[1,2,3]`, -2, "application/json", 400, "bad_request"},
			{"unknown field", `{"to":"` + carol.Bare + `","body":"x","admin":true}`, -2, "application/json", 400, "bad_request"},
			{"two values", msg("one") + msg("two"), -2, "application/json", 400, "bad_request"},
			{"invalid JID", `{"to":"carol@@example.test/../x","body":"x"}`, -2, "application/json", 400, "bad_request"},
			// Accepted: the content type is not checked (mutating calls need
			// X-Session-Id, which a browser cannot send cross-site).
			{"wrong content type", msg("as text/plain"), -2, "text/plain", 202, ""},
			{"chunked without a length", msg("chunked"), -1, "application/json", 202, ""},
			// Accepted: the last duplicate wins, as in PHP's json_decode.
			{"duplicate keys", `{"to":"nobody@example.test","body":"dup","to":"` + carol.Bare + `"}`, -2, "application/json", 202, ""},
			// Accepted: invalid UTF-8 becomes U+FFFD (encoding/json), and
			// characters XML cannot carry become U+FFFD on the wire.
			{"invalid UTF-8", `{"to":"` + carol.Bare + `","body":"bad ` + "\xff\xfe" + ` utf8"}`, -2, "application/json", 202, ""},
			{"NUL and control characters", msg("ctl \x00\x01\x1b\ufffe end"), -2, "application/json", 202, ""},
		}
		for _, tt := range cases {
			t.Run(tt.name, func(t *testing.T) {
				length := tt.length
				if length == -2 {
					length = int64(len(tt.body))
				}
				var r io.Reader = strings.NewReader(tt.body)
				if length == -1 {
					r = io.MultiReader(r) // hides the length: chunked
				}
				st, body := post(t, r, length, tt.ctype)
				if st != tt.status || jsonCode(body) != tt.code {
					t.Fatalf("got %d %q, want %d %q", st, body, tt.status, tt.code)
				}
				if st >= 400 && len(body) > 512 {
					t.Fatalf("the error echoes the body (%d bytes)", len(body))
				}
				t.Logf("%d %s", st, tt.code)
			})
		}
		// The accepted oddities reach carol as well-formed text; alice's
		// stream survived them all.
		pc := &poller{c: carol.C, name: "carol"}
		for _, want := range []string{"as text/plain", "chunked", "dup", "bad \ufffd\ufffd utf8", "ctl \ufffd\ufffd\ufffd\ufffd end"} {
			pc.seenOrWait(t, 15*time.Second, "body "+want, func(ev event) bool { return ev.Event == "message" && ev.Body == want })
		}
		var me meResp
		alice.C.mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
		if me.State != "online" {
			t.Fatalf("alice's stream is %s after the bodies", me.State)
		}
		chat.alive(t, "hostile bodies")
	})

	t.Run("header floods", func(t *testing.T) {
		var many strings.Builder
		for i := range 5000 {
			fmt.Fprintf(&many, "X-Flood-%d: %d\r\n", i, i)
		}
		cases := []struct{ name, headers string }{
			{"5000 headers", many.String()},
			{"a 1 MiB header value", "X-Big: " + strings.Repeat("v", 1<<20) + "\r\n"},
			{"a 1 MiB session id", "X-Session-Id: " + strings.Repeat("a", 1<<20) + "\r\n"},
			{"a 1 MiB cookie", "Cookie: sessionid=" + strings.Repeat("c", 1<<20) + "\r\n"},
		}
		for _, tt := range cases {
			t.Run(tt.name, func(t *testing.T) {
				// Ten at once, while carol and dave chat.
				var wg sync.WaitGroup
				statuses := make([]int, 10)
				for i := range statuses {
					wg.Go(func() {
						statuses[i], _ = rawResponse(t, e.D, "GET /v1/me HTTP/1.1\r\nHost: "+host+"\r\nX-Session-Id: "+alice.SID+"\r\n"+tt.headers+"Connection: close\r\n\r\n")
					})
				}
				wg.Wait()
				for _, st := range statuses {
					if st != http.StatusRequestHeaderFieldsTooLarge {
						t.Fatalf("got %v, want 431 each", statuses)
					}
				}
				t.Logf("431 ×%d", len(statuses))
			})
		}
		chat.alive(t, "header floods")
	})

	t.Run("slowloris", func(t *testing.T) {
		// 300 connections dribble a header line every 500 ms: each is cut
		// by ReadHeaderTimeout (5 s) while carol and dave keep chatting.
		const n = 300
		type result struct {
			held time.Duration
			err  error
		}
		results := make(chan result, n)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		for range n {
			go func() {
				c, err := net.DialTimeout("tcp", host, 5*time.Second)
				if err != nil {
					results <- result{err: err}
					return
				}
				defer c.Close()
				start := time.Now()
				go func() { <-ctx.Done(); c.Close() }()
				if _, err := io.WriteString(c, "POST /v1/messages HTTP/1.1\r\nHost: "+host+"\r\n"); err != nil {
					results <- result{err: err}
					return
				}
				// The server closes the connection (maybe after a 408):
				// reading then ends.
				go func() {
					for i := 0; ctx.Err() == nil; i++ {
						if _, err := fmt.Fprintf(c, "X-Slow-%d: x\r\n", i); err != nil {
							return
						}
						time.Sleep(500 * time.Millisecond)
					}
				}()
				io.Copy(io.Discard, c)
				results <- result{held: time.Since(start)}
			}()
		}
		time.Sleep(2 * time.Second)
		chat.alive(t, "300 slowloris connections held")
		var worst time.Duration
		for range n {
			r := <-results
			if r.err != nil {
				t.Fatalf("slowloris connection: %v", r.err)
			}
			if ctx.Err() != nil {
				t.Fatalf("slowloris connections were not cut within 30 s")
			}
			worst = max(worst, r.held)
		}
		if worst > 10*time.Second {
			t.Fatalf("a dribbling connection was held %v (ReadHeaderTimeout is 5 s)", worst)
		}
		t.Logf("%d dribbling connections all cut after at most %v", n, worst.Round(10*time.Millisecond))
		chat.alive(t, "slowloris")
	})

	t.Run("alice survived", func(t *testing.T) {
		// The victim's own session and stream are intact after it all.
		id := carol.C.send(t, alice.Bare, "still there?", false)
		pa.waitFor(t, 15*time.Second, "carol's message", func(ev event) bool { return ev.Event == "message" && ev.ID == id })
	})
}

// TestAbuseConnectionLimit: beyond --max-connections a connection is
// answered 503 too_many_connections at once; the idle ones holding the
// slots are cut by ReadHeaderTimeout and service comes back by itself.
func TestAbuseConnectionLimit(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--max-connections=16"}})
	e.register(t, "carol")
	carol := e.login(t, "carol")
	carol.connect(t)
	host := strings.TrimPrefix(e.D.URL, "http://")
	// Let the helper's own keep-alive connections go.
	carol.C.hc.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)

	var idle []net.Conn
	for range 16 {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /v1/me HTTP/1.1\r\n") // and never more
		idle = append(idle, c)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	st, body := rawResponse(t, e.D, "GET /v1/me HTTP/1.1\r\nHost: "+host+"\r\nX-Session-Id: "+carol.SID+"\r\n\r\n")
	if st != http.StatusServiceUnavailable || jsonCode(body) != "too_many_connections" {
		t.Fatalf("17th connection: got %d %q, want 503 too_many_connections", st, body)
	}
	t.Logf("17th connection: %d %s in %v", st, jsonCode(body), time.Since(start).Round(time.Millisecond))

	// The 16 idle ones are cut after ReadHeaderTimeout; then calls work.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var me meResp
		st, err := carol.C.call(t.Context(), "GET", "/v1/me", nil, &me)
		if st == http.StatusOK && me.State == "online" {
			t.Logf("served again %v after the slots filled", time.Since(start).Round(100*time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refused 15 s later: %d %v", st, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, c := range idle {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 512)); err == nil {
			// A 408 answer is fine; the connection must then be closed.
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Fatalf("an idle connection was not closed: %v", err)
			}
		}
	}
	if m := metricsText(t, e.D); !strings.Contains(m, "imsidecar_api_connections_rejected_total ") || strings.Contains(m, "imsidecar_api_connections_rejected_total 0\n") {
		t.Errorf("imsidecar_api_connections_rejected_total did not count the rejection")
	}
}

func metricsText(t *testing.T, d *daemon) string {
	t.Helper()
	resp, err := http.Get(d.OpsURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestAbuseServerStanzas: a scripted server sends one user an endless,
// malformed or hostile element. That user's stream closes with a state
// event (reason stream_error) and comes back; another user on the same
// daemon keeps receiving. A stanza that is merely over
// --xmpp-max-stanza-size is skipped instead: a dropped event, and the
// stream stays up.
func TestAbuseServerStanzas(t *testing.T) {
	requireBinary(t, "php", "php-cli php-redis")
	// One victim per case, so each reconnects after its first backoff.
	const victims = 7
	accounts := map[string]string{"frank": "frank-pw"}
	for i := range victims {
		accounts[fmt.Sprintf("eve%d", i)] = fmt.Sprintf("eve%d-pw", i)
	}
	fake := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{Users: accounts})
	dir := filepath.Join(t.TempDir(), "sessions")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	srv := &xmppconntest.Server{Addr: fake.Addr, Domain: fake.Domain, CAFile: fake.Certs.CAFile}
	e := &e2e{XMPP: srv, Store: phpStore{Kind: "files", SavePath: dir}}
	e.D = startDaemon(t, daemonOptions{Store: e.Store, XMPP: srv, Extra: []string{"--xmpp-max-stanza-size=65536"}})
	t.Cleanup(func() { e.checkLogs(t) })
	frank := e.login(t, "frank")

	conns := map[string]*xmppconntest.FakeConn{}
	nextConn := func(t *testing.T, name string) *xmppconntest.FakeConn {
		t.Helper()
		select {
		case fc := <-fake.Conns():
			if !strings.HasPrefix(fc.JID, name+"@") {
				t.Fatalf("expected %s's connection, got %s", name, fc.JID)
			}
			conns[name] = fc
			return fc
		case <-time.After(15 * time.Second):
			t.Fatalf("no connection from %s", name)
			return nil
		}
	}
	pf := frank.connect(t)
	nextConn(t, "frank")
	frankAlive := func(t *testing.T, n int) {
		t.Helper()
		body := fmt.Sprintf("para frank %d", n)
		if err := conns["frank"].Write("<message from='gina@" + fake.Domain + "/x' to='" + conns["frank"].JID + "' type='chat' id='f" + fmt.Sprint(n) + "'><body>" + body + "</body></message>"); err != nil {
			t.Fatal(err)
		}
		pf.waitFor(t, 10*time.Second, body, func(ev event) bool { return ev.Event == "message" && ev.Body == body })
	}
	frankAlive(t, 0)
	frankStates := len(pf.seen)

	cases := []struct{ name, xml string }{
		{"endless stanza", "<message from='x@" + fake.Domain + "/r' type='chat'><body>" + strings.Repeat("A", 2<<20)},
		{"malformed", "<message from='x@" + fake.Domain + "/r'><body>x</bdy></message>"},
		{"nested 10000 deep", "<message from='x@" + fake.Domain + "/r'>" + strings.Repeat("<a>", 10000)},
		{"invalid UTF-8", "<message from='x@" + fake.Domain + "/r'><body>\xff\xfe\xfd</body></message>"},
		{"entity declaration", "<!DOCTYPE lol [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;'>]><message><body>&lol2;</body></message>"},
		{"undefined entity", "<message from='x@" + fake.Domain + "/r'><body>&xxe;</body></message>"},
	}
	for i, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("eve%d", i)
			eve := e.login(t, name)
			pe := eve.connect(t)
			fc := nextConn(t, name)
			fc.Write(tt.xml) // the client may close before it has all
			select {
			case <-fc.Done():
			case <-time.After(10 * time.Second):
				t.Fatalf("%s's stream still open 10 s after %s", name, tt.name)
			}
			down := pe.waitFor(t, 10*time.Second, "state event", func(ev event) bool {
				return ev.Event == "state" && ev.State == "reconnecting"
			})
			if down.Reason != "stream_error" {
				t.Errorf("state event %+v, want reason stream_error", down)
			}
			nextConn(t, name)
			up := pe.waitFor(t, 20*time.Second, "online again", func(ev event) bool { return ev.Event == "state" && ev.State == "online" })
			frankAlive(t, i+1)
			for _, ev := range pf.seen[frankStates:] {
				if ev.Event == "state" {
					t.Fatalf("frank's stream changed state: %+v", ev)
				}
			}
			t.Logf("%s: state %s (%s), then %s (%s)", name, down.State, down.Reason, up.State, up.Reason)
		})
	}
	t.Run("oversized stanza", func(t *testing.T) {
		name := fmt.Sprintf("eve%d", len(cases))
		eve := e.login(t, name)
		pe := eve.connect(t)
		fc := nextConn(t, name)
		big := "<message from='x@" + fake.Domain + "/r' type='chat' id='big'><body>" + strings.Repeat("A", 300<<10) + "</body></message>"
		if err := fc.Write(big + "<message from='x@" + fake.Domain + "/r' type='chat' id='n'><body>next</body></message>"); err != nil {
			t.Fatal(err)
		}
		d := pe.waitFor(t, 10*time.Second, "dropped", func(ev event) bool { return ev.Event == "dropped" })
		if d.From != "x@"+fake.Domain+"/r" || d.ID != "big" || d.Type != "chat" || d.Stanza != "message" || d.Bytes != len(big) {
			t.Errorf("dropped event %+v, want the %d-byte message big from x", d, len(big))
		}
		pe.seenOrWait(t, 10*time.Second, "the next message", func(ev event) bool { return ev.Event == "message" && ev.Body == "next" })
		for _, ev := range pe.seen {
			if ev.Event == "state" && ev.State != "connecting" && ev.State != "online" {
				t.Errorf("the stream changed state: %+v", ev)
			}
		}
		select {
		case <-fc.Done():
			t.Error("the stream closed")
		default:
		}
	})
}
