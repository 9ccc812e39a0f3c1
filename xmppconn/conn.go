package xmppconn

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is one logged-in XMPP client stream, kept alive (and, with
// Config.Reconnect, re-established) until Close. Its methods are safe for
// concurrent use. The Handler may call Send, SendPresence, Subscribe and
// SendChatState, but must not wait for IQ results (Roster, SetRosterItem,
// RemoveRosterItem, SendIQ, History): the replies are read by the goroutine that
// runs the Handler.
type Conn struct {
	cfg Config
	log *slog.Logger
	own JID // own bare JID

	jid   atomic.Pointer[string]
	state atomic.Pointer[State]

	// ownAvatar is the user's XEP-0153 photo hash, added to every
	// broadcast presence once SetAvatarHash was called; lastShown is the
	// last broadcast presence, re-sent when the hash changes and after a
	// fresh stream.
	ownAvatar atomic.Pointer[string]
	lastShown atomic.Pointer[Presence]

	// wmu serializes writes and guards s, sm, queue and suspect.
	wmu   sync.Mutex
	s     *stream
	sm    smState
	queue [][]byte
	// suspect is the first byte of the largest unacknowledged stanza when
	// the stream last broke without saying why (dropRefused).
	suspect *byte

	// authenticated: these credentials were accepted once (AuthGate's
	// knownGood).
	authenticated atomic.Bool

	// inH is the number of inbound stanzas handled; only the goroutine
	// that reads the stream touches it.
	inH atomic.Uint32
	// redeliver is how many of the stanzas the server sends first on a
	// resumed stream this Conn handled already (resume): they are
	// skipped, neither handled nor counted again.
	redeliver atomic.Uint32

	// mu guards pending and mam. Both are made on first use and dropped
	// when empty again: a Go map never shrinks, and an idle Conn would
	// keep a few hundred bytes of slots for IQs long answered.
	mu      sync.Mutex
	pending map[string]*iqWait
	mam     map[string]*mamQuery // running archive queries by query id

	closing    atomic.Bool
	closeCtx   context.Context // canceled by Close
	closeStart context.CancelFunc
	done       chan struct{}
	err        error // set before done is closed

	idPrefix string
	idSeq    atomic.Uint64

	// mucMu guards rooms, the group chat rooms joined (muc.go).
	mucMu      sync.Mutex
	rooms      map[string]*mucRoom
	presence   Presence // our last broadcast show and status, for rooms
	mucService atomic.Pointer[string]

	// Cross-process resumption (resume.go): continuing says the Conn
	// was made by Resume; resumed that its stream is a resumed session;
	// detached that Detach stopped it.
	continuing bool
	resumed    atomic.Bool
	detached   atomic.Bool
	// warm is a Warm's connection for the first stream (warm.go), taken
	// by establish; warmed says the first stream was it.
	warm   *stream
	warmed atomic.Bool
}

// Dial connects, authenticates, binds Config.Resource and sends the initial
// presence. It returns once the stream is online, or an error: ErrAuth
// (permanent: do not retry), ErrTLSRequired, *StreamError, ErrConfig, or a
// wrapped network error.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	c := newConn(cfg)
	if err := c.start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// newConn makes a Conn for a normalized cfg.
func newConn(cfg Config) *Conn {
	var rnd [6]byte
	crand.Read(rnd[:])
	c := &Conn{
		cfg:      cfg,
		log:      cfg.Logger,
		own:      JID{Local: cfg.User, Domain: cfg.Domain},
		done:     make(chan struct{}),
		idPrefix: hex.EncodeToString(rnd[:]),
	}
	c.closeCtx, c.closeStart = context.WithCancel(context.Background())
	if p := cfg.InitialPresence; p != nil {
		c.presence = Presence{Show: p.Show, Status: p.Status}
	}
	c.setState(StateConnecting)
	return c
}

// start establishes the first stream and starts the Conn's goroutine.
func (c *Conn) start(ctx context.Context) error {
	s, _, err := c.establish(ctx)
	if err != nil && c.continuing && !errors.Is(err, ErrAuth) && ctx.Err() == nil {
		s, _, err = c.retryResume(ctx, err)
	}
	if err != nil {
		c.closeStart()
		c.setState(StateOffline)
		if errors.Is(err, ErrAuth) {
			c.setState(StateAuthFailed)
		}
		return err
	}
	c.setState(StateOnline)
	go c.run(s)
	return nil
}

// JID returns the full JID as bound by the server.
func (c *Conn) JID() string {
	if p := c.jid.Load(); p != nil {
		return *p
	}
	return ""
}

// State returns the current lifecycle state.
func (c *Conn) State() State { return *c.state.Load() }

func (c *Conn) setState(s State) { c.state.Store(&s) }

// Done is closed when the Conn has stopped for good.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the Conn stopped (ErrClosed after Close), or nil while it
// runs.
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

func (c *Conn) emit(ev Event) { c.cfg.Handler.HandleEvent(ev) }

func (c *Conn) newID() string {
	return c.idPrefix + strconv.FormatUint(c.idSeq.Add(1), 36)
}

// writeOn writes a non-stanza (not counted by XEP-0198) to s.
func (c *Conn) writeOn(s *stream, raw []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(s, raw, false)
}

// writeStanzaOn writes a stanza to s, counting it for XEP-0198.
func (c *Conn) writeStanzaOn(s *stream, raw []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(s, raw, true)
}

// writeLocked writes raw to s under wmu with the write deadline. Stanzas
// are kept until acknowledged when stream management is on.
func (c *Conn) writeLocked(s *stream, raw []byte, stanza bool) error {
	if stanza {
		if err := c.storeSentLocked(raw); err != nil {
			return err // neither written nor kept
		}
	}
	s.nc.SetWriteDeadline(time.Now().Add(c.cfg.WriteTimeout))
	out := raw
	withReq := stanza && c.sm.enabled && c.sm.sinceReq+1 >= ackEvery
	if withReq {
		// The ack request rides in the stanza's write: one syscall, not
		// two. raw itself is what stays unacknowledged.
		out = append(raw[:len(raw):len(raw)], ackRequest...)
	}
	err := s.write(out)
	if stanza && c.sm.enabled {
		c.sm.unacked = append(c.sm.unacked, raw)
		c.sm.sinceReq++
		if withReq && err == nil {
			c.sm.sinceReq = 0
		}
	}
	if err != nil {
		s.close()
		if c.s == s {
			c.s = nil
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = fmt.Errorf("%w: %w", ErrTimeout, err)
		}
	}
	return err
}

// sendable refuses a stanza over MaxSendSize: the server could close the
// stream on it (policy-violation), and XEP-0198 would send it again after
// every reconnect.
func (c *Conn) sendable(raw []byte) error {
	if len(raw) > c.cfg.MaxSendSize {
		return fmt.Errorf("%w: %d bytes encoded, over the %d-byte limit", ErrSendTooLarge, len(raw), c.cfg.MaxSendSize)
	}
	return nil
}

// send writes a stanza on the current stream, or queues it while the
// stream is down (queueable stanzas only).
func (c *Conn) send(raw []byte, queueable bool) error {
	if c.closing.Load() {
		return ErrClosed
	}
	if err := c.sendable(raw); err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	s := c.s
	if s == nil {
		select {
		case <-c.done:
			return ErrClosed
		default:
		}
		if !queueable || !c.cfg.Reconnect || len(c.queue) >= c.cfg.MaxQueue {
			return ErrNotConnected
		}
		if c.cfg.ResumeStore != nil && c.sm.enabled && c.sm.id != "" {
			return c.journalLocked(raw)
		}
		c.queue = append(c.queue, raw)
		return nil
	}
	err := c.writeLocked(s, raw, true)
	if err != nil {
		if errors.Is(err, ErrResumeStore) {
			return err
		}
		if c.sm.enabled {
			return nil // kept in the unacked queue, re-sent after reconnecting
		}
		if queueable && c.cfg.Reconnect && len(c.queue) < c.cfg.MaxQueue {
			c.queue = append(c.queue, raw)
			return nil
		}
	}
	return err
}

// Close ends the session: it sends unavailable presence and the stream
// close, waits (bounded by ctx, and at most a second) for the server to
// close its side, and stops the Conn. It is idempotent and returns nil
// once the Conn stopped, or ctx.Err(). Called from the Handler, it cannot
// see the Conn stop (the Handler runs on the goroutine it waits for), so
// it then returns only when ctx ends.
func (c *Conn) Close(ctx context.Context) error {
	if c.closing.Swap(true) {
		select {
		case <-c.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.closeStart()
	c.wmu.Lock()
	s := c.s
	if s != nil {
		dl := time.Now().Add(time.Second)
		if d, ok := ctx.Deadline(); ok && d.Before(dl) {
			dl = d
		}
		c.s = nil // nothing else gets written to this stream
		s.nc.SetWriteDeadline(dl)
		c.sm.closed = true // the session ends: a ResumeStore hears no more
		if err := s.write([]byte(`<presence type="unavailable"/>`)); err == nil {
			if c.sm.enabled {
				c.sm.unacked = append(c.sm.unacked, nil)
				s.write(c.ackElementLocked())
			}
			s.write([]byte(`</stream:stream>`))
		}
	}
	c.wmu.Unlock()
	if s != nil {
		// Give the server a moment to close its side, then cut.
		t := time.NewTimer(time.Second)
		select {
		case <-c.done:
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	if s != nil {
		s.close()
	}
	select {
	case <-c.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
