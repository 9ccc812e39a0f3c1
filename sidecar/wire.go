package sidecar

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// The API's wire format, in one place: every JSON shape the HTTP API
// reads or writes (docs/API.md), and handle, where an xmppconn event
// becomes an API event. Event kinds, fields and JSON names are public
// contract: add, never rename.

// Events of GET /v1/events (long poll and SSE). An event is its kind plus
// the fields of one of these types (eventlog.go adds kind and cursor).

// messageJSON is a message as the API shows it (docs/API.md): the fields
// of a "message" event, and of every entry of GET /v1/history, which adds
// the archive's fields around it (historyMessage). It is the one JSON
// shape of a message: a new message field is added here and in
// newMessageJSON, and appears in events and history alike.
type messageJSON struct {
	From    string               `json:"from"`
	To      string               `json:"to"`
	ID      string               `json:"id"`
	Type    xmppconn.MessageType `json:"type"`
	Body    string               `json:"body"`
	Subject string               `json:"subject,omitempty"`
	Thread  string               `json:"thread"`
	// Delay is the XEP-0203 stamp of an offline (or room history)
	// message, RFC 3339; null when it has none.
	Delay *string `json:"delay"`
	// Carbon is "sent" or "received" for a XEP-0280 copy; null otherwise
	// (always in history: archives keep messages, not their copies).
	Carbon *string `json:"carbon"`
	// Room and Nick split the sender of a groupchat message.
	Room string `json:"room,omitempty"`
	Nick string `json:"nick,omitempty"`
	// Own marks the room's echo of what this user said.
	Own bool `json:"own,omitempty"`
}

// newMessageJSON is m as the API shows it.
func newMessageJSON(m *xmppconn.Message) messageJSON {
	out := messageJSON{From: m.From, To: m.To, ID: m.ID, Type: m.Type, Body: m.Body, Subject: m.Subject, Thread: m.Thread, Own: m.Own}
	if out.Type == "" {
		out.Type = xmppconn.NormalMessage
	}
	if !m.Delay.IsZero() {
		d := m.Delay.UTC().Format(time.RFC3339Nano)
		out.Delay = &d
	}
	if m.Carbon != "" {
		c := m.Carbon
		out.Carbon = &c
	}
	if m.Type == xmppconn.GroupChatMessage {
		out.Room, out.Nick, _ = strings.Cut(m.From, "/")
	}
	return out
}

// presenceEvent is a "presence" event: a contact's resource came, changed
// or left.
type presenceEvent struct {
	From     string        `json:"from"`
	Type     string        `json:"type"`
	Show     xmppconn.Show `json:"show"`
	Status   string        `json:"status"`
	Priority int           `json:"priority"`
	Avatar   *string       `json:"avatar,omitempty"`
}

// subscriptionEvent is a "subscription" event: a contact asks for, grants
// or withdraws a presence subscription.
type subscriptionEvent struct {
	From string `json:"from"`
	Type string `json:"type"`
}

// rosterEvent is a "roster" event: the server pushed a roster change.
type rosterEvent struct {
	Item xmppconn.RosterItem `json:"item"`
}

// chatStateEvent is a "chatstate" event (XEP-0085).
type chatStateEvent struct {
	From  string                 `json:"from"`
	State xmppconn.ChatStateKind `json:"state"`
}

// receiptEvent is a "receipt" event (XEP-0184).
type receiptEvent struct {
	From string `json:"from"`
	ID   string `json:"id"`
}

// droppedEvent is a "dropped" event: an inbound stanza over the size cap.
type droppedEvent struct {
	Stanza string `json:"stanza"`
	From   string `json:"from"`
	Type   string `json:"type"`
	ID     string `json:"id"`
	Bytes  int    `json:"bytes"`
}

// sendFailedEvent is a "send_failed" event: an outbound stanza the stream
// refused.
type sendFailedEvent struct {
	Stanza string `json:"stanza"`
	To     string `json:"to"`
	ID     string `json:"id"`
	Bytes  int    `json:"bytes"`
	Reason string `json:"reason"`
}

// stateEvent is a "state" event: the stream's state and why.
type stateEvent struct {
	State  xmppconn.State `json:"state"`
	Reason string         `json:"reason"`
}

