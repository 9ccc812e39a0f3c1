package xmppconn

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// A make-before-break resumption: the costly part of a login (TCP, TLS,
// the SASL exchange and the stream restart) done ahead of time, while the
// session's current Conn still serves it, so that taking the session over
// later costs one round trip (<resume/>, <resumed/>) instead of a whole
// login. Prosody 0.12 (mod_smacks handle_resume) and ejabberd accept the
// <resume/> of an authenticated stream that bound no resource, and close
// the session's old connection if it is still attached.

// DefaultWarmLife is how long a Warm waits for its resumption when
// Prepare is given no life: long enough for a hand-over, short enough
// that an unused one does not hold a server connection for nothing.
const DefaultWarmLife = 30 * time.Second

// Warm is a connection prepared for a resumption (Prepare): connected,
// secured, authenticated, its stream restarted, and no resource bound.
// It is used once, by Resume, or closed. It is bounded in life: once its
// life is over (or the server closed it meanwhile) Resume dials afresh.
// It starts no goroutine; its timer closes the connection when its life
// ends. Its methods are safe for concurrent use.
type Warm struct {
	cfg Config // normalized
	mu  sync.Mutex
	s   *stream // nil once used, closed or expired
	t   *time.Timer
}

// Prepare dials, secures and authenticates a connection for cfg's account
// (through cfg.AuthGate, as Dial), restarts the stream and keeps it, not
// bound to any resource, for a later Resume: at most life (DefaultWarmLife
// when life <= 0), after which the connection is closed. ctx bounds the
// preparation only. Errors are Dial's, and ErrNotResumable when the
// server offers no stream management on the restarted stream: it could
// not resume a session on it.
func Prepare(ctx context.Context, cfg Config, life time.Duration) (*Warm, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	if life <= 0 {
		life = DefaultWarmLife
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.IQTimeout+cfg.WriteTimeout)
		defer cancel()
	}
	s, err := dialStream(ctx, &cfg)
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	ok := false
	defer func() {
		s.unwatch()
		if !ok {
			s.close()
		}
	}()
	var ticket authTicket
	if g := cfg.AuthGate; g != nil {
		release, err := g.Acquire(ctx, false)
		if err != nil {
			return nil, &notAdmitted{what: "authentication", err: err}
		}
		ticket.release = release
		defer ticket.end(AuthAborted)
	}
	err = s.authenticate(cfg.User, cfg.Password)
	ticket.end(resultOf(err))
	if err == nil {
		err = s.restart(cfg.Domain)
	}
	if err != nil {
		return nil, ctxErr(ctx, err)
	}
	if s.features.child(nsSM, "sm") == nil || cfg.DisableStreamManagement {
		return nil, fmt.Errorf("%w: the server offers no stream management", ErrNotResumable)
	}
	if !s.unwatch() {
		return nil, ctxErr(ctx, context.Canceled)
	}
	s.unwatch = func() bool { return false }
	s.nc.SetDeadline(time.Time{})
	s.fr.release()
	ok = true
	w := &Warm{cfg: cfg, s: s}
	w.mu.Lock() // the timer's Close waits for w.t
	w.t = time.AfterFunc(life, func() { w.Close() })
	w.mu.Unlock()
	return w, nil
}

// Close closes the connection of a Warm not used. It is idempotent, and
// does nothing once Resume took the connection.
func (w *Warm) Close() error {
	if s := w.take(); s != nil {
		s.close()
	}
	return nil
}

// take returns the connection, once: nil when it was used, closed or
// expired.
func (w *Warm) take() *stream {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.s
	w.s = nil
	if s != nil {
		w.t.Stop()
	}
	return s
}

// Resume is the package's Resume on the prepared connection: it sends
// <resume/> with st's id and count right away, with no login. When the
// Warm cannot serve (its life ended, Close or Resume was called before,
// it was prepared for another server or account than cfg's, or the
// server closed the connection meanwhile) it logs in on a new connection
// as Resume does; Conn.Warmed tells which it was. What Resume refuses
// (st invalid, or for another account) is refused here too, and the Warm
// is closed. The Warm is spent either way.
func (w *Warm) Resume(ctx context.Context, cfg Config, st ResumeState) (*Conn, error) {
	s := w.take()
	if s != nil {
		n, err := cfg.normalize()
		if err != nil || n.Addr != w.cfg.Addr || n.Domain != w.cfg.Domain || n.TLS != w.cfg.TLS ||
			n.User != w.cfg.User || n.Password != w.cfg.Password {
			s.close()
			s = nil
		}
	}
	c, err := resume(ctx, cfg, st, s)
	if err != nil && s != nil {
		s.close() // refused before it was tried; a no-op when it was
	}
	return c, err
}

// Warmed reports whether the Conn's first stream was a Warm's connection
// (Warm.Resume): false when it logged in afresh, as Dial and Resume do.
func (c *Conn) Warmed() bool { return c.warmed.Load() }
