package sidecar

import (
	"context"
	"strings"
	"sync"
	"testing"

	"expressolivre.org/imsidecar/xmppconn"
)

// racingRelay is a stream whose reader gets a stanza while the bridge
// builds a page's replay. The replay asks for the rooms after it took the
// contacts' presences; that is when the reader runs read, which does what
// the XMPP reader does, in its order: update the state the stanza
// changes (the Handler's trackPresence, xmppconn's room state), then tap
// it (fromServer).
type racingRelay struct {
	b     *bridge
	rooms func() []xmppconn.JoinedRoom // the rooms as they are now
	read  func()

	once sync.Once
	done chan struct{}
}

func newRacingRelay(b *bridge, rooms func() []xmppconn.JoinedRoom, read func()) *racingRelay {
	return &racingRelay{b: b, rooms: rooms, read: read, done: make(chan struct{})}
}

func (r *racingRelay) SendStanza(context.Context, *xmppconn.Stanza) error    { return nil }
func (r *racingRelay) SendPresence(context.Context, xmppconn.Presence) error { return nil }
func (r *racingRelay) Presence() xmppconn.Presence                           { return xmppconn.Presence{} }

func (r *racingRelay) JoinedRooms() []xmppconn.JoinedRoom {
	snap := r.rooms()
	r.once.Do(func() {
		read := func() {
			defer close(r.done)
			r.read()
		}
		// The reader runs now if nothing keeps it from the clients'
		// queues (it then queues before the replay); else it waits.
		if r.b.mu.TryLock() {
			r.b.mu.Unlock()
			read()
			return
		}
		go read()
	})
	return snap
}

// wait returns once the reader handled its stanza.
func (r *racingRelay) wait() { <-r.done }

// TestBridgeContactReplayRacesTheReader: a contact's presence changes
// while a page's initial presence gets the contacts' presences replayed.
// Whatever the interleaving, the page's last word on the contact is the
// new presence: the replay's snapshot never lands after the change it
// missed, which would show a contact who left as online until its next
// change.
func TestBridgeContactReplayRacesTheReader(t *testing.T) {
	const bob = "bob@example.test/desk"
	for _, tc := range []struct{ name, live, want string }{
		{"a new show", `<presence xmlns="jabber:client" from="` + bob + `" to="alice@example.test/web"><show>dnd</show><status>Em reunião</status></presence>`, "<show>dnd</show>"},
		{"the contact leaves", `<presence xmlns="jabber:client" from="` + bob + `" to="alice@example.test/web" type="unavailable"/>`, `type="unavailable"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &session{fullJID: "alice@example.test/web", presence: map[string][]presenceInfo{}}
			s.trackPresence(&xmppconn.Presence{From: bob, Show: xmppconn.ShowAway, Status: "Almoço"})
			b := newBridge(s, 2, 10, nil)
			c := &bridgeClient{b: b, ready: true, notify: func() {}}
			b.clients[c] = struct{}{}
			live, err := xmppconn.ParseStanza([]byte(tc.live), 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			r := newRacingRelay(b, func() []xmppconn.JoinedRoom { return nil }, func() {
				p := live.Presence()
				s.trackPresence(&p) // the Handler, then the Tap (xmppconn/stanza.go)
				b.fromServer(live)
			})
			initial, err := xmppconn.ParseStanza([]byte(`<presence/>`), 1<<16)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.clientPresence(t.Context(), c, r, initial); err != nil {
				t.Fatal(err)
			}
			r.wait()
			var got []string
			for _, raw := range c.unsent() {
				if st := string(raw); strings.Contains(st, `from="`+bob+`"`) {
					got = append(got, st)
				}
			}
			if len(got) == 0 || !strings.Contains(got[len(got)-1], tc.want) {
				t.Fatalf("the page's presences of bob, in order: %q; the last must be the change (%s)", got, tc.want)
			}
		})
	}
}
