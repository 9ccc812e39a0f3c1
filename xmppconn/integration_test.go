package xmppconn_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

const pw = "s3cret-pässword"

// TestLogin logs in against every SASL and TLS shape Prosody can offer and
// checks, from the server's own log, which mechanism was used.
func TestLogin(t *testing.T) {
	tests := []struct {
		name     string
		opts     xmppconntest.Options
		tls      xmppconn.TLSMode
		wantMech string
	}{
		{"scram-sha-1", xmppconntest.Options{}, "", "SCRAM-SHA-1"},
		{"scram-sha-256", xmppconntest.Options{PasswordHash: "SHA-256"}, "", "SCRAM-SHA-256"},
		{"plain-only", xmppconntest.Options{PlainOnly: true}, "", "PLAIN"},
		{"direct-tls", xmppconntest.Options{DirectTLS: true}, "direct", "SCRAM-SHA-1"},
		{"plaintext-loopback", xmppconntest.Options{NoTLS: true}, "none", "SCRAM-SHA-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, s := prosodyBackend(t, tt.opts)
			s.Register(t, "alice", pw) // prosodyctl, as an administrator would
			c := connect(t, b, "alice", pw, "expresso-web", func(cfg *xmppconn.Config) {
				cfg.TLS = tt.tls
				if tt.tls == "direct" {
					cfg.Addr = s.DirectTLSAddr
				}
			})
			if got, want := c.JID(), "alice@example.test/expresso-web"; got != want {
				t.Errorf("JID() = %q, want %q", got, want)
			}
			if got := c.State(); got != xmppconn.StateOnline {
				t.Errorf("State() = %q, want online", got)
			}
			if got := s.AuthMechanisms("alice"); !slices.Equal(got, []string{tt.wantMech}) {
				t.Errorf("server saw mechanisms %v, want [%s]", got, tt.wantMech)
			}
			if n := s.AuthFailures(""); n != 0 {
				t.Errorf("%d auth failures logged, want 0", n)
			}
		})
	}
}

// TestWrongPassword: ErrAuth after exactly one SASL attempt, and no retry
// even with Reconnect enabled.
func TestWrongPassword(t *testing.T) {
	for _, name := range []string{"prosody", "prosody-plain-only", "ejabberd"} {
		t.Run(name, func(t *testing.T) {
			var b *backend
			switch name {
			case "prosody":
				b, _ = prosodyBackend(t, xmppconntest.Options{})
			case "prosody-plain-only":
				b, _ = prosodyBackend(t, xmppconntest.Options{PlainOnly: true})
			default:
				b = ejabberdBackend(t)
			}
			b.register(t, "alice", pw)
			cfg := baseConfig(t, b, "alice", "wrong", "web", newRecorder())
			cfg.Reconnect = true
			start := time.Now()
			c, err := xmppconn.Dial(ctxT(t), cfg)
			if err == nil {
				closeConn(t, c)
				t.Fatal("Dial with a wrong password succeeded")
			}
			if !errors.Is(err, xmppconn.ErrAuth) {
				t.Fatalf("Dial error = %v, want ErrAuth", err)
			}
			t.Logf("ErrAuth after %v: %v", time.Since(start), err)
			// Leave time for a (forbidden) retry with MinBackoff 50ms.
			time.Sleep(1500 * time.Millisecond)
			if n := b.authFailures("alice"); n != 1 {
				t.Errorf("server logged %d auth failures for alice, want exactly 1\n%s", n, b.logTail(20))
			}
		})
	}
}

