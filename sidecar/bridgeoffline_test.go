package sidecar

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// graceRig is a session with a fake stream and its bridge, made inside a
// synctest bubble.
type graceRig struct {
	s  *session
	fc *fakeConn
	b  *bridge
}

func newGraceRig() *graceRig {
	fc := &fakeConn{jid: "alice@example.test/web-1", done: make(chan struct{})}
	s := &session{user: "alice", jid: "alice@example.test", short: "abcd0123", conn: fc, fullJID: fc.jid,
		presence: map[string][]presenceInfo{"bob@example.test": {{Resource: "desk"}}}, limiter: tokenBucket{rate: 10, burst: 10}}
	s.setState(xmppconn.StateOnline, "")
	m := newMetrics(func() map[xmppconn.State]int { return nil }, func() int64 { return 0 })
	return &graceRig{s: s, fc: fc, b: s.bridgeOf(8, 100, m)}
}

// tab attaches a client; bound makes it ready (bind, or prebind).
func (r *graceRig) tab(t *testing.T, bound bool) *bridgeClient {
	t.Helper()
	c, err := r.b.attach(func() {})
	if err != nil {
		t.Fatal(err)
	}
	if bound {
		r.b.markReady(c)
	}
	return c
}

// leave is what a BOSH terminate with <presence type="unavailable"/>
// does to its client.
func (r *graceRig) leave(c *bridgeClient, grace time.Duration) {
	c.end("", "")
	r.b.startGrace(grace, slog.New(slog.DiscardHandler))
	r.b.detach(c)
}

func (r *graceRig) unavailableSent() int {
	r.fc.mu.Lock()
	defer r.fc.mu.Unlock()
	n := 0
	for _, p := range r.fc.pres {
		if p.Type == "unavailable" {
			n++
		}
	}
	return n
}

func TestBridgeOfflineGrace(t *testing.T) {
	const grace = 5 * time.Second
	for _, tc := range []struct {
		name  string
		grace time.Duration
		// during runs half-way through the grace, after the tab left.
		during func(t *testing.T, r *graceRig)
		// others are the tabs still there when the first one leaves.
		others      func(t *testing.T, r *graceRig)
		unavailable bool
	}{
		{name: "offline: nobody comes back", grace: grace, unavailable: true},
		{name: "reload: a page binds within the grace", grace: grace, during: func(t *testing.T, r *graceRig) { r.tab(t, true) }},
		{name: "a page still logging in when the grace ends", grace: grace, during: func(t *testing.T, r *graceRig) { r.tab(t, false) }},
		{name: "another tab stays", grace: grace, others: func(t *testing.T, r *graceRig) { r.tab(t, true) }},
		{name: "an abandoned page's session lingers", grace: grace, unavailable: true, others: func(t *testing.T, r *graceRig) {
			c := r.tab(t, true)
			c.mu.Lock()
			c.live = func() bool { return false } // no request held or made lately
			c.mu.Unlock()
		}},
		{name: "another page's request is held", grace: grace, others: func(t *testing.T, r *graceRig) {
			c := r.tab(t, true)
			c.mu.Lock()
			c.live = func() bool { return true }
			c.mu.Unlock()
		}},
		{name: "the user chose a presence meanwhile", grace: grace, during: func(t *testing.T, r *graceRig) {
			r.fc.SendPresence(t.Context(), xmppconn.Presence{Show: xmppconn.ShowAway})
		}},
		{name: "logout meanwhile", grace: grace, during: func(t *testing.T, r *graceRig) { r.b.close("logged_out") }},
		{name: "a tab that came and went again", grace: grace, during: func(t *testing.T, r *graceRig) {
			c := r.tab(t, true)
			c.end("", "")
			r.b.detach(c)
		}},
		{name: "disabled", grace: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newGraceRig()
				first := r.tab(t, true)
				if tc.others != nil {
					tc.others(t, r)
				}
				r.leave(first, tc.grace)
				time.Sleep(grace / 2)
				if tc.during != nil {
					tc.during(t, r)
				}
				time.Sleep(grace)
				synctest.Wait()
				if got := r.unavailableSent(); got != map[bool]int{true: 1}[tc.unavailable] {
					t.Fatalf("unavailable sent %d times, want it %v; presences %+v", got, tc.unavailable, r.fc.pres)
				}
				r.s.mu.Lock()
				known := len(r.s.presence)
				r.s.mu.Unlock()
				if tc.unavailable && known != 0 {
					t.Fatalf("the contacts' presences are still known after going unavailable: %d", known)
				}
			})
		})
	}
}

