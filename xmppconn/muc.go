package xmppconn

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Group chat (XEP-0045 Multi-User Chat).
//
// The Conn remembers the rooms it joined. After a fresh (not resumed)
// stream it joins them again with the same nickname and password, asking
// only for the history it may have missed; history messages it already
// delivered are dropped. A resumed stream keeps its rooms on the server,
// so nothing is re-sent.

const (
	nsMUC        = "http://jabber.org/protocol/muc"
	nsMUCUser    = nsMUC + "#user"
	nsMUCOwner   = nsMUC + "#owner"
	nsDiscoItems = "http://jabber.org/protocol/disco#items"
	nsData       = "jabber:x:data"
)

// Errors of group chat. A failed join wraps one of them together with the
// server's *StanzaError.
var (
	// ErrNoMUCService: the server announces no group chat service.
	ErrNoMUCService = errors.New("xmppconn: the server has no group chat (MUC) service")
	// ErrNickInUse: another occupant has the nickname (conflict).
	ErrNickInUse = errors.New("xmppconn: nickname already in use in the room")
	// ErrRoomPassword: the room needs a password, or it was wrong (not-authorized).
	ErrRoomPassword = errors.New("xmppconn: room password missing or wrong")
	// ErrRoomBanned: the user is banned from the room (forbidden).
	ErrRoomBanned = errors.New("xmppconn: banned from the room")
	// ErrRoomMembersOnly: the room admits members only (registration-required).
	ErrRoomMembersOnly = errors.New("xmppconn: the room is members-only")
	// ErrRoomFull: the room has its maximum of occupants (service-unavailable).
	ErrRoomFull = errors.New("xmppconn: the room is full")
	// ErrRoomCreation: the room does not exist and the user may not create it (not-allowed).
	ErrRoomCreation = errors.New("xmppconn: not allowed to create the room")
	// ErrNotInRoom: the call needs a room this connection has joined.
	ErrNotInRoom = errors.New("xmppconn: not in the room")
)

// Group chat hooks into the core: a room's presences and messages, the
// re-join after a fresh stream, and presence changes sent to the rooms.
func init() {
	register(&feature{
		name: "muc",
		inbound: func(c *Conn, s *stream, n *node) bool {
			return n.name.Local == "presence" && c.handleRoomPresence(s, n)
		},
		deliver: func(c *Conn, m *Message, hasSubject bool) bool {
			return m.Type != GroupChatMessage || c.roomMessage(m, hasSubject)
		},
		restore:   (*Conn).rejoinRooms,
		restored:  isRoomJoin,
		broadcast: (*Conn).roomPresences,
	})
}

// rejoinMargin is how far before the newest message seen a re-join asks
// for history, so that a clock difference with the server loses nothing;
// the repeats are dropped.
const rejoinMargin = time.Minute

// A re-join refused because the room is locked (being re-created by
// another occupant) is tried again maxRejoinRetries times, waiting
// rejoinRetryWait longer each time.
const (
	maxRejoinRetries = 5
	rejoinRetryWait  = 500 * time.Millisecond
)

// seenKeys is how many recent messages per room are remembered to drop
// history repeats after a re-join.
const seenKeys = 64

// RoomItem is a room listed by a MUC service (disco#items).
type RoomItem struct {
	JID  string
	Name string
}

// RoomJoin says how to join a room.
type RoomJoin struct {
	Room     string // bare room JID, e.g. sala@conference.example.test
	Nick     string // nickname in the room (required)
	Password string // for password-protected rooms; a room this join creates gets it
	// History is how many past messages to ask for: 0 = the room's
	// default, negative = none.
	History int
	// Public lists a room this join creates in the service's directory.
	Public bool
}

