package xmppconn

import "time"

// Event is anything the connection reports to its Handler: *Message,
// *Presence, *Subscription, *RosterPush, *ChatState, *Receipt, *StateChange,
// *Occupant (group chat, muc.go), *Dropped, *SendFailed.
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

// Dropped reports an inbound stanza over Config.MaxStanzaSize: it was read
// through without being kept, counted as handled for XEP-0198 (so the
// server never sends it again) and the stream stayed up. Only its start
// tag was read: From, Type and ID are its attributes ("" when absent, or
// when even the start tag was over the limit). A dropped IQ request was
// answered with a policy-violation error; a dropped IQ reply fails its
// request with ErrStanzaTooLarge.
type Dropped struct {
	Stanza   string // message, presence or iq
	From, ID string
	Type     string
	Bytes    int // the stanza's size as received
}

// SendFailed reports a stanza the server refused after it was accepted
// for sending. Either the server closed the stream with a policy-violation
// error (RFC 6120 §4.9.3.14; Prosody and ejabberd do so for a stanza over
// their size limit) while it was unacknowledged: it is taken out of the
// XEP-0198 resend queue, so it is never sent again, and the stream
// reconnects as usual. Or a message came back as a policy-violation stanza
// error (the server counted it, so it is not re-sent either; the error is
// also delivered as a *Message of type "error").
type SendFailed struct {
	Stanza string // message, presence or iq
	To, ID string
	Bytes  int // its encoded size; 0 for a stanza error, which does not say
	// Reason is "policy-violation", or "stream_broken": the connection
	// broke twice in a row, without a stream error, while this was the
	// largest unacknowledged stanza (the server's error is lost when it
	// closes the socket with the stanza's end unread).
	Reason string
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
func (*Dropped) isEvent()      {}
func (*SendFailed) isEvent()   {}