// roomEvent is a "room" event: a room presence (XEP-0045).
type roomEvent struct {
	Room        string        `json:"room"`
	Nick        string        `json:"nick"`
	JID         string        `json:"jid"`
	Type        string        `json:"type"`
	Show        xmppconn.Show `json:"show"`
	Status      string        `json:"status"`
	Affiliation string        `json:"affiliation"`
	Role        string        `json:"role"`
	Self        bool          `json:"self"`
	Codes       []int         `json:"codes"`
	NewNick     string        `json:"new_nick"`
	Kicked      bool          `json:"kicked"`
	Banned      bool          `json:"banned"`
	Reason      string        `json:"reason"`
	Error       string        `json:"error"`
}

// handle turns an xmppconn event into an event-log entry. It runs on the
// stream's reader goroutine and never blocks.
func (r *registry) handle(s *session, ev xmppconn.Event) {
	switch e := ev.(type) {
	case *xmppconn.Message:
		if e.Body == "" && e.Subject == "" {
			return
		}
		if !s.appendJSONOnce("message", messageKey(e), newMessageJSON(e)) {
			return // a copy of a message still in the log
		}
	case *xmppconn.Occupant:
		s.appendOccupant(e)
	case *xmppconn.Presence:
		s.trackPresence(e)
		if s.durable != nil {
			s.durable.notePresence(e.From, s.presenceAt(e.From))
		}
		typ := e.Type
		if typ == "" {
			typ = "available"
		}
		s.appendJSON("presence", presenceEvent{e.From, typ, e.Show, e.Status, e.Priority, e.Avatar})
	case *xmppconn.Subscription:
		s.appendJSON("subscription", subscriptionEvent{e.From, e.Type})
	case *xmppconn.RosterPush:
		item := e.Item
		if item.Groups == nil {
			item.Groups = []string{}
		}
		s.appendJSON("roster", rosterEvent{item})
	case *xmppconn.ChatState:
		s.appendJSON("chatstate", chatStateEvent{e.From, e.State})
	case *xmppconn.Receipt:
		s.appendJSON("receipt", receiptEvent{e.From, e.ID})
	case *xmppconn.Dropped:
		r.metrics.stanzasDropped.Inc()
		s.appendJSON("dropped", droppedEvent{e.Stanza, e.From, e.Type, e.ID, e.Bytes})
	case *xmppconn.SendFailed:
		r.metrics.sendsRefused.Inc()
		s.appendJSON("send_failed", sendFailedEvent{e.Stanza, e.To, e.ID, e.Bytes, e.Reason})
	case *xmppconn.StateChange:
		reason := ""
		if e.Err != nil {
			reason = "stream_error"
		}
		switch {
		case e.Resumed:
			r.metrics.resumptions.Inc()
			reason = "resumed"
		case e.ContinuityLost:
			r.metrics.reconnects.Inc()
			reason = "continuity_lost"
			s.log.markGap()
			s.clearPresence()
			s.bridgeReset()
		}
		if e.State == xmppconn.StateAuthFailed {
			reason = "auth_failed" // counted by r.auth
		}
		// The state of a closing session is set by closeSession itself.
		if cur := s.State(); cur == xmppconn.StateOffline && e.State == xmppconn.StateOffline {
			return
		}
		s.setState(e.State, reason)
		s.appendState(e.State, reason)
	}
	r.metrics.eventsQueued.Inc()
}

func (s *session) appendJSON(kind string, v any) { s.appendJSONOnce(kind, "", v) }

// appendJSONOnce appends unless an event with the same non-empty key is
// still in the log, and reports whether it did.
func (s *session) appendJSONOnce(kind, key string, v any) bool {
	b, err := json.Marshal(v)
	if err != nil || len(b) < 2 {
		return false
	}
	if s.durable != nil {
		return s.durable.append(kind, key, b[1:len(b)-1])
	}
	return s.log.appendOnce(kind, key, b[1:len(b)-1])
}