// JoinedRoom is a room this connection is in.
type JoinedRoom struct {
	Room    string
	Nick    string
	Subject string
	// SubjectFrom is who the subject came from, as the room says it to a
	// joining occupant (XEP-0045 §7.2.15): the occupant JID of whoever
	// set it (Prosody, ejabberd) or the room's bare JID; "" before the
	// room sent one.
	SubjectFrom string
	// Joined is false while the room is being joined, or re-joined after
	// a fresh stream.
	Joined    bool
	Occupants []Occupant
}

// Occupant is an occupant's presence in a room we are in (XEP-0045 §7.2),
// including our own (Self). It is the only event a room's presence
// becomes: it is never also reported as *Presence.
type Occupant struct {
	Room        string // bare room JID
	Nick        string
	JID         string // the occupant's real JID when the room discloses it, else ""
	Type        string // "available" or "unavailable"
	Show        Show
	Status      string
	Affiliation string // owner, admin, member, outcast or none
	Role        string // moderator, participant, visitor or none
	Self        bool   // this is our own occupant
	Codes       []int  // XEP-0045 status codes, e.g. 110 (self), 201 (room created)
	NewNick     string // unavailable because the occupant is now NewNick (303)
	Kicked      bool   // unavailable because kicked (307)
	Banned      bool   // unavailable because banned (301)
	Reason      string // reason given for a kick, ban or the room's destruction
	// Error is the stanza error condition when a re-join after a fresh
	// stream failed (e.g. "conflict", "not-authorized"); Type is then
	// "unavailable" and Self true: the room was left.
	Error string

	destroyed bool // the room was destroyed (<destroy/>)
}

func (*Occupant) isEvent() {}

// mucRoom is the state of one joined (or joining) room.
type mucRoom struct {
	jid       string
	nick      string // current nickname; "" before the first join completed
	password  string
	public    bool
	joined    bool
	subject   string
	subjectBy string // the subject's from
	occupants map[string]Occupant
	last      time.Time // newest message seen (receive time or delay stamp)
	seen      [seenKeys]string
	seenNext  int
	join      *joinWait // a join or nick change in flight
	retries   int       // re-join attempts refused because the room was locked
	// rejoining is set while a re-join sent on a fresh stream is unanswered.
	rejoining bool
}

type joinWait struct {
	nick    string
	done    chan struct{}
	created bool
	err     error
}

func (r *mucRoom) snapshot() JoinedRoom {
	out := JoinedRoom{Room: r.jid, Nick: r.nick, Subject: r.subject, SubjectFrom: r.subjectBy, Joined: r.joined, Occupants: make([]Occupant, 0, len(r.occupants))}
	if out.Nick == "" && r.join != nil {
		out.Nick = r.join.nick
	}
	for _, o := range r.occupants {
		out.Occupants = append(out.Occupants, o)
	}
	sort.Slice(out.Occupants, func(i, j int) bool { return out.Occupants[i].Nick < out.Occupants[j].Nick })
	return out
}

func (r *mucRoom) sawKey(key string) bool {
	for _, k := range r.seen {
		if k == key {
			return true
		}
	}
	return false
}

func (r *mucRoom) addKey(key string) {
	r.seen[r.seenNext] = key
	r.seenNext = (r.seenNext + 1) % seenKeys
}

// roomJID validates a bare room JID.
func roomJID(s string) (string, error) {
	j, err := ParseJID(s)
	if err != nil {
		return "", err
	}
	if j.Local == "" || j.Resource != "" {
		return "", fmt.Errorf("%w: %q is not a bare room JID (room@service)", ErrInvalidJID, s)
	}
	return j.String(), nil
}