// TestPasswordChangedWhileConnected: when the password changes under a live
// connection and the server restarts, the reconnect fails authentication
// once, and the Conn stops with ErrAuth instead of retrying.
func TestPasswordChangedWhileConnected(t *testing.T) {
	b, s := prosodyBackend(t, xmppconntest.Options{})
	b.register(t, "alice", pw)
	c := connect(t, b, "alice", pw, "web", func(cfg *xmppconn.Config) { cfg.Reconnect = true })
	s.RegisterMany(t, map[string]string{"alice": "changed-elsewhere"})
	b.restart(t)
	err := waitDone(t, c.Conn, 15*time.Second)
	if !errors.Is(err, xmppconn.ErrAuth) {
		t.Fatalf("Err() = %v, want ErrAuth", err)
	}
	if got := c.State(); got != xmppconn.StateAuthFailed {
		t.Errorf("State() = %s, want %s", got, xmppconn.StateAuthFailed)
	}
	c.rec.waitFor(t, time.Second, "StateChange auth_failed", func(ev xmppconn.Event) bool {
		sc, ok := ev.(*xmppconn.StateChange)
		return ok && sc.State == xmppconn.StateAuthFailed && errors.Is(sc.Err, xmppconn.ErrAuth)
	})
	time.Sleep(time.Second) // MinBackoff is 50ms: a retry would show by now
	if n := s.AuthFailures("alice"); n != 1 {
		t.Errorf("server logged %d auth failures, want exactly 1", n)
	}
}

// TestTLSRequired: a server without STARTTLS is refused by default, before
// any credentials are sent; plaintext is refused for non-loopback addresses.
func TestTLSRequired(t *testing.T) {
	b, s := prosodyBackend(t, xmppconntest.Options{NoTLS: true})
	b.register(t, "alice", pw)
	cfg := baseConfig(t, b, "alice", pw, "web", newRecorder())
	c, err := xmppconn.Dial(ctxT(t), cfg)
	if err == nil {
		closeConn(t, c)
		t.Fatal("Dial succeeded without TLS")
	}
	if !errors.Is(err, xmppconn.ErrTLSRequired) {
		t.Fatalf("Dial error = %v, want ErrTLSRequired", err)
	}
	if n := s.AuthFailures("") + s.AuthSuccesses(""); n != 0 {
		t.Errorf("credentials were sent over plaintext: %d SASL outcomes logged", n)
	}

	// Plaintext to a non-loopback address is refused without dialing
	// (192.0.2.1 is TEST-NET-1 and would only time out).
	cfg.TLS = "none"
	cfg.Addr = "192.0.2.1:5222"
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := xmppconn.Dial(ctx, cfg); !errors.Is(err, xmppconn.ErrTLSRequired) {
		t.Errorf("plaintext to a non-loopback address: err = %v, want ErrTLSRequired", err)
	}
}

// peerShape is how the other side of a conversation connects.
type peerShape struct {
	name string
	mod  func(*xmppconn.Config)
}

var peerShapes = []peerShape{
	{"sidecar", func(c *xmppconn.Config) { c.Carbons = true }},
	// A desktop client (Gajim, Pidgin): its own resource, positive
	// priority, no carbons, a status.
	{"desktop", func(c *xmppconn.Config) {
		c.Resource = "gajim.K7Q2"
		c.Carbons = false
		c.InitialPresence = &xmppconn.Presence{Show: "chat", Status: "at my desk", Priority: 10}
	}},
}

// TestConversation: two users exchange every message type both ways, with
// threads, ids, receipts requests and chat states, on Prosody and ejabberd,
// against a sidecar-shaped and a desktop-client-shaped peer.
func TestConversation(t *testing.T) {
	for _, server := range []string{"prosody", "ejabberd"} {
		for _, shape := range peerShapes {
			t.Run(server+"/"+shape.name, func(t *testing.T) {
				var b *backend
				if server == "prosody" {
					b, _ = prosodyBackend(t, xmppconntest.Options{})
				} else {
					b = ejabberdBackend(t)
				}
				b.register(t, "alice", pw)
				b.register(t, "bob", "bobpw")
				alice := connect(t, b, "alice", pw, "expresso-web", func(c *xmppconn.Config) { c.Carbons = true })
				bob := connect(t, b, "bob", "bobpw", "expresso-web", shape.mod)
				conversation(t, b, alice, bob)
			})
		}
	}
}

