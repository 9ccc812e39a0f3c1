package sidecar

import (
	"context"
	"log/slog"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// Expresso 2.5's messenger ends its BOSH session with the same
// <body type="terminate"><presence type="unavailable"/></body> when the
// user picks "offline" in its status menu as when a page unloads (the
// expressoMail1_2 trees, on every navigation). A reload must not flap the
// user's presence; "offline" must take the user offline. The grace
// period tells the two apart by what follows: a page of the same PHP
// session attaching within --offline-grace was a reload (nothing is
// sent); nobody attaching was the user leaving, and the user's stream
// says unavailable. The stream itself stays logged in: /v1 and SSE go on,
// messages to the user's bare JID go to the server's offline storage
// (delivered when the user is available again), and the next available
// presence (a page's initial presence, POST /v1/presence) brings the user
// back.

// offlineGrace is a pending "offline" of one bridge; b.mu guards it.
type offlineGrace struct {
	timer *time.Timer
	gen   uint64            // bumped on every start and cancel
	want  xmppconn.Presence // the user's presence when it started
}

// graceSendTimeout bounds sending the unavailable presence.
const graceSendTimeout = 10 * time.Second

// startGrace starts the grace period after a client ended its stream with
// an unavailable presence: unless a client attaches or the user's
// presence changes within d, the user goes unavailable. d <= 0: never.
func (b *bridge) startGrace(d time.Duration, logger *slog.Logger) {
	if d <= 0 {
		return
	}
	conn, err := b.s.stream()
	if err != nil {
		return
	}
	cur := conn.Presence()
	if cur.Type == "unavailable" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	if b.grace.timer != nil {
		b.grace.timer.Stop()
	}
	b.grace.gen++
	gen := b.grace.gen
	b.grace.want = cur
	b.grace.timer = time.AfterFunc(d, func() { b.graceOver(gen, logger) })
}

// cancelGraceLocked forgets a pending grace: a client attached. b.mu is
// held.
func (b *bridge) cancelGraceLocked() {
	if b.grace.timer == nil {
		return
	}
	b.grace.timer.Stop()
	b.grace.timer = nil
	b.grace.gen++
}

// graceOver runs when the grace gen started ran out: with no client
// present (bound or still logging in) and the user's presence as it was,
// the user goes unavailable.
func (b *bridge) graceOver(gen uint64, logger *slog.Logger) {
	b.mu.Lock()
	if b.closed || b.grace.gen != gen || b.grace.timer == nil {
		b.mu.Unlock()
		return
	}
	b.grace.timer = nil
	want := b.grace.want
	lives := b.attachedLocked()
	b.mu.Unlock()
	for _, live := range lives {
		if live == nil || live() {
			return
		}
	}
	conn, err := b.s.stream()
	if err != nil {
		return // the stream is gone or coming back: nothing to say
	}
	if !samePresence(conn.Presence(), want) {
		return // changed since (POST /v1/presence): that choice stands
	}
	ctx, cancel := context.WithTimeout(context.Background(), graceSendTimeout)
	defer cancel()
	if err := conn.SendPresence(ctx, xmppconn.Presence{Type: "unavailable"}); err != nil {
		logger.Warn("offline after the grace period: unavailable not sent", "user", b.s.user, "session", b.s.short, "err", err)
		return
	}
	// An unavailable resource gets no presences: what is known now goes
	// stale, and the next available presence brings them all again.
	b.s.clearPresence()
	logger.Info("the user went offline from a page: unavailable after the grace period", "user", b.s.user, "session", b.s.short)
}

// attachedLocked returns, for each client attached and not cut off (bound
// or not), how to tell whether a page is still behind it: nil for a
// client that is present while attached (a WebSocket). b.mu is held.
func (b *bridge) attachedLocked() []func() bool {
	var lives []func() bool
	for c := range b.clients {
		c.mu.Lock()
		if !c.ended {
			lives = append(lives, c.live)
		}
		c.mu.Unlock()
	}
	return lives
}

// present reports whether a page is still behind the session: it holds a
// request, or made one within two polling intervals. A page that went
// away leaves neither (its held request ends with its connection).
func (bs *boshSession) present() bool {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	return !bs.done && (len(bs.held) > 0 || time.Since(bs.lastSeen) < 2*boshPolling)
}

// samePresence reports whether two broadcast presences show contacts the
// same (the avatar aside, which the stream adds).
func samePresence(a, b xmppconn.Presence) bool {
	norm := func(t string) string {
		if t == "" {
			return "available"
		}
		return t
	}
	return norm(a.Type) == norm(b.Type) && a.Show == b.Show && a.Status == b.Status && a.Priority == b.Priority
}