// MUCService returns the server's group chat service, discovered once per
// Conn through disco#items and disco#info of the server (the first item
// with a conference/text identity), or ErrNoMUCService.
func (c *Conn) MUCService(ctx context.Context) (string, error) {
	if p := c.mucService.Load(); p != nil {
		return *p, nil
	}
	inner, err := c.SendIQ(ctx, "get", c.cfg.Domain, []byte(`<query xmlns="`+nsDiscoItems+`"/>`))
	if err != nil {
		return "", fmt.Errorf("xmppconn: discovering the MUC service: %w", err)
	}
	items, err := parseDiscoItems(inner)
	if err != nil {
		return "", err
	}
	for i, it := range items {
		if i >= 32 {
			break
		}
		info, err := c.SendIQ(ctx, "get", it.JID, []byte(`<query xmlns="`+nsDiscoI+`"/>`))
		if err != nil {
			var se *StanzaError
			if errors.As(err, &se) {
				continue // that item does not answer disco#info: not a MUC
			}
			return "", fmt.Errorf("xmppconn: discovering the MUC service: %w", err)
		}
		if isMUCService(info) {
			svc := it.JID
			c.mucService.Store(&svc)
			return svc, nil
		}
	}
	return "", ErrNoMUCService
}

// Rooms lists the rooms a MUC service announces (disco#items). Servers
// list public rooms only.
func (c *Conn) Rooms(ctx context.Context, service string) ([]RoomItem, error) {
	j, err := ParseJID(service)
	if err != nil {
		return nil, err
	}
	if j.Local != "" || j.Resource != "" {
		return nil, fmt.Errorf("%w: %q is not a service domain", ErrInvalidJID, service)
	}
	inner, err := c.SendIQ(ctx, "get", j.String(), []byte(`<query xmlns="`+nsDiscoItems+`"/>`))
	if err != nil {
		return nil, err
	}
	return parseDiscoItems(inner)
}

// maxDiscoItems bounds the items accepted from one disco#items reply.
const maxDiscoItems = 5000

// parseDiscoItems decodes the inner XML of a disco#items result.
func parseDiscoItems(inner []byte) ([]RoomItem, error) {
	out := []RoomItem{}
	if len(bytes.TrimSpace(inner)) == 0 {
		return out, nil
	}
	var q struct {
		XMLName xml.Name `xml:"http://jabber.org/protocol/disco#items query"`
		Items   []struct {
			JID  string `xml:"jid,attr"`
			Name string `xml:"name,attr"`
			Node string `xml:"node,attr"`
		} `xml:"item"`
	}
	if err := xml.Unmarshal(inner, &q); err != nil {
		return nil, fmt.Errorf("%w: disco#items reply: %w", ErrProtocol, err)
	}
	for _, it := range q.Items {
		if len(out) >= maxDiscoItems {
			break
		}
		j, err := ParseJID(it.JID)
		if err != nil || it.Node != "" {
			continue
		}
		out = append(out, RoomItem{JID: j.String(), Name: it.Name})
	}
	return out, nil
}

// isMUCService reports whether a disco#info result describes a MUC service.
func isMUCService(inner []byte) bool {
	var q struct {
		XMLName    xml.Name `xml:"http://jabber.org/protocol/disco#info query"`
		Identities []struct {
			Category string `xml:"category,attr"`
			Type     string `xml:"type,attr"`
		} `xml:"identity"`
		Features []struct {
			Var string `xml:"var,attr"`
		} `xml:"feature"`
	}
	if xml.Unmarshal(inner, &q) != nil {
		return false
	}
	ident := false
	for _, id := range q.Identities {
		ident = ident || (id.Category == "conference" && id.Type == "text")
	}
	for _, f := range q.Features {
		if ident && f.Var == nsMUC {
			return true
		}
	}
	return false
}

