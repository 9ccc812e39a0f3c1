package xmppconn

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrAuth: the server rejected the credentials (SASL not-authorized,
	// account-disabled, credentials-expired...). It is permanent for this
	// user and password: Conn never retries it and callers must not either.
	ErrAuth = errors.New("xmppconn: authentication failed")

	// ErrTLSRequired: TLS was required but the server did not offer it, or
	// plaintext was requested for a non-loopback address.
	ErrTLSRequired = errors.New("xmppconn: TLS required")

	// ErrClosed: the connection was closed by Close, or gave up for good.
	ErrClosed = errors.New("xmppconn: connection closed")

	// ErrTimeout: an IQ or a write did not complete in time.
	ErrTimeout = errors.New("xmppconn: timeout")

	// ErrNotConnected: the stream is down (reconnecting) and the operation
	// cannot be queued (IQ requests). Messages and presence are queued
	// instead and sent once the stream is back.
	ErrNotConnected = errors.New("xmppconn: not connected")

	// ErrInvalidArgument: a value given to a Conn method is not one XMPP
	// allows: a message type, presence show, chat state, subscription
	// action, priority, avatar hash or history query outside the rules of
	// values.go and mam.go. The error wrapping it names the field, e.g.
	// `xmppconn: invalid argument: chat state "sleeping" is not one of
	// active, composing, paused, inactive, gone`. It is the caller's
	// mistake, never the server's: nothing was sent.
	ErrInvalidArgument = errors.New("xmppconn: invalid argument")

	// ErrInvalidJID: a JID failed RFC 7622 validation.
	ErrInvalidJID = errors.New("xmppconn: invalid JID")

	// ErrConfig: a Config field is invalid.
	ErrConfig = errors.New("xmppconn: invalid configuration")

	// ErrStanzaTooLarge: the server sent an element over
	// Config.MaxStanzaSize that could not be skipped (not a stanza, nested
	// too deep, or going on past 16 times the limit: the stream is
	// closed), or the reply to a request was over it (the request fails,
	// the stream stays up).
	ErrStanzaTooLarge = errors.New("xmppconn: stanza too large")

	// ErrSendTooLarge: a stanza to send is over Config.MaxSendSize once
	// encoded; it was not sent nor queued.
	ErrSendTooLarge = errors.New("xmppconn: stanza too large to send")

	// ErrProtocol: the server violated the protocol.
	ErrProtocol = errors.New("xmppconn: protocol error")

	// ErrUnsupported: the server (or the room) does not offer the feature
	// asked for, e.g. a message archive (XEP-0313).
	ErrUnsupported = errors.New("xmppconn: feature not supported by the server")

	// ErrNotAdmitted: Config.ConnectGate or Config.AuthGate refused an
	// attempt, before its dial or before its SASL exchange. The error
	// wrapping it wraps the gate's own error too, and says which gate:
	// `xmppconn: connection not admitted: <the gate's error>` or
	// `xmppconn: authentication not admitted: <the gate's error>`.
	// Config.BeforeReconnect wraps it in an error of its own to answer
	// "not now". The server never saw the credentials. A reconnection
	// refused before its dial (by the ConnectGate, or BeforeReconnect's
	// "not now") cost the server nothing and asks again after the same
	// wait, the backoff neither grown nor reset; one the AuthGate refused
	// cost it a connection and a TLS handshake, and grows the backoff as
	// a failed attempt does.
	ErrNotAdmitted = errors.New("xmppconn: not admitted")
)

// notAdmitted is a gate's refusal of an attempt's connection
// (Config.ConnectGate) or authentication (Config.AuthGate), what; it
// matches ErrNotAdmitted and the gate's error. beforeDial: it came before
// the attempt dialled, so it cost the server nothing.
type notAdmitted struct {
	what       string
	err        error
	beforeDial bool
}

func (e *notAdmitted) Error() string {
	return "xmppconn: " + e.what + " not admitted: " + e.err.Error()
}

