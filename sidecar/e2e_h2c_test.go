package sidecar_test

// HTTP/2 without TLS (h2c, prior knowledge) on the API listener, next to
// HTTP/1.1: the same calls, many pending polls on one connection, clean
// shutdown, and clients that break the protocol's limits.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// h2cTransport speaks HTTP/2 with prior knowledge only, to d's API (TCP or
// unix socket), counting the connections it dials.
func h2cTransport(d *daemon, dials *atomic.Int64) http.RoundTripper {
	tr := &http.Transport{Protocols: new(http.Protocols), DisableCompression: true}
	tr.Protocols.SetUnencryptedHTTP2(true)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var nd net.Dialer
		if d.Socket != "" {
			return nd.DialContext(ctx, "unix", d.Socket)
		}
		return nd.DialContext(ctx, network, addr)
	}
	return onlyHTTP2{tr}
}

// onlyHTTP2 fails any answer that did not come over HTTP/2.
type onlyHTTP2 struct{ *http.Transport }

func (o onlyHTTP2) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := o.Transport.RoundTrip(req)
	if err == nil && resp.ProtoMajor != 2 {
		resp.Body.Close()
		return nil, fmt.Errorf("answered over %s, not HTTP/2", resp.Proto)
	}
	return resp, err
}

// h2cClient is d.client(sid) over rt.
func h2cClient(d *daemon, rt http.RoundTripper, sid string) *apiClient {
	base := d.URL
	if d.Socket != "" {
		base = "http://imsidecar"
	}
	return &apiClient{base: base, sid: sid, token: d.Token, hc: &http.Client{Timeout: 70 * time.Second, Transport: rt}}
}

// pollResult is what one GET /v1/events returned.
type pollResult struct {
	page eventsPage
	err  error
}

// pollAsync starts one GET /v1/events from cursor; the page arrives on the
// channel.
func pollAsync(ctx context.Context, c *apiClient, cursor string, wait time.Duration) <-chan pollResult {
	ch := make(chan pollResult, 1)
	go func() {
		p, err := c.events(ctx, cursor, wait, 0)
		ch <- pollResult{p, err}
	}()
	return ch
}

// settle polls from cursor until a page comes back empty, so the
// connect's own events (state, presence) are read, and returns the cursor:
// a poll from there waits for what comes next.
func settle(ctx context.Context, c *apiClient, cursor string) (string, error) {
	for {
		p, err := c.events(ctx, cursor, time.Second, 0)
		if err != nil {
			return cursor, err
		}
		cursor = p.Cursor
		if len(p.Events) == 0 {
			return cursor, nil
		}
	}
}

// settled is settle for pollers, failing the test on an error.
func settled(tb testing.TB, ps ...*poller) {
	tb.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ps))
	for i, p := range ps {
		wg.Go(func() { p.cursor, errs[i] = settle(tb.Context(), p.c, p.cursor) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("%s: %v", ps[i].name, err)
		}
	}
}

