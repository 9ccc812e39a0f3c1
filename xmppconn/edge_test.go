package xmppconn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// fakeClient dials a FakeServer and returns the client with the server side
// of its connection.
func fakeClient(t *testing.T, s *xmppconntest.FakeServer, mod func(*xmppconn.Config)) (*client, *xmppconntest.FakeConn) {
	t.Helper()
	b := &backend{name: "fake", addr: s.Addr, domain: s.Domain, tls: s.TLSConfig(),
		logTail: func(int) string { return "" }}
	c := connect(t, b, "alice", "secret", "web", mod)
	select {
	case fc := <-s.Conns():
		return c, fc
	case <-time.After(10 * time.Second):
		t.Fatal("fake server: no bound connection")
		return nil, nil
	}
}

func waitDone(t *testing.T, c *xmppconn.Conn, d time.Duration) error {
	t.Helper()
	select {
	case <-c.Done():
		return c.Err()
	case <-time.After(d):
		t.Fatalf("connection still running %v later (state %s)", d, c.State())
		return nil
	}
}

func isIQ(id string) func(xmppconntest.Element) bool {
	return func(e xmppconntest.Element) bool { return e.XMLName.Local == "iq" && e.Attr("id") == id }
}

// TestSplitReads: every byte of the server's side arrives in its own TLS
// record, splitting tags, attributes, entities and UTF-8 sequences.
func TestSplitReads(t *testing.T) {
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{ByteAtATime: true})
	start := time.Now()
	c, fc := fakeClient(t, s, nil)
	t.Logf("login over 1-byte TLS records took %v", time.Since(start))
	body := "olá, 世界 🎉 &lt;b&gt; &amp; \"quoted\""
	want := "olá, 世界 🎉 <b> & \"quoted\""
	if err := fc.Write("\n \n<message from='bob@example.test/x' to='" + c.JID() + "' type='chat' id='m1'>" +
		"<body>" + body + "</body><thread>t9</thread>" +
		"<active xmlns='http://jabber.org/protocol/chatstates'/></message> \n"); err != nil {
		t.Fatal(err)
	}
	m := c.rec.waitFor(t, 10*time.Second, "split message", messageWithBody(want)).(*xmppconn.Message)
	if m.ID != "m1" || m.Thread != "t9" || m.ChatState != "active" || m.From != "bob@example.test/x" {
		t.Errorf("got %+v", m)
	}
	// The stream is still healthy: a ping is answered.
	if err := fc.Write("<iq type='get' id='p1' from='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"); err != nil {
		t.Fatal(err)
	}
	if e, err := fc.WaitFor(10*time.Second, isIQ("p1")); err != nil || e.Attr("type") != "result" {
		t.Fatalf("ping answer %v, %v", e, err)
	}
}

// TestStreamErrorMidSession: a stream error ends the connection with a
// *StreamError carrying the condition; system-shutdown is reconnected.
func TestStreamErrorMidSession(t *testing.T) {
	tests := []struct {
		condition string
		reconnect bool
	}{
		{"conflict", false},
		{"system-shutdown", false},
		{"system-shutdown", true},
	}
	for _, tt := range tests {
		name := tt.condition
		if tt.reconnect {
			name += "/reconnect"
		}
		t.Run(name, func(t *testing.T) {
			s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{})
			c, fc := fakeClient(t, s, func(cfg *xmppconn.Config) { cfg.Reconnect = tt.reconnect })
			if err := fc.Write("<stream:error><" + tt.condition + " xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>" +
				"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bye now</text></stream:error></stream:stream>"); err != nil {
				t.Fatal(err)
			}
			if tt.reconnect {
				select {
				case <-s.Conns():
				case <-time.After(10 * time.Second):
					t.Fatalf("no reconnection after %s (state %s)", tt.condition, c.State())
				}
				c.rec.waitFor(t, 10*time.Second, "StateChange online after reconnect", func(ev xmppconn.Event) bool {
					sc, ok := ev.(*xmppconn.StateChange)
					return ok && sc.State == xmppconn.StateOnline && sc.ContinuityLost
				})
				down := c.rec.waitFor(t, time.Second, "StateChange reconnecting", func(ev xmppconn.Event) bool {
					sc, ok := ev.(*xmppconn.StateChange)
					return ok && sc.State == xmppconn.StateReconnecting
				}).(*xmppconn.StateChange)
				var se *xmppconn.StreamError
				if !errors.As(down.Err, &se) || se.Condition != tt.condition {
					t.Errorf("reconnecting because of %v, want a StreamError %s", down.Err, tt.condition)
				}
				return
			}
			err := waitDone(t, c.Conn, 10*time.Second)
			var se *xmppconn.StreamError
			if !errors.As(err, &se) || se.Condition != tt.condition || se.Text != "bye now" {
				t.Fatalf("Err() = %#v, want StreamError{%s, bye now}", err, tt.condition)
			}
			if _, err := c.Send(context.Background(), xmppconn.Message{To: "bob@example.test", Body: "late"}); !errors.Is(err, xmppconn.ErrClosed) {
				t.Errorf("Send after the stream died: %v, want ErrClosed", err)
			}
			if got := c.State(); got != xmppconn.StateOffline {
				t.Errorf("State() = %s, want offline", got)
			}
			if s.Accepted() != 1 {
				t.Errorf("client reconnected %d times without Reconnect", s.Accepted()-1)
			}
		})
	}
}