func conversation(t *testing.T, b *backend, alice, bob *client) {
	ctx := ctxT(t)
	// alice -> bob (full JID), every type.
	for i, typ := range []xmppconn.MessageType{"chat", "normal", "headline"} {
		body := fmt.Sprintf("hello bob %d ✓ <&>", i)
		out := xmppconn.Message{To: bob.JID(), Type: typ, Body: body, Thread: "th-1", ID: fmt.Sprintf("a2b-%d", i), Receipt: true}
		id, err := alice.Send(ctx, out)
		if err != nil {
			t.Fatalf("alice Send %s: %v", typ, err)
		}
		if id != out.ID {
			t.Errorf("Send returned id %q, want the caller's %q", id, out.ID)
		}
		m := bob.rec.waitFor(t, 10*time.Second, "bob receiving "+string(typ), messageWithBody(body)).(*xmppconn.Message)
		if m.From != alice.JID() || m.Type != typ || m.ID != out.ID || m.Thread != "th-1" || !m.Receipt || m.Carbon != "" {
			t.Errorf("bob got %+v, want from %s type %s id %s thread th-1 receipt", m, alice.JID(), typ, out.ID)
		}
		if !m.Delay.IsZero() {
			t.Errorf("live message has a delay stamp %v", m.Delay)
		}
	}
	// bob -> alice, to the bare JID, with a chat state; Send picks an id.
	id, err := bob.Send(ctx, xmppconn.Message{To: b.jid("alice"), Type: "chat", Body: "hi alice", ChatState: "active"})
	if err != nil {
		t.Fatalf("bob Send: %v", err)
	}
	if id == "" {
		t.Error("Send returned an empty id")
	}
	m := alice.rec.waitFor(t, 10*time.Second, "alice receiving", messageWithBody("hi alice")).(*xmppconn.Message)
	if m.From != bob.JID() || m.ID != id || m.ChatState != "active" || m.Type != "chat" {
		t.Errorf("alice got %+v, want from %s id %s state active", m, bob.JID(), id)
	}
	// Standalone chat states both ways.
	if err := alice.SendChatState(ctx, bob.JID(), "composing"); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, 10*time.Second, "composing at bob", func(ev xmppconn.Event) bool {
		cs, ok := ev.(*xmppconn.ChatState)
		return ok && cs.State == "composing" && cs.From == alice.JID()
	})
	if err := bob.SendChatState(ctx, alice.JID(), "paused"); err != nil {
		t.Fatal(err)
	}
	alice.rec.waitFor(t, 10*time.Second, "paused at alice", func(ev xmppconn.Event) bool {
		cs, ok := ev.(*xmppconn.ChatState)
		return ok && cs.State == "paused" && cs.From == bob.JID()
	})
	// A quick burst keeps its order.
	const burst = 50
	for i := range burst {
		if _, err := bob.Send(ctx, xmppconn.Message{To: alice.JID(), Type: "chat", Body: fmt.Sprintf("burst %02d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	alice.rec.waitFor(t, 15*time.Second, "last burst message", messageWithBody(fmt.Sprintf("burst %02d", burst-1)))
	var got []string
	for _, m := range alice.rec.messages() {
		if len(m.Body) == 8 && m.Body[:6] == "burst " {
			got = append(got, m.Body)
		}
	}
	if len(got) != burst || !slices.IsSorted(got) {
		t.Errorf("burst arrived as %v", got)
	}
}

// TestPresenceAndSubscriptions: mutual subscription round-trip, then both
// sides see each other's presence, show, status and priority.
func TestPresenceAndSubscriptions(t *testing.T) {
	b, _ := prosodyBackend(t, xmppconntest.Options{})
	b.register(t, "alice", pw)
	b.register(t, "bob", "bobpw")
	alice := connect(t, b, "alice", pw, "web", nil)
	bob := connect(t, b, "bob", "bobpw", "desk", func(c *xmppconn.Config) {
		c.InitialPresence = &xmppconn.Presence{Show: "away", Status: "lunch", Priority: 5}
	})
	ctx := ctxT(t)
	aliceJID, bobJID := b.jid("alice"), b.jid("bob")
	// No Roster() call first: servers deliver subscription approvals and
	// roster pushes only to resources whose roster request they have
	// processed (RFC 6121 §2.1.6), and Dial guarantees that.

	subscribe := func(from, to *client, fromJID, toJID string) {
		t.Helper()
		if err := from.Subscribe(ctx, toJID, "subscribe"); err != nil {
			t.Fatalf("%s subscribe: %v", from.name, err)
		}
		to.rec.waitFor(t, 10*time.Second, "subscribe request at "+to.name, func(ev xmppconn.Event) bool {
			s, ok := ev.(*xmppconn.Subscription)
			return ok && s.Type == "subscribe" && bare(s.From) == fromJID
		})
		if err := to.Subscribe(ctx, fromJID, "approve"); err != nil {
			t.Fatalf("%s approve: %v", to.name, err)
		}
		from.rec.waitFor(t, 10*time.Second, "subscribed at "+from.name, func(ev xmppconn.Event) bool {
			s, ok := ev.(*xmppconn.Subscription)
			return ok && s.Type == "subscribed" && bare(s.From) == toJID
		})
	}
	subscribe(alice, bob, aliceJID, bobJID)
	// Having subscribed, alice receives bob's current presence.
	p := alice.rec.waitFor(t, 10*time.Second, "bob's presence at alice", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == bob.JID() && p.Type == "available"
	}).(*xmppconn.Presence)
	if p.Show != "away" || p.Status != "lunch" || p.Priority != 5 {
		t.Errorf("bob's presence = %+v, want away/lunch/5", p)
	}
	subscribe(bob, alice, bobJID, aliceJID)
	bob.rec.waitFor(t, 10*time.Second, "alice's presence at bob", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == alice.JID() && p.Type == "available"
	})

	for _, c := range []*client{alice, bob} {
		items, err := c.Roster(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(items) != 1 || items[0].Subscription != "both" {
			t.Errorf("%s roster = %+v, want one item with subscription both", c.name, items)
		}
	}

	// Presence changes propagate.
	if err := alice.SendPresence(ctx, xmppconn.Presence{Show: "dnd", Status: "meeting ☎", Priority: 3}); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, 10*time.Second, "alice dnd at bob", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == alice.JID() && p.Show == "dnd" && p.Status == "meeting ☎" && p.Priority == 3
	})
	// Closing sends unavailable.
	closeConn(t, alice.Conn)
	bob.rec.waitFor(t, 10*time.Second, "alice unavailable at bob", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == alice.JID() && p.Type == "unavailable"
	})
	// bob cancels his subscription to alice: alice still sees him.
	if err := bob.Subscribe(ctx, aliceJID, "cancel"); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, 10*time.Second, "roster push after cancel", func(ev xmppconn.Event) bool {
		rp, ok := ev.(*xmppconn.RosterPush)
		return ok && rp.Item.JID == aliceJID && rp.Item.Subscription == "from"
	})
}

