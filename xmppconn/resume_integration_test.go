package xmppconn_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// memStore is a ResumeStore kept in memory, as a shared store would keep
// it: the state of the calls applied in order. After frozen, it takes no
// more calls (a dead process writes nothing). With lazyAcks it keeps no
// acknowledgement (a store that writes them late, and died first): its
// state keeps stanzas the server has.
type memStore struct {
	mu       sync.Mutex
	st       xmppconn.ResumeState
	frozen   bool
	calls    int
	lazyAcks bool
	// refuseHandled, while set, fails Handled (a store not answering).
	refuseHandled bool
}

func (m *memStore) apply(f func()) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.frozen {
		return errors.New("store frozen")
	}
	m.calls++
	f()
	return nil
}

func (m *memStore) Save(st xmppconn.ResumeState) error { return m.apply(func() { m.st = st }) }
func (m *memStore) Handled(h uint32) error {
	m.mu.Lock()
	refused := m.refuseHandled
	m.mu.Unlock()
	if refused {
		return errors.New("store not answering")
	}
	return m.apply(func() { m.st.Handled(h) })
}

func (m *memStore) setRefuseHandled(on bool) {
	m.mu.Lock()
	m.refuseHandled = on
	m.mu.Unlock()
}
func (m *memStore) Sent(raw []byte) error { return m.apply(func() { m.st.Sent(raw) }) }
func (m *memStore) Acked(h uint32) error {
	if m.lazyAcks {
		return nil
	}
	var err error
	if e := m.apply(func() { err = m.st.Ack(h) }); e != nil {
		return e
	}
	return err
}

// state returns the stored state as another process would read it:
// through its JSON form.
func (m *memStore) state(t *testing.T) xmppconn.ResumeState {
	t.Helper()
	m.mu.Lock()
	b, err := json.Marshal(m.st)
	m.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	st, err := xmppconn.ParseResumeState(b)
	if err != nil {
		t.Fatalf("stored state does not parse: %v\n%s", err, b)
	}
	return st
}

func (m *memStore) freeze() {
	m.mu.Lock()
	m.frozen = true
	m.mu.Unlock()
}

// unavailableFrom reports whether rec saw an unavailable presence of jid.
func unavailableFrom(rec *recorder, jid string) bool {
	evs, _ := rec.snapshot()
	for _, ev := range evs {
		if p, ok := ev.(*xmppconn.Presence); ok && p.From == jid && p.Type == "unavailable" {
			return true
		}
	}
	return false
}

// countIDs counts the messages of rec whose id starts with prefix.
func countIDs(recs []*recorder, prefix string) map[string]int {
	got := map[string]int{}
	for _, r := range recs {
		for _, m := range r.messages() {
			if strings.HasPrefix(m.ID, prefix) {
				got[m.ID]++
			}
		}
	}
	return got
}

// wantOnce fails the test for each message whose id starts with prefix
// that recs got other than once; format takes the id and the count.
func wantOnce(t *testing.T, recs []*recorder, prefix, format string) {
	t.Helper()
	for id, n := range countIDs(recs, prefix) {
		if n != 1 {
			t.Errorf(format, id, n)
		}
	}
}

// firstOnline returns the first StateChange to online of rec.
func firstOnline(t *testing.T, rec *recorder) *xmppconn.StateChange {
	t.Helper()
	return rec.waitFor(t, 10*time.Second, "online", func(ev xmppconn.Event) bool {
		s, ok := ev.(*xmppconn.StateChange)
		return ok && s.State == xmppconn.StateOnline
	}).(*xmppconn.StateChange)
}

// resumeSetup is alice on "web" through a proxy with a memStore, and
// bob on "desk", subscribed to alice's presence.
type resumeSetup struct {
	b      *backend
	proxy  *xmppconntest.Proxy
	store  *memStore
	alice  *client
	bob    *client
	aliceJ string
}