// JoinRoom enters a room (creating it when it does not exist: the new room
// is configured as an instant room, with j.Password and j.Public) and
// returns it once the room accepted us, with created=true if this join
// created it. Joining a room already joined with the same nickname returns
// at once; with another nickname it changes the nickname. A refusal wraps
// ErrNickInUse, ErrRoomPassword, ErrRoomBanned, ErrRoomMembersOnly,
// ErrRoomFull or ErrRoomCreation (and always the *StanzaError). It must
// not be called from the Handler.
func (c *Conn) JoinRoom(ctx context.Context, j RoomJoin) (JoinedRoom, bool, error) {
	room, err := roomJID(j.Room)
	if err != nil {
		return JoinedRoom{}, false, err
	}
	full, err := ParseJID(room + "/" + j.Nick)
	if err != nil || j.Nick == "" {
		return JoinedRoom{}, false, fmt.Errorf("%w: %q is not a valid nickname", ErrInvalidJID, j.Nick)
	}
	nick := full.Resource
	lockedTries := 0
	for {
		c.mucMu.Lock()
		if c.rooms == nil {
			c.rooms = map[string]*mucRoom{}
		}
		r := c.rooms[room]
		if r != nil && r.join != nil {
			w := r.join
			c.mucMu.Unlock()
			if err := c.waitJoin(ctx, w); err != nil && w.err == nil {
				return JoinedRoom{}, false, err
			}
			continue // the other join ended: look again
		}
		if r != nil && r.joined && r.nick == nick {
			snap := r.snapshot()
			c.mucMu.Unlock()
			return snap, false, nil
		}
		first := r == nil
		if first {
			r = &mucRoom{jid: room, password: j.Password, public: j.Public, occupants: map[string]Occupant{}, last: time.Now()}
			c.rooms[room] = r
		} else if j.Password != "" {
			r.password = j.Password
		}
		w := &joinWait{nick: nick, done: make(chan struct{})}
		r.join = w
		history := j.History
		if !first {
			history = -1 // a nick change: the room sends no history anyway
		}
		raw := encodeJoin(room, nick, r.password, history, time.Time{}, c.presence)
		c.mucMu.Unlock()

		err := c.send(raw, false)
		if err == nil {
			err = c.waitJoin(ctx, w)
		}
		if err != nil {
			c.abortJoin(r, w)
			if w.err == nil && first {
				// Timed out or canceled: make sure the room does not keep us.
				c.send(encodeLeave(room, nick), true)
			}
			return JoinedRoom{}, false, err
		}
		if w.err != nil {
			if errors.Is(w.err, ErrItemNotFound) && lockedTries < maxRejoinRetries {
				// Locked: someone else is creating the room right now.
				lockedTries++
				t := time.NewTimer(time.Duration(lockedTries) * rejoinRetryWait)
				select {
				case <-t.C:
					continue
				case <-ctx.Done():
					t.Stop()
					return JoinedRoom{}, false, ctx.Err()
				}
			}
			return JoinedRoom{}, false, w.err
		}
		if w.created {
			if _, err := c.iq(ctx, "set", room, roomConfigForm(r.password, j.Public)); err != nil {
				// A new room stays locked until configured: leave it.
				c.LeaveRoom(context.WithoutCancel(ctx), room)
				return JoinedRoom{}, false, fmt.Errorf("xmppconn: configuring the new room %s: %w", room, err)
			}
		}
		c.mucMu.Lock()
		snap := r.snapshot()
		c.mucMu.Unlock()
		c.saveState()
		return snap, w.created, nil
	}
}

// waitJoin waits for a join to be answered, bounded by IQTimeout and ctx.
func (c *Conn) waitJoin(ctx context.Context, w *joinWait) error {
	t := time.NewTimer(c.cfg.IQTimeout)
	defer t.Stop()
	select {
	case <-w.done:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: no answer from the room after %v", ErrTimeout, c.cfg.IQTimeout)
	case <-ctx.Done():
		return ctx.Err()
	case <-c.done:
		return ErrClosed
	}
}

// abortJoin gives up a join in flight; a room never joined is forgotten.
func (c *Conn) abortJoin(r *mucRoom, w *joinWait) {
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	if r.join == w {
		r.join = nil
	}
	if !r.joined && c.rooms[r.jid] == r {
		delete(c.rooms, r.jid)
	}
}