// TestRoster: add, rename, regroup and remove, with pushes to every
// resource of the user.
func TestRoster(t *testing.T) {
	for _, server := range []string{"prosody", "ejabberd"} {
		t.Run(server, func(t *testing.T) {
			var b *backend
			if server == "prosody" {
				b, _ = prosodyBackend(t, xmppconntest.Options{})
			} else {
				b = ejabberdBackend(t)
			}
			b.register(t, "alice", pw)
			web := connect(t, b, "alice", pw, "web", nil)
			desk := connect(t, b, "alice", pw, "desk", nil)
			ctx := ctxT(t)
			carol := b.jid("carol")
			// Pushes start right after Dial: see TestPresenceAndSubscriptions.

			pushed := func(c *client, what string, match func(xmppconn.RosterItem) bool) {
				t.Helper()
				c.rec.waitFor(t, 10*time.Second, what+" push at "+c.name, func(ev xmppconn.Event) bool {
					rp, ok := ev.(*xmppconn.RosterPush)
					return ok && rp.Item.JID == carol && match(rp.Item)
				})
			}
			find := func(c *client) *xmppconn.RosterItem {
				t.Helper()
				items, err := c.Roster(ctx)
				if err != nil {
					t.Fatalf("Roster: %v", err)
				}
				for i := range items {
					if items[i].JID == carol {
						return &items[i]
					}
				}
				return nil
			}

			if err := web.SetRosterItem(ctx, xmppconn.RosterItem{JID: carol, Name: "Carol", Groups: []string{"Work", "Amigos ç"}}); err != nil {
				t.Fatalf("add: %v", err)
			}
			for _, c := range []*client{web, desk} {
				pushed(c, "add", func(it xmppconn.RosterItem) bool { return it.Name == "Carol" })
			}
			it := find(desk)
			if it == nil {
				t.Fatal("carol not in roster after add")
			}
			groups := slices.Sorted(slices.Values(it.Groups))
			if it.Name != "Carol" || !slices.Equal(groups, []string{"Amigos ç", "Work"}) || it.Subscription != "none" {
				t.Errorf("after add: %+v", it)
			}

			if err := web.SetRosterItem(ctx, xmppconn.RosterItem{JID: carol, Name: "Carol Q.", Groups: []string{"Family"}}); err != nil {
				t.Fatalf("rename: %v", err)
			}
			pushed(desk, "rename", func(it xmppconn.RosterItem) bool {
				return it.Name == "Carol Q." && slices.Equal(it.Groups, []string{"Family"})
			})
			if it := find(web); it == nil || it.Name != "Carol Q." || !slices.Equal(it.Groups, []string{"Family"}) {
				t.Errorf("after rename: %+v", it)
			}

			if err := desk.RemoveRosterItem(ctx, carol); err != nil {
				t.Fatalf("remove: %v", err)
			}
			for _, c := range []*client{web, desk} {
				pushed(c, "remove", func(it xmppconn.RosterItem) bool { return it.Subscription == "remove" })
			}
			if it := find(web); it != nil {
				t.Errorf("carol still in roster after remove: %+v", it)
			}
		})
	}
}

