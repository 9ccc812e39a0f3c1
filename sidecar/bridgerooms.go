package sidecar

import (
	"strings"

	"expressolivre.org/imsidecar/xmppconn"
)

// Rooms a browser client joined itself (converse.js joins its bookmarked
// rooms with a presence), which the user's stream does not track as it
// tracks the rooms joined with /v1/rooms. The bridge keeps what a page
// needs to be shown such a room again after a reload — each occupant's
// last presence and the subject — so that the page's join is answered
// from there instead of reaching the room, where a second join from the
// same occupant is a presence change every other occupant sees.

const (
	nsMUC     = "http://jabber.org/protocol/muc"
	nsMUCUser = "http://jabber.org/protocol/muc#user"
	// maxClientRooms bounds the client-joined rooms kept per session;
	// maxRoomOccupants the occupants kept per room. Past them a join is
	// passed to the room as is.
	maxClientRooms   = 100
	maxRoomOccupants = 2000
)

// clientRoom is a room a browser client joined.
type clientRoom struct {
	nick      string
	joined    bool              // the room sent our own presence (110)
	occupants map[string][]byte // nick → last presence, ours included
	order     []string          // nicks in arrival order, for the replay
	subject   []byte
}

// roomJoin reports whether st (a presence a client sends) joins room
// room@service/nick, and returns the room's bare JID and the nick.
func roomJoin(st *xmppconn.Stanza) (room, nick string, ok bool) {
	if st.Kind != "presence" || st.Type != "" || st.To == "" {
		return "", "", false
	}
	if _, ok := st.Child(nsMUC, "x"); !ok {
		return "", "", false
	}
	room, nick, found := strings.Cut(st.To, "/")
	return room, nick, found && nick != ""
}

// clientJoin handles a client's join: a room the stream is in already with
// that nick is replayed to the client alone, and true is returned; else
// the join is recorded (it goes to the room).
func (b *bridge) clientJoin(c *bridgeClient, conn stanzaRelay, st *xmppconn.Stanza) bool {
	room, nick, ok := roomJoin(st)
	if !ok {
		return false
	}
	full := b.s.fullJIDNow()
	b.mu.Lock() // the replay is queued as fromServer queues (replay)
	for _, r := range conn.JoinedRooms() {
		if strings.EqualFold(r.Room, room) && r.Joined && r.Nick == nick {
			c.push(roomReplay(r, full)...)
			b.mu.Unlock()
			return true
		}
	}
	r := b.rooms[room]
	if r != nil && r.joined && r.nick == nick {
		out := make([][]byte, 0, len(r.order)+1)
		var self []byte
		for _, n := range r.order {
			if n == nick {
				self = r.occupants[n]
				continue
			}
			out = append(out, r.occupants[n])
		}
		if self != nil {
			out = append(out, self)
		}
		if r.subject != nil {
			out = append(out, r.subject)
		}
		b.mu.Unlock()
		c.push(out...)
		return true
	}
	if r == nil && len(b.rooms) < maxClientRooms {
		if b.rooms == nil {
			b.rooms = map[string]*clientRoom{}
		}
		b.rooms[room] = &clientRoom{nick: nick, occupants: map[string][]byte{}}
	} else if r != nil {
		r.nick, r.joined = nick, false
	}
	b.mu.Unlock()
	return false
}

// clientLeave forgets a room the client leaves (unavailable to the room).
func (b *bridge) clientLeave(st *xmppconn.Stanza) {
	if st.Kind != "presence" || st.Type != "unavailable" || st.To == "" {
		return
	}
	room, _, _ := strings.Cut(st.To, "/")
	b.mu.Lock()
	delete(b.rooms, room)
	b.mu.Unlock()
}

// roomStanza records what a client-joined room sends: occupants'
// presences and the subject. b.mu is held.
func (b *bridge) roomStanzaLocked(st *xmppconn.Stanza, raw []byte) {
	room, nick, _ := strings.Cut(st.From, "/")
	r := b.rooms[room]
	if r == nil {
		return
	}
	switch st.Kind {
	case "message":
		if _, ok := st.Child("", "subject"); ok && st.Type == "groupchat" {
			r.subject = raw
		}
	case "presence":
		if nick == "" {
			return
		}
		x, _ := st.Child(nsMUCUser, "x")
		self := nick == r.nick || (x != nil && hasStatus(x, "110"))
		switch {
		case st.Type == "error" && self:
			delete(b.rooms, room) // the join failed
		case st.Type == "unavailable" && self:
			delete(b.rooms, room) // left, kicked or banned
		case st.Type == "unavailable":
			if _, ok := r.occupants[nick]; ok {
				delete(r.occupants, nick)
				for i, n := range r.order {
					if n == nick {
						r.order = append(r.order[:i], r.order[i+1:]...)
						break
					}
				}
			}
		case st.Type == "":
			if _, ok := r.occupants[nick]; !ok {
				if len(r.order) >= maxRoomOccupants {
					return
				}
				r.order = append(r.order, nick)
			}
			r.occupants[nick] = raw
			if self {
				r.joined = true
			}
		}
	}
}

func hasStatus(x *xmppconn.Stanza, code string) bool {
	for _, s := range x.Children("status") {
		if s.Attr("code") == code {
			return true
		}
	}
	return false
}

// bridgeReset is called when a fresh stream replaced a broken one that
// could not be resumed: the server put the user in none of the rooms the
// clients had joined. Each attached client is told it is out of them (its
// own unavailable, status 110 and 332: removed by a system shutdown, so
// clients join again), and nothing is kept for a later join.
func (s *session) bridgeReset() {
	s.mu.Lock()
	b := s.bridge
	full := s.fullJID
	s.mu.Unlock()
	if b == nil {
		return
	}
	b.mu.Lock()
	var out [][]byte
	for room, r := range b.rooms {
		if r.joined {
			out = append(out, presenceXMLTyped(room+"/"+r.nick, full, "unavailable",
				`<x xmlns="`+nsMUCUser+`"><item affiliation="none" role="none"/><status code="110"/><status code="332"/></x>`))
		}
	}
	b.rooms = nil
	clients := make([]*bridgeClient, 0, len(b.clients))
	for c := range b.clients {
		clients = append(clients, c)
	}
	b.mu.Unlock()
	for _, c := range clients {
		c.mu.Lock()
		ready := c.ready && !c.ended
		c.mu.Unlock()
		if ready {
			c.push(out...)
		}
	}
}

// presenceXMLTyped is a presence of a type with extra content.
func presenceXMLTyped(from, to, typ, extra string) []byte {
	var b strings.Builder
	b.WriteString(`<presence xmlns="jabber:client" from="` + xmlEsc(from) + `" to="` + xmlEsc(to) + `" type="` + typ + `">`)
	b.WriteString(extra)
	b.WriteString(`</presence>`)
	return []byte(b.String())
}