// LeaveRoom leaves a room; leaving a room not joined does nothing. The
// room is not re-joined after a reconnect.
func (c *Conn) LeaveRoom(ctx context.Context, room string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	room, err := roomJID(room)
	if err != nil {
		return err
	}
	c.mucMu.Lock()
	r := c.rooms[room]
	if r == nil {
		c.mucMu.Unlock()
		return nil
	}
	delete(c.rooms, room)
	nick := r.nick
	if w := r.join; w != nil {
		if nick == "" {
			nick = w.nick
		}
		w.err = ErrNotInRoom
		close(w.done)
		r.join = nil
	}
	c.mucMu.Unlock()
	c.saveState()
	return c.send(encodeLeave(room, nick), true)
}

// SetSubject changes a joined room's subject (moderators only, unless the
// room lets everyone); "" clears it.
func (c *Conn) SetSubject(ctx context.Context, room, subject string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	room, err := roomJID(room)
	if err != nil {
		return err
	}
	if !c.InRoom(room) {
		return fmt.Errorf("%w: %s", ErrNotInRoom, room)
	}
	var b bytes.Buffer
	b.WriteString(`<message type="groupchat"`)
	attr(&b, "to", room)
	attr(&b, "id", c.newID())
	b.WriteString(`><subject>`)
	esc(&b, subject)
	b.WriteString(`</subject></message>`)
	return c.send(b.Bytes(), true)
}

// InRoom reports whether the connection is in room (or re-joining it).
func (c *Conn) InRoom(room string) bool {
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	r := c.rooms[room]
	return r != nil && (r.joined || r.nick != "")
}

// JoinedRooms returns the rooms this connection is in, sorted by JID, with
// their occupants and subjects.
func (c *Conn) JoinedRooms() []JoinedRoom {
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	out := make([]JoinedRoom, 0, len(c.rooms))
	for _, r := range c.rooms {
		if r.joined || r.nick != "" {
			out = append(out, r.snapshot())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Room < out[j].Room })
	return out
}

// encodeJoin renders the presence that enters a room. since, when set,
// asks for the history after it instead of history messages.
func encodeJoin(room, nick, password string, history int, since time.Time, p Presence) []byte {
	var b bytes.Buffer
	b.WriteString(`<presence`)
	attr(&b, "to", room+"/"+nick)
	b.WriteString(`>`)
	writeShowStatus(&b, p)
	b.WriteString(`<x xmlns="` + nsMUC + `">`)
	if password != "" {
		b.WriteString(`<password>`)
		esc(&b, password)
		b.WriteString(`</password>`)
	}
	switch {
	case !since.IsZero():
		b.WriteString(`<history since="` + since.UTC().Format(time.RFC3339) + `"/>`)
	case history < 0:
		b.WriteString(`<history maxstanzas="0"/>`)
	case history > 0:
		b.WriteString(`<history maxstanzas="` + strconv.Itoa(history) + `"/>`)
	}
	b.WriteString(`</x></presence>`)
	return b.Bytes()
}

// writeShowStatus renders the show and status of our presence, which a
// room shows to its occupants.
func writeShowStatus(b *bytes.Buffer, p Presence) {
	if p.Show != "" {
		b.WriteString(`<show>` + string(p.Show) + `</show>`)
	}
	if p.Status != "" {
		b.WriteString(`<status>`)
		esc(b, p.Status)
		b.WriteString(`</status>`)
	}
}

// roomPresences records p as our broadcast presence and returns it
// addressed to each room we are in: servers do not forward presence
// changes to rooms (XEP-0045 §7.7), so the client must.
func (c *Conn) roomPresences(p Presence) [][]byte {
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	c.presence = Presence{Show: p.Show, Status: p.Status}
	var out [][]byte
	for _, r := range c.rooms {
		if r.joined && r.nick != "" {
			var b bytes.Buffer
			b.WriteString(`<presence`)
			attr(&b, "to", r.jid+"/"+r.nick)
			b.WriteString(`>`)
			writeShowStatus(&b, c.presence)
			b.WriteString(`</presence>`)
			out = append(out, b.Bytes())
		}
	}
	return out
}

