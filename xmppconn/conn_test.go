package xmppconn

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// collector records events and lets a test wait for one.
type collector struct {
	mu     sync.Mutex
	events []Event
	signal chan struct{}
}

func newCollector() *collector { return &collector{signal: make(chan struct{}, 1)} }

func (c *collector) HandleEvent(ev Event) {
	c.mu.Lock()
	c.events = append(c.events, ev)
	c.mu.Unlock()
	select {
	case c.signal <- struct{}{}:
	default:
	}
}

// wait returns the first event (from the start) that matches.
func (c *collector) wait(t *testing.T, d time.Duration, match func(Event) bool) Event {
	t.Helper()
	deadline := time.After(d)
	for {
		c.mu.Lock()
		for _, ev := range c.events {
			if match(ev) {
				c.mu.Unlock()
				return ev
			}
		}
		c.mu.Unlock()
		select {
		case <-c.signal:
		case <-deadline:
			t.Fatalf("timed out waiting for event")
			return nil
		}
	}
}

func dialUser(t *testing.T, srv *xmppconntest.Server, user, res string, h Handler, mod func(*Config)) *Conn {
	t.Helper()
	cfg := Config{
		Addr: srv.Addr, Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
		User: user, Password: "pw-" + user, Resource: res, Handler: h,
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	c, err := Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial %s: %v", user, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

func TestSmokeProsody(t *testing.T) {
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{})
	srv.Register(t, "alice", "pw-alice")
	srv.Register(t, "bob", "pw-bob")
	ha, hb := newCollector(), newCollector()
	a := dialUser(t, srv, "alice", "web", ha, func(c *Config) { c.Logger = testLogger(t) })
	b := dialUser(t, srv, "bob", "web", hb, nil)
	if a.JID() != "alice@"+srv.Domain+"/web" {
		t.Fatalf("JID = %q", a.JID())
	}
	ctx := t.Context()
	id, err := a.Send(ctx, Message{To: b.JID(), Body: "hello <bob> & co", Receipt: true})
	if err != nil {
		t.Fatal(err)
	}
	ev := hb.wait(t, 5*time.Second, func(ev Event) bool { m, ok := ev.(*Message); return ok && m.ID == id })
	if m := ev.(*Message); m.Body != "hello <bob> & co" || m.Type != "chat" || !m.Receipt {
		t.Fatalf("got %+v", m)
	}
	ha.wait(t, 5*time.Second, func(ev Event) bool { r, ok := ev.(*Receipt); return ok && r.ID == id })

	if items, err := a.Roster(ctx); err != nil || len(items) != 0 {
		t.Fatalf("roster %+v %v", items, err)
	}
	if err := a.SetRosterItem(ctx, RosterItem{JID: "bob@" + srv.Domain, Name: "Bob", Groups: []string{"Friends"}}); err != nil {
		t.Fatal(err)
	}
	ha.wait(t, 5*time.Second, func(ev Event) bool { p, ok := ev.(*RosterPush); return ok && p.Item.Name == "Bob" })
	items, err := a.Roster(ctx)
	if err != nil || len(items) != 1 || items[0].Groups[0] != "Friends" {
		t.Fatalf("roster %+v %v", items, err)
	}
	if err := a.Subscribe(ctx, "bob@"+srv.Domain, "subscribe"); err != nil {
		t.Fatal(err)
	}
	hb.wait(t, 5*time.Second, func(ev Event) bool { s, ok := ev.(*Subscription); return ok && s.Type == "subscribe" })
	if err := b.Subscribe(ctx, "alice@"+srv.Domain, "approve"); err != nil {
		t.Fatal(err)
	}
	ha.wait(t, 5*time.Second, func(ev Event) bool { s, ok := ev.(*Subscription); return ok && s.Type == "subscribed" })
	if err := b.SendPresence(ctx, Presence{Show: "away", Status: "out", Priority: 5}); err != nil {
		t.Fatal(err)
	}
	ha.wait(t, 5*time.Second, func(ev Event) bool {
		p, ok := ev.(*Presence)
		return ok && p.Show == "away" && p.Status == "out" && p.Priority == 5
	})
	if err := a.RemoveRosterItem(ctx, "bob@"+srv.Domain); err != nil {
		t.Fatal(err)
	}
	if _, err := a.SendIQ(ctx, "get", "", []byte(`<query xmlns="urn:example:nope"/>`)); err == nil {
		t.Fatal("unknown IQ succeeded")
	} else if se := (*StanzaError)(nil); !errors.As(err, &se) {
		t.Fatalf("err %v", err)
	}
	out, err := a.SendIQ(ctx, "get", b.JID(), []byte(`<query xmlns="jabber:iq:version"/>`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("version: %s", out)
}