func newResumeSetup(t *testing.T, b *backend, mods ...func(*xmppconn.Config)) *resumeSetup {
	t.Helper()
	b.register(t, "alice", pw)
	b.register(t, "bob", "bobpw")
	rs := &resumeSetup{b: b, proxy: xmppconntest.StartProxy(t, b.addr), store: &memStore{}}
	rs.alice = connect(t, b, "alice", pw, "web", func(c *xmppconn.Config) {
		c.Addr = rs.proxy.Addr()
		c.ResumeStore = rs.store
		for _, mod := range mods {
			mod(c)
		}
	})
	rs.aliceJ = rs.alice.JID()
	rs.bob = connect(t, b, "bob", "bobpw", "desk", nil)
	ctx := ctxT(t)
	if err := rs.bob.Subscribe(ctx, b.jid("alice"), "subscribe"); err != nil {
		t.Fatal(err)
	}
	rs.alice.rec.waitFor(t, 10*time.Second, "subscribe request", func(ev xmppconn.Event) bool {
		s, ok := ev.(*xmppconn.Subscription)
		return ok && s.Type == "subscribe"
	})
	if err := rs.alice.Subscribe(ctx, b.jid("bob"), "approve"); err != nil {
		t.Fatal(err)
	}
	rs.bob.rec.waitFor(t, 10*time.Second, "alice available at bob", func(ev xmppconn.Event) bool {
		p, ok := ev.(*xmppconn.Presence)
		return ok && p.From == rs.aliceJ && p.Type == "available"
	})
	return rs
}

// send sends n chat messages with ids prefix-000... from c to to.
func sendN(t *testing.T, c *client, to, prefix string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		id := fmt.Sprintf("%s-%03d", prefix, i)
		if _, err := c.Send(ctxT(t), xmppconn.Message{To: to, Type: "chat", ID: id, Body: id}); err != nil {
			t.Fatalf("%s Send %s: %v", c.name, id, err)
		}
	}
}

