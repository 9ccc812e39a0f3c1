package xmppconn_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

func occupantEvent(room, nick, typ string) func(xmppconn.Event) bool {
	return func(ev xmppconn.Event) bool {
		o, ok := ev.(*xmppconn.Occupant)
		return ok && o.Room == room && o.Nick == nick && o.Type == typ
	}
}

func roomMessage(room, body string) func(xmppconn.Event) bool {
	return func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Type == "groupchat" && bare(m.From) == room && m.Body == body
	}
}

// TestMUCProsody: group chat against a real Prosody: discovery, room
// creation (instant room), occupants with affiliation and role, messages
// and the room's echo, join errors, history, subject, nick changes, and
// the re-join after a fresh (not resumed) stream.
func TestMUCProsody(t *testing.T) {
	b, srv := prosodyBackend(t, xmppconntest.Options{MUC: true})
	for _, u := range []string{"alice", "bob", "carol"} {
		b.register(t, u, u+"-pw")
	}
	reconnect := func(c *xmppconn.Config) { c.Reconnect = true }
	alice := connect(t, b, "alice", "alice-pw", "web", reconnect)
	bob := connect(t, b, "bob", "bob-pw", "web", reconnect)
	carol := connect(t, b, "carol", "carol-pw", "web", reconnect)
	ctx := ctxT(t)

	svc, err := alice.MUCService(ctx)
	if err != nil || svc != srv.MUCDomain {
		t.Fatalf("MUCService = %q, %v; want %q", svc, err, srv.MUCDomain)
	}
	room := "sala@" + svc

	// Alice creates the room: she is its owner and a moderator.
	jr, created, err := alice.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Alice", Public: true})
	if err != nil || !created || !jr.Joined || jr.Nick != "Alice" {
		t.Fatalf("JoinRoom (create) = %+v, %v, %v", jr, created, err)
	}
	if len(jr.Occupants) != 1 || jr.Occupants[0].Affiliation != "owner" || jr.Occupants[0].Role != "moderator" || !jr.Occupants[0].Self {
		t.Fatalf("creator's occupants = %+v", jr.Occupants)
	}
	items, err := bob.Rooms(ctx, svc)
	if err != nil || len(items) != 1 || items[0].JID != room {
		t.Fatalf("Rooms = %+v, %v", items, err)
	}

	// Bob joins; carol asks for bob's nickname first.
	if _, created, err := bob.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Bob"}); err != nil || created {
		t.Fatalf("bob JoinRoom: created=%v %v", created, err)
	}
	_, _, err = carol.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Bob"})
	var se *xmppconn.StanzaError
	if !errors.Is(err, xmppconn.ErrNickInUse) || !errors.As(err, &se) || se.Condition != "conflict" {
		t.Fatalf("join with a taken nick: %v", err)
	}
	jr, _, err = carol.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Carol"})
	if err != nil || len(jr.Occupants) != 3 {
		t.Fatalf("carol JoinRoom = %+v, %v", jr, err)
	}
	ev := bob.rec.waitFor(t, 10*time.Second, "alice as seen by bob", occupantEvent(room, "Alice", "available")).(*xmppconn.Occupant)
	if ev.Affiliation != "owner" || ev.Role != "moderator" || ev.Self {
		t.Errorf("bob sees alice as %+v", ev)
	}
	ev = alice.rec.waitFor(t, 10*time.Second, "carol as seen by alice", occupantEvent(room, "Carol", "available")).(*xmppconn.Occupant)
	if ev.Affiliation != "none" || ev.Role != "participant" || bare(ev.JID) != b.jid("carol") {
		t.Errorf("alice (moderator) sees carol as %+v", ev)
	}

	// Messages reach everyone; the sender gets the room's echo, marked Own.
	for i, from := range []*client{alice, bob, carol} {
		body := fmt.Sprintf("olá %d de %s", i, from.user)
		id, err := from.Send(ctx, xmppconn.Message{To: room, Type: "groupchat", Body: body})
		if err != nil {
			t.Fatal(err)
		}
		for _, to := range []*client{alice, bob, carol} {
			m := to.rec.waitFor(t, 10*time.Second, to.user+" gets "+body, roomMessage(room, body)).(*xmppconn.Message)
			if m.Own != (to == from) || (to == from && m.ID != id) {
				t.Errorf("%s got %+v (sent id %s)", to.user, m, id)
			}
		}
	}
	if _, err := alice.Send(ctx, xmppconn.Message{To: "elsewhere@" + svc, Type: "groupchat", Body: "x"}); !errors.Is(err, xmppconn.ErrNotInRoom) {
		t.Errorf("groupchat to a room not joined: %v", err)
	}

	// A presence change reaches the rooms too.
	if err := alice.SendPresence(ctx, xmppconn.Presence{Show: "away", Status: "almoço"}); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, 10*time.Second, "alice away in the room", func(ev xmppconn.Event) bool {
		o, ok := ev.(*xmppconn.Occupant)
		return ok && o.Room == room && o.Nick == "Alice" && o.Show == "away" && o.Status == "almoço" && o.Affiliation == "owner"
	})

	// Subject: set by the owner, seen by all, kept in JoinedRooms.
	if err := alice.SetSubject(ctx, room, "Planejamento 2027"); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, 10*time.Second, "subject", func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Subject == "Planejamento 2027" && m.Body == ""
	})
	if jrs := bob.JoinedRooms(); len(jrs) != 1 || jrs[0].Subject != "Planejamento 2027" || jrs[0].SubjectFrom != room+"/Alice" {
		t.Errorf("bob's JoinedRooms = %+v", jrs)
	}

	// Carol leaves and comes back: she gets the history, with delay stamps.
	if err := carol.LeaveRoom(ctx, room); err != nil {
		t.Fatal(err)
	}
	alice.rec.waitFor(t, 10*time.Second, "carol leaves", occupantEvent(room, "Carol", "unavailable"))
	if len(carol.JoinedRooms()) != 0 {
		t.Fatalf("carol still lists %+v", carol.JoinedRooms())
	}
	carol2 := connect(t, b, "carol", "carol-pw", "other", nil)
	if _, _, err := carol2.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Carol"}); err != nil {
		t.Fatal(err)
	}
	h := carol2.rec.waitFor(t, 10*time.Second, "history", roomMessage(room, "olá 0 de alice")).(*xmppconn.Message)
	if h.Delay.IsZero() {
		t.Errorf("history message without delay: %+v", h)
	}

	// Nick change.
	if _, _, err := carol2.JoinRoom(ctx, xmppconn.RoomJoin{Room: room, Nick: "Carolina"}); err != nil {
		t.Fatalf("nick change: %v", err)
	}
	nc := bob.rec.waitFor(t, 10*time.Second, "nick change", func(ev xmppconn.Event) bool {
		o, ok := ev.(*xmppconn.Occupant)
		return ok && o.Nick == "Carol" && o.NewNick == "Carolina"
	}).(*xmppconn.Occupant)
	if nc.Type != "unavailable" {
		t.Errorf("nick change = %+v", nc)
	}
	carol2.LeaveRoom(ctx, room)

	// A password-protected room.
	secret := "secreta@" + svc
	if _, created, err := alice.JoinRoom(ctx, xmppconn.RoomJoin{Room: secret, Nick: "Alice", Password: "s3nha"}); err != nil || !created {
		t.Fatalf("create protected room: %v %v", created, err)
	}
	if _, _, err := bob.JoinRoom(ctx, xmppconn.RoomJoin{Room: secret, Nick: "Bob"}); !errors.Is(err, xmppconn.ErrRoomPassword) {
		t.Fatalf("join without the password: %v", err)
	}
	if _, _, err := bob.JoinRoom(ctx, xmppconn.RoomJoin{Room: secret, Nick: "Bob", Password: "errada"}); !errors.Is(err, xmppconn.ErrRoomPassword) {
		t.Fatalf("join with a wrong password: %v", err)
	}
	if _, _, err := bob.JoinRoom(ctx, xmppconn.RoomJoin{Room: secret, Nick: "Bob", Password: "s3nha"}); err != nil {
		t.Fatalf("join with the password: %v", err)
	}

	// A restart loses every session (no resumption) and the rooms: each
	// client joins again by itself, re-creating them as they were.
	before := len(bob.rec.messages())
	b.restart(t)
	for _, c := range []*client{alice, bob} {
		if !c.rec.waitUntil(60*time.Second, func(evs []xmppconn.Event) bool {
			for _, ev := range evs {
				if s, ok := ev.(*xmppconn.StateChange); ok && s.State == xmppconn.StateOnline && s.ContinuityLost {
					return true
				}
			}
			return false
		}) {
			t.Fatalf("%s did not come back online", c.user)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for _, c := range []*client{alice, bob} {
			jrs := c.JoinedRooms()
			ok = ok && len(jrs) == 2 && jrs[0].Joined && jrs[1].Joined
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rooms not re-joined: alice %+v, bob %+v", alice.JoinedRooms(), bob.JoinedRooms())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := alice.Send(ctx, xmppconn.Message{To: room, Type: "groupchat", Body: "de volta"}); err != nil {
		t.Fatal(err)
	}
	bob.rec.waitFor(t, 10*time.Second, "message after re-join", roomMessage(room, "de volta"))
	// The protected room came back protected.
	carol3 := connect(t, b, "carol", "carol-pw", "third", nil)
	if _, _, err := carol3.JoinRoom(ctx, xmppconn.RoomJoin{Room: secret, Nick: "Carol"}); !errors.Is(err, xmppconn.ErrRoomPassword) {
		t.Errorf("re-created protected room let carol in without the password: %v", err)
	}
	seen := map[string]int{}
	for _, m := range bob.rec.messages()[before:] {
		if m.Type == "groupchat" && m.Body != "" {
			seen[m.Body]++
		}
	}
	for body, n := range seen {
		if n > 1 {
			t.Errorf("bob got %q %d times after the re-join", body, n)
		}
	}
}
