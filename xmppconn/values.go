package xmppconn

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// This file holds the XMPP input rules: the values a caller may put into an
// outgoing stanza. Each is a typed string with its constants and a Parse
// function, and every Conn method that sends one checks it with that same
// function, so a caller that validates early (an HTTP API answering 400
// before it touches the stream) and the Conn can never disagree. Every
// rejection wraps ErrInvalidArgument and names the field.

// MessageType is the type attribute of a <message/> (RFC 6121 §5.2.2).
type MessageType string

// Message types. An incoming message without a type is NormalMessage; an
// outgoing one is ChatMessage. ErrorMessage is only ever received.
const (
	ChatMessage      MessageType = "chat"
	GroupChatMessage MessageType = "groupchat"
	NormalMessage    MessageType = "normal"
	HeadlineMessage  MessageType = "headline"
	ErrorMessage     MessageType = "error"
)

// ParseMessageType returns the type of a message to send: "" is
// ChatMessage; chat, groupchat, normal and headline are themselves;
// anything else (error included: RFC 6120 §8.3 keeps it for replies)
// is an ErrInvalidArgument.
func ParseMessageType(s string) (MessageType, error) {
	if s == "" {
		return ChatMessage, nil
	}
	return oneOf("message type", s, ChatMessage, GroupChatMessage, NormalMessage, HeadlineMessage)
}

// Show is the availability sub-state of a presence (RFC 6121 §4.7.2.1);
// "" is plain available.
type Show string

// Presence shows.
const (
	ShowAvailable Show = ""
	ShowAway      Show = "away"
	ShowChat      Show = "chat"
	ShowDND       Show = "dnd"
	ShowXA        Show = "xa"
)

// ParseShow returns the show of a presence to send: "" (available), away,
// chat, dnd or xa; anything else is an ErrInvalidArgument.
func ParseShow(s string) (Show, error) {
	return oneOf("presence show", s, ShowAvailable, ShowAway, ShowChat, ShowDND, ShowXA)
}

// ChatStateKind is a XEP-0085 chat state.
type ChatStateKind string

// Chat states (XEP-0085 §2).
const (
	ChatActive    ChatStateKind = "active"
	ChatComposing ChatStateKind = "composing"
	ChatPaused    ChatStateKind = "paused"
	ChatInactive  ChatStateKind = "inactive"
	ChatGone      ChatStateKind = "gone"
)

// ParseChatState returns a chat state to send: active, composing, paused,
// inactive or gone; anything else, "" included, is an ErrInvalidArgument.
func ParseChatState(s string) (ChatStateKind, error) {
	return oneOf("chat state", s, ChatActive, ChatComposing, ChatPaused, ChatInactive, ChatGone)
}

// SubscriptionAction is what Subscribe does about a presence subscription
// (RFC 6121 §3).
type SubscriptionAction string

// Subscription actions.
const (
	// SubscribeAction asks to see the contact's presence (subscribe).
	SubscribeAction SubscriptionAction = "subscribe"
	// ApproveAction lets the contact see ours, answering their request
	// (subscribed).
	ApproveAction SubscriptionAction = "approve"
	// DenyAction refuses the contact's request (unsubscribed).
	DenyAction SubscriptionAction = "deny"
	// CancelAction revokes the subscription the contact has to ours
	// (unsubscribed: RFC 6121 §3.2 uses the same stanza as DenyAction).
	CancelAction SubscriptionAction = "cancel"
)

// ParseSubscriptionAction returns a subscription action: subscribe,
// approve, deny or cancel; anything else is an ErrInvalidArgument.
func ParseSubscriptionAction(s string) (SubscriptionAction, error) {
	return oneOf("subscription action", s, SubscribeAction, ApproveAction, DenyAction, CancelAction)
}

// presenceType is the type attribute of the presence that carries a.
func (a SubscriptionAction) presenceType() string {
	switch a {
	case ApproveAction:
		return "subscribed"
	case DenyAction, CancelAction:
		return "unsubscribed"
	}
	return "subscribe"
}

// Priority bounds (RFC 6121 §4.7.2.3).
const (
	MinPriority = -128
	MaxPriority = 127
)

// Validate reports whether p may be sent (SendPresence, or a
// Config.InitialPresence): Type "", "available" or "unavailable", a Show
// ParseShow accepts, Priority within MinPriority..MaxPriority and an
// Avatar that is "" or a SHA-1 in hex. Its errors wrap ErrInvalidArgument.
// To is not checked here: SendPresence parses it as a JID.
func (p Presence) Validate() error {
	if _, err := ParseShow(string(p.Show)); err != nil {
		return err
	}
	switch p.Type {
	case "", "available", "unavailable":
	default:
		return fmt.Errorf("%w: presence type %q is not available or unavailable (use Subscribe for subscriptions)", ErrInvalidArgument, p.Type)
	}
	if p.Priority < MinPriority || p.Priority > MaxPriority {
		return fmt.Errorf("%w: presence priority %d is not within %d..%d", ErrInvalidArgument, p.Priority, MinPriority, MaxPriority)
	}
	if p.Avatar != nil && *p.Avatar != "" && !isSHA1Hex(*p.Avatar) {
		return fmt.Errorf("%w: avatar hash %q is not a SHA-1 in hex", ErrInvalidArgument, *p.Avatar)
	}
	return nil
}

// Outgoing returns m as Send sends it, or why it may not be sent: To a
// JID (a bare one for a groupchat message), normalized; Type one
// ParseMessageType accepts, "" becoming ChatMessage; ChatState "" or one
// ParseChatState accepts; no receipt asked for in a room (XEP-0184 §5.3).
// Send calls it first, so a caller that wants to answer a bad message
// before it touches the stream calls it too, and both agree. Whether a
// groupchat's room is joined is Send's to know (ErrNotInRoom). Its errors
// wrap ErrInvalidArgument, or are ErrInvalidJID for To.
func (m Message) Outgoing() (Message, error) {
	to, err := ParseJID(m.To)
	if err != nil {
		return Message{}, err
	}
	m.To = to.String()
	if m.Type, err = ParseMessageType(string(m.Type)); err != nil {
		return Message{}, err
	}
	if m.ChatState != "" {
		if _, err := ParseChatState(string(m.ChatState)); err != nil {
			return Message{}, err
		}
	}
	if m.Type == GroupChatMessage {
		if to.Resource != "" {
			return Message{}, fmt.Errorf("%w: a groupchat message goes to a bare room JID, not %q", ErrInvalidArgument, m.To)
		}
		m.Receipt = false
	}
	return m, nil
}

// oneOf returns s as a T if it is one of valid, else the
// ErrInvalidArgument for field that lists them.
func oneOf[T ~string](field, s string, valid ...T) (T, error) {
	if slices.Contains(valid, T(s)) {
		return T(s), nil
	}
	names := make([]string, len(valid))
	for i, v := range valid {
		names[i] = strconv.Quote(string(v))
	}
	return "", fmt.Errorf("%w: %s %q is not one of %s", ErrInvalidArgument, field, s, strings.Join(names, ", "))
}
