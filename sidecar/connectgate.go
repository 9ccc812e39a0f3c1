package sidecar

import (
	"context"
	"fmt"
)

// connectGate bounds the XMPP connection attempts in flight across the
// daemon (--xmpp-connect-limit): first logins, reconnections, takeovers,
// resumptions and the hand-over's preparations all dial through it, and
// each holds its place until its stream is secured and its features
// read (xmppconn.ConnectGate). Prosody 0.12 accepts one connection per
// turn of its event loop: a rolling restart at 2,000 users sent it
// hundreds of connections at once, its accept queue filled (4,096
// waiting), dials timed out and were tried again, and the connections
// their clients had given up still cost it an accept and a failed TLS
// handshake each, so nothing got through for minutes. Waiting here, an
// attempt whose login gives up costs the server nothing.
type connectGate struct {
	slots chan struct{} // nil: no limit
}

func newConnectGate(limit int) *connectGate {
	g := &connectGate{}
	if limit > 0 {
		g.slots = make(chan struct{}, limit)
	}
	return g
}

// Acquire is xmppconn.ConnectGate.Acquire.
func (g *connectGate) Acquire(ctx context.Context) (func(), error) {
	if g.slots == nil {
		return func() {}, nil
	}
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for one of the --xmpp-connect-limit connection attempts (%d): %w", errXMPP, cap(g.slots), ctx.Err())
	}
}
