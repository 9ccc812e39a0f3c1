// Package xmppconn is a lean, resumable XMPP client connection (RFC 6120,
// RFC 6121) for holding many long-lived, mostly idle sessions in one
// process.
//
// Dial opens a stream over STARTTLS (default), direct TLS (XEP-0368) or, on a
// loopback address only, plaintext; authenticates with SCRAM-SHA-256,
// SCRAM-SHA-1 or PLAIN (the strongest offered, exactly one attempt); binds
// the caller's resource; requests the roster (servers send roster pushes
// and subscription approvals only to resources that did, RFC 6121 §2.1.6);
// and sends the initial presence. The returned Conn
// sends messages, presence, subscriptions, chat states (XEP-0085) and roster
// changes, answers ping (XEP-0199), disco#info and version requests, and
// hands everything it receives to a Handler as typed events: messages (with
// XEP-0203 delay stamps and unwrapped XEP-0280 carbons), presence,
// subscriptions, roster pushes, chat states, XEP-0184 receipts (which it
// also answers) and state changes. Presence events carry the contact's
// XEP-0153 avatar hash. History reads one-to-one and room archives
// (XEP-0313 message archive management, paged with XEP-0059); archive
// results go to the query that asked for them, only from the archive
// itself, and never to the Handler.
//
// Group chat (XEP-0045, muc.go): MUCService discovers the server's MUC
// service, Rooms lists its rooms, JoinRoom enters (or creates, as an
// instant room) a room with a nickname and optional password, LeaveRoom
// and SetSubject do what they say, and room presences arrive as *Occupant
// events with affiliation and role. Rooms are joined again after a fresh
// (not resumed) stream, asking only for the history that may have been
// missed and dropping repeats.
//
// Stream management (XEP-0198) is enabled when the server offers it: the
// Conn acknowledges inbound stanzas only after the Handler returned, keeps
// unacknowledged outbound stanzas, and after a broken stream resumes it or,
// if resumption fails, starts a fresh stream, re-sends what the server had
// not acknowledged and reports StateChange{ContinuityLost: true}. With
// Config.Reconnect it reconnects with capped, jittered exponential backoff,
// never after an authentication failure (ErrAuth), so that a stale password
// cannot trigger a server's login-failure ban. Config.AuthGate, if set,
// admits every attempt, the first and each reconnection, and learns each
// outcome: one gate shared by every Conn of a process bounds the failures
// the server sees from its address. A reconnection refused before its
// dial, by Config.ConnectGate or by Config.BeforeReconnect's "not now"
// (both ErrNotAdmitted), leaves the backoff as it was, neither grown nor
// reset: the server saw nothing, and a gate that refuses for a while does
// not leave the stream a long wait behind once it admits again. One the
// AuthGate refused grows it as a failure does: that gate is asked once
// the stream is up, so each refusal cost the server a connection and a
// TLS handshake, which a flat backoff would repeat every MinBackoff for
// as long as it refuses.
//
// A XEP-0198 session can outlive its process (resume.go): with
// Config.ResumeStore the Conn reports every change of its state as it
// happens (inbound counts before they are acknowledged, stanzas before
// they are written, the server's acks), Resume continues a stored
// ResumeState on a new connection from any process, falling back to a
// fresh login that says so (ContinuityLost), and Detach lets go of a
// session without ending it, for a graceful hand-over. Prepare
// (warm.go) does the costly part of that resumption ahead (dial, TLS,
// SASL, the stream restart), while the old Conn still serves the session;
// Warm.Resume then continues it in one round trip, or logs in afresh if
// the prepared connection died or expired meanwhile.
//
// Each Conn runs exactly one goroutine at a time, which reads the stream,
// delivers events and, while the stream is down, reconnects. It is a
// relay: when the stream goes idle after traffic or a login, the goroutine
// starts its successor and ends, so that what waits on an idle stream is a
// fresh goroutine with the smallest stack (2 KB) instead of one grown by
// parsing, the Handler or the TLS handshake. Writes happen on the
// caller's goroutine, serialized by a mutex and bounded by a deadline.
// Inbound stanzas are framed by a small scanner that enforces
// Config.MaxStanzaSize while reading and parsed one at a time, so a large
// stanza leaves no large buffer behind. A stanza over the limit is read
// through without being kept, counted for XEP-0198 and reported as
// *Dropped: one contact's huge message costs the user that message, not
// the stream. Stanzas sent are bounded by Config.MaxSendSize, and one the
// server refuses with a policy-violation stream error leaves the resend
// queue (*SendFailed). An idle connection waits with a
// one-byte read and holds no read buffer at all (crypto/tls itself keeps
// its largest record buffer, golang/go#43563). Pass one shared
// Config.TLSConfig with ServerName and MinVersion set so that connections
// do not each copy it.
//
// What a caller puts into a stanza is checked by the Conn, by one rule per
// value (values.go): message types, presence shows, chat states and
// subscription actions are typed strings with Parse functions, and
// Message.Outgoing and Presence.Validate are what Send and SendPresence
// check, for a caller that wants to refuse a bad value early. Every such
// refusal wraps ErrInvalidArgument and names the field. A message is read
// by one parser whether it arrives live or from an archive
// (ArchivedMessage embeds Message); server refusals are *StanzaError,
// matched with errors.Is against ErrItemNotFound and its siblings.
//
// The Handler runs on the Conn's goroutine: it may send, but must not wait
// for IQ results (Roster, SetRosterItem, RemoveRosterItem, SendIQ, History).
package xmppconn
