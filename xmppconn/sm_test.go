package xmppconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// scriptServer is a minimal scripted XMPP server on loopback (plaintext),
// for stream-management cases real servers cannot be made to produce.
type scriptServer struct {
	t     testing.TB
	ln    net.Listener
	conns chan *scriptConn
}

type scriptConn struct {
	t  testing.TB
	nc net.Conn
	f  framer
}

func startScriptServer(t testing.TB) *scriptServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptServer{t: t, ln: ln, conns: make(chan *scriptConn, 4)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			sc := &scriptConn{t: t, nc: nc, f: framer{max: 1 << 20}}
			sc.f.reset(&byteReader{r: nc})
			s.conns <- sc
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		close(s.conns)
		for c := range s.conns {
			c.nc.Close()
		}
	})
	return s
}

func (s *scriptServer) accept() *scriptConn {
	s.t.Helper()
	select {
	case c := <-s.conns:
		s.t.Cleanup(func() { c.nc.Close() })
		return c
	case <-time.After(10 * time.Second):
		s.t.Fatal("no connection from the client")
		return nil
	}
}

func (c *scriptConn) write(s string) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.nc, s); err != nil {
		c.t.Fatalf("server write: %v", err)
	}
}

// next reads the next element the client sent (stream headers are
// answered by the caller through openStream).
func (c *scriptConn) next() (frameKind, *node) {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		kind, raw, err := c.f.next()
		if err != nil {
			c.t.Fatalf("server read: %v", err)
		}
		switch kind {
		case frameSpace:
			continue
		case frameElement:
			n, err := parseElement(stdHeader, raw)
			if err != nil {
				c.t.Fatalf("server parse %q: %v", raw, err)
			}
			return kind, n
		default:
			return kind, nil
		}
	}
}

func (c *scriptConn) expect(local string) *node {
	c.t.Helper()
	kind, n := c.next()
	for kind == frameElement && n.name.Local == "r" && local != "r" {
		kind, n = c.next() // ack requests come whenever the client likes
	}
	if kind != frameElement || n.name.Local != local {
		name := "<header/close>"
		if n != nil {
			name = n.name.Local
		}
		c.t.Fatalf("server expected <%s>, got %s", local, name)
	}
	return n
}

func (c *scriptConn) openStream(features string) {
	c.t.Helper()
	if kind, _ := c.next(); kind != frameStreamOpen {
		c.t.Fatalf("server expected a stream header, got %v", kind)
	}
	c.write(`<stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" id="s1" from="example.test" version="1.0"><stream:features>` + features + `</stream:features>`)
}

// login runs the server side up to SASL success and the second header.
func (c *scriptConn) login() {
	c.t.Helper()
	c.openStream(`<mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><mechanism>PLAIN</mechanism></mechanisms>`)
	c.expect("auth")
	c.write(`<success xmlns="urn:ietf:params:xml:ns:xmpp-sasl"/>`)
	c.f.inStream = false // the client restarts the stream
	c.openStream(`<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/><sm xmlns="urn:xmpp:sm:3"/>`)
}

// fresh answers bind, enable, the roster request and reads the initial
// presence.
func (c *scriptConn) fresh(smID string) {
	c.t.Helper()
	c.bindAndRoster(smID)
	c.expect("presence")
}

// bindAndRoster is fresh up to the roster answer.
func (c *scriptConn) bindAndRoster(smID string) {
	c.t.Helper()
	iq := c.expect("iq")
	c.write(`<iq type="result" id="` + iq.get("id") + `"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><jid>alice@example.test/web</jid></bind></iq>`)
	c.expect("enable")
	c.write(`<enabled xmlns="urn:xmpp:sm:3" id="` + smID + `" resume="true"/>`)
	iq = c.expect("iq")
	c.write(`<iq type="result" id="` + iq.get("id") + `"><query xmlns="jabber:iq:roster"/></iq>`)
}

type chanHandler chan Event

func (h chanHandler) HandleEvent(ev Event) { h <- ev }

func (h chanHandler) wait(t testing.TB, match func(Event) bool) Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-h:
			if match(ev) {
				return ev
			}
		case <-timeout:
			t.Fatal("timed out waiting for an event")
			return nil
		}
	}
}

