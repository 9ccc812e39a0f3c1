package sidecar_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

type roomsResp struct {
	Service string `json:"service"`
	Rooms   []struct {
		JID    string `json:"jid"`
		Name   string `json:"name"`
		Joined bool   `json:"joined"`
	} `json:"rooms"`
	Joined []joinResp `json:"joined"`
}

type joinResp struct {
	JID       string `json:"jid"`
	Nick      string `json:"nick"`
	Subject   string `json:"subject"`
	Joined    bool   `json:"joined"`
	Created   bool   `json:"created"`
	Occupants []struct {
		Nick        string `json:"nick"`
		JID         string `json:"jid"`
		Affiliation string `json:"affiliation"`
		Role        string `json:"role"`
		Self        bool   `json:"self"`
	} `json:"occupants"`
}

func occupantSeen(room, nick, typ string) func(event) bool {
	return func(ev event) bool {
		return ev.Event == "room" && ev.Room == room && ev.Nick == nick && ev.Type == typ
	}
}

// TestE2ERooms (issue 8 §1): three web users in one room through the API
// against Prosody with MUC: creation, joins, each sees the others'
// messages and presence with affiliation and role, the subject, a
// password-protected room's refusal, leaving, and the rooms joined again
// by themselves after a restart of Prosody (no stream resumption).
func TestE2ERooms(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{Prosody: xmppconntest.Options{MUC: true}})
	e.register(t, "alice", "bob", "carol")
	alice, bob, carol := e.login(t, "alice"), e.login(t, "bob"), e.login(t, "carol")
	pa, pb, pc := alice.connect(t), bob.connect(t), carol.connect(t)
	room := "sala@" + e.XMPP.MUCDomain

	var list roomsResp
	alice.C.mustCall(t, "GET", "/v1/rooms", nil, &list, http.StatusOK)
	if list.Service != e.XMPP.MUCDomain || len(list.Rooms) != 0 || len(list.Joined) != 0 {
		t.Fatalf("rooms before any = %+v", list)
	}

	// Alice creates the room with her default nick (her full name).
	var jr joinResp
	alice.C.mustCall(t, "POST", "/v1/rooms/sala/join", nil, &jr, http.StatusOK)
	if !jr.Created || jr.JID != room || jr.Nick != "Alice da Conceição" || len(jr.Occupants) != 1 || jr.Occupants[0].Affiliation != "owner" {
		t.Fatalf("create = %+v", jr)
	}
	bob.C.mustCall(t, "POST", "/v1/rooms/"+room+"/join", map[string]any{"nick": "Bob"}, &jr, http.StatusOK)
	if jr.Created || len(jr.Occupants) != 2 {
		t.Fatalf("bob's join = %+v", jr)
	}
	if st, err := carol.C.call(t.Context(), "POST", "/v1/rooms/sala/join", map[string]any{"nick": "Bob"}, nil); st != http.StatusConflict || errCode(err) != "nick_in_use" {
		t.Fatalf("carol with bob's nick: %d %v", st, err)
	}
	carol.C.mustCall(t, "POST", "/v1/rooms/sala/join", map[string]any{"nick": "Carol"}, &jr, http.StatusOK)
	if len(jr.Occupants) != 3 {
		t.Fatalf("carol's join = %+v", jr)
	}
	// Carol's presence reaches bob's stream on its own time: carol's join
	// answered says nothing of bob's.
	pb.seenOrWait(t, 15*time.Second, "carol in the room", occupantSeen(room, "Carol", "available"))
	bob.C.mustCall(t, "GET", "/v1/rooms", nil, &list, http.StatusOK)
	if len(list.Rooms) != 1 || list.Rooms[0].JID != room || !list.Rooms[0].Joined || len(list.Joined) != 1 || len(list.Joined[0].Occupants) != 3 {
		t.Fatalf("bob's rooms = %+v", list)
	}

	// Occupant presence with affiliation and role.
	ev := pb.seenOrWait(t, 15*time.Second, "alice in the room", occupantSeen(room, "Alice da Conceição", "available"))
	if ev.Affiliation != "owner" || ev.Role != "moderator" || ev.Self {
		t.Errorf("bob sees alice as %+v", ev)
	}
	ev = pa.waitFor(t, 15*time.Second, "carol in the room", occupantSeen(room, "Carol", "available"))
	if ev.Affiliation != "none" || ev.Role != "participant" || bareJID(ev.JID) != carol.Bare {
		t.Errorf("alice (moderator) sees carol as %+v", ev)
	}
	pc.waitFor(t, 15*time.Second, "carol's own presence", func(ev event) bool {
		return ev.Event == "room" && ev.Room == room && ev.Nick == "Carol" && ev.Self
	})

	// A presence change reaches the room.
	bob.C.mustCall(t, "POST", "/v1/presence", map[string]any{"show": "dnd", "status": "em reunião"}, nil, http.StatusNoContent)
	for _, p := range []*poller{pa, pc} {
		p.waitFor(t, 15*time.Second, "bob busy in the room", func(ev event) bool {
			return ev.Event == "room" && ev.Room == room && ev.Nick == "Bob" && ev.Show == "dnd" && ev.Status == "em reunião"
		})
	}

	// Everyone's messages reach everyone; the sender sees its echo as own.
	users := []struct {
		u    *user
		p    *poller
		nick string
	}{{alice, pa, "Alice da Conceição"}, {bob, pb, "Bob"}, {carol, pc, "Carol"}}
	for i, from := range users {
		body := fmt.Sprintf("mensagem %d de %s ✓", i, from.u.Name)
		var r struct{ ID string }
		from.u.C.mustCall(t, "POST", "/v1/messages", map[string]any{"to": room, "type": "groupchat", "body": body}, &r, http.StatusAccepted)
		for _, to := range users {
			got := to.p.waitFor(t, 15*time.Second, to.u.Name+" gets "+body, func(ev event) bool {
				return ev.Event == "message" && ev.Type == "groupchat" && ev.Body == body
			})
			if got.Room != room || got.Nick != from.nick || got.Own != (to.u == from.u) || (got.Own && got.ID != r.ID) {
				t.Errorf("%s got %+v (sent id %s)", to.u.Name, got, r.ID)
			}
		}
	}
	if st, err := alice.C.call(t.Context(), "POST", "/v1/messages", map[string]any{"to": "outra@" + e.XMPP.MUCDomain, "type": "groupchat", "body": "x"}, nil); st != http.StatusConflict || errCode(err) != "not_in_room" {
		t.Errorf("groupchat to a room not joined: %d %v", st, err)
	}

	// The subject.
	alice.C.mustCall(t, "PUT", "/v1/rooms/sala/subject", map[string]string{"subject": "Reunião de planejamento"}, nil, http.StatusNoContent)
	for _, p := range []*poller{pb, pc} {
		p.waitFor(t, 15*time.Second, "subject", func(ev event) bool {
			return ev.Event == "message" && ev.Room == room && ev.Subject == "Reunião de planejamento"
		})
	}
	carol.C.mustCall(t, "GET", "/v1/rooms", nil, &list, http.StatusOK)
	if len(list.Joined) != 1 || list.Joined[0].Subject != "Reunião de planejamento" {
		t.Errorf("carol's rooms after the subject = %+v", list.Joined)
	}

	// A password-protected room.
	alice.C.mustCall(t, "POST", "/v1/rooms/secreta/join", map[string]any{"password": "s3nha"}, &jr, http.StatusOK)
	if !jr.Created {
		t.Fatalf("secreta = %+v", jr)
	}
	for _, pw := range []string{"", "errada"} {
		st, err := bob.C.call(t.Context(), "POST", "/v1/rooms/secreta/join", map[string]any{"nick": "Bob", "password": pw}, nil)
		if st != http.StatusForbidden || errCode(err) != "room_password_required" {
			t.Fatalf("join secreta with %q: %d %v", pw, st, err)
		}
	}
	bob.C.mustCall(t, "POST", "/v1/rooms/secreta/join", map[string]any{"nick": "Bob", "password": "s3nha"}, nil, http.StatusOK)

	// Carol leaves.
	carol.C.mustCall(t, "POST", "/v1/rooms/sala/leave", nil, nil, http.StatusNoContent)
	for _, p := range []*poller{pa, pb} {
		p.waitFor(t, 15*time.Second, "carol leaves", occupantSeen(room, "Carol", "unavailable"))
	}
	carol.C.mustCall(t, "GET", "/v1/rooms", nil, &list, http.StatusOK)
	if len(list.Joined) != 0 || len(list.Rooms) != 2 || list.Rooms[0].Joined || list.Rooms[1].Joined {
		t.Errorf("carol's rooms after leaving = %+v", list)
	}

	// Prosody restarts: no resumption, the rooms are gone; alice and bob
	// are back in both without doing anything.
	e.XMPP.Restart(t)
	for _, p := range []*poller{pa, pb, pc} {
		p.waitFor(t, 60*time.Second, "back online", func(ev event) bool {
			return ev.Event == "state" && ev.State == "online" && ev.Reason == "continuity_lost"
		})
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok := true
		for _, u := range []*user{alice, bob} {
			var l roomsResp
			u.C.mustCall(t, "GET", "/v1/rooms", nil, &l, http.StatusOK)
			ok = ok && len(l.Joined) == 2 && l.Joined[0].Joined && l.Joined[1].Joined
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("alice and bob are not back in their rooms 30s after the restart")
		}
		time.Sleep(200 * time.Millisecond)
	}
	var r struct{ ID string }
	bob.C.mustCall(t, "POST", "/v1/messages", map[string]any{"to": room, "type": "groupchat", "body": "voltamos"}, &r, http.StatusAccepted)
	pa.waitFor(t, 15*time.Second, "message after the re-join", func(ev event) bool {
		return ev.Event == "message" && ev.Room == room && ev.Body == "voltamos" && ev.Nick == "Bob"
	})
	// The re-created protected room is still protected.
	if st, err := carol.C.call(t.Context(), "POST", "/v1/rooms/secreta/join", map[string]any{"nick": "Carol"}, nil); st != http.StatusForbidden || errCode(err) != "room_password_required" {
		t.Errorf("carol entered the re-created secreta without the password: %d %v", st, err)
	}
}