// waitCount waits until the recorders hold n distinct ids with prefix.
func waitCount(t *testing.T, recs []*recorder, prefix string, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(countIDs(recs, prefix)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d %s messages arrived", len(countIDs(recs, prefix)), n, prefix)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestResumeAcrossConns: a Conn's session, kept in a ResumeStore, is
// continued by another Conn (as another process would) after the first
// one crashed (its connection cut, nothing said) or detached: every
// inbound stanza reaches exactly one of the two Handlers once, the
// stanzas the first had sent but the server never got reach the contact
// once, and the contact sees no unavailable. "crash-lazy-acks" is a crash
// of a store that had persisted none of the server's acknowledgements:
// the stored state holds every stanza since the session began, and the
// resumption sends again only those the server did not get.
func TestResumeAcrossConns(t *testing.T) {
	for _, server := range []string{"prosody", "ejabberd"} {
		for _, how := range []string{"crash", "detach", "crash-lazy-acks"} {
			t.Run(server+"/"+how, func(t *testing.T) {
				var b *backend
				if server == "prosody" {
					b, _ = prosodyBackend(t, xmppconntest.Options{LogLevel: "info"})
				} else {
					b = ejabberdBackend(t)
				}
				rs := newResumeSetup(t, b)
				rs.store.lazyAcks = how == "crash-lazy-acks"
				aliceBare, bobBare := b.jid("alice"), b.jid("bob")

				// Traffic both ways, all acknowledged.
				sendN(t, rs.bob, aliceBare, "in", 0, 20)
				sendN(t, rs.alice, bobBare, "out", 0, 10)
				waitCount(t, []*recorder{rs.alice.rec}, "in-", 20)
				waitCount(t, []*recorder{rs.bob.rec}, "out-", 10)

				// The network loses what alice writes from now on: her
				// next messages stay unacknowledged, and bob's keep
				// arriving (handled, stored, never acked).
				rs.proxy.Hold(true)
				sendN(t, rs.alice, bobBare, "out", 10, 7)
				sendN(t, rs.bob, aliceBare, "in", 20, 10)
				waitCount(t, []*recorder{rs.alice.rec}, "in-", 30)

				var st xmppconn.ResumeState
				switch how {
				case "crash", "crash-lazy-acks":
					// The process dies: its store stops, its socket is
					// cut with no </stream>.
					rs.store.freeze()
					rs.proxy.Cut()
					st = rs.store.state(t)
				case "detach":
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					got, err := rs.alice.Detach(ctx)
					cancel()
					if err != nil {
						t.Fatalf("Detach: %v", err)
					}
					if !errors.Is(rs.alice.Err(), xmppconn.ErrDetached) {
						t.Errorf("Err after Detach = %v, want ErrDetached", rs.alice.Err())
					}
					st = rs.store.state(t)
					if got.H != st.H || got.Acked != st.Acked || len(got.Unacked) != len(st.Unacked) || got.ID != st.ID {
						t.Errorf("Detach returned h=%d acked=%d unacked=%d id=%q, the store holds h=%d acked=%d unacked=%d id=%q",
							got.H, got.Acked, len(got.Unacked), got.ID, st.H, st.Acked, len(st.Unacked), st.ID)
					}
				}
				if len(st.Unacked) < 7 {
					t.Fatalf("stored state has %d unacknowledged stanzas, want at least the 7 held", len(st.Unacked))
				}
				if rs.store.lazyAcks && (st.Acked != 0 || len(st.Unacked) < 17) {
					t.Fatalf("the lazy store holds acked=%d and %d stanzas, want 0 and all 17 sent", st.Acked, len(st.Unacked))
				}
				// While nobody holds the session, bob writes on.
				sendN(t, rs.bob, aliceBare, "in", 30, 10)
				time.Sleep(300 * time.Millisecond)

				store2 := &memStore{}
				rec2 := newRecorder()
				cfg := baseConfig(t, b, "alice", pw, "", rec2)
				cfg.ResumeStore = store2
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				alice2, err := xmppconn.Resume(ctx, cfg, st)
				cancel()
				if err != nil {
					t.Fatalf("Resume: %v\n%s", err, b.logTail(30))
				}
				t.Cleanup(func() { closeConn(t, alice2) })
				if !alice2.Resumed() {
					t.Fatalf("Resume logged in afresh, want a resumed session\n%s", b.logTail(30))
				}
				if sc := firstOnline(t, rec2); !sc.Resumed || sc.ContinuityLost {
					t.Errorf("first StateChange %+v, want Resumed", sc)
				}
				if alice2.JID() != rs.aliceJ {
					t.Errorf("resumed JID %s, want %s", alice2.JID(), rs.aliceJ)
				}
				// More traffic after the resumption, both ways.
				a2 := &client{Conn: alice2, rec: rec2, user: "alice", name: "alice/resumed"}
				sendN(t, rs.bob, aliceBare, "in", 40, 10)
				sendN(t, a2, bobBare, "out", 17, 5)

				recs := []*recorder{rs.alice.rec, rec2}
				waitCount(t, recs, "in-", 50)
				waitCount(t, []*recorder{rs.bob.rec}, "out-", 22)
				time.Sleep(500 * time.Millisecond) // let a duplicate show up
				wantOnce(t, recs, "in-", "inbound %s delivered %d times across both Conns")
				wantOnce(t, []*recorder{rs.bob.rec}, "out-", "outbound %s reached bob %d times")
				if unavailableFrom(rs.bob.rec, rs.aliceJ) {
					t.Errorf("bob saw alice unavailable during the hand-over")
				}
				// The new store followed the session: it holds what the
				// resumed Conn has.
				now := alice2.ResumeState()
				got := store2.state(t)
				if got.H != now.H || got.Acked != now.Acked || len(got.Unacked) != len(now.Unacked) {
					t.Errorf("second store h=%d acked=%d unacked=%d, Conn h=%d acked=%d unacked=%d",
						got.H, got.Acked, len(got.Unacked), now.H, now.Acked, len(now.Unacked))
				}
			})
		}
	}
}

// TestResumeRefused: a session the server no longer has (its hibernation
// timed out), or a state whose inbound count is ahead of what the server
// sent (Prosody closes the connection, and the session, without a word;
// ejabberd answers with a stream error), is not resumed: Resume logs in afresh, sends the stored
// unacknowledged stanzas again and says so (Resumed false, the first
// StateChange has ContinuityLost).
func TestResumeRefused(t *testing.T) {
	for _, tt := range []struct{ server, why string }{
		{"prosody", "timeout"}, {"prosody", "h-ahead"}, {"ejabberd", "h-ahead"},
	} {
		why := tt.why
		t.Run(tt.server+"/"+why, func(t *testing.T) {
			var b *backend
			if tt.server == "prosody" {
				b, _ = prosodyBackend(t, xmppconntest.Options{LogLevel: "info", SmacksHibernation: 2 * time.Second})
			} else {
				b = ejabberdBackend(t)
			}
			rs := newResumeSetup(t, b)
			bobBare := b.jid("bob")
			sendN(t, rs.alice, bobBare, "out", 0, 3)
			waitCount(t, []*recorder{rs.bob.rec}, "out-", 3)
			rs.proxy.Hold(true)
			sendN(t, rs.alice, bobBare, "out", 3, 4)
			time.Sleep(200 * time.Millisecond)
			rs.store.freeze()
			rs.proxy.Cut()
			st := rs.store.state(t)
			switch why {
			case "timeout":
				time.Sleep(4 * time.Second) // twice smacks_hibernation_time
			case "h-ahead":
				st.H += 5
			}
			rec2 := newRecorder()
			cfg := baseConfig(t, b, "alice", pw, "web", rec2)
			cfg.ResumeStore = &memStore{}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			alice2, err := xmppconn.Resume(ctx, cfg, st)
			cancel()
			if err != nil {
				t.Fatalf("Resume: %v\n%s", err, b.logTail(30))
			}
			t.Cleanup(func() { closeConn(t, alice2) })
			if alice2.Resumed() {
				t.Fatalf("Resume says resumed; the server cannot have resumed this state")
			}
			if sc := firstOnline(t, rec2); sc.Resumed || !sc.ContinuityLost {
				t.Errorf("first StateChange %+v, want ContinuityLost", sc)
			}
			if alice2.JID() != rs.aliceJ {
				t.Errorf("fresh login bound %s, want the state's %s", alice2.JID(), rs.aliceJ)
			}
			// What the server never got is sent again on the fresh
			// stream, and bob sees alice available again.
			waitCount(t, []*recorder{rs.bob.rec}, "out-", 7)
			if !rs.bob.rec.waitUntil(10*time.Second, func(evs []xmppconn.Event) bool {
				gone := false
				for _, ev := range evs {
					if p, ok := ev.(*xmppconn.Presence); ok && p.From == rs.aliceJ {
						if p.Type == "unavailable" {
							gone = true
						} else if gone {
							return true
						}
					}
				}
				return false
			}) {
				t.Errorf("bob did not see alice unavailable, then available again")
			}
		})
	}
}

// TestResumeBadState: a state for another account, another resource, or
// a malformed one is refused before anything is sent.
func TestResumeBadState(t *testing.T) {
	good := xmppconn.ResumeState{V: xmppconn.ResumeStateVersion, JID: "alice@example.test/web", ID: "x", H: 3}
	cfg := xmppconn.Config{Addr: "127.0.0.1:1", Domain: "example.test", TLS: xmppconn.TLSNone, User: "alice", Password: "pw"}
	tests := []struct {
		name string
		mod  func(*xmppconn.ResumeState, *xmppconn.Config)
	}{
		{"other user", func(s *xmppconn.ResumeState, c *xmppconn.Config) { s.JID = "mallory@example.test/web" }},
		{"other domain", func(s *xmppconn.ResumeState, c *xmppconn.Config) { s.JID = "alice@evil.test/web" }},
		{"other resource", func(s *xmppconn.ResumeState, c *xmppconn.Config) { c.Resource = "desk" }},
		{"bare jid", func(s *xmppconn.ResumeState, c *xmppconn.Config) { s.JID = "alice@example.test" }},
		{"version", func(s *xmppconn.ResumeState, c *xmppconn.Config) { s.V = 2 }},
		{"garbage stanza", func(s *xmppconn.ResumeState, c *xmppconn.Config) { s.Unacked = [][]byte{[]byte("</stream:stream>")} }},
		{"two stanzas", func(s *xmppconn.ResumeState, c *xmppconn.Config) {
			s.Unacked = [][]byte{[]byte(`<message to="b@x"/><presence type="unavailable"/>`)}
		}},
		{"not a stanza", func(s *xmppconn.ResumeState, c *xmppconn.Config) {
			s.Unacked = [][]byte{[]byte(`<r xmlns="urn:xmpp:sm:3"/>`)}
		}},
		{"over MaxSendSize", func(s *xmppconn.ResumeState, c *xmppconn.Config) {
			s.Unacked = [][]byte{[]byte(`<message><body>` + strings.Repeat("x", 70<<10) + `</body></message>`)}
		}},
		{"too many", func(s *xmppconn.ResumeState, c *xmppconn.Config) {
			s.Unacked = make([][]byte, 10001)
			for i := range s.Unacked {
				s.Unacked[i] = []byte(`<presence/>`)
			}
		}},
		{"bad room", func(s *xmppconn.ResumeState, c *xmppconn.Config) {
			s.Rooms = []xmppconn.ResumeRoom{{Room: "room@conf/x", Nick: "a"}}
		}},
		{"no nick", func(s *xmppconn.ResumeState, c *xmppconn.Config) {
			s.Rooms = []xmppconn.ResumeRoom{{Room: "room@conf"}}
		}},
		{"bad show", func(s *xmppconn.ResumeState, c *xmppconn.Config) { s.Show = "sleeping" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, c := good, cfg
			tt.mod(&st, &c)
			conn, err := xmppconn.Resume(t.Context(), c, st)
			if !errors.Is(err, xmppconn.ErrResumeState) {
				t.Fatalf("Resume = %v, %v; want ErrResumeState", conn, err)
			}
			t.Log(err)
		})
	}
}

// TestResumeRooms: the rooms of a stored session come along: a resumed
// Conn delivers the room's messages (the server kept it in the room), and
// a fresh login after the session timed out joins the room again.
func TestResumeRooms(t *testing.T) {
	for _, timedOut := range []bool{false, true} {
		t.Run(fmt.Sprintf("timed-out=%v", timedOut), func(t *testing.T) {
			b, srv := prosodyBackend(t, xmppconntest.Options{LogLevel: "info", MUC: true, SmacksHibernation: 2 * time.Second})
			b.register(t, "alice", pw)
			b.register(t, "bob", "bobpw")
			store := &memStore{}
			proxy := xmppconntest.StartProxy(t, b.addr)
			alice := connect(t, b, "alice", pw, "web", func(c *xmppconn.Config) {
				c.Addr = proxy.Addr()
				c.ResumeStore = store
			})
			bob := connect(t, b, "bob", "bobpw", "desk", nil)
			ctx := ctxT(t)
			room := "sala@" + srv.MUCDomain
			if _, _, err := alice.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Alice"}); err != nil {
				t.Fatal(err)
			}
			if _, _, err := bob.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Bob"}); err != nil {
				t.Fatal(err)
			}
			if _, err := bob.Send(ctx, xmppconn.Message{To: room, Type: "groupchat", Body: "before"}); err != nil {
				t.Fatal(err)
			}
			alice.rec.waitFor(t, 10*time.Second, "before", roomMessage(room, "before"))
			store.freeze()
			proxy.Cut()
			st := store.state(t)
			if len(st.Rooms) != 1 || st.Rooms[0].Room != room || st.Rooms[0].Nick != "Alice" {
				t.Fatalf("stored rooms %+v, want %s as Alice", st.Rooms, room)
			}
			if timedOut {
				time.Sleep(4 * time.Second)
			}
			rec2 := newRecorder()
			cfg := baseConfig(t, b, "alice", pw, "", rec2)
			cfg.ResumeStore = &memStore{}
			alice2, err := xmppconn.Resume(ctx, cfg, st)
			if err != nil {
				t.Fatalf("Resume: %v", err)
			}
			t.Cleanup(func() { closeConn(t, alice2) })
			if alice2.Resumed() == timedOut {
				t.Fatalf("Resumed() = %v with the session timed out = %v", alice2.Resumed(), timedOut)
			}
			if timedOut {
				rec2.waitFor(t, 10*time.Second, "re-joined", func(ev xmppconn.Event) bool {
					o, ok := ev.(*xmppconn.Occupant)
					return ok && o.Room == room && o.Self && o.Type == "available"
				})
			}
			if !alice2.InRoom(room) {
				t.Fatalf("the continued Conn is not in %s", room)
			}
			if _, err := bob.Send(ctx, xmppconn.Message{To: room, Type: "groupchat", Body: "after"}); err != nil {
				t.Fatal(err)
			}
			rec2.waitFor(t, 10*time.Second, "after", roomMessage(room, "after"))
			if _, err := alice2.Send(ctx, xmppconn.Message{To: room, Type: "groupchat", Body: "from alice"}); err != nil {
				t.Fatal(err)
			}
			bob.rec.waitFor(t, 10*time.Second, "from alice", roomMessage(room, "from alice"))
		})
	}
}

