package xmppconn

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// establish opens a stream, authenticates and resumes the previous XEP-0198
// session or binds a fresh one. On return the stream is installed as c.s.
func (c *Conn) establish(ctx context.Context) (*stream, bool, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.IQTimeout+c.cfg.WriteTimeout)
		defer cancel()
	}
	// A Warm's connection (Warm.Resume) is used once, for the first
	// stream: it is authenticated already.
	s, warm := c.warm, c.warm != nil
	c.warm = nil
	if warm {
		s.watch(ctx)
	} else {
		var err error
		if s, err = dialStream(ctx, &c.cfg); err != nil {
			return nil, false, ctxErr(ctx, err)
		}
	}
	ok := false
	defer func() {
		s.unwatch()
		if !ok {
			s.close()
			c.wmu.Lock()
			if c.s == s {
				c.s = nil
			}
			c.wmu.Unlock()
		}
	}()
	// The gate admits the SASL exchange only: the dial, TLS and the
	// stream header run before, so an admission is held for one round
	// trip, not four, and a gate that bounds attempts in flight does not
	// bound the login rate with them.
	var ticket authTicket
	if g := c.cfg.AuthGate; g != nil && !warm {
		release, err := g.Acquire(ctx, c.authenticated.Load())
		if err != nil {
			return nil, false, &notAdmitted{what: "authentication", err: err}
		}
		ticket.release = release
		defer ticket.end(AuthAborted) // the attempt ended before SASL did
	}
	resumed, err := c.negotiate(s, &ticket, warm)
	if err != nil {
		if warm {
			c.log.Info("xmppconn: the prepared connection failed; dialling afresh", "err", err)
		}
		return nil, false, ctxErr(ctx, err)
	}
	if !s.unwatch() {
		return nil, false, ctxErr(ctx, context.Canceled)
	}
	s.unwatch = func() bool { return false } // drop the reference to ctx
	s.nc.SetDeadline(time.Time{})
	s.features = nil // not needed any more; free it
	s.fr.release()
	ok = true
	c.resumed.Store(resumed)
	if warm {
		c.warmed.Store(true)
	}
	return s, resumed, nil
}

// ctxErr adds the context's error to err when the context ended (or its
// deadline passed: the socket deadline may fire before the context's timer).
func ctxErr(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); cerr == nil && ok && !time.Now().Before(dl) {
		cerr = context.DeadlineExceeded
	}
	if cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("%w (%w)", err, cerr)
	}
	return err
}

// negotiate runs SASL, then resumption or bind, session, SM enable, the
// features' bound hooks, the roster, initial presence, the features'
// restore hooks, and flushes what waited for a stream.
// The gate's ticket ends with the SASL exchange. A warm stream (Prepare)
// is authenticated and restarted already.
func (c *Conn) negotiate(s *stream, ticket *authTicket, warm bool) (resumed bool, err error) {
	if !warm {
		err = s.authenticate(c.cfg.User, c.cfg.Password)
		ticket.end(resultOf(err))
		if err != nil {
			return false, err
		}
		if err := s.restart(c.cfg.Domain); err != nil {
			return false, err
		}
	}
	c.authenticated.Store(true)
	smOffered := s.features.child(nsSM, "sm") != nil && !c.cfg.DisableStreamManagement
	c.wmu.Lock()
	prevID := c.sm.id
	c.wmu.Unlock()
	if smOffered && prevID != "" {
		ok, err := c.resume(s, prevID)
		if err != nil {
			return false, err
		}
		if ok {
			return true, nil
		}
	}
	// Fresh session: whatever the old one did not get acked is re-sent
	// once, after the initial presence.
	c.wmu.Lock()
	resend := c.sm.unacked
	c.sm = smState{}
	c.wmu.Unlock()
	c.inH.Store(0)

	if err := c.bind(s); err != nil {
		return false, err
	}
	if sess := s.features.child(nsSession, "session"); sess != nil && sess.child("", "optional") == nil {
		id := c.newID()
		if err := c.writeOn(s, []byte(`<iq type="set" id="`+id+`"><session xmlns="`+nsSession+`"/></iq>`)); err != nil {
			return false, err
		}
		if _, err := c.awaitIQ(s, id); err != nil {
			return false, fmt.Errorf("xmppconn: session: %w", err)
		}
	}
	if smOffered {
		if err := c.writeOn(s, []byte(`<enable xmlns="`+nsSM+`" resume="true"/>`)); err != nil {
			return false, err
		}
		n, err := c.await(s, func(n *node) bool { return n.is(nsSM, "enabled") || n.is(nsSM, "failed") })
		if err != nil {
			return false, err
		}
		if n.name.Local == "enabled" {
			c.wmu.Lock()
			c.sm.enabled = true
			if n.get("resume") == "true" || n.get("resume") == "1" {
				c.sm.id = n.get("id")
				c.sm.location = n.get("location")
				c.sm.max, _ = strconv.Atoi(n.get("max"))
			}
			c.wmu.Unlock()
		}
	}
	if err := c.saveFresh(); err != nil {
		return false, err
	}
	if err := c.freshBound(s); err != nil {
		return false, err
	}
	// Become an "interested resource" (RFC 6121 §2.1.6): servers send
	// roster pushes and subscription approvals only to resources that
	// requested the roster. The reply is awaited (so that pushes are
	// guaranteed once Dial returns) and dropped; Roster() fetches it for
	// callers that want it.
	rid := c.newID()
	if err := c.writeStanzaOn(s, []byte(`<iq type="get" id="`+rid+`"><query xmlns="`+nsRoster+`"/></iq>`)); err != nil {
		return false, err
	}
	// The presence the user last chose, not the initial one: a fresh
	// stream after a lost one must not turn "away" back into "available".
	// A user who broadcast unavailable stays so. It goes out right behind
	// the roster request, not after its reply: the server handles a
	// stream's stanzas in order, so the resource is interested before its
	// presence is broadcast, and the roster's reply still comes first;
	// the server reads both in one go and answers both in one write (one
	// read and one write less per login for it, issue 17's login storm,
	// and one round trip less for the login).
	if p, ok := c.freshPresence(); ok {
		if err := c.writeStanzaOn(s, encodePresence(p)); err != nil {
			return false, err
		}
	}
	if _, err := c.awaitIQ(s, rid); err != nil {
		var se *StanzaError
		if !errors.As(err, &se) && !errors.Is(err, ErrStanzaTooLarge) {
			return false, err
		}
	}
	// A fresh session has lost the server-side state of the features
	// (rooms joined): restore it before re-sending what may depend on it
	// (messages to the rooms).
	if err := c.freshRestore(s); err != nil {
		return false, err
	}
	for _, raw := range resend {
		if restoredByFeature(raw) {
			continue // redone just above (a room's join)
		}
		if err := c.writeStanzaOn(s, raw); err != nil {
			return false, err
		}
	}
	return false, c.install(s, len(resend) > 0)
}