// TestCarbons: two resources with carbons see each other's conversations;
// a desktop resource without carbons does not.
func TestCarbons(t *testing.T) {
	for _, server := range []string{"prosody", "ejabberd"} {
		t.Run(server, func(t *testing.T) {
			var b *backend
			if server == "prosody" {
				b, _ = prosodyBackend(t, xmppconntest.Options{})
			} else {
				b = ejabberdBackend(t)
			}
			b.register(t, "alice", pw)
			b.register(t, "bob", "bobpw")
			carbons := func(c *xmppconn.Config) { c.Carbons = true }
			r1 := connect(t, b, "alice", pw, "r1", carbons)
			r2 := connect(t, b, "alice", pw, "r2", carbons)
			desk := connect(t, b, "alice", pw, "desk", nil)
			bob := connect(t, b, "bob", "bobpw", "web", nil)
			ctx := ctxT(t)

			if _, err := bob.Send(ctx, xmppconn.Message{To: r1.JID(), Type: "chat", Body: "to r1", ID: "b1"}); err != nil {
				t.Fatal(err)
			}
			m := r1.rec.waitFor(t, 10*time.Second, "direct message at r1", messageWithBody("to r1")).(*xmppconn.Message)
			if m.Carbon != "" {
				t.Errorf("r1 got its own message as a carbon: %+v", m)
			}
			m = r2.rec.waitFor(t, 10*time.Second, "received carbon at r2", messageWithBody("to r1")).(*xmppconn.Message)
			if m.Carbon != "received" || m.From != bob.JID() || m.To != r1.JID() || m.ID != "b1" {
				t.Errorf("r2 carbon = %+v, want received from %s to %s id b1", m, bob.JID(), r1.JID())
			}

			if _, err := r1.Send(ctx, xmppconn.Message{To: bob.JID(), Type: "chat", Body: "from r1", ID: "a1"}); err != nil {
				t.Fatal(err)
			}
			bob.rec.waitFor(t, 10*time.Second, "message at bob", messageWithBody("from r1"))
			m = r2.rec.waitFor(t, 10*time.Second, "sent carbon at r2", messageWithBody("from r1")).(*xmppconn.Message)
			if m.Carbon != "sent" || m.To != bob.JID() || bare(m.From) != b.jid("alice") || m.ID != "a1" {
				t.Errorf("r2 sent carbon = %+v, want sent to %s id a1", m, bob.JID())
			}
			// Settle, then check the desktop resource saw none of it.
			time.Sleep(300 * time.Millisecond)
			for _, m := range desk.rec.messages() {
				t.Errorf("desktop resource without carbons got %+v", m)
			}
			for _, m := range r1.rec.messages() {
				if m.Body == "from r1" {
					t.Errorf("r1 got a carbon of its own message: %+v", m)
				}
			}
		})
	}
}