// isRoomJoin reports whether raw is a presence made by encodeJoin.
func isRoomJoin(raw []byte) bool {
	return bytes.HasPrefix(raw, []byte(`<presence`)) && bytes.Contains(raw, []byte(`<x xmlns="`+nsMUC+`">`))
}

func encodeLeave(room, nick string) []byte {
	var b bytes.Buffer
	b.WriteString(`<presence type="unavailable"`)
	if nick != "" {
		attr(&b, "to", room+"/"+nick)
	} else {
		attr(&b, "to", room)
	}
	b.WriteString(`/>`)
	return b.Bytes()
}

// roomConfigForm is the owner's answer to a newly created (locked) room:
// an empty submitted form accepts the defaults (an instant room,
// XEP-0045 §10.1.2); a password or a public listing fill in those fields.
func roomConfigForm(password string, public bool) []byte {
	var b bytes.Buffer
	b.WriteString(`<query xmlns="` + nsMUCOwner + `"><x xmlns="` + nsData + `" type="submit">`)
	if password != "" || public {
		b.WriteString(`<field var="FORM_TYPE"><value>` + nsMUC + `#roomconfig</value></field>`)
		if password != "" {
			b.WriteString(`<field var="muc#roomconfig_passwordprotectedroom"><value>1</value></field><field var="muc#roomconfig_roomsecret"><value>`)
			esc(&b, password)
			b.WriteString(`</value></field>`)
		}
		if public {
			b.WriteString(`<field var="muc#roomconfig_publicroom"><value>1</value></field>`)
		}
	}
	b.WriteString(`</x></query>`)
	return b.Bytes()
}

// joinError turns a room's error presence into an error wrapping the
// matching sentinel and the *StanzaError.
func joinError(room string, se *StanzaError) error {
	var sentinel error
	switch se.Condition {
	case "conflict":
		sentinel = ErrNickInUse
	case "not-authorized":
		sentinel = ErrRoomPassword
	case "forbidden":
		sentinel = ErrRoomBanned
	case "registration-required":
		sentinel = ErrRoomMembersOnly
	case "service-unavailable":
		sentinel = ErrRoomFull
	case "not-allowed":
		sentinel = ErrRoomCreation
	default:
		return fmt.Errorf("xmppconn: joining %s: %w", room, se)
	}
	return fmt.Errorf("%w: %s: %w", sentinel, room, se)
}

// parseOccupant reads an occupant presence from room/nick.
func parseOccupant(n *node, room, nick string) Occupant {
	o := Occupant{Room: room, Nick: nick, Type: "available", Codes: []int{}}
	if n.get("type") == "unavailable" {
		o.Type = "unavailable"
	}
	for _, k := range n.kids {
		switch {
		case k.is(nsClient, "show"):
			o.Show = Show(strings.TrimSpace(k.text))
		case k.is(nsClient, "status") && o.Status == "":
			o.Status = k.text
		case k.is(nsMUCUser, "x"):
			for _, x := range k.kids {
				switch {
				case x.is(nsMUCUser, "item"):
					o.Affiliation, o.Role = x.get("affiliation"), x.get("role")
					if jid, err := ParseJID(x.get("jid")); err == nil && x.get("jid") != "" {
						o.JID = jid.String()
					}
					if nn := x.get("nick"); nn != "" {
						if j, err := ParseJID(room + "/" + nn); err == nil {
							o.NewNick = j.Resource
						}
					}
					if r := x.child(nsMUCUser, "reason"); r != nil {
						o.Reason = r.text
					}
				case x.is(nsMUCUser, "status"):
					if code, err := strconv.Atoi(x.get("code")); err == nil && code >= 100 && code <= 999 && len(o.Codes) < 16 {
						o.Codes = append(o.Codes, code)
					}
				case x.is(nsMUCUser, "destroy"):
					o.destroyed = true
					if r := x.child(nsMUCUser, "reason"); r != nil && o.Reason == "" {
						o.Reason = r.text
					}
				}
			}
		}
	}
	if o.Affiliation == "" {
		o.Affiliation = "none"
	}
	if o.Role == "" {
		o.Role = "none"
	}
	for _, code := range o.Codes {
		switch code {
		case 110:
			o.Self = true
		case 307:
			o.Kicked = o.Type == "unavailable"
		case 301:
			o.Banned = o.Type == "unavailable"
		}
	}
	if !o.hasCode(303) || o.Type != "unavailable" {
		o.NewNick = ""
	}
	return o
}