// TestResumeAfterRefusedCount: the store refused the inbound count while
// messages arrived (Redis stalled: the Conn acknowledged to the server
// only the count it holds), then the link broke and the Conn resumed its
// own session with that older count. The server sends those messages
// again; the Conn had handled them, so its Handler must not see them
// twice, and its count must not run ahead of the server's (Prosody closes
// a session acknowledged beyond what it sent, and the Conn would log in
// afresh). The old code delivered each twice.
func TestResumeAfterRefusedCount(t *testing.T) {
	for _, server := range []string{"prosody", "ejabberd"} {
		t.Run(server, func(t *testing.T) {
			var b *backend
			if server == "prosody" {
				b, _ = prosodyBackend(t, xmppconntest.Options{LogLevel: "info"})
			} else {
				b = ejabberdBackend(t)
			}
			resumeAfterRefusedCount(t, b)
		})
	}
}

func resumeAfterRefusedCount(t *testing.T, b *backend) {
	rs := newResumeSetup(t, b, func(c *xmppconn.Config) { c.Reconnect = true })
	aliceBare := b.jid("alice")
	sendN(t, rs.bob, aliceBare, "in", 0, 3)
	waitCount(t, []*recorder{rs.alice.rec}, "in-", 3)

	held := rs.store.state(t).H
	rs.store.setRefuseHandled(true)
	sendN(t, rs.bob, aliceBare, "in", 3, 5)
	waitCount(t, []*recorder{rs.alice.rec}, "in-", 8)
	if h := rs.store.state(t).H; h != held {
		t.Fatalf("the store's count moved from %d to %d while refused", held, h)
	}
	before := len(rs.alice.rec.states())
	rs.proxy.Cut()
	rs.store.setRefuseHandled(false)
	rs.alice.rec.waitFor(t, 20*time.Second, "resumed", func(ev xmppconn.Event) bool {
		s, ok := ev.(*xmppconn.StateChange)
		return ok && s.State == xmppconn.StateOnline && s.Resumed
	})
	// Past the resumption: more messages, whose acknowledgement requests
	// (Prosody asks after each) carry our count to the server, and time
	// for it to refuse a count beyond what it sent.
	sendN(t, rs.bob, aliceBare, "in", 8, 4)
	waitCount(t, []*recorder{rs.alice.rec}, "in-", 12)
	time.Sleep(2 * time.Second)
	wantOnce(t, []*recorder{rs.alice.rec}, "in-", "inbound %s delivered %d times")
	var online int
	for _, sc := range rs.alice.rec.states()[before:] {
		if sc.State == xmppconn.StateOnline {
			online++
			if !sc.Resumed || sc.ContinuityLost {
				t.Errorf("back online with %+v, want a resumed session", sc)
			}
		}
	}
	if online != 1 {
		t.Errorf("%d StateChanges to online after the cut, want 1 (the resumption)", online)
	}
	if st, now := rs.store.state(t), rs.alice.ResumeState(); st.H != now.H {
		t.Errorf("store h %d, Conn h %d: the count the store refused was not offered again", st.H, now.H)
	}
}