// TestOfflineDelay: messages to an offline user arrive at login, in order,
// with XEP-0203 delay stamps.
func TestOfflineDelay(t *testing.T) {
	for _, server := range []string{"prosody", "ejabberd"} {
		t.Run(server, func(t *testing.T) {
			var b *backend
			if server == "prosody" {
				b, _ = prosodyBackend(t, xmppconntest.Options{})
			} else {
				b = ejabberdBackend(t)
			}
			b.register(t, "alice", pw)
			b.register(t, "bob", "bobpw")
			alice := connect(t, b, "alice", pw, "web", nil)
			ctx := ctxT(t)
			sentAt := time.Now().Add(-2 * time.Second)
			for i := range 3 {
				if _, err := alice.Send(ctx, xmppconn.Message{To: b.jid("bob"), Type: "chat", Body: fmt.Sprintf("offline %d", i), ID: fmt.Sprintf("off-%d", i)}); err != nil {
					t.Fatal(err)
				}
			}
			// Make sure the server processed them before bob logs in:
			// a roster round-trip is behind them on alice's stream.
			if _, err := alice.Roster(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			bob := connect(t, b, "bob", "bobpw", "web", nil)
			bob.rec.waitFor(t, 10*time.Second, "last offline message", messageWithBody("offline 2"))
			var got []string
			for _, m := range bob.rec.messages() {
				got = append(got, m.ID)
				if m.Delay.IsZero() || m.Delay.Before(sentAt) || m.Delay.After(time.Now()) {
					t.Errorf("offline message %s has delay %v, want between %v and now", m.ID, m.Delay, sentAt)
				}
				if bare(m.From) != b.jid("alice") {
					t.Errorf("offline message from %q", m.From)
				}
			}
			if !slices.Equal(got, []string{"off-0", "off-1", "off-2"}) {
				t.Errorf("offline messages arrived as %v", got)
			}
		})
	}
}

// TestNoLoss runs a two-way conversation and breaks it in the middle: a
// network blip (streams resumed), a graceful server restart (fresh streams:
// what the server held goes to offline storage, what it had not acked is
// re-sent by the library), and a SIGKILL of the server (what the dead server
// had acked is gone, so the application re-sends what its peer never
// confirmed, as the sidecar's caller does after ContinuityLost). Every
// message must arrive; duplicates may only repeat an id.
func TestNoLoss(t *testing.T) {
	tests := []struct {
		server      string
		fault       string
		appResend   bool // the application re-sends unconfirmed messages
		wantResumed bool
	}{
		{"prosody", "blip", false, true},
		{"prosody", "restart", false, false},
		{"prosody", "kill", true, false},
		{"ejabberd", "blip", false, true},
		// ejabberd 23.01's "stop" closes every c2s stream with
		// system-shutdown about a second before it stops listening:
		// clients that reconnect at once get sessions that die without a
		// stream error, and stanzas the server acked on them are lost.
		// Only the application's receipts can cover that.
		{"ejabberd", "restart", true, false},
		{"ejabberd", "kill", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.server+"/"+tt.fault, func(t *testing.T) {
			var b *backend
			if tt.server == "prosody" {
				// Debug for a restart: Prosody then logs each stanza it
				// reads and what its mod_smacks does with the queues of
				// the sessions it closes, which is what tells a message
				// the server took and lost from one the library dropped.
				level := "info"
				if tt.fault == "restart" {
					level = "debug"
				}
				b, _ = prosodyBackend(t, xmppconntest.Options{LogLevel: level})
			} else {
				b = ejabberdBackend(t)
			}
			b.register(t, "alice", pw)
			b.register(t, "bob", "bobpw")
			if tt.server == "ejabberd" && tt.fault == "kill" {
				// ejabberd keeps accounts in Mnesia dets tables, written
				// back every 3 minutes: SIGKILL would lose accounts this
				// fresh. A graceful restart writes them.
				b.restart(t)
			}
			addr := b.addr
			var proxy *xmppconntest.Proxy
			if tt.fault == "blip" {
				proxy = xmppconntest.StartProxy(t, b.addr)
				addr = proxy.Addr()
			}
			mod := func(c *xmppconn.Config) {
				c.Addr = addr
				c.Reconnect = true
				c.PingInterval = 2 * time.Second
				c.PingTimeout = 2 * time.Second
			}
			alice := connect(t, b, "alice", pw, "web", mod)
			bob := connect(t, b, "bob", "bobpw", "web", mod)

			fault := func() {
				switch tt.fault {
				case "blip":
					proxy.Cut()
				case "restart":
					b.restart(t)
				case "kill":
					b.kill(t)
					time.Sleep(300 * time.Millisecond)
					b.start(t)
				}
			}
			res := converse(t, b, alice, bob, 100, fault, tt.appResend)
			t.Logf("%s/%s: %s", tt.server, tt.fault, res)
			for _, c := range []*client{alice, bob} {
				var online []*xmppconn.StateChange
				for _, sc := range c.rec.states() {
					if sc.State == xmppconn.StateOnline {
						online = append(online, sc)
					}
				}
				if len(online) == 0 {
					t.Errorf("%s: no StateChange to online after the fault; states: %+v", c.name, c.rec.states())
					continue
				}
				last := online[len(online)-1]
				if last.Resumed != tt.wantResumed || last.ContinuityLost == tt.wantResumed {
					t.Errorf("%s: back online with Resumed=%v ContinuityLost=%v, want Resumed=%v",
						c.name, last.Resumed, last.ContinuityLost, tt.wantResumed)
				}
			}
			if tt.wantResumed && res.duplicates > 0 {
				t.Errorf("resumed streams delivered %d duplicates", res.duplicates)
			}
		})
	}
}

type convResult struct {
	sent, received, duplicates, delayed, appResent int
	elapsed                                        time.Duration
}

func (r convResult) String() string {
	return fmt.Sprintf("sent %d, received %d distinct, %d duplicates, %d with delay stamps (smacks queue or offline storage), %d re-sent by the app, %v",
		r.sent, r.received, r.duplicates, r.delayed, r.appResent, r.elapsed.Round(time.Millisecond))
}

// converse sends n messages each way, paced, calling fault half-way, and
// waits until every message arrived.
func converse(t *testing.T, b *backend, alice, bob *client, n int, fault func(), appResend bool) convResult {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	type side struct {
		c      *client
		peer   *client
		prefix string
		ids    []string
	}
	sides := []*side{{c: alice, peer: bob, prefix: "a2b"}, {c: bob, peer: alice, prefix: "b2a"}}
	send := func(s *side, id string) {
		if _, err := s.c.Send(ctx, xmppconn.Message{To: b.jid(s.peer.user), Type: "chat", ID: id, Body: id, Receipt: true}); err != nil {
			t.Errorf("%s Send %s: %v", s.c.name, id, err)
		}
	}
	// Both sides keep sending while the fault happens on its own
	// goroutine, a third of the way in.
	var wg sync.WaitGroup
	var faultWG sync.WaitGroup
	faultWG.Add(1)
	var once sync.Once
	for _, s := range sides {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if i == n/3 {
					once.Do(func() {
						go func() {
							defer faultWG.Done()
							fault()
						}()
					})
				}
				id := fmt.Sprintf("%s-%03d", s.prefix, i)
				s.ids = append(s.ids, id)
				send(s, id)
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	faultWG.Wait()

	received := func(s *side) map[string]int {
		got := map[string]int{}
		for _, m := range s.peer.rec.messages() {
			if len(m.ID) > 3 && m.ID[:3] == s.prefix && m.Body == m.ID {
				got[m.ID]++
			}
		}
		return got
	}
	// confirmed: the ids the peer acknowledged with a XEP-0184 receipt.
	confirmed := func(s *side) map[string]bool {
		evs, _ := s.c.rec.snapshot()
		got := map[string]bool{}
		for _, ev := range evs {
			if r, ok := ev.(*xmppconn.Receipt); ok {
				got[r.ID] = true
			}
		}
		return got
	}
	complete := func() bool {
		for _, s := range sides {
			if len(received(s)) < len(s.ids) || len(confirmed(s)) < len(s.ids) {
				return false
			}
		}
		return true
	}
	var res convResult
	deadline := time.Now().Add(45 * time.Second)
	for !complete() && time.Now().Before(deadline) {
		if appResend {
			// What the peer has not confirmed with a receipt after a
			// while is re-sent with the same id, as the application
			// would after ContinuityLost.
			time.Sleep(2 * time.Second)
			for _, s := range sides {
				got := confirmed(s)
				for _, id := range s.ids {
					if !got[id] {
						res.appResent++
						send(s, id)
					}
				}
			}
			continue
		}
		sides[0].peer.rec.waitUntil(500*time.Millisecond, func([]xmppconn.Event) bool { return complete() })
	}
	res.elapsed = time.Since(start)
	for _, s := range sides {
		res.sent += len(s.ids)
		got, acks := received(s), confirmed(s)
		for _, id := range s.ids {
			if got[id] == 0 {
				t.Errorf("message %s from %s never arrived; %s", id, s.c.name, whereLost(s.c, b, id))
			} else if !acks[id] {
				t.Errorf("message %s from %s arrived but its receipt never came back", id, s.c.name)
			}
		}
		for _, k := range got {
			res.received++
			res.duplicates += k - 1
		}
		for _, m := range s.peer.rec.messages() {
			if len(m.ID) > 3 && m.ID[:3] == s.prefix && !m.Delay.IsZero() {
				res.delayed++
			}
		}
	}
	if t.Failed() {
		t.Logf("%s\n%s", res, b.logTail(40))
	}
	return res
}

// whereLost says, for a message that never arrived, whether the sender
// still holds it unacknowledged (the library's to send) or the server
// acknowledged it (the server's), and what the server's log says of it.
func whereLost(c *client, b *backend, id string) string {
	st := c.ResumeState()
	held := false
	for _, raw := range st.Unacked {
		if bytes.Contains(raw, []byte(`"`+id+`"`)) || bytes.Contains(raw, []byte("'"+id+"'")) {
			held = true
		}
	}
	var lines []string
	for line := range strings.Lines(b.log()) {
		if strings.Contains(line, id) || strings.Contains(line, "smacks") {
			lines = append(lines, strings.TrimRight(line, "\n"))
		}
	}
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Sprintf("the sender holds it unacknowledged: %v (server's h %d, %d unacked); server log lines naming it or smacks:\n%s",
		held, st.Acked, len(st.Unacked), strings.Join(lines, "\n"))
}