// dialScript dials s as alice/web with h, reconnecting quickly, with mod
// applied to the Config; srv plays the server's side of the login.
func dialScript(t testing.TB, s *scriptServer, h Handler, srv func(*scriptConn), mod ...func(*Config)) (*Conn, *scriptConn) {
	t.Helper()
	type res struct {
		c   *Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		cfg := Config{
			Addr: s.ln.Addr().String(), Domain: "example.test", TLS: TLSNone,
			User: "alice", Password: "pw", Resource: "web", Handler: h,
			Reconnect: true, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		}
		for _, m := range mod {
			m(&cfg)
		}
		c, err := Dial(t.Context(), cfg)
		ch <- res{c, err}
	}()
	sc := s.accept()
	srv(sc)
	r := <-ch
	if r.err != nil {
		t.Fatalf("Dial: %v", r.err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r.c.Close(ctx)
	})
	return r.c, sc
}

// TestSMInboundCount: <a/> reports exactly the stanzas handled, counting
// the roster result received during login.
func TestSMInboundCount(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	_, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	for i := range 3 {
		sc.write(fmt.Sprintf(`<message from="bob@example.test/x" type="chat" id="m%d"><body>hi</body></message>`, i))
	}
	sc.write(`<r xmlns="urn:xmpp:sm:3"/>`)
	a := sc.expect("a")
	if a.get("h") != "4" {
		t.Fatalf("client acked h=%s, want 4 (roster result + 3 messages)", a.get("h"))
	}
	for i := range 3 {
		h.wait(t, func(ev Event) bool { m, ok := ev.(*Message); return ok && m.ID == fmt.Sprintf("m%d", i) })
	}
}

// TestSMResume: after a cut the client resumes and re-sends only what the
// server had not acknowledged.
func TestSMResume(t *testing.T) {
	for _, resumeOK := range []bool{true, false} {
		t.Run(fmt.Sprintf("resumed=%v", resumeOK), func(t *testing.T) {
			noLeaks(t)
			s := startScriptServer(t)
			h := make(chanHandler, 100)
			c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
			ctx := t.Context()
			for i := range 3 {
				if _, err := c.Send(ctx, Message{To: "bob@example.test", ID: fmt.Sprintf("o%d", i), Body: "x"}); err != nil {
					t.Fatal(err)
				}
				sc.expect("message")
			}
			// roster get, presence, o0 acked; o1, o2 not.
			sc.write(`<a xmlns="urn:xmpp:sm:3" h="3"/>`)
			sc.write(`<message from="bob@example.test/x" type="chat" id="in1"><body>hi</body></message>`)
			h.wait(t, func(ev Event) bool { m, ok := ev.(*Message); return ok && m.ID == "in1" })
			sc.nc.Close()
			h.wait(t, func(ev Event) bool { sc, ok := ev.(*StateChange); return ok && sc.State == StateReconnecting })
			if _, err := c.SendIQ(ctx, "get", "", []byte(`<query xmlns="jabber:iq:roster"/>`)); !errors.Is(err, ErrNotConnected) {
				t.Errorf("IQ while down: %v, want ErrNotConnected", err)
			}
			if _, err := c.Send(ctx, Message{To: "bob@example.test", ID: "queued", Body: "q"}); err != nil {
				t.Fatalf("Send while down: %v", err)
			}

			sc2 := s.accept()
			sc2.login()
			r := sc2.expect("resume")
			if r.get("previd") != "sm1" || r.get("h") != "2" {
				t.Fatalf("resume previd=%s h=%s, want sm1 and 2", r.get("previd"), r.get("h"))
			}
			var want []string
			if resumeOK {
				sc2.write(`<resumed xmlns="urn:xmpp:sm:3" previd="sm1" h="4"/>`)
				want = []string{"o2", "queued"}
			} else {
				sc2.write(`<failed xmlns="urn:xmpp:sm:3" h="4"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>`)
				sc2.fresh("sm2")
				want = []string{"o2", "queued"}
			}
			var got []string
			for range want {
				got = append(got, sc2.expect("message").get("id"))
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("after reconnecting the server got %v, want %v", got, want)
			}
			ev := h.wait(t, func(ev Event) bool { sc, ok := ev.(*StateChange); return ok && sc.State == StateOnline }).(*StateChange)
			if ev.Resumed != resumeOK || ev.ContinuityLost == resumeOK {
				t.Fatalf("StateChange %+v, want Resumed=%v", ev, resumeOK)
			}
		})
	}
}