// TestE2EH2C: over TCP and a unix socket, a user on HTTP/2 and a user on
// HTTP/1.1 share the listener and chat through pending long polls; the
// cookie route, the body cap and the errors are the same on both; SIGTERM
// with polls pending over HTTP/2 answers them at once and exits 0.
func TestE2EH2C(t *testing.T) {
	for _, unix := range []bool{false, true} {
		name := map[bool]string{false: "tcp", true: "unix"}[unix]
		t.Run(name, func(t *testing.T) {
			e := startE2E(t, "files", daemonOptions{Token: true, UnixSocket: unix})
			e.register(t, "alice", "bob")
			alice, bob := e.login(t, "alice"), e.login(t, "bob")
			var dials atomic.Int64
			h2 := h2cTransport(e.D, &dials)
			alice.C = h2cClient(e.D, h2, alice.SID) // bob stays on HTTP/1.1
			pa, pb := alice.connect(t), bob.connect(t)
			settled(t, pa, pb)

			// A pending poll on each protocol is answered by the other's message.
			for _, dir := range []struct {
				from, to *user
				pt       *poller
			}{{bob, alice, pa}, {alice, bob, pb}} {
				ch := pollAsync(t.Context(), dir.to.C, dir.pt.cursor, 25*time.Second)
				time.Sleep(200 * time.Millisecond) // let the poll park (it gets the message either way)
				id := dir.from.C.send(t, dir.to.Bare, "olá de "+dir.from.Name, false)
				r := <-ch
				if r.err != nil {
					t.Fatalf("%s's poll: %v", dir.to.Name, r.err)
				}
				found := false
				for _, ev := range r.page.Events {
					found = found || (ev.Event == "message" && ev.ID == id && ev.Body == "olá de "+dir.from.Name)
				}
				if !found {
					t.Fatalf("%s's pending poll returned %+v, not message %s", dir.to.Name, r.page.Events, id)
				}
				dir.pt.cursor = r.page.Cursor
			}

			// The browser's cookie route, a cookie-only call refused, the
			// body cap: the same answer on both protocols. Go's HTTP/2
			// client splits the Cookie header into crumbs (RFC 9113
			// §8.2.3), which the sidecar joins again.
			h1 := &http.Client{Timeout: 10 * time.Second, Transport: bob.C.hc.Transport}
			for _, tt := range []struct {
				name, method, path, body string
				want                     int
				code                     string
			}{
				{"cookie me", "GET", "/v1/me", "", http.StatusOK, ""},
				{"cookie send", "POST", "/v1/messages", `{"to":"bob@x","body":"hi"}`, http.StatusUnauthorized, "session_missing"},
				{"too large", "POST", "/v1/messages", `{"body":"` + strings.Repeat("x", 100<<10) + `"}`, http.StatusRequestEntityTooLarge, "too_large"},
				{"no route", "GET", "/v2/nothing", "", http.StatusNotFound, "not_found"},
			} {
				for proto, hc := range map[string]*http.Client{"HTTP/2": alice.C.hc, "HTTP/1.1": h1} {
					base := alice.C.base
					req, _ := http.NewRequestWithContext(t.Context(), tt.method, base+tt.path, strings.NewReader(tt.body))
					req.Header.Set("Cookie", "theme=dark; sessionid="+alice.SID+"; lang=pt-br")
					req.Header.Set("Authorization", "Bearer "+e.D.Token) // as Apache adds it
					if tt.name == "too large" {
						req.Header.Set("X-Session-Id", alice.SID)
					}
					resp, err := hc.Do(req)
					if err != nil {
						t.Fatalf("%s %s: %v", tt.name, proto, err)
					}
					raw, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != tt.want || !strings.Contains(string(raw), tt.code) {
						t.Errorf("%s over %s (%s): %d %s, want %d %s", tt.name, proto, resp.Proto, resp.StatusCode, raw, tt.want, tt.code)
					}
					if tt.name == "cookie me" {
						var me meResp
						if err := json.Unmarshal(raw, &me); err != nil || me.User != "alice" || me.State != "online" {
							t.Errorf("cookie me over %s: %s", proto, raw)
						}
					}
				}
			}
			// The browser's event stream (SSE, cookie) over HTTP/2: flushed
			// event by event through the status recorder.
			sctx, cancelSSE := context.WithTimeout(t.Context(), 20*time.Second)
			req, _ := http.NewRequestWithContext(sctx, "GET", alice.C.base+"/v1/events", nil)
			req.Header.Set("Cookie", "sessionid="+alice.SID)
			req.Header.Set("Authorization", "Bearer "+e.D.Token)
			req.Header.Set("Accept", "text/event-stream")
			req.Header.Set("Last-Event-ID", pa.cursor)
			resp, err := alice.C.hc.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("SSE over HTTP/2: %v %v", resp, err)
			}
			id := bob.C.send(t, alice.Bare, "pelo SSE", false)
			sc := bufio.NewScanner(resp.Body)
			var lines []string
			for sc.Scan() && !strings.Contains(sc.Text(), `"body":"pelo SSE"`) {
				lines = append(lines, sc.Text())
			}
			if !strings.Contains(sc.Text(), `"id":"`+id+`"`) {
				t.Errorf("SSE over HTTP/2 ended (%v) without message %s: %q", sc.Err(), id, lines)
			}
			cancelSSE()
			resp.Body.Close()
			if n := dials.Load(); n != 1 {
				t.Errorf("alice's calls took %d HTTP/2 connections, want 1", n)
			}

			// SIGTERM with polls pending over HTTP/2 (25 s waits, 10 s
			// shutdown timeout): each is answered, an empty page whose
			// cursor stays valid, and the daemon exits 0.
			settled(t, pa) // past the SSE's message: the polls below wait
			var pending []<-chan pollResult
			for range 3 {
				pending = append(pending, pollAsync(t.Context(), alice.C, pa.cursor, 25*time.Second))
			}
			time.Sleep(300 * time.Millisecond)
			code, took := e.D.Signal(t, syscall.SIGTERM, 15*time.Second)
			if code != 0 {
				t.Errorf("exit code %d after SIGTERM\n%s", code, e.D.LogTail(30))
			}
			for i, ch := range pending {
				r := <-ch
				if r.err != nil || r.page.Cursor == "" || len(r.page.Events) > 0 {
					t.Errorf("pending HTTP/2 poll %d at shutdown: %+v %v", i, r.page, r.err)
				}
			}
			t.Logf("exited %d, %v after SIGTERM with 3 HTTP/2 polls pending", code, took.Round(time.Millisecond))
			if strings.Contains(e.D.Log(), "shutdown timeout") {
				t.Errorf("the pending polls held the shutdown past its timeout:\n%s", e.D.LogTail(30))
			}
		})
	}
}