// The user comes back with the next page's available presence, and a
// second "offline" while already unavailable sends nothing more.
func TestBridgeOfflineGraceComingBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newGraceRig()
		ctx := t.Context()
		c := r.tab(t, true)
		r.leave(c, time.Second)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if r.unavailableSent() != 1 {
			t.Fatalf("not offline: %+v", r.fc.pres)
		}
		c = r.tab(t, true)
		if err := r.b.fromClient(ctx, c, []byte(`<presence xmlns="jabber:client"/>`)); err != nil {
			t.Fatal(err)
		}
		if log := r.fc.stanzaLog(); len(log) != 1 || !strings.HasPrefix(log[0], "<presence") {
			t.Fatalf("the page's available presence did not go out: %q", log)
		}
		r.fc.SendPresence(ctx, xmppconn.Presence{Type: "unavailable"})
		r.leave(c, time.Second)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := r.unavailableSent(); n != 2 {
			t.Fatalf("unavailable sent %d times, want once more only by the user", n)
		}
	})
}

// Over BOSH: Expresso 2.5's terminate with unavailable starts the grace;
// a request of another PHP session with the same sid cannot.
func TestBOSHOfflineGrace(t *testing.T) {
	h, srv := boshHarness(t)
	h.api.cfg.OfflineGrace = 300 * time.Millisecond
	h.reader.set("mallory-session-id-0123456789abcdef", "mallory", "pw")
	c := h.newBOSH(srv, goodID)
	c.Create("example.test")
	c.Login("alice", "x")
	c.Send("", `<presence xmlns="jabber:client"/>`)
	// Mallory's page replays alice's sid with its own cookie.
	m := NewBOSHClient(t, srv.URL+"/http-bind", "Cookie", "sessionid=mallory-session-id-0123456789abcdef", "Origin", srv.URL)
	m.SID, m.RID = c.SID, c.RID
	b := m.Send(`type="terminate"`, `<presence xmlns="jabber:client" type="unavailable"/>`)
	if b.attrs["type"] != "terminate" || b.attrs["condition"] != "item-not-found" {
		t.Fatalf("another session's terminate answered %s", m.Last)
	}
	time.Sleep(time.Second)
	if p := h.conn.Presence(); p.Type == "unavailable" {
		t.Fatalf("another session's page took alice offline: %+v", h.conn.pres)
	}
	// A page that went away without a word (Expresso CE's expressoMail
	// tree) leaves its BOSH session until the inactivity timeout: it holds
	// no request and made none lately, so it does not count as a tab.
	gone := h.newBOSH(srv, goodID)
	gone.Create("example.test")
	gone.Login("alice", "x")
	abandoned := h.bosh().get(gone.SID)
	abandoned.mu.Lock()
	abandoned.lastSeen = time.Now().Add(-time.Minute)
	abandoned.mu.Unlock()
	// Alice's own "offline".
	b = c.Send(`type="terminate"`, `<presence xmlns="jabber:client" type="unavailable"/>`)
	if b.attrs["type"] != "terminate" {
		t.Fatalf("terminate answered %s", c.Last)
	}
	if p := h.conn.Presence(); p.Type == "unavailable" {
		t.Fatal("unavailable before the grace ran out")
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.conn.Presence().Type != "unavailable" {
		if time.Now().After(deadline) {
			t.Fatalf("not unavailable after the grace: %+v", h.conn.pres)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The stream stays logged in: /v1 works, and the next page brings
	// the user back.
	if rec := h.do("GET", "/v1/roster", "", "X-Session-Id", goodID); rec.Code != http.StatusOK {
		t.Fatalf("/v1 after offline: %d %s", rec.Code, rec.Body)
	}
	if h.conn.isClosed() {
		t.Fatal("the stream was closed")
	}
	c2 := h.newBOSH(srv, goodID)
	c2.Create("example.test")
	c2.Login("alice", "x")
	c2.Send("", `<presence xmlns="jabber:client"/>`)
	if log := h.conn.stanzaLog(); len(log) == 0 || !strings.HasPrefix(log[len(log)-1], "<presence") || strings.Contains(log[len(log)-1], "unavailable") {
		t.Fatalf("the next page's presence did not bring the user back: %q", log)
	}
}