// removed reports whether an unavailable presence says the occupant was
// put out of the room for good: kicked (307), banned (301), removed by an
// affiliation change (321) or members-only (322), or the room destroyed.
func (o *Occupant) removed() bool {
	return o.Kicked || o.Banned || o.hasCode(321) || o.hasCode(322) || o.destroyed
}

func (o *Occupant) hasCode(code int) bool {
	for _, c := range o.Codes {
		if c == code {
			return true
		}
	}
	return false
}

// handleRoomPresence handles a presence from a room we are in or joining;
// it reports false for presences that are not a room's. What to do is
// decided under mucMu (roomPresence) and done after it is released.
func (c *Conn) handleRoomPresence(s *stream, n *node) bool {
	from, err := ParseJID(n.get("from"))
	if err != nil || from.Local == "" {
		return false
	}
	a := c.roomPresence(n, from)
	if a.logMsg != "" {
		c.log.Log(context.Background(), a.logLevel, a.logMsg, "room", a.room, "err", a.logErr)
	}
	if a.retry != nil {
		raw := a.retry
		time.AfterFunc(a.retryWait, func() { c.send(raw, false) })
	}
	if a.config != nil {
		var b bytes.Buffer
		b.WriteString(`<iq type="set" id="` + c.newID() + `"`)
		attr(&b, "to", a.room)
		b.WriteString(`>`)
		b.Write(a.config)
		b.WriteString(`</iq>`)
		c.writeStanzaOn(s, b.Bytes())
	}
	if a.event != nil {
		c.emit(a.event)
	}
	return a.claimed
}

// roomAction is what handleRoomPresence does once mucMu is released, in
// this order: log, send a re-join again later, configure a re-created
// room, tell the Handler.
type roomAction struct {
	claimed   bool // the presence is a room's, never a contact's
	room      string
	logLevel  slog.Level
	logMsg    string // "" for nothing to log
	logErr    error
	retry     []byte // a re-join to send again after retryWait
	retryWait time.Duration
	config    []byte // the configuration form of a room a re-join re-created
	event     *Occupant
}

