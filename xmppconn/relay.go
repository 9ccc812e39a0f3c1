package xmppconn

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
)

// stableOnline is how long a stream must have stayed up for the backoff to
// start again from MinBackoff.
const stableOnline = time.Minute

// shutdownBackoff is the least wait before reconnecting after the server
// sent a system-shutdown stream error.
const shutdownBackoff = 3 * time.Second

// run is the Conn's goroutine: it reads the stream and, when it breaks,
// reconnects. It is one logical goroutine run as a relay: whenever the
// stream goes idle after it handled elements (or after a login), it starts
// its successor and returns (errRelay), so that the goroutine parked on an
// idle stream has a fresh, minimal stack. The Handler, XML parsing and the
// TLS handshake grow a goroutine's stack to 8 KB and more, and Go gives a
// grown stack back only slowly, a GC at a time, halving it; with thousands
// of idle users that was several KB each. The last goroutine of the relay
// closes done.
func (c *Conn) run(s *stream) {
	if c.continuing {
		// Resume: say whether the session was continued.
		r := c.resumed.Load()
		c.emit(&StateChange{State: StateOnline, Resumed: r, ContinuityLost: !r})
	} else {
		c.emit(&StateChange{State: StateOnline})
	}
	c.loop(s, &runState{backoff: c.cfg.MinBackoff, onlineSince: time.Now()}, true)
}

// runState is what the relay hands from one goroutine to the next.
type runState struct {
	backoff     time.Duration
	onlineSince time.Time
}

// errRelay is readLoop's way to ask for a fresh goroutine.
var errRelay = errors.New("xmppconn: relay to a fresh goroutine")

// loop is one goroutine of the relay; grown says its stack is not fresh.
func (c *Conn) loop(s *stream, st *runState, grown bool) {
	for {
		err := c.readLoop(s, grown)
		if err == errRelay {
			go c.loop(s, st, false)
			return
		}
		s.close()
		c.wmu.Lock()
		if c.s == s {
			c.s = nil
		}
		c.wmu.Unlock()
		if c.closing.Load() {
			if c.detached.Load() {
				c.finish(ErrDetached, StateOffline, ErrDetached)
				return
			}
			c.finish(ErrClosed, StateOffline, nil)
			return
		}
		c.log.Info("xmppconn: stream broken", "err", err)
		if !c.cfg.Reconnect || errors.Is(err, ErrStreamConflict) {
			// conflict: another session took our resource; fighting
			// back would make the two kick each other forever.
			c.finish(err, StateOffline, err)
			return
		}
		c.dropRefused(err)
		c.setState(StateReconnecting)
		c.emit(&StateChange{State: StateReconnecting, Err: err})
		if time.Since(st.onlineSince) >= stableOnline {
			st.backoff = c.cfg.MinBackoff
		}
		if errors.Is(err, ErrStreamSystemShutdown) {
			// The server announced it is stopping: it may still accept
			// logins for a moment and then drop them silently, so skip
			// the quick first retry and give it time to come back.
			st.backoff = max(st.backoff, min(max(2*c.cfg.MinBackoff, shutdownBackoff), c.cfg.MaxBackoff))
		}
		var resumed bool
		s, resumed, err = c.reconnect(&st.backoff)
		if err != nil {
			state := StateOffline
			if errors.Is(err, ErrAuth) {
				state = StateAuthFailed
			}
			if c.closing.Load() {
				err = ErrClosed
				if c.detached.Load() {
					err = ErrDetached
				}
			}
			c.finish(err, state, err)
			return
		}
		st.onlineSince = time.Now()
		c.setState(StateOnline)
		c.emit(&StateChange{State: StateOnline, Resumed: resumed, ContinuityLost: !resumed})
		grown = true // the login grew this goroutine's stack
	}
}

// finish records why the Conn stopped, fails everything waiting, and
// closes done: the relay's last goroutine ends.
func (c *Conn) finish(err error, st State, evErr error) {
	defer close(c.done)
	c.err = err
	c.setState(st)
	c.mu.Lock()
	for _, w := range c.pending {
		w.ch <- iqResult{err: ErrClosed}
	}
	c.pending = nil
	c.mu.Unlock()
	c.wmu.Lock()
	c.queue = nil
	c.wmu.Unlock()
	c.emit(&StateChange{State: st, Err: evErr})
}