// messageKey identifies a message for dedup: the same sender (bare JID),
// id, carbon direction and body. Messages without an id are never merged.
func messageKey(m *xmppconn.Message) string {
	if m.ID == "" {
		return ""
	}
	from := bareOf(m.From)
	if m.Type == "groupchat" {
		from = m.From // room@service/nick: occupants are told apart by nick
	}
	sum := sha256.Sum256([]byte(m.Carbon + "\x00" + from + "\x00" + m.ID + "\x00" + string(m.Type) + "\x00" + m.Subject + "\x00" + m.Body))
	return string(sum[:16])
}

func bareOf(jid string) string {
	bare, _, _ := strings.Cut(jid, "/")
	return bare
}

func (s *session) appendState(st xmppconn.State, reason string) {
	s.appendJSON("state", stateEvent{st, reason})
}

// appendOccupant records a room presence as a "room" event.
func (s *session) appendOccupant(o *xmppconn.Occupant) {
	codes := o.Codes
	if codes == nil {
		codes = []int{}
	}
	s.appendJSON("room", roomEvent{o.Room, o.Nick, o.JID, o.Type, o.Show, o.Status, o.Affiliation, o.Role, o.Self, codes, o.NewNick, o.Kicked, o.Banned, o.Reason, o.Error})
}

// Request bodies. decode (httpio.go) rejects unknown fields.

// presenceBody is the body of POST /v1/presence and POST /v1/connect.
type presenceBody struct {
	Show     xmppconn.Show `json:"show"`
	Status   string        `json:"status"`
	Priority *int          `json:"priority"`
}

// toXMPP is the presence the body asks for, checked by xmppconn's rules
// (an error wrapping xmppconn.ErrInvalidArgument: 400) before any stream
// is touched.
func (p presenceBody) toXMPP() (xmppconn.Presence, error) {
	if len(p.Status) > 1024 {
		return xmppconn.Presence{}, fmt.Errorf("%w: status longer than 1024 bytes", ErrBadRequest)
	}
	out := xmppconn.Presence{Show: p.Show, Status: p.Status}
	if p.Priority != nil {
		out.Priority = *p.Priority
	}
	return out, out.Validate()
}

// messageBody is the body of POST /v1/messages.
type messageBody struct {
	To      string               `json:"to"`
	Body    string               `json:"body"`
	Type    xmppconn.MessageType `json:"type"`
	ID      string               `json:"id"`
	Thread  string               `json:"thread"`
	Receipt bool                 `json:"receipt"`
}

// chatStateBody is the body of POST /v1/chatstates.
type chatStateBody struct {
	To    string `json:"to"`
	State string `json:"state"`
}

// rosterItemBody is the body of PUT /v1/roster/{jid}.
type rosterItemBody struct {
	Name   string   `json:"name"`
	Groups []string `json:"groups"`
}

// subscriptionBody is the body of POST /v1/subscriptions/{jid}.
type subscriptionBody struct {
	Action string `json:"action"`
}

// joinBody is the body of POST /v1/rooms/{room}/join.
type joinBody struct {
	Nick     string `json:"nick"`
	Password string `json:"password"`
	History  *int   `json:"history"`
	Public   *bool  `json:"public"`
}

// subjectBody is the body of PUT /v1/rooms/{room}/subject.
type subjectBody struct {
	Subject string `json:"subject"`
}

// Responses. Fields of the ones that were JSON objects built as maps are
// in alphabetical order, the order encoding/json writes a map in.

// errorBody is every error answer: {"error":{"code","message"}}.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// connectOut is the answer of POST /v1/connect.
type connectOut struct {
	Cursor string `json:"cursor"`
	JID    string `json:"jid"`
	State  string `json:"state"`
}

// meOut is the answer of GET /v1/me.
type meOut struct {
	Email    string `json:"email"`
	FullName string `json:"fullname"`
	JID      string `json:"jid"`
	State    string `json:"state"`
	User     string `json:"user"`
}

// sentOut is the answer of POST /v1/messages: the message's id.
type sentOut struct {
	ID string `json:"id"`
}

// rosterOut is the answer of GET /v1/roster.
type rosterOut struct {
	Items []rosterItemOut `json:"items"`
}