// roomPresence updates the room's state with a presence from it, under
// mucMu, and returns what is left to do without the lock.
func (c *Conn) roomPresence(n *node, from JID) roomAction {
	room := from.Bare().String()
	typ := n.get("type")
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	r := c.rooms[room]
	if r == nil {
		// An occupant presence of a room we left: not a contact's.
		return roomAction{claimed: n.child(nsMUCUser, "x") != nil}
	}
	a := roomAction{claimed: true, room: room}
	switch typ {
	case "error":
		err := joinError(room, parseStanzaError(n))
		if w := r.join; w != nil {
			w.err = err
			close(w.done)
			r.join = nil
			if !r.joined && r.nick == "" {
				delete(c.rooms, room)
			}
			return a
		}
		if !r.rejoining {
			a.logLevel, a.logMsg, a.logErr = slog.LevelInfo, "xmppconn: room error", err
			return a
		}
		if errors.Is(err, ErrItemNotFound) && r.retries < maxRejoinRetries {
			// Another occupant is re-creating the room after a server
			// restart and it is locked until configured: try again soon.
			r.retries++
			a.retry = encodeJoin(r.jid, r.nick, r.password, 0, r.last.Add(-rejoinMargin), c.presence)
			a.retryWait = time.Duration(r.retries) * rejoinRetryWait
			return a
		}
		// A re-join after a fresh stream failed: the room is left.
		r.rejoining = false
		delete(c.rooms, room)
		a.event = &Occupant{Room: room, Nick: r.nick, Type: "unavailable", Self: true, Affiliation: "none", Role: "none",
			Codes: []int{}, Error: parseStanzaError(n).Condition}
		a.logLevel, a.logMsg, a.logErr = slog.LevelWarn, "xmppconn: re-joining a room failed", err
		return a
	case "", "unavailable":
	default:
		return roomAction{}
	}
	o := parseOccupant(n, room, from.Resource)
	w := r.join
	if !o.Self && len(o.Codes) == 0 && (from.Resource == r.nick || (w != nil && from.Resource == w.nick)) {
		o.Self = true // a server without status 110
	}
	switch {
	case o.Type == "available":
		r.occupants[o.Nick] = o
		if o.Self {
			created := o.hasCode(201)
			r.joined, r.nick, r.retries, r.rejoining = true, o.Nick, 0, false
			if w != nil {
				w.created = created
				close(w.done)
				r.join = nil
			} else if created {
				// A re-join re-created the room (the server lost it):
				// accept the defaults, or nobody else could enter.
				a.config = roomConfigForm(r.password, r.public)
			}
		}
	case o.Self && o.NewNick != "":
		delete(r.occupants, o.Nick)
		r.nick = o.NewNick
	case o.Self && !o.removed():
		// Our session is ending (the server is shutting down) or the
		// room lost us: out for now, joined again on a fresh stream.
		r.joined = false
		r.occupants = map[string]Occupant{}
	case o.Self:
		// Kicked, banned, removed, or the room was destroyed.
		delete(c.rooms, room)
		if w != nil {
			w.err = fmt.Errorf("%w: %s", ErrNotInRoom, room)
			close(w.done)
			r.join = nil
		}
	default:
		delete(r.occupants, o.Nick)
	}
	a.event = &o
	return a
}

// roomMessage updates a room's state with a groupchat message and reports
// whether to deliver it: a groupchat from a room we are not in, or history
// already delivered before a re-join, is dropped.
func (c *Conn) roomMessage(m *Message, hasSubject bool) bool {
	from, err := ParseJID(m.From)
	if err != nil {
		return false
	}
	c.mucMu.Lock()
	defer c.mucMu.Unlock()
	r := c.rooms[from.Bare().String()]
	if r == nil {
		return false
	}
	m.Own = from.Resource != "" && from.Resource == r.nick
	if hasSubject && m.Body == "" {
		r.subject, r.subjectBy = m.Subject, m.From
		return true
	}
	key := m.From + "\x00" + m.ID + "\x00" + m.Body
	if !m.Delay.IsZero() && r.sawKey(key) {
		return false
	}
	r.addKey(key)
	t := time.Now()
	if !m.Delay.IsZero() && m.Delay.Before(t) {
		t = m.Delay
	}
	if t.After(r.last) {
		r.last = t
	}
	return true
}

// rejoinRooms joins every remembered room again on a fresh stream, asking
// for the history since shortly before the newest message seen.
func (c *Conn) rejoinRooms(s *stream) error {
	c.mucMu.Lock()
	var raws [][]byte
	for _, r := range c.rooms {
		nick := r.nick
		if nick == "" && r.join != nil {
			nick = r.join.nick
		}
		r.joined, r.rejoining, r.retries = false, true, 0
		r.occupants = map[string]Occupant{}
		raws = append(raws, encodeJoin(r.jid, nick, r.password, 0, r.last.Add(-rejoinMargin), c.presence))
	}
	c.mucMu.Unlock()
	for _, raw := range raws {
		if err := c.writeStanzaOn(s, raw); err != nil {
			return err
		}
	}
	return nil
}