// TestOversizedStanzaSkipped: a complete stanza over MaxStanzaSize is read
// through and reported as Dropped; the stream stays up, the stanza counts
// in the XEP-0198 h (so the server never sends it again), an IQ request
// that large is answered with an error, and what follows is delivered.
func TestOversizedStanzaSkipped(t *testing.T) {
	const limit = 64 << 10
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{StreamManagement: true})
	c, fc := fakeClient(t, s, func(cfg *xmppconn.Config) { cfg.MaxStanzaSize = limit })
	ackH := func() int {
		t.Helper()
		if err := fc.Write(`<r xmlns='urn:xmpp:sm:3'/>`); err != nil {
			t.Fatal(err)
		}
		a, err := fc.WaitFor(10*time.Second, func(e xmppconntest.Element) bool { return e.XMLName.Local == "a" })
		if err != nil {
			t.Fatalf("no ack: %v", err)
		}
		var h int
		fmt.Sscan(a.Attr("h"), &h)
		return h
	}
	h0 := ackH()

	big := strings.Repeat("&apos;", limit/6+100) // as Prosody relays 11,000 '
	msg := `<message from='bob@example.test/x' type='chat' id='big1'><body>` + big + `</body></message>`
	iq := `<iq from='bob@example.test/x' type='get' id='bigiq'><query xmlns='jabber:iq:version'><x>` + big + `</x></query></iq>`
	for _, x := range []string{msg, iq, `<message from='bob@example.test/x' type='chat' id='next'><body>next</body></message>`} {
		if err := fc.Write(x); err != nil {
			t.Fatal(err)
		}
	}
	c.rec.waitFor(t, 10*time.Second, "the message after the oversized ones", messageWithBody("next"))
	var dropped []*xmppconn.Dropped
	evs, _ := c.rec.snapshot()
	for _, ev := range evs {
		if d, ok := ev.(*xmppconn.Dropped); ok {
			dropped = append(dropped, d)
		}
	}
	want := []xmppconn.Dropped{
		{Stanza: "message", From: "bob@example.test/x", ID: "big1", Type: "chat", Bytes: len(msg)},
		{Stanza: "iq", From: "bob@example.test/x", ID: "bigiq", Type: "get", Bytes: len(iq)},
	}
	if len(dropped) != len(want) || *dropped[0] != want[0] || *dropped[1] != want[1] {
		t.Fatalf("dropped events %s, want %+v", describe(evs), want)
	}
	reply, err := fc.WaitFor(10*time.Second, isIQ("bigiq"))
	if err != nil || reply.Attr("type") != "error" || !strings.Contains(reply.Inner, "policy-violation") {
		t.Fatalf("reply to the oversized IQ: %v %s", err, reply)
	}
	if h := ackH(); h != h0+3 {
		t.Errorf("h = %d after 3 stanzas from %d: the skipped ones must count", h, h0)
	}
	if c.State() != xmppconn.StateOnline || s.Accepted() != 1 {
		t.Errorf("state %s after %d connections, want online on the first", c.State(), s.Accepted())
	}
}

