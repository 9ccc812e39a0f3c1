package xmppconn_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// mucMAMConfig gives the test Prosody's MUC component archives
// (mod_muc_mam), on by default for every room.
const mucMAMConfig = `  modules_enabled = { "muc_mam" }
  muc_log_by_default = true`

// TestHistoryProsody: one-to-one and room archives of a real Prosody,
// paged both ways with no gap and no duplicate; archive results never show
// up as messages.
func TestHistoryProsody(t *testing.T) {
	b, srv := prosodyBackend(t, xmppconntest.Options{MUC: true, MUCConfig: mucMAMConfig})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(srv.Log())
		}
	})
	b.register(t, "alice", "alice-pw")
	b.register(t, "bob", "bob-pw")
	alice := connect(t, b, "alice", "alice-pw", "web", nil)
	bob := connect(t, b, "bob", "bob-pw", "desktop", nil)
	ctx := ctxT(t)

	const n = 7
	for i := range n {
		if _, err := bob.Send(ctx, xmppconn.Message{To: b.jid("alice"), Body: fmt.Sprintf("m%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	alice.rec.waitFor(t, 10*time.Second, "the last message", messageWithBody(fmt.Sprintf("m%d", n-1)))
	live := len(alice.rec.messages())

	var fwd []string
	after := ""
	for pages := 0; ; pages++ {
		p, err := alice.History(ctx, xmppconn.HistoryQuery{With: b.jid("bob"), After: after, Max: 3})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range p.Messages {
			fwd = append(fwd, m.Body)
			if m.ArchiveID == "" || m.Time.IsZero() || bare(m.From) != b.jid("bob") || m.To != b.jid("alice") || m.Type != "chat" {
				t.Fatalf("archived message %+v", m)
			}
		}
		if p.Complete {
			break
		}
		if pages > n {
			t.Fatal("paging forwards does not end")
		}
		after = p.Last
	}
	var back []string
	before, last := "", true
	for pages := 0; ; pages++ {
		p, err := alice.History(ctx, xmppconn.HistoryQuery{Before: before, Last: last, Max: 3})
		if err != nil {
			t.Fatal(err)
		}
		var page []string
		for _, m := range p.Messages {
			page = append(page, m.Body)
		}
		back = append(page, back...)
		if p.Complete {
			break
		}
		if pages > n {
			t.Fatal("paging backwards does not end")
		}
		before = p.First
	}
	want := []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6"}
	if !slices.Equal(fwd, want) || !slices.Equal(back, want) {
		t.Fatalf("forwards %v, backwards %v, want %v", fwd, back, want)
	}
	if got := len(alice.rec.messages()); got != live {
		t.Fatalf("%d message events after reading history, %d before", got, live)
	}
	if _, err := alice.History(ctx, xmppconn.HistoryQuery{After: "no-such-id"}); err == nil {
		t.Fatal("paging after an unknown id succeeded")
	}

	// A room archive: bob creates and talks in a room, alice (not in it)
	// reads its archive from the room's JID.
	room := "lounge@conference.example.test"
	if _, _, err := bob.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "bob"}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := bob.Send(ctx, xmppconn.Message{To: room, Type: "groupchat", Body: fmt.Sprintf("r%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	bob.rec.waitFor(t, 10*time.Second, "own room message", messageWithBody("r2"))
	p, err := alice.History(ctx, xmppconn.HistoryQuery{Room: room, Last: true, Max: 10})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range p.Messages {
		got = append(got, m.Body)
		if m.Type != "groupchat" || m.From != room+"/bob" {
			t.Fatalf("room message %+v", m)
		}
	}
	if !p.Complete || !slices.Equal(got, []string{"r0", "r1", "r2"}) {
		t.Fatalf("room archive %v complete=%v", got, p.Complete)
	}
	// A room that does not exist: an error reply, never a hang.
	if _, err := alice.History(ctx, xmppconn.HistoryQuery{Room: "nobody@conference.example.test"}); err == nil {
		t.Fatal("history of a room that does not exist succeeded")
	}
}

// TestHistoryUnsupported: a server without mod_mam answers ErrUnsupported.
func TestHistoryUnsupported(t *testing.T) {
	b, _ := prosodyBackend(t, xmppconntest.Options{DisableModules: []string{"mam"}})
	b.register(t, "alice", "alice-pw")
	alice := connect(t, b, "alice", "alice-pw", "web", nil)
	if _, err := alice.History(ctxT(t), xmppconn.HistoryQuery{}); !errors.Is(err, xmppconn.ErrUnsupported) {
		t.Fatalf("History without mod_mam: %v", err)
	}
}
