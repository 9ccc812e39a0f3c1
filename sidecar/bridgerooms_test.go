package sidecar

import (
	"strings"
	"sync"
	"testing"

	"expressolivre.org/imsidecar/xmppconn"
)

// TestBridgeRoomReplayRacesTheReader: a room's subject changes while a
// page is shown the rooms (on its initial presence, or on its own join of
// a room the stream is in). Whatever the interleaving, the page's last
// word on the subject is the new one: the replay's snapshot never lands
// after the change it missed.
func TestBridgeRoomReplayRacesTheReader(t *testing.T) {
	const room = "sala@conference.example.test"
	for _, tc := range []struct{ name, send string }{
		{"initial presence", `<presence/>`},
		{"the page joins", `<presence to="` + room + `/Alice"><x xmlns="http://jabber.org/protocol/muc"/></presence>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBridge(&session{fullJID: "alice@example.test/web"}, 2, 10, nil)
			c := &bridgeClient{b: b, ready: true, notify: func() {}}
			b.clients[c] = struct{}{}
			live, err := xmppconn.ParseStanza([]byte(`<message xmlns="jabber:client" from="`+room+`/Bob" to="alice@example.test/web" type="groupchat"><subject>novo</subject></message>`), 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			state := xmppconn.JoinedRoom{Room: room, Nick: "Alice", Subject: "velho", SubjectFrom: room + "/Alice", Joined: true,
				Occupants: []xmppconn.Occupant{{Room: room, Nick: "Alice", Role: "moderator", Self: true}}}
			r := newRacingRelay(b, func() []xmppconn.JoinedRoom {
				mu.Lock()
				defer mu.Unlock()
				return []xmppconn.JoinedRoom{state}
			}, func() {
				mu.Lock()
				state.Subject, state.SubjectFrom = "novo", live.From
				mu.Unlock()
				b.fromServer(live)
			})
			st, err := xmppconn.ParseStanza([]byte(tc.send), 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			if st.Kind == "presence" && st.To != "" {
				if !b.clientJoin(c, r, st) {
					t.Fatal("the page's join went to the room")
				}
			} else if err := b.clientPresence(t.Context(), c, r, st); err != nil {
				t.Fatal(err)
			}
			r.wait()
			var subjects []string
			for _, raw := range c.unsent() {
				if s := string(raw); strings.Contains(s, "<subject>") {
					subjects = append(subjects, s)
				}
			}
			if len(subjects) == 0 || !strings.Contains(subjects[len(subjects)-1], "<subject>novo</subject>") {
				t.Fatalf("the page's subjects, in order: %q; the last must be the change", subjects)
			}
		})
	}
}

// TestRoomReplaySubjectFrom: the replayed subject comes from whoever the
// room said set it, as the room tells a joining occupant (XEP-0045
// §7.2.15), and from the room itself when it named no one.
func TestRoomReplaySubjectFrom(t *testing.T) {
	const room = "sala@conference.example.test"
	for _, tc := range []struct{ by, want string }{
		{room + "/Bob", `from="` + room + `/Bob"`},
		{room, `from="` + room + `"`},
		{"", `from="` + room + `"`},
	} {
		out := roomReplay(xmppconn.JoinedRoom{Room: room, Subject: "Pauta", SubjectFrom: tc.by}, "alice@example.test/web")
		if len(out) != 1 || !strings.Contains(string(out[0]), tc.want) || !strings.Contains(string(out[0]), "<subject>Pauta</subject>") {
			t.Errorf("SubjectFrom %q: replay %q, want the subject %s", tc.by, out, tc.want)
		}
	}
}
