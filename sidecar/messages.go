package sidecar

import (
	"strings"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

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
