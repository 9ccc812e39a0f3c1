package xmppconn

import "time"

// Event is anything the connection reports to its Handler: *Message,
// *Presence, *Subscription, *RosterPush, *ChatState, *Receipt, *StateChange,
// *Occupant (group chat, muc.go).
type Event interface{ isEvent() }

// Handler receives events on the connection's reader goroutine, in stream
// order. It must not block for long; the inbound XEP-0198 counter is only
// advanced after HandleEvent returns, so an event that was handed over is
// never lost by a crash of the connection itself.
type Handler interface {
	HandleEvent(Event)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(Event)

// HandleEvent calls f(ev).
func (f HandlerFunc) HandleEvent(ev Event) { f(ev) }

// Message is an incoming or outgoing <message/>, and the message of an
// archive result (ArchivedMessage): parseMessage reads both.
type Message struct {
	From, To string
	ID       string
	Type     MessageType // chat, groupchat, normal, headline, error
	Body     string
	Thread   string
	Subject  string
	// Delay is the XEP-0203 timestamp of an offline/delayed message; zero if none.
	Delay time.Time
	// Carbon is "sent" or "received" for an unwrapped XEP-0280 copy, else "".
	Carbon string
	// Receipt asks for a XEP-0184 receipt (outgoing) or says one was asked (incoming).
	Receipt bool
	// ChatState is an XEP-0085 state carried with the message, if any.
	ChatState ChatStateKind
	// Own marks a groupchat message from our own nickname: the room's
	// echo of what we sent (or history of what we said).
	Own bool
}

// Presence is an available/unavailable <presence/> from a contact, or one we send.
type Presence struct {
	From, To string
	Type     string // "available" (no type attribute) or "unavailable"
	Show     Show   // "", away, chat, dnd, xa
	Status   string
	Priority int
	// Avatar is the contact's XEP-0153 vCard photo hash (lower-case SHA-1
	// hex), "" when they advertise no avatar, nil when the presence does
	// not say (no vcard-temp:x:update, or one without <photo/>). On an
	// outgoing presence a non-nil Avatar advertises the user's own.
	Avatar *string
}

// Subscription is a subscription-management presence (RFC 6121 §3).
type Subscription struct {
	From, To string
	Type     string // subscribe, subscribed, unsubscribe, unsubscribed
}

// RosterItem is one roster entry (RFC 6121 §2).
type RosterItem struct {
	JID          string   `json:"jid"`
	Name         string   `json:"name"`
	Groups       []string `json:"groups"`
	Subscription string   `json:"subscription"` // none, to, from, both, remove
	Ask          string   `json:"ask"`          // "subscribe" or ""
}

// RosterPush is a roster change pushed by the server (already acknowledged).
type RosterPush struct {
	Item RosterItem
}

// ChatState is a standalone XEP-0085 notification.
type ChatState struct {
	From, To string
	State    ChatStateKind // active, composing, paused, inactive, gone
}

// Receipt is an XEP-0184 delivery receipt for message ID.
type Receipt struct {
	From string
	ID   string
}

// State is the connection's lifecycle state.
type State string

const (
	StateConnecting   State = "connecting"
	StateOnline       State = "online"
	StateReconnecting State = "reconnecting"
	StateOffline      State = "offline"
	StateAuthFailed   State = "auth_failed"
)

// StateChange reports a lifecycle transition.
type StateChange struct {
	State State
	// Resumed is true when the stream came back via XEP-0198 resumption:
	// nothing was lost in either direction.
	Resumed bool
	// ContinuityLost is true when a fresh stream replaced a broken one that
	// could not be resumed: inbound stanzas may have been lost (the server
	// may have bounced or stored them offline), so the caller should reload.
	ContinuityLost bool
	// Err is why the stream went down (nil for a clean transition).
	Err error
}

func (*Message) isEvent()      {}
func (*Presence) isEvent()     {}
func (*Subscription) isEvent() {}
func (*RosterPush) isEvent()   {}
func (*ChatState) isEvent()    {}
func (*Receipt) isEvent()      {}
func (*StateChange) isEvent()  {}