// TestE2EH2CManyPolls: 100 users with 5 long polls each, 500 pending
// requests on one HTTP/2 connection (--http2-max-streams=1000), then every
// user sends the next one a message: each of the 500 polls returns its
// user's message, none lost.
func TestE2EH2CManyPolls(t *testing.T) {
	const n, per = 100, 5
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--http2-max-streams=1000"}})
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("many%03d", i)
	}
	e.register(t, names...)
	var dials atomic.Int64
	h2 := h2cTransport(e.D, &dials)
	users := e.loginMany(t, names, &http.Client{Timeout: 70 * time.Second, Transport: h2})
	cursors := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n*per)
	connect := func(i int) {
		var r connectResp
		if st, err := users[i].C.call(t.Context(), "POST", "/v1/connect", nil, &r); err != nil || r.State != "online" {
			errs <- fmt.Errorf("%s: connect: %d %v %+v", names[i], st, err, r)
		}
		var err error
		if cursors[i], err = settle(t.Context(), users[i].C, r.Cursor); err != nil {
			errs <- fmt.Errorf("%s: %w", names[i], err)
		}
	}
	connect(0) // the connection exists before the rush
	for i := 1; i < n; i++ {
		wg.Go(func() { connect(i) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	type got struct {
		user int
		r    pollResult
	}
	results := make(chan got, n*per)
	for i := range n {
		for range per {
			go func() {
				p, err := users[i].C.events(t.Context(), cursors[i], 25*time.Second, 0)
				results <- got{i, pollResult{p, err}}
			}()
		}
	}
	time.Sleep(time.Second) // let the 500 park (each gets its message either way)
	sendErrs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			to := users[(i+1)%n]
			if _, err := users[i].C.call(t.Context(), "POST", "/v1/messages", map[string]any{"to": to.Bare, "body": "from " + names[i], "id": "m-" + names[i]}, nil); err != nil {
				sendErrs <- fmt.Errorf("%s: send: %w", names[i], err)
			}
		})
	}
	wg.Wait()
	close(sendErrs)
	for err := range sendErrs {
		t.Error(err)
	}
	lost := 0
	for range n * per {
		g := <-results
		from := (g.user + n - 1) % n
		ok := false
		for _, ev := range g.r.page.Events {
			ok = ok || (ev.Event == "message" && ev.ID == "m-"+names[from] && ev.Body == "from "+names[from])
		}
		if g.r.err != nil || !ok {
			lost++
			if lost <= 5 {
				t.Errorf("%s's poll: %v, events %+v", names[g.user], g.r.err, g.r.page.Events)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d polls came back without their message", lost, n*per)
	}
	if d := dials.Load(); d < 1 || d > 2 {
		t.Errorf("%d pending polls took %d HTTP/2 connections, want 1 or 2", n*per, d)
	}
	t.Logf("%d polls over %d connection(s), %d lost", n*per, dials.Load(), lost)
}

// ---------------------------------------------------------------------------
// A raw HTTP/2 client for what Go's client never sends: more streams than
// the server allows, and resets as fast as it can write (CVE-2023-44487).

// h2Raw is one HTTP/2 connection to the API written frame by frame; a
// goroutine reads and counts the server's frames until it closes.
type h2Raw struct {
	c       net.Conn
	wmu     sync.Mutex
	next    uint32 // next stream id
	rsts    atomic.Int64
	goAways atomic.Int64
	heads   atomic.Int64 // response HEADERS frames
	done    chan struct{}
}

const (
	frameData, frameHeaders, frameRST, frameSettings, framePing, frameGoAway, frameWindow = 0, 1, 3, 4, 6, 7, 8
)

// dialH2Raw connects to d's API and sends the client preface and SETTINGS.
func dialH2Raw(tb testing.TB, d *daemon) *h2Raw {
	tb.Helper()
	network, addr := "tcp", strings.TrimPrefix(d.URL, "http://")
	if d.Socket != "" {
		network, addr = "unix", d.Socket
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		tb.Fatal(err)
	}
	h := &h2Raw{c: c, next: 1, done: make(chan struct{})}
	tb.Cleanup(func() { c.Close(); <-h.done })
	if _, err := io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); err != nil {
		tb.Fatal(err)
	}
	h.frame(frameSettings, 0, 0, nil)
	go h.read()
	return h
}