// reconnect retries establish with capped, jittered exponential backoff
// until it succeeds, Close is called, authentication fails, or
// BeforeReconnect stops the Conn. An attempt refused before its dial (by
// the ConnectGate, or BeforeReconnect's "not now") does not grow the
// backoff.
func (c *Conn) reconnect(backoff *time.Duration) (*stream, bool, error) {
	quick := *backoff == c.cfg.MinBackoff
	for {
		wait := *backoff
		if quick {
			wait /= 4 // a quick first retry: most breaks are blips or restarts
		}
		wait = wait/2 + rand.N(wait/2+1)
		t := time.NewTimer(wait)
		select {
		case <-c.closeCtx.Done():
			t.Stop()
			return nil, false, ErrClosed
		case <-t.C:
		}
		notNow, stop := c.gateReconnect()
		if stop != nil {
			return nil, false, stop
		}
		err := notNow
		if err == nil {
			var s *stream
			var resumed bool
			ctx, cancel := context.WithTimeout(c.closeCtx, c.cfg.IQTimeout+c.cfg.WriteTimeout)
			s, resumed, err = c.establish(ctx)
			cancel()
			if err == nil {
				// A stream that breaks again soon will wait longer: a
				// flapping server must not get a reconnection storm.
				c.growBackoff(backoff)
				return s, resumed, nil
			}
		}
		if errors.Is(err, ErrAuth) || c.closing.Load() {
			return nil, false, err
		}
		// A refusal before the dial (the ConnectGate's, BeforeReconnect's
		// "not now") keeps the backoff where it is, neither grown nor
		// reset: the server saw nothing, so it gave no reason to slow
		// down, and a gate that refuses for a while (one asking a
		// database that is down) must not leave the stream a long wait
		// behind once it admits. An AuthGate's refusal grows it as a
		// failure does: it came once the stream was up, after a
		// connection and a TLS handshake the server paid for, and a
		// flat backoff would make the server pay that every MinBackoff
		// for as long as the gate refuses (an hour, for a limiter of
		// login failures).
		//
		// A quick retry refused or failed is spent either way, and does
		// not grow the backoff: the next attempt waits MinBackoff, as
		// after a failed quick retry, rather than asking the gate again
		// at MinBackoff/4, four times as often.
		if !quick && notNow == nil && !refusedBeforeDial(err) {
			c.growBackoff(backoff)
		}
		quick = false
		c.log.Info("xmppconn: reconnect failed", "err", err, "next_wait", *backoff)
	}
}

// readLoop reads and handles elements until the stream breaks. After
// PingInterval without inbound traffic it sends a probe (<r/> or a ping);
// without an answer within PingTimeout the stream is declared dead.
//
// Once it handled an element (or from the start when grown: the goroutine
// just logged in), it returns errRelay instead of waiting on an idle
// stream; probing is then false, so the successor starts from the same
// state. XEP-0198's <r/> and <a/> do not count: Prosody asks for an ack a
// moment after every stanza it delivers, so the <r/> usually arrives on
// the fresh successor, and answering it needs no deeper stack than
// reading it did; relaying again cost a goroutine and the regrowth of
// the next one's stack per delivered message (docs/PERFORMANCE.md).
func (c *Conn) readLoop(s *stream, grown bool) error {
	probing := false
	handled := grown
	for {
		if s.br.Buffered() == 0 {
			if handled {
				return errRelay
			}
			wait := c.cfg.PingInterval
			if probing {
				wait = c.cfg.PingTimeout
			}
			s.nc.SetReadDeadline(time.Now().Add(wait))
			if err := s.br.wait(); err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					if probing {
						return fmt.Errorf("%w: no reply to keepalive within %v", ErrTimeout, c.cfg.PingTimeout)
					}
					probing = true
					if err := c.probe(s); err != nil {
						return err
					}
					continue
				}
				return s.readErr(err)
			}
			// Bound the rest of this element too: a peer that stalls
			// mid-stanza is as dead as a silent one.
			s.nc.SetReadDeadline(time.Now().Add(c.cfg.PingInterval + c.cfg.PingTimeout))
		}
		probing = false
		n, err := s.readOne()
		if err != nil {
			return err
		}
		s.fr.release()
		if n != nil && !c.handleSM(s, n) {
			c.handle(s, n)
			handled = true
		}
	}
}

// probe asks the server for a sign of life.
func (c *Conn) probe(s *stream) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.sm.enabled {
		s.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
		return c.requestAckLocked(s)
	}
	raw := []byte(`<iq type="get" id="` + c.newID() + `" to="` + escAttr(c.cfg.Domain) + `"><ping xmlns="` + nsPing + `"/></iq>`)
	return c.writeLocked(s, raw, true)
}

func (c *Conn) growBackoff(b *time.Duration) {
	*b *= 2
	if *b > c.cfg.MaxBackoff {
		*b = c.cfg.MaxBackoff
	}
}