// TestOversizedStanza: an element over MaxStanzaSize that never ends is
// read no further than 16 times the limit: the stream ends with
// policy-violation and ErrStanzaTooLarge, without buffering the rest.
func TestOversizedStanza(t *testing.T) {
	const limit = 64 << 10
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{})
	c, fc := fakeClient(t, s, func(cfg *xmppconn.Config) { cfg.MaxStanzaSize = limit })

	// A stanza just under the limit is fine.
	small := strings.Repeat("y", limit-200)
	if err := fc.Write("<message from='bob@example.test/x' type='chat'><body>" + small + "</body></message>"); err != nil {
		t.Fatal(err)
	}
	c.rec.waitFor(t, 10*time.Second, "message under the limit", messageWithBody(small))

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const total = 256 << 20 // 256 MiB that the client must never hold
	fc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	r := io.MultiReader(strings.NewReader("<message from='bob@example.test/x' type='chat'><body>"),
		io.LimitReader(repeatReader('x'), total))
	written, werr := fc.WriteCounted(r)
	t.Logf("server wrote %d KiB before the client closed (%v)", written>>10, werr)
	if werr == nil {
		t.Fatalf("client accepted a %d MiB stanza", total>>20)
	}
	err := waitDone(t, c.Conn, 10*time.Second)
	if !errors.Is(err, xmppconn.ErrStanzaTooLarge) {
		t.Errorf("Err() = %v, want ErrStanzaTooLarge", err)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew := int64(after.TotalAlloc - before.TotalAlloc); grew > 32<<20 {
		t.Errorf("client allocated %d MiB while rejecting the stanza", grew>>20)
	}
	if written > 64<<20 {
		t.Errorf("client read %d MiB before closing", written>>20)
	}
	// The client said why it left (if the error made it through before
	// the close).
	found := false
	for e := range fc.In {
		if e.XMLName.Local == "error" && strings.Contains(e.Inner, "policy-violation") {
			found = true
		}
	}
	if !found {
		t.Errorf("client did not send a policy-violation stream error")
	}
}

type repeatReader byte