// frame writes one frame.
func (h *h2Raw) frame(typ, flags byte, stream uint32, payload []byte) error {
	b := make([]byte, 9, 9+len(payload))
	b[0], b[1], b[2] = byte(len(payload)>>16), byte(len(payload)>>8), byte(len(payload))
	b[3], b[4] = typ, flags
	binary.BigEndian.PutUint32(b[5:], stream)
	h.wmu.Lock()
	defer h.wmu.Unlock()
	_, err := h.c.Write(append(b, payload...))
	return err
}

// read counts what the server answers, acknowledges its SETTINGS and PINGs
// and hands back the flow-control window of every DATA frame.
func (h *h2Raw) read() {
	defer close(h.done)
	r := bufio.NewReader(h.c)
	hdr := make([]byte, 9)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return
		}
		n := int(hdr[0])<<16 | int(hdr[1])<<8 | int(hdr[2])
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			return
		}
		switch hdr[3] {
		case frameSettings:
			if hdr[4]&1 == 0 {
				h.frame(frameSettings, 1, 0, nil)
			}
		case framePing:
			if hdr[4]&1 == 0 {
				h.frame(framePing, 1, 0, p)
			}
		case frameData:
			if n > 0 {
				h.frame(frameWindow, 0, 0, binary.BigEndian.AppendUint32(nil, uint32(n)))
			}
		case frameHeaders:
			h.heads.Add(1)
		case frameRST:
			h.rsts.Add(1)
		case frameGoAway:
			h.goAways.Add(1)
		}
	}
}

// hpackInt appends v with an n-bit prefix (RFC 7541 §5.1) over first.
func hpackInt(b []byte, first byte, n uint, v int) []byte {
	max := 1<<n - 1
	if v < max {
		return append(b, first|byte(v))
	}
	b = append(b, first|byte(max))
	for v -= max; v >= 128; v >>= 7 {
		b = append(b, byte(v&127|128))
	}
	return append(b, byte(v))
}

func hpackString(b []byte, s string) []byte { return append(hpackInt(b, 0, 7, len(s)), s...) }

// get opens a stream with GET path (HEADERS with END_STREAM), the headers
// as literals without indexing (RFC 7541 §6.2.2); it returns the stream id.
func (h *h2Raw) get(path string, headers ...string) (uint32, error) {
	b := []byte{0x82, 0x86}                   // :method GET, :scheme http
	b = hpackString(append(b, 0x04), path)    // :path
	b = hpackString(append(b, 0x01), "local") // :authority
	for i := 0; i+1 < len(headers); i += 2 {
		b = hpackString(hpackString(append(b, 0), headers[i]), headers[i+1])
	}
	h.wmu.Lock()
	id := h.next
	h.next += 2
	h.wmu.Unlock()
	return id, h.frame(frameHeaders, 0x5, id, b) // END_STREAM | END_HEADERS
}