// TestConflictNoReconnect: when another session takes our resource, the
// Conn stops instead of fighting for it, even with Reconnect.
func TestConflictNoReconnect(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	h := make(chanHandler, 100)
	c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	sc.write(`<stream:error><conflict xmlns="urn:ietf:params:xml:ns:xmpp-streams"/></stream:error></stream:stream>`)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Conn still running after conflict")
	}
	if err := c.Err(); !errors.Is(err, ErrStreamConflict) {
		t.Fatalf("Err() = %v", err)
	}
	select {
	case <-s.conns:
		t.Fatal("reconnected after conflict")
	case <-time.After(300 * time.Millisecond):
	}
}

// TestDialSilentServer: a server that accepts but never speaks cannot
// hold Dial past its context.
func TestDialSilentServer(t *testing.T) {
	noLeaks(t)
	s := startScriptServer(t)
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Dial(ctx, Config{Addr: s.ln.Addr().String(), Domain: "example.test", TLS: TLSNone, User: "alice", Password: "pw"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want a context deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Dial took %v", d)
	}
	s.accept()
}

// TestFreshStreamKeepsPresence: after a stream that could not be resumed,
// the new one announces the presence the user last chose, not the initial
// one, and a user who went unavailable stays unavailable.
func TestFreshStreamKeepsPresence(t *testing.T) {
	tests := []struct {
		name string
		set  Presence
		want string // show of the re-sent presence; "-" = none is sent
	}{
		{"away", Presence{Show: "away", Status: "at lunch"}, "away"},
		{"unavailable", Presence{Type: "unavailable"}, "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeaks(t)
			s := startScriptServer(t)
			h := make(chanHandler, 100)
			c, sc := dialScript(t, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
			if err := c.SendPresence(t.Context(), tt.set); err != nil {
				t.Fatal(err)
			}
			sc.expect("presence")
			// Acknowledge roster get, initial presence and this one, so
			// nothing is re-sent from the unacknowledged queue; the message
			// after the ack shows the client has read it.
			sc.write(`<a xmlns="urn:xmpp:sm:3" h="3"/>`)
			sc.write(`<message from="bob@example.test/x" type="chat" id="in1"><body>hi</body></message>`)
			h.wait(t, func(ev Event) bool { m, ok := ev.(*Message); return ok && m.ID == "in1" })
			sc.nc.Close()

			sc2 := s.accept()
			sc2.login()
			sc2.expect("resume")
			sc2.write(`<failed xmlns="urn:xmpp:sm:3"><item-not-found xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/></failed>`)
			sc2.bindAndRoster("sm2")
			if tt.want == "-" {
				h.wait(t, func(ev Event) bool { sc, ok := ev.(*StateChange); return ok && sc.State == StateOnline })
				if _, err := c.Send(t.Context(), Message{To: "bob@example.test", ID: "after", Body: "x"}); err != nil {
					t.Fatal(err)
				}
				for {
					kind, n := sc2.next()
					if kind != frameElement {
						t.Fatal("stream ended before the message")
					}
					if n.name.Local == "presence" {
						t.Fatalf("an unavailable user announced a presence after a fresh stream: %s", n.inner)
					}
					if n.name.Local == "message" && n.get("id") == "after" {
						return
					}
				}
			}
			p := sc2.expect("presence")
			if got := p.child("", "show").textOrEmpty(); got != tt.want {
				t.Fatalf("re-sent presence has show %q, want %q", got, tt.want)
			}
			if got := p.child("", "status").textOrEmpty(); got != tt.set.Status {
				t.Fatalf("re-sent presence lost its status %q", tt.set.Status)
			}
		})
	}
}