// install flushes the queue and makes s the current stream. resent says
// that stanzas were re-sent, which deserves an ack request.
func (c *Conn) install(s *stream, resent bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closing.Load() {
		return ErrClosed
	}
	if len(c.queue) > 0 {
		resent = true
	}
	for len(c.queue) > 0 {
		if err := c.writeLocked(s, c.queue[0], true); err != nil {
			return err
		}
		c.queue[0] = nil
		c.queue = c.queue[1:]
	}
	c.queue = nil
	if resent && c.sm.enabled && len(c.sm.unacked) > 0 {
		c.requestAckLocked(s)
	}
	c.s = s
	return nil
}

// bind binds the configured resource and records the full JID.
func (c *Conn) bind(s *stream) error {
	if s.features.child(nsBind, "bind") == nil {
		return fmt.Errorf("%w: server offers no resource binding", ErrProtocol)
	}
	id := c.newID()
	req := `<iq type="set" id="` + id + `"><bind xmlns="` + nsBind + `">`
	if c.cfg.Resource != "" {
		req += `<resource>` + escText(c.cfg.Resource) + `</resource>`
	}
	req += `</bind></iq>`
	if err := c.writeOn(s, []byte(req)); err != nil {
		return err
	}
	n, err := c.awaitIQ(s, id)
	if err != nil {
		return fmt.Errorf("xmppconn: bind: %w", err)
	}
	j, err := ParseJID(n.child(nsBind, "bind").child("", "jid").textOrEmpty())
	if err != nil || j.Bare() != c.own {
		return fmt.Errorf("%w: bind returned an unexpected JID", ErrProtocol)
	}
	full := j.String()
	c.jid.Store(&full)
	return nil
}

func (n *node) textOrEmpty() string {
	if n == nil {
		return ""
	}
	return n.text
}

// await reads elements until match, handling everything else as usual.
func (c *Conn) await(s *stream, match func(*node) bool) (*node, error) {
	for {
		n, err := s.read()
		if err != nil {
			return nil, err
		}
		if match(n) {
			if n.name.Space == nsClient {
				c.countInbound()
			}
			return n, nil
		}
		c.handle(s, n)
	}
}

// awaitIQ waits for the result of the IQ with the given id; an error reply
// becomes *StanzaError.
func (c *Conn) awaitIQ(s *stream, id string) (*node, error) {
	n, err := c.await(s, func(n *node) bool {
		return n.is(nsClient, "iq") && n.get("id") == id && (n.get("type") == "result" || n.get("type") == "error")
	})
	if err != nil {
		return nil, err
	}
	if n.skipped > 0 {
		return nil, fmt.Errorf("%w: a reply of %d bytes", ErrStanzaTooLarge, n.skipped)
	}
	if n.get("type") == "error" {
		return nil, parseStanzaError(n)
	}
	return n, nil
}