// TestE2EH2CAbuse: with --http2-max-streams=16, one connection that opens
// streams past the limit has the extra ones refused, and one that resets
// streams as fast as it opens them (rapid reset) is throttled by Go's
// server; meanwhile other users' pending polls, on another HTTP/2
// connection and on HTTP/1.1, get their messages and the daemon stays ready.
func TestE2EH2CAbuse(t *testing.T) {
	// mal's 32 polls test the stream limit, not --max-polls-per-session.
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--http2-max-streams=16", "--max-polls-per-session=64"}})
	e.register(t, "vic", "tim", "mal", "snd")
	vic, tim, mal, snd := e.login(t, "vic"), e.login(t, "tim"), e.login(t, "mal"), e.login(t, "snd")
	var dials atomic.Int64
	vic.C = h2cClient(e.D, h2cTransport(e.D, &dials), vic.SID) // tim is on HTTP/1.1
	pv, pt := vic.connect(t), tim.connect(t)
	pm := mal.connect(t)
	snd.connect(t)
	settled(t, pv, pt, pm)

	// victims checks that a poll of each victim, pending while the abuse
	// goes on, returns the message snd sends it.
	victims := func(round string) {
		t.Helper()
		chV := pollAsync(t.Context(), vic.C, pv.cursor, 25*time.Second)
		chT := pollAsync(t.Context(), tim.C, pt.cursor, 25*time.Second)
		time.Sleep(200 * time.Millisecond)
		for _, v := range []struct {
			u  *user
			p  *poller
			ch <-chan pollResult
		}{{vic, pv, chV}, {tim, pt, chT}} {
			id := snd.C.send(t, v.u.Bare, round+" to "+v.u.Name, false)
			r := <-v.ch
			ok := false
			for _, ev := range r.page.Events {
				ok = ok || (ev.Event == "message" && ev.ID == id)
			}
			if r.err != nil || !ok {
				t.Fatalf("%s: %s's pending poll during the abuse: %v %+v", round, v.u.Name, r.err, r.page.Events)
			}
			v.p.cursor = r.page.Cursor
		}
	}

	// 1. Streams past the limit: 16 pending polls, then 16 more streams.
	over := dialH2Raw(t, e.D)
	time.Sleep(100 * time.Millisecond) // the server's SETTINGS arrive and are acknowledged
	for range 32 {
		if _, err := over.get("/v1/events?wait=25&cursor="+url.QueryEscape(pm.cursor), "x-session-id", mal.SID); err != nil {
			t.Fatal(err)
		}
	}
	victims("over the limit")
	for deadline := time.Now().Add(5 * time.Second); over.rsts.Load() < 16 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if got, heads := over.rsts.Load(), over.heads.Load(); got != 16 || heads != 0 {
		t.Errorf("32 polls with --http2-max-streams=16: %d answered, %d reset; want the 16 over the limit reset and the rest pending", heads, got)
	}

	// 2. Rapid reset: HEADERS then RST_STREAM(CANCEL), 20,000 times or
	// until the server gives up on the connection.
	rr := dialH2Raw(t, e.D)
	abuseDone := make(chan int)
	go func() {
		i := 0
		for ; i < 20000 && rr.goAways.Load() == 0; i++ {
			id, err := rr.get("/v1/me", "x-session-id", mal.SID)
			if err != nil || rr.frame(frameRST, 0, id, []byte{0, 0, 0, 8}) != nil {
				break
			}
		}
		abuseDone <- i
	}()
	victims("rapid reset")
	sent := <-abuseDone
	select {
	case <-rr.done: // the server closed the connection
	case <-time.After(3 * time.Second):
	}
	t.Logf("rapid reset: %d streams opened and reset; the server answered %d HEADERS, %d RST_STREAM, %d GOAWAY",
		sent, rr.heads.Load(), rr.rsts.Load(), rr.goAways.Load())
	victims("after the abuse")
	resp, err := http.Get(e.D.OpsURL + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("readyz after the abuse: %v %v", resp, err)
	}
	resp.Body.Close()
	if d := dials.Load(); d != 1 {
		t.Errorf("vic's polls took %d connections, want 1", d)
	}
}
