package xmppconn

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
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
}

// smState is the XEP-0198 outbound state.
type smState struct {
	enabled  bool
	id       string // resumption id; "" if the server did not allow resume
	acked    uint32 // last h the server acknowledged
	unacked  [][]byte
	sinceReq int

	// For a ResumeStore (resume.go): the server's <enabled> location and
	// max; savedH, the inbound count the store accepted (what is acked);
	// replay while unacked stanzas are re-sent (already journaled);
	// closed once Close began; storeFailing after a refused count;
	// unsaved after a failed Save.
	location     string
	max          int
	savedH       uint32
	replay       bool
	closed       bool
	storeFailing bool
	unsaved      bool
}

// stableOnline is how long a stream must have stayed up for the backoff to
// start again from MinBackoff.
const stableOnline = time.Minute

// shutdownBackoff is the least wait before reconnecting after the server
// sent a system-shutdown stream error.
const shutdownBackoff = 3 * time.Second

// ackEvery is how many stanzas we send before asking for an ack.
const ackEvery = 5

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

// establish opens a stream, authenticates and resumes the previous XEP-0198
// session or binds a fresh one. On return the stream is installed as c.s.
func (c *Conn) establish(ctx context.Context) (*stream, bool, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.IQTimeout+c.cfg.WriteTimeout)
		defer cancel()
	}
	var ticket authTicket
	if g := c.cfg.AuthGate; g != nil {
		release, err := g.Acquire(ctx, c.authenticated.Load())
		if err != nil {
			return nil, false, fmt.Errorf("xmppconn: authentication not admitted: %w", err)
		}
		ticket.release = release
		defer ticket.end(AuthAborted) // the attempt ended before SASL did
	}
	s, err := dialStream(ctx, &c.cfg)
	if err != nil {
		return nil, false, ctxErr(ctx, err)
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
	resumed, err := c.negotiate(s, &ticket)
	if err != nil {
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

// negotiate runs SASL, then resumption or bind, session, SM enable,
// carbons, initial presence, and flushes what waited for a stream.
// The gate's ticket ends with the SASL exchange.
func (c *Conn) negotiate(s *stream, ticket *authTicket) (resumed bool, err error) {
	err = s.authenticate(c.cfg.User, c.cfg.Password)
	ticket.end(resultOf(err))
	if err != nil {
		return false, err
	}
	c.authenticated.Store(true)
	if err := s.restart(c.cfg.Domain); err != nil {
		return false, err
	}
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
	if c.cfg.Carbons {
		id := c.newID()
		if err := c.writeStanzaOn(s, []byte(`<iq type="set" id="`+id+`"><enable xmlns="`+nsCarbons+`"/></iq>`)); err != nil {
			return false, err
		}
		if _, err := c.awaitIQ(s, id); err != nil {
			c.log.Warn("xmppconn: enabling carbons failed", "err", err)
		}
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
	if _, err := c.awaitIQ(s, rid); err != nil {
		var se *StanzaError
		if !errors.As(err, &se) && !errors.Is(err, ErrStanzaTooLarge) {
			return false, err
		}
	}
	// The presence the user last chose, not the initial one: a fresh
	// stream after a lost one must not turn "away" back into "available".
	// A user who broadcast unavailable stays so.
	if p := c.currentPresence(); p.Type != "unavailable" {
		if p.Avatar == nil {
			p.Avatar = c.ownAvatar.Load()
		}
		if err := c.writeStanzaOn(s, encodePresence(p)); err != nil {
			return false, err
		}
	}
	// A fresh session is in no room: join them again before re-sending
	// what may include messages to them.
	if err := c.rejoinRooms(s); err != nil {
		return false, err
	}
	for _, raw := range resend {
		if isRoomJoin(raw) {
			continue // the rooms were joined again just above
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

// resume tries XEP-0198 resumption. ok=false means the server refused and
// a fresh session must be bound.
func (c *Conn) resume(s *stream, prevID string) (ok bool, err error) {
	c.wmu.Lock()
	inH := c.ackableH()
	c.wmu.Unlock()
	req := `<resume xmlns="` + nsSM + `" previd="` + escAttr(prevID) + `" h="` + strconv.FormatUint(uint64(inH), 10) + `"/>`
	if err := c.writeOn(s, []byte(req)); err != nil {
		return false, err
	}
	n, err := s.read()
	if err != nil {
		return false, err
	}
	switch {
	case n.is(nsSM, "resumed"):
	case n.is(nsSM, "failed"):
		c.log.Info("xmppconn: stream resumption refused", "condition", firstChildName(n))
		if h, err := strconv.ParseUint(n.get("h"), 10, 32); err == nil {
			c.wmu.Lock()
			c.ackLocked(uint32(h))
			c.wmu.Unlock()
		}
		return false, nil
	default:
		return false, fmt.Errorf("%w: unexpected %s in reply to resume", ErrProtocol, n.name.Local)
	}
	h, err := strconv.ParseUint(n.get("h"), 10, 32)
	if err != nil {
		return false, fmt.Errorf("%w: bad h in resumed", ErrProtocol)
	}
	c.wmu.Lock()
	c.ackLocked(uint32(h))
	resend := c.sm.unacked
	c.sm.unacked = nil
	c.sm.enabled = true
	c.sm.replay = true // journaled when first sent
	for _, raw := range resend {
		if err := c.writeLocked(s, raw, true); err != nil {
			c.sm.unacked = append(c.sm.unacked, resend[len(c.sm.unacked):]...)
			c.sm.replay = false
			c.wmu.Unlock()
			return false, err
		}
	}
	c.sm.replay = false
	c.wmu.Unlock()
	if err := c.saveResumed(); err != nil {
		return false, err
	}
	return true, c.install(s, len(resend) > 0)
}

func firstChildName(n *node) string {
	if len(n.kids) > 0 {
		return n.kids[0].name.Local
	}
	return ""
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
	err := s.write(raw)
	if stanza && c.sm.enabled {
		c.sm.unacked = append(c.sm.unacked, raw)
		c.sm.sinceReq++
		if err == nil && c.sm.sinceReq >= ackEvery {
			err = c.requestAckLocked(s)
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

func (c *Conn) requestAckLocked(s *stream) error {
	c.sm.sinceReq = 0
	return s.write([]byte(`<r xmlns="` + nsSM + `"/>`))
}

// ackLocked drops the stanzas acknowledged by h.
func (c *Conn) ackLocked(h uint32) {
	n := h - c.sm.acked // wraps mod 2^32 like the counter itself
	if int64(n) > int64(len(c.sm.unacked)) {
		// A stale or bogus h: keep everything rather than drop stanzas
		// the server may not have.
		c.log.Warn("xmppconn: ignoring ack for more stanzas than sent", "h", h, "acked", c.sm.acked, "unacked", len(c.sm.unacked))
		return
	}
	for i := range n {
		c.sm.unacked[i] = nil
	}
	c.sm.unacked = c.sm.unacked[n:]
	if len(c.sm.unacked) == 0 {
		c.sm.unacked = nil
	}
	c.sm.acked = h
	c.storeAckedLocked(h)
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
		var se *StreamError
		if !c.cfg.Reconnect || (errors.As(err, &se) && se.Condition == "conflict") {
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
		if errors.As(err, &se) && se.Condition == "system-shutdown" {
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

// minRefusable is the smallest stanza taken for the cause of a broken
// stream: Prosody does not let c2s_stanza_size_limit go below 10,000
// bytes, so a smaller stanza was not refused for its size.
const minRefusable = 10000

// dropRefused takes out of the XEP-0198 resend queue a stanza the server
// refused, so that it is not sent again after every reconnect. Servers
// close the stream with policy-violation on a stanza over their size
// limit, and the culprit is the largest unacknowledged stanza: the server
// read none of the stanzas from the culprit on, and any of them as large
// would have been refused as well. Dropping it leaves the positions of
// those before it, which are all an ack can still cover, untouched.
//
// The server's error is often lost: it closes the socket with the rest of
// the stanza unread, and the TCP reset that follows discards the error
// before it is read. So when the connection itself broke (no stream error,
// no timeout) twice in a row with the same stanza the largest
// unacknowledged one, it is taken for refused too: at most two breaks,
// instead of one after every reconnect.
func (c *Conn) dropRefused(why error) {
	var se *StreamError
	reason := ""
	switch {
	case errors.As(why, &se) && se.Condition == "policy-violation":
		reason = "policy-violation"
	case errors.As(why, &se), errors.Is(why, ErrTimeout), errors.Is(why, ErrProtocol), errors.Is(why, ErrStanzaTooLarge):
		// The break has another explanation: another stream error, a
		// silent server, or what the server sent us.
		c.wmu.Lock()
		c.suspect = nil
		c.wmu.Unlock()
		return
	}
	c.wmu.Lock()
	i := -1
	for j, raw := range c.sm.unacked {
		if len(raw) >= minRefusable && (i < 0 || len(raw) > len(c.sm.unacked[i])) {
			i = j
		}
	}
	if i < 0 {
		c.suspect = nil
		c.wmu.Unlock()
		return
	}
	raw := c.sm.unacked[i]
	if reason == "" && c.suspect == &raw[0] {
		reason = "stream_broken"
	}
	if reason == "" {
		c.suspect = &raw[0]
		c.wmu.Unlock()
		return
	}
	c.suspect = nil
	c.sm.unacked = slices.Delete(c.sm.unacked, i, i+1)
	c.wmu.Unlock()
	c.saveState()
	ev := &SendFailed{Bytes: len(raw), Reason: reason}
	if n, err := parseStartTag(stdHeader, raw); err == nil {
		ev.Stanza, ev.To, ev.ID = n.name.Local, n.get("to"), n.get("id")
	}
	c.log.Warn("xmppconn: the server refused a stanza; not sending it again", "reason", reason, "stanza", ev.Stanza, "to", ev.To, "bytes", ev.Bytes)
	c.emit(ev)
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
// until it succeeds, Close is called, or authentication fails.
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
		ctx, cancel := context.WithTimeout(c.closeCtx, c.cfg.IQTimeout+c.cfg.WriteTimeout)
		s, resumed, err := c.establish(ctx)
		cancel()
		if err == nil {
			// A stream that breaks again soon will wait longer: a
			// flapping server must not get a reconnection storm.
			c.growBackoff(backoff)
			return s, resumed, nil
		}
		if errors.Is(err, ErrAuth) || c.closing.Load() {
			return nil, false, err
		}
		if !quick {
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
// state.
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
		if n != nil {
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

func (c *Conn) growBackoff(b *time.Duration) {
	*b *= 2
	if *b > c.cfg.MaxBackoff {
		*b = c.cfg.MaxBackoff
	}
}