// TestResumeStaleState: the state a Conn resumes misses the last stanzas
// the earlier Conn sent (a store that took them without writing them, as
// the sidecar's while Redis does not answer), so the server acknowledges
// more than the state holds. Those it holds are all the server's: they
// are not sent again, and later acknowledgements are taken. The old code
// ignored every acknowledgement from then on ("ignoring ack for more
// stanzas than sent"), sent the held stanzas to the contact a second time
// and its queue only grew.
func TestResumeStaleState(t *testing.T) {
	b, _ := prosodyBackend(t, xmppconntest.Options{LogLevel: "info"})
	rs := newResumeSetup(t, b)
	bobBare := b.jid("bob")
	sendN(t, rs.alice, bobBare, "out", 0, 3)
	waitCount(t, []*recorder{rs.bob.rec}, "out-", 3)
	stale := rs.store.state(t)
	if len(stale.Unacked) == 0 {
		t.Fatalf("the stored state holds no unacknowledged stanza: nothing to send twice")
	}
	sendN(t, rs.alice, bobBare, "out", 3, 3)
	waitCount(t, []*recorder{rs.bob.rec}, "out-", 6)
	rs.store.freeze()
	rs.proxy.Cut()

	rec2 := newRecorder()
	cfg := baseConfig(t, b, "alice", pw, "", rec2)
	cfg.ResumeStore = &memStore{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	alice2, err := xmppconn.Resume(ctx, cfg, stale)
	cancel()
	if err != nil {
		t.Fatalf("Resume: %v\n%s", err, b.logTail(30))
	}
	t.Cleanup(func() { closeConn(t, alice2) })
	if !alice2.Resumed() {
		t.Fatalf("Resume logged in afresh, want a resumed session\n%s", b.logTail(30))
	}
	a2 := &client{Conn: alice2, rec: rec2, user: "alice", name: "alice/resumed"}
	sendN(t, a2, bobBare, "out", 6, 6) // the fifth asks the server for its count
	waitCount(t, []*recorder{rs.bob.rec}, "out-", 12)
	deadline := time.Now().Add(10 * time.Second)
	for len(alice2.ResumeState().Unacked) > 1 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(alice2.ResumeState().Unacked); n > 1 {
		t.Errorf("%d stanzas still unacknowledged after the server's acknowledgement", n)
	}
	time.Sleep(500 * time.Millisecond) // let a duplicate show up
	wantOnce(t, []*recorder{rs.bob.rec}, "out-", "outbound %s reached bob %d times")
}
