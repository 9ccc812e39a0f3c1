package xmppconn_test

import (
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestOversizedFromProsody: Prosody relays 45,081 apostrophes, accepted
// from bob under its 256 KiB limit, as &apos; (270 KB) to alice, whose
// limit is the old 256 KiB. She gets a Dropped event and the next message
// on the same stream. Then her connection is cut and the stream resumed
// (XEP-0198): had her h not counted the skipped stanza, Prosody would send
// the last stanza again on resumption; nothing comes twice.
func TestOversizedFromProsody(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: needs Prosody")
	}
	b, _ := prosodyBackend(t, xmppconntest.Options{})
	b.register(t, "alice", pw)
	b.register(t, "bob", "bobpw")
	proxy := xmppconntest.StartProxy(t, b.addr)
	alice := connect(t, b, "alice", pw, "web", func(c *xmppconn.Config) {
		c.Addr = proxy.Addr()
		c.Reconnect = true
		c.MaxStanzaSize = 256 << 10
	})
	bob := connect(t, b, "bob", "bobpw", "desktop", func(c *xmppconn.Config) { c.MaxSendSize = 256 << 10 })
	ctx := ctxT(t)

	if _, err := bob.Send(ctx, xmppconn.Message{To: alice.JID(), ID: "poison", Body: strings.Repeat("'", 45081)}); err != nil {
		t.Fatal(err)
	}
	d := alice.rec.waitFor(t, 20*time.Second, "dropped", func(ev xmppconn.Event) bool { _, ok := ev.(*xmppconn.Dropped); return ok }).(*xmppconn.Dropped)
	if d.Stanza != "message" || d.ID != "poison" || d.From != bob.JID() || d.Type != "chat" || d.Bytes <= 256<<10 {
		t.Errorf("Dropped = %+v", d)
	}
	if _, err := bob.Send(ctx, xmppconn.Message{To: alice.JID(), ID: "next", Body: "next"}); err != nil {
		t.Fatal(err)
	}
	alice.rec.waitFor(t, 10*time.Second, "the next message", messageWithBody("next"))

	proxy.Cut()
	alice.rec.waitFor(t, 20*time.Second, "resumed", func(ev xmppconn.Event) bool {
		sc, ok := ev.(*xmppconn.StateChange)
		return ok && sc.State == xmppconn.StateOnline && sc.Resumed
	})
	if _, err := bob.Send(ctx, xmppconn.Message{To: alice.JID(), ID: "after", Body: "after the resumption"}); err != nil {
		t.Fatal(err)
	}
	alice.rec.waitFor(t, 10*time.Second, "the message after the resumption", messageWithBody("after the resumption"))
	evs, _ := alice.rec.snapshot()
	dropped, next, breaks := 0, 0, 0
	for _, ev := range evs {
		switch e := ev.(type) {
		case *xmppconn.Dropped:
			dropped++
		case *xmppconn.Message:
			if e.Body == "next" {
				next++
			}
		case *xmppconn.StateChange:
			if e.State == xmppconn.StateReconnecting {
				breaks++
			}
		}
	}
	if dropped != 1 || next != 1 || breaks != 1 {
		t.Errorf("%d dropped, %d copies of the next message, %d breaks; want 1 each (only the cut): %s", dropped, next, breaks, describe(evs))
	}
}