func (e *notAdmitted) Unwrap() []error { return []error{ErrNotAdmitted, e.err} }

// refusedBeforeDial reports whether err is a gate's refusal that came
// before the attempt's dial: the ConnectGate's, not the AuthGate's, which
// came once the stream was up.
func refusedBeforeDial(err error) bool {
	var na *notAdmitted
	return errors.As(err, &na) && na.beforeDial
}

// StreamError is a stream-level error received from (or sent to) the server,
// carrying its RFC 6120 §4.9.3 condition, e.g. "conflict", "system-shutdown".
// Test for a condition with errors.Is and the values below (or any
// *StreamError: see Is), not by comparing strings.
type StreamError struct {
	Condition string
	Text      string
}

// Stream error conditions (RFC 6120 §4.9.3) that the Conn and its callers
// act on. Each matches any *StreamError with its condition, whatever its
// text: errors.Is(conn.Err(), ErrStreamConflict).
var (
	// ErrStreamConflict: another session took this resource; the Conn
	// stops rather than fight back.
	ErrStreamConflict = &StreamError{Condition: "conflict"}
	// ErrStreamSystemShutdown: the server is stopping; the Conn waits
	// longer before reconnecting.
	ErrStreamSystemShutdown = &StreamError{Condition: "system-shutdown"}
	// ErrStreamPolicyViolation: the server refused what was sent, e.g. a
	// stanza over its size limit.
	ErrStreamPolicyViolation = &StreamError{Condition: "policy-violation"}
)

// Is reports whether e matches target, a *StreamError: target's Condition
// must equal e's unless it is empty (its Text is ignored), so
// &StreamError{} matches every stream error. A *StreamError never matches
// a *StanzaError, nor the reverse.
func (e *StreamError) Is(target error) bool {
	t, ok := target.(*StreamError)
	if !ok || e == nil || t == nil {
		return false
	}
	return t.Condition == "" || t.Condition == e.Condition
}

func (e *StreamError) Error() string {
	if e.Text != "" {
		return fmt.Sprintf("xmppconn: stream error %s: %s", e.Condition, e.Text)
	}
	return "xmppconn: stream error " + e.Condition
}

// StanzaError is an error reply to an IQ (RFC 6120 §8.3), e.g. type "cancel",
// condition "item-not-found". Test for a condition with errors.Is and the
// values below (or any *StanzaError: see Is), not by comparing strings.
type StanzaError struct {
	Type      string
	Condition string
	Text      string
}

// Stanza error conditions (RFC 6120 §8.3.3) that callers act on. Each
// matches any *StanzaError with its condition, whatever its type and text:
// errors.Is(err, ErrItemNotFound).
var (
	ErrItemNotFound          = &StanzaError{Condition: "item-not-found"}
	ErrServiceUnavailable    = &StanzaError{Condition: "service-unavailable"}
	ErrFeatureNotImplemented = &StanzaError{Condition: "feature-not-implemented"}
	ErrPolicyViolation       = &StanzaError{Condition: "policy-violation"}
)

// Is reports whether e matches target, a *StanzaError: target's Type and
// Condition must equal e's where they are not empty (its Text is ignored),
// so &StanzaError{} matches every stanza error and
// &StanzaError{Type: "auth"} every one of type auth.
func (e *StanzaError) Is(target error) bool {
	t, ok := target.(*StanzaError)
	if !ok || e == nil || t == nil {
		return false
	}
	return (t.Type == "" || t.Type == e.Type) && (t.Condition == "" || t.Condition == e.Condition)
}

func (e *StanzaError) Error() string {
	if e.Text != "" {
		return fmt.Sprintf("xmppconn: stanza error %s/%s: %s", e.Type, e.Condition, e.Text)
	}
	return fmt.Sprintf("xmppconn: stanza error %s/%s", e.Type, e.Condition)
}