func (r repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

// TestServerIQs: the client answers ping, disco#info and version, returns
// service-unavailable for anything else, and ignores stray results.
func TestServerIQs(t *testing.T) {
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{})
	c, fc := fakeClient(t, s, nil)
	to := " to='" + c.JID() + "'"
	tests := []struct {
		name, req, wantType string
		wantInner           []string
	}{
		{"ping", "<iq type='get' id='q1' from='example.test'" + to + "><ping xmlns='urn:xmpp:ping'/></iq>", "result", nil},
		{"disco", "<iq type='get' id='q2' from='bob@example.test/x'" + to + "><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
			"result", []string{"http://jabber.org/protocol/disco#info", "urn:xmpp:ping", "identity"}},
		{"version", "<iq type='get' id='q3' from='bob@example.test/x'" + to + "><query xmlns='jabber:iq:version'/></iq>",
			"result", []string{"jabber:iq:version", "<name>"}},
		{"unknown-get", "<iq type='get' id='q4' from='bob@example.test/x'" + to + "><query xmlns='urn:example:nope'/></iq>",
			"error", []string{"service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas", "cancel"}},
		{"unknown-set", "<iq type='set' id='q5' from='bob@example.test/x'" + to + "><thing xmlns='urn:example:nope'><x/></thing></iq>",
			"error", []string{"service-unavailable"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A stray result first: it must not be answered.
			if err := fc.Write("<iq type='result' id='stray-" + tt.name + "' from='example.test'/>" + tt.req); err != nil {
				t.Fatal(err)
			}
			e, err := fc.WaitFor(10*time.Second, func(e xmppconntest.Element) bool {
				return e.XMLName.Local == "iq" && e.Attr("type") != "get" && e.Attr("type") != "set"
			})
			if err != nil {
				t.Fatal(err)
			}
			id := "q" + tt.req[strings.Index(tt.req, "id='q")+5:][:1]
			if e.Attr("id") != id {
				t.Fatalf("client answered %v, want the answer to %s", e, id)
			}
			if e.Attr("type") != tt.wantType {
				t.Errorf("answer type %q, want %q: %v", e.Attr("type"), tt.wantType, e)
			}
			for _, w := range tt.wantInner {
				if !strings.Contains(e.Inner, w) {
					t.Errorf("answer lacks %q: %v", w, e)
				}
			}
		})
	}
	// A roster push from a stranger (RFC 6121 §2.1.6) is ignored or
	// refused, never applied.
	if err := fc.Write("<iq type='set' id='q6' from='mallory@evil.test'" + to + "><query xmlns='jabber:iq:roster'><item jid='x@evil.test'/></query></iq>" +
		"<iq type='get' id='q7' from='example.test'><ping xmlns='urn:xmpp:ping'/></iq>"); err != nil {
		t.Fatal(err)
	}
	e, err := fc.WaitFor(10*time.Second, func(e xmppconntest.Element) bool {
		return e.XMLName.Local == "iq" && e.Attr("type") != "get" && e.Attr("type") != "set"
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.Attr("id") == "q6" && e.Attr("type") != "error" {
		t.Errorf("stranger roster push answered %v", e)
	}
	time.Sleep(100 * time.Millisecond)
	evs, _ := c.rec.snapshot()
	for _, ev := range evs {
		if rp, ok := ev.(*xmppconn.RosterPush); ok {
			t.Errorf("stranger roster push reached the handler: %+v", rp)
		}
	}
	if got := c.State(); got != xmppconn.StateOnline {
		t.Errorf("State() = %s after server IQs", got)
	}
}

// TestNoStartTLSOffered: a server that does not offer STARTTLS gets no
// credentials and ErrTLSRequired.
func TestNoStartTLSOffered(t *testing.T) {
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{NoStartTLS: true})
	cfg := xmppconn.Config{Addr: s.Addr, Domain: s.Domain, TLSConfig: s.TLSConfig(), User: "alice", Password: "secret",
		Resource: "web", Handler: newRecorder(), Logger: clientLogger(t, "alice"), Reconnect: true}
	_, err := xmppconn.Dial(ctxT(t), cfg)
	if !errors.Is(err, xmppconn.ErrTLSRequired) {
		t.Fatalf("Dial: %v, want ErrTLSRequired", err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := s.AuthAttempts(); n != 0 {
		t.Errorf("client sent credentials %d times in the clear", n)
	}
	if n := s.Accepted(); n != 1 {
		t.Errorf("client connected %d times, want 1", n)
	}
}

// TestIQTimeoutAndDeadPeer: an unanswered IQ times out with ErrTimeout, and
// a peer that stops answering is detected within PingInterval+PingTimeout.
func TestIQTimeoutAndDeadPeer(t *testing.T) {
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{})
	c, fc := fakeClient(t, s, func(cfg *xmppconn.Config) {
		cfg.IQTimeout = 300 * time.Millisecond
		cfg.PingInterval = 500 * time.Millisecond
		cfg.PingTimeout = 500 * time.Millisecond
	})
	fc.SetAutoReply(false)
	start := time.Now()
	_, err := c.Roster(context.Background())
	if !errors.Is(err, xmppconn.ErrTimeout) {
		t.Errorf("Roster against a silent server: %v, want ErrTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("IQ timeout took %v, want ~300ms", d)
	}
	start = time.Now()
	err = waitDone(t, c.Conn, 10*time.Second)
	t.Logf("dead peer detected after %v: %v", time.Since(start), err)
	if err == nil {
		t.Error("Err() = nil after a dead peer")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("dead peer detected after %v, want ≤ ~1s", d)
	}
}

// TestCloseNoLeak: Close is idempotent and bounded whether the stream is
// online or reconnecting, and leaves no goroutine behind.
func TestCloseNoLeak(t *testing.T) {
	for _, state := range []string{"online", "reconnecting"} {
		t.Run(state, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{})
			rec := newRecorder()
			cfg := xmppconn.Config{Addr: s.Addr, Domain: s.Domain, TLSConfig: s.TLSConfig(), User: "alice", Password: "secret",
				Resource: "web", Handler: rec, Logger: clientLogger(t, "alice"), Reconnect: true,
				MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
			c, err := xmppconn.Dial(ctxT(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if state == "reconnecting" {
				s.Close() // listener and connection gone: the client retries
				rec.waitFor(t, 5*time.Second, "StateChange reconnecting", func(ev xmppconn.Event) bool {
					sc, ok := ev.(*xmppconn.StateChange)
					return ok && sc.State == xmppconn.StateReconnecting
				})
				time.Sleep(150 * time.Millisecond) // a few failed attempts
			}
			for i := range 2 {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				start := time.Now()
				err := c.Close(ctx)
				cancel()
				if err != nil && !errors.Is(err, xmppconn.ErrClosed) {
					t.Errorf("Close #%d: %v", i+1, err)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Errorf("Close #%d took %v", i+1, d)
				}
			}
			select {
			case <-c.Done():
			case <-time.After(2 * time.Second):
				t.Fatal("Done not closed after Close")
			}
			if !errors.Is(c.Err(), xmppconn.ErrClosed) {
				t.Errorf("Err() = %v, want ErrClosed", c.Err())
			}
			if _, err := c.Send(context.Background(), xmppconn.Message{To: "bob@example.test", Body: "x"}); !errors.Is(err, xmppconn.ErrClosed) {
				t.Errorf("Send after Close: %v, want ErrClosed", err)
			}
			s.Close()
			if err := goleak.Find(ignore); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestStreamManagementAcks: the client counts every inbound stanza it
// handled in its XEP-0198 answers, and asks for acks of what it sends.
func TestStreamManagementAcks(t *testing.T) {
	s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{StreamManagement: true})
	c, fc := fakeClient(t, s, nil)
	if _, err := fc.WaitFor(10*time.Second, func(e xmppconntest.Element) bool { return e.XMLName.Local == "presence" }); err != nil {
		t.Fatalf("initial presence: %v", err)
	}
	ack := func() int {
		t.Helper()
		if err := fc.Write("<r xmlns='urn:xmpp:sm:3'/>"); err != nil {
			t.Fatal(err)
		}
		e, err := fc.WaitFor(10*time.Second, func(e xmppconntest.Element) bool {
			return e.XMLName.Space == "urn:xmpp:sm:3" && e.XMLName.Local == "a"
		})
		if err != nil {
			t.Fatalf("no <a/> for <r/>: %v", err)
		}
		var h int
		if _, err := fmt.Sscan(e.Attr("h"), &h); err != nil {
			t.Fatalf("bad h in %v", e)
		}
		return h
	}
	h0 := ack()
	for i := range 3 {
		if err := fc.Write(fmt.Sprintf("<message from='bob@example.test/x' type='chat' id='sm%d'><body>sm %d</body></message>", i, i)); err != nil {
			t.Fatal(err)
		}
	}
	// Non-stanzas (whitespace, <r/> itself) are not counted.
	if err := fc.Write("  \n"); err != nil {
		t.Fatal(err)
	}
	if h := ack(); h != h0+3 {
		t.Errorf("h = %d after 3 more stanzas, want %d", h, h0+3)
	}
	c.rec.waitFor(t, time.Second, "third message", messageWithBody("sm 2"))

	// The client requests acks for what it sends.
	for i := range 12 {
		if _, err := c.Send(ctxT(t), xmppconn.Message{To: "bob@example.test", Type: "chat", Body: fmt.Sprint("out ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := fc.WaitFor(10*time.Second, func(e xmppconntest.Element) bool {
		return e.XMLName.Space == "urn:xmpp:sm:3" && e.XMLName.Local == "r"
	}); err != nil {
		t.Errorf("client sent 12 stanzas without requesting an ack: %v", err)
	}
	if got := c.State(); got != xmppconn.StateOnline {
		t.Errorf("State() = %s", got)
	}
}

// TestMalformedXML: broken XML from the server ends the stream with
// ErrProtocol (no reconnect storm without Reconnect).
func TestMalformedXML(t *testing.T) {
	for name, junk := range map[string]string{
		"mismatched-end": "<message from='bob@example.test/x'><body>hi</message>",
		"bad-entity":     "<message from='bob@example.test/x'><body>&nosuch;</body></message>",
		"bad-utf8":       "<message from='bob@example.test/x'><body>\xff\xfe</body></message>",
		"second-root":    "</stream:stream><stream:stream>",
	} {
		t.Run(name, func(t *testing.T) {
			s := xmppconntest.StartFakeServer(t, xmppconntest.FakeOptions{})
			c, fc := fakeClient(t, s, nil)
			if err := fc.Write(junk); err != nil {
				t.Fatal(err)
			}
			// A mismatched end tag must not leave the framer waiting for
			// an end that never comes, swallowing the stanzas after it.
			err := waitDone(t, c.Conn, 3*time.Second)
			t.Logf("Err() = %v", err)
			if name == "second-root" {
				// The server closed its stream: a clean end, not a protocol error.
				if err == nil {
					t.Error("Err() = nil after the server closed the stream")
				}
				return
			}
			if !errors.Is(err, xmppconn.ErrProtocol) {
				t.Errorf("Err() = %v, want ErrProtocol", err)
			}
			for _, m := range c.rec.messages() {
				t.Errorf("a malformed stanza reached the handler: %+v", m)
			}
		})
	}
}
