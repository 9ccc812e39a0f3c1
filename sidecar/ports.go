package sidecar

import (
	"context"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// The consumer-side interfaces of the sidecar, in one place. Each
// consumer of a user's XMPP stream (*xmppconn.Conn in production, a fake
// in the unit tests) names the few methods it calls; xmppSession, what
// the registry holds and hands out, is their union and nothing more. A
// handler that needs a new call on the stream adds it to its own port.

// streamLife is what the registry's lifecycle uses of a stream
// (registry.go): its bound JID once online, and Close at teardown.
type streamLife interface {
	JID() string
	Close(ctx context.Context) error
}

// avatarPublisher advertises the user's own avatar once online
// (registry.go, advertiseAvatar).
type avatarPublisher interface {
	VCard(ctx context.Context, jid string) (xmppconn.VCard, error)
	SetAvatarHash(ctx context.Context, hash string) error
}

// iqSender asks the server a question (ownavatar.go, serverAvatars); a
// stream without it is treated as one that cannot ask.
type iqSender interface {
	SendIQ(ctx context.Context, typ, to string, payload []byte) ([]byte, error)
}

// messenger sends messages and chat states (messaging.go).
type messenger interface {
	Send(ctx context.Context, m xmppconn.Message) (string, error)
	SendChatState(ctx context.Context, to string, state xmppconn.ChatStateKind) error
}

// presenceSender sets the user's presence (presence.go, connect.go).
type presenceSender interface {
	SendPresence(ctx context.Context, p xmppconn.Presence) error
}

// rosterEditor reads and edits the roster and its subscriptions
// (roster.go).
type rosterEditor interface {
	Roster(ctx context.Context) ([]xmppconn.RosterItem, error)
	SetRosterItem(ctx context.Context, it xmppconn.RosterItem) error
	RemoveRosterItem(ctx context.Context, jid string) error
	Subscribe(ctx context.Context, jid string, action xmppconn.SubscriptionAction) error
}

// blocker reads and edits the blocklist, XEP-0191 (blocking.go).
type blocker interface {
	Blocklist(ctx context.Context) ([]string, error)
	Block(ctx context.Context, jids ...string) error
	Unblock(ctx context.Context, jids ...string) error
}

// vcardReader reads vCards, XEP-0054 (vcard.go).
type vcardReader interface {
	VCard(ctx context.Context, jid string) (xmppconn.VCard, error)
}

// roomMember lists, joins and leaves rooms, XEP-0045 (rooms.go).
type roomMember interface {
	MUCService(ctx context.Context) (string, error)
	Rooms(ctx context.Context, service string) ([]xmppconn.RoomItem, error)
	JoinRoom(ctx context.Context, j xmppconn.RoomJoin) (xmppconn.JoinedRoom, bool, error)
	LeaveRoom(ctx context.Context, room string) error
	SetSubject(ctx context.Context, room, subject string) error
	JoinedRooms() []xmppconn.JoinedRoom
}

// archiveReader pages through the message archive, XEP-0313 (history.go).
type archiveReader interface {
	History(ctx context.Context, q xmppconn.HistoryQuery) (xmppconn.HistoryPage, error)
}

// stanzaRelay is what the bridge uses to put browser clients on the
// user's stream (bridge.go, bridgerooms.go): raw stanzas out, the user's
// presence, and the rooms to replay on attach.
type stanzaRelay interface {
	SendStanza(ctx context.Context, st *xmppconn.Stanza) error
	SendPresence(ctx context.Context, p xmppconn.Presence) error
	Presence() xmppconn.Presence
	JoinedRooms() []xmppconn.JoinedRoom
}

// xmppSession is one user's XMPP stream as the registry keeps it: every
// consumer's port, nothing else.
type xmppSession interface {
	streamLife
	avatarPublisher
	messenger
	presenceSender
	rosterEditor
	blocker
	vcardReader
	roomMember
	archiveReader
	stanzaRelay
}

// dialFunc opens an XMPP stream; xmppconn.Dial in production.
type dialFunc func(ctx context.Context, cfg xmppconn.Config) (xmppSession, error)

// sessionReader is what the sidecar uses of the PHP session store
// (phpsession.Reader): the API and the janitor look sessions up, /readyz
// asks whether the store answers.
type sessionReader interface {
	Lookup(ctx context.Context, id string) (*phpsession.Session, error)
	LookupHashed(ctx context.Context, id phpsession.HashedID) (*phpsession.Session, error)
	Ready(ctx context.Context) error
}

// ownership is what the registry asks of the cluster (cluster.go). It is
// nil on a single node, which then behaves as if the cluster did not
// exist.
type ownership interface {
	// acquire returns nil when this node holds the session's lease or
	// has just taken it; ErrNotOwner when another node does.
	acquire(ctx context.Context, sk string) error
	// opened and closed tell that the session's stream went up (for the
	// PHP session id) or was closed for reason.
	opened(ctx context.Context, sk, id string)
	closed(sk, reason string)
	// forgotten: the registry dropped the session.
	forgotten(sk string)
	// gate wraps a stream's AuthGate so that no reconnection logs in
	// after the lease is lost.
	gate(sk string, inner xmppconn.AuthGate) xmppconn.AuthGate
	// stepAside refuses a reconnection of a stream whose lease another
	// node holds, and puts it off (xmppconn.ErrNotAdmitted) while the
	// lease cannot be checked (xmppconn.Config.BeforeReconnect).
	stepAside(ctx context.Context, sk string) error
	// durable gives a session opening its event log and its state store
	// in Redis, continuing what an earlier owner left, and returns the
	// XEP-0198 state to resume, if any (clusterstate.go).
	durable(ctx context.Context, s *session, newLog func() *eventLog) (*xmppconn.ResumeState, error)
	// warm takes the connection prepared for the session's resumption
	// by a node handing it over, if any (clusterwarm.go).
	warm(sk string) *xmppconn.Warm
}

// detacher is what a lost lease's detach (cluster.go) asks of a stream
// that offers it (*xmppconn.Conn; asserted, not part of xmppSession): to
// let go of its XMPP session without ending it, with no unavailable and no
// </stream>, so the server keeps the session hibernating until the new
// owner's login replaces it.
type detacher interface {
	Detach(ctx context.Context) (xmppconn.ResumeState, error)
}