type rosterItemOut struct {
	JID          string         `json:"jid"`
	Name         string         `json:"name"`
	Groups       []string       `json:"groups"`
	Subscription string         `json:"subscription"`
	Ask          string         `json:"ask"`
	Presence     []presenceInfo `json:"presence"`
}

// presenceInfo is one available resource of a contact, in rosterItemOut
// (and kept per contact by the session, session.go).
type presenceInfo struct {
	Resource string        `json:"resource"`
	Show     xmppconn.Show `json:"show"`
	Status   string        `json:"status"`
	Priority int           `json:"priority"`
	// Avatar is the XEP-0153 photo hash: "" no avatar, absent unknown.
	Avatar *string `json:"avatar,omitempty"`
}

// blocklistOut is the answer of GET /v1/blocklist.
type blocklistOut struct {
	Items []string `json:"items"`
}

// vcardOut is the answer of GET /v1/vcard/{jid}.
type vcardOut struct {
	Email     string `json:"email"`
	FullName  string `json:"fullname"`
	HasPhoto  bool   `json:"has_photo"`
	JID       string `json:"jid"`
	Nickname  string `json:"nickname"`
	PhotoType string `json:"photo_type"`
}

// roomsOut is the answer of GET /v1/rooms.
type roomsOut struct {
	Joined  []joinedRoomOut `json:"joined"`
	Rooms   []roomItem      `json:"rooms"`
	Service string          `json:"service"`
}

// roomItem is one room of the MUC service.
type roomItem struct {
	JID    string `json:"jid"`
	Name   string `json:"name"`
	Joined bool   `json:"joined"`
}

type occupantOut struct {
	Nick        string        `json:"nick"`
	JID         string        `json:"jid"`
	Affiliation string        `json:"affiliation"`
	Role        string        `json:"role"`
	Show        xmppconn.Show `json:"show"`
	Status      string        `json:"status"`
	Self        bool          `json:"self"`
}

type joinedRoomOut struct {
	JID       string        `json:"jid"`
	Nick      string        `json:"nick"`
	Subject   string        `json:"subject"`
	Joined    bool          `json:"joined"` // false while re-joining after a reconnect
	Occupants []occupantOut `json:"occupants"`
}

func roomOut(jr xmppconn.JoinedRoom) joinedRoomOut {
	out := joinedRoomOut{JID: jr.Room, Nick: jr.Nick, Subject: jr.Subject, Joined: jr.Joined, Occupants: make([]occupantOut, 0, len(jr.Occupants))}
	for _, o := range jr.Occupants {
		out.Occupants = append(out.Occupants, occupantOut{Nick: o.Nick, JID: o.JID, Affiliation: o.Affiliation, Role: o.Role, Show: o.Show, Status: o.Status, Self: o.Self})
	}
	return out
}

// joinOut is the answer of POST /v1/rooms/{room}/join.
type joinOut struct {
	joinedRoomOut
	Created bool `json:"created"`
}

// historyPage is the answer of GET /v1/history.
type historyPage struct {
	Messages []historyMessage `json:"messages"`
	Complete bool             `json:"complete"`
	First    string           `json:"first"`
	Last     string           `json:"last"`
	Count    *int             `json:"count,omitempty"`
}

// historyMessage is one entry of GET /v1/history: the message, with the
// archive's id for it first and when the archive stored it last.
type historyMessage struct {
	ArchiveID string `json:"archive_id"`
	messageJSON
	Time string `json:"time"`
}

// newHistoryMessage is m as GET /v1/history shows it.
func newHistoryMessage(m *xmppconn.ArchivedMessage) historyMessage {
	out := historyMessage{ArchiveID: m.ArchiveID, messageJSON: newMessageJSON(&m.Message)}
	if !m.Time.IsZero() {
		out.Time = m.Time.UTC().Format(time.RFC3339Nano)
	}
	return out
}

// prebindOut is the answer of POST /v1/prebind.
type prebindOut struct {
	JID string `json:"jid"`
	RID int64  `json:"rid"`
	SID string `json:"sid"`
	URL string `json:"url"`
}

// statusRow is one session in the ops listener's /status.
type statusRow struct {
	User     string `json:"user"`
	JID      string `json:"jid"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	Since    string `json:"since"`
	LastPoll string `json:"last_poll"`
}
