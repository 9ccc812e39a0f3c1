package xmppconn

import (
	"context"
	"errors"
)

// AuthGate admits authentication attempts. When Config.AuthGate is set,
// the Conn asks it before the SASL exchange of every connection attempt,
// the first one in Dial and every reconnection, once the transport, TLS
// and the stream header are up (an attempt whose dial fails asks
// nothing), and tells it the outcome as soon as the SASL exchange ends,
// before resource binding: an admission is held for that exchange only.
// An attempt waiting for admission holds its open stream meanwhile
// (bounded by ctx), and one refused has cost the server a connection and,
// with TLS, a handshake, but never a look at the credentials. A caller that runs many Conns against one server gives them one
// gate, so that it sees every login of the process: servers count login
// failures per source address and ban it past a number (ejabberd's
// mod_fail2ban), and every Conn of a process shares that address.
//
// Acquire blocks until the attempt may go, or returns an error to refuse
// it; ctx bounds the wait (Dial's context, or, for a reconnection, the
// reconnection's timeout and Close). knownGood reports that this Conn's
// credentials authenticated before (Acquire for a reconnection). A refusal
// is not an authentication failure: Dial returns the gate's error wrapped
// with ErrNotAdmitted, and the reconnection loop retries after its
// backoff, asking again. The refusal grows the backoff as a failed
// attempt does, since it cost the server a connection and a handshake:
// a gate that can refuse for long without the server (a database that
// does not answer) belongs rather in Config.BeforeReconnect, asked before
// the dial.
//
// The release function must be called exactly once per admitted attempt;
// the Conn calls it, with AuthAborted when the attempt ended without a
// verdict from the server (the stream failed, or the server answered
// temporary-auth-failure).
type AuthGate interface {
	Acquire(ctx context.Context, knownGood bool) (release func(AuthResult), err error)
}

// ConnectGate admits connection attempts: when Config.ConnectGate is set,
// Dial, Prepare and every reconnection ask it before they dial, and
// release it once the stream is secured and its features read, or the
// attempt failed. A caller that runs many Conns against one server gives
// them one gate bounding the attempts in flight: a server that accepts
// one connection per turn of its event loop (Prosody 0.12) lets a storm
// of them wait in its accept queue, where those whose client gave up
// still cost it an accept, a TLS handshake that fails and a turn; the
// gate keeps the waiting in the client, where a wait that runs out costs
// the server nothing. Acquire blocks until the attempt may go, bounded by
// ctx, or returns an error to refuse it (the attempt fails with it
// wrapped with ErrNotAdmitted before any connection; a reconnection
// retries after its backoff, which the refusal, having cost the server
// nothing, does not grow); release is called exactly once per admitted
// attempt.
type ConnectGate interface {
	Acquire(ctx context.Context) (release func(), err error)
}

// AuthResult is how an attempt admitted by an AuthGate ended.
type AuthResult int

const (
	// AuthAborted: no verdict from the server on the credentials. A
	// server's <failure/> lost with the connection is also reported so:
	// the Conn cannot tell it from a connection lost before it.
	AuthAborted AuthResult = iota
	// AuthSucceeded: the server accepted the credentials.
	AuthSucceeded
	// AuthFailed: the server refused them (ErrAuth).
	AuthFailed
)

func (r AuthResult) String() string {
	switch r {
	case AuthSucceeded:
		return "succeeded"
	case AuthFailed:
		return "failed"
	}
	return "aborted"
}

// authTicket is one attempt admitted by the gate; end reports its outcome
// once, later calls do nothing.
type authTicket struct{ release func(AuthResult) }

func (t *authTicket) end(r AuthResult) {
	if t.release != nil {
		f := t.release
		t.release = nil
		f(r)
	}
}

// resultOf classifies the error of a SASL exchange.
func resultOf(err error) AuthResult {
	switch {
	case err == nil:
		return AuthSucceeded
	case errors.Is(err, ErrAuth):
		return AuthFailed
	}
	return AuthAborted
}
