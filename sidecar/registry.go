package sidecar

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// xmppSession is what the sidecar uses of one XMPP stream (*xmppconn.Conn).
type xmppSession interface {
	JID() string
	State() xmppconn.State
	Send(ctx context.Context, m xmppconn.Message) (string, error)
	SendPresence(ctx context.Context, p xmppconn.Presence) error
	Subscribe(ctx context.Context, jid string, action xmppconn.SubscriptionAction) error
	SendChatState(ctx context.Context, to string, state xmppconn.ChatStateKind) error
	Roster(ctx context.Context) ([]xmppconn.RosterItem, error)
	SetRosterItem(ctx context.Context, it xmppconn.RosterItem) error
	RemoveRosterItem(ctx context.Context, jid string) error
	Blocklist(ctx context.Context) ([]string, error)
	Block(ctx context.Context, jids ...string) error
	Unblock(ctx context.Context, jids ...string) error
	VCard(ctx context.Context, jid string) (xmppconn.VCard, error)
	MUCService(ctx context.Context) (string, error)
	Rooms(ctx context.Context, service string) ([]xmppconn.RoomItem, error)
	JoinRoom(ctx context.Context, j xmppconn.RoomJoin) (xmppconn.JoinedRoom, bool, error)
	LeaveRoom(ctx context.Context, room string) error
	SetSubject(ctx context.Context, room, subject string) error
	JoinedRooms() []xmppconn.JoinedRoom
	History(ctx context.Context, q xmppconn.HistoryQuery) (xmppconn.HistoryPage, error)
	SetAvatarHash(ctx context.Context, hash string) error
	SendStanza(ctx context.Context, st *xmppconn.Stanza) error
	Presence() xmppconn.Presence
	Close(ctx context.Context) error
	Done() <-chan struct{}
}

// dialFunc opens an XMPP stream; xmppconn.Dial in production.
type dialFunc func(ctx context.Context, cfg xmppconn.Config) (xmppSession, error)

// sessionReader is what the sidecar uses of the PHP session store.
type sessionReader interface {
	Lookup(ctx context.Context, id string) (*phpsession.Session, error)
	Ready(ctx context.Context) error
}

// session is one PHP session's XMPP stream and event log.
type session struct {
	key   string // sha256 of the PHP session id, hex; never the id itself
	short string // first 8 hex digits, for logs and the resource
	user  string
	jid   string // bare JID
	cred  [32]byte
	ident phpsession.Identity // as last read, for API calls while the store is down
	log   *eventLog
	start cursor // the log's head when this stream was opened
	since time.Time

	lastPoll atomic.Int64 // unix nanos
	state    atomic.Value // xmppconn.State
	reason   atomic.Value // string
	// polls is how many GET /v1/events of this PHP session are in flight
	// (long polls, parked ones until answered, and SSE streams), capped
	// at --max-polls-per-session.
	polls atomic.Int32

	mu      sync.Mutex
	conn    xmppSession
	fullJID string
	// presence is, per bare JID, the available resources sorted by
	// Resource: a contact has one or two, and a slice of them costs a
	// tenth of a map (a map per online contact was ≈ 700 bytes).
	presence map[string][]presenceInfo
	limiter  tokenBucket
	// bridge holds the browser streams attached (bridge.go); nil until
	// the first one.
	bridge *bridge
}

type presenceInfo struct {
	Resource string        `json:"resource"`
	Show     xmppconn.Show `json:"show"`
	Status   string        `json:"status"`
	Priority int           `json:"priority"`
	// Avatar is the XEP-0153 photo hash: "" no avatar, absent unknown.
	Avatar *string `json:"avatar,omitempty"`
}

// acquirePoll counts one more poll in flight unless max already are;
// releasePoll gives it back.
func (s *session) acquirePoll(max int) bool {
	if s.polls.Add(1) > int32(max) {
		s.polls.Add(-1)
		return false
	}
	return true
}

func (s *session) releasePoll() { s.polls.Add(-1) }

func (s *session) State() xmppconn.State {
	if v, ok := s.state.Load().(xmppconn.State); ok {
		return v
	}
	return xmppconn.StateConnecting
}

// live reports whether the stream is up or coming back by itself.
func (s *session) live() bool {
	st := s.State()
	return st != xmppconn.StateOffline && st != xmppconn.StateAuthFailed
}

func (s *session) setState(st xmppconn.State, reason string) {
	s.state.Store(st)
	s.reason.Store(reason)
}

// registry owns every session and the janitor that ties them to PHP.
type registry struct {
	cfg     *Config
	reader  sessionReader
	dial    dialFunc
	tlsConf *tls.Config
	logger  *slog.Logger
	metrics *metrics

	mu         sync.Mutex
	sessions   map[string]*session
	dialing    map[string]chan struct{}
	authFailed map[string][32]byte // key → credentials that failed
	// auth admits every XMPP authentication, first or reconnection
	// (--auth-failure-limit).
	auth *authLimiter
	// mem is the daemon-wide byte budget of the event logs.
	mem *eventMemory
	// ids remembers, per session key, the PHP session id the API last
	// saw, so the janitor can re-read the session. Only in memory.
	idsMu   sync.Mutex
	ids     map[string]string
	closing bool
	wg      sync.WaitGroup
	// own is the cluster's say on who holds each session (cluster.go);
	// nil on a single node.
	own ownership
}

func newRegistry(cfg *Config, reader sessionReader, dial dialFunc, tlsConf *tls.Config, logger *slog.Logger, m *metrics) *registry {
	return &registry{cfg: cfg, reader: reader, dial: dial, tlsConf: tlsConf, logger: logger, metrics: m,
		sessions: map[string]*session{}, dialing: map[string]chan struct{}{}, authFailed: map[string][32]byte{},
		auth: newAuthLimiter(cfg.AuthFailLimit, m.authFailures.Inc), mem: newEventMemory(int64(cfg.EventMemoryMB) << 20)}
}

func sessionKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

func credentials(ident phpsession.Identity) [32]byte {
	return sha256.Sum256([]byte(ident.User + "\x00" + ident.Password))
}

// get returns the session of a PHP session id, if any.
func (r *registry) get(id string) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[sessionKey(id)]
}

// connect returns the live stream of this PHP session, opening it when
// needed. Concurrent connects for one session dial once. After an XMPP
// authentication failure the same credentials are not tried again. The
// dial waits for r.auth to admit the login, bounded by ctx.
func (r *registry) connect(ctx context.Context, id string, ps *phpsession.Session, initial *xmppconn.Presence) (*session, bool, error) {
	key := sessionKey(id)
	cred := credentials(ps.Identity)
	if r.own != nil {
		// Cluster mode: only the session's owner opens its stream.
		if err := r.own.acquire(ctx, key); err != nil {
			return nil, false, err
		}
	}
	for {
		r.mu.Lock()
		if r.closing {
			r.mu.Unlock()
			return nil, false, ErrShuttingDown
		}
		if failed, ok := r.authFailed[key]; ok && failed == cred {
			r.mu.Unlock()
			return nil, false, fmt.Errorf("%w: not retried until the PHP session changes", xmppconn.ErrAuth)
		}
		if ch, ok := r.dialing[key]; ok {
			r.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, false, ctx.Err()
			}
		}
		old := r.sessions[key]
		if old != nil && old.cred == cred && old.State() != xmppconn.StateOffline && old.State() != xmppconn.StateAuthFailed {
			r.mu.Unlock()
			return old, false, nil
		}
		ch := make(chan struct{})
		r.dialing[key] = ch
		r.mu.Unlock()

		s, err := r.open(ctx, key, ps, old, initial)
		r.mu.Lock()
		delete(r.dialing, key)
		close(ch)
		if err == nil {
			if old := r.sessions[key]; old != nil && old.log != s.log {
				r.mem.release(old.log) // another user's: the page is no longer theirs
			}
			r.sessions[key] = s
			delete(r.authFailed, key)
		} else if errors.Is(err, xmppconn.ErrAuth) {
			r.authFailed[key] = cred
		}
		r.mu.Unlock()
		if err == nil && r.own != nil {
			r.own.opened(ctx, key)
		}
		return s, true, err
	}
}

// open dials a stream for a PHP session, reusing the event log of an
// earlier stream of the same session so that cursors stay valid.
func (r *registry) open(ctx context.Context, key string, ps *phpsession.Session, old *session, initial *xmppconn.Presence) (_ *session, err error) {
	if old != nil {
		r.closeSession(old, "replaced")
	}
	s := &session{key: key, short: key[:8], user: ps.Identity.User, jid: ps.Identity.User + "@" + r.cfg.XMPPDomain,
		cred: credentials(ps.Identity), ident: ps.Identity, since: time.Now(), presence: map[string][]presenceInfo{},
		limiter: tokenBucket{rate: r.cfg.RateLimit, burst: 2 * r.cfg.RateLimit}}
	if old != nil && old.user == s.user {
		s.log = old.log
	} else {
		s.log = r.mem.newLog(r.cfg.EventBuffer, int64(r.cfg.EventBufferMB)<<20, r.metrics.eventsDropped.Inc)
		defer func() {
			if err != nil {
				r.mem.release(s.log) // nobody can poll it
			}
		}()
	}
	s.start = s.log.head()
	s.lastPoll.Store(time.Now().UnixNano())
	s.setState(xmppconn.StateConnecting, "")
	s.appendState(xmppconn.StateConnecting, "")
	logger := slog.New(sessionLog{r.logger.Handler(), s})
	cfg := xmppconn.Config{
		Addr:            r.cfg.XMPPAddr,
		Domain:          r.cfg.XMPPDomain,
		TLS:             xmppconn.TLSMode(r.cfg.XMPPTLS),
		TLSConfig:       r.tlsConf,
		User:            ps.Identity.User,
		Password:        ps.Identity.Password,
		Resource:        r.cfg.XMPPResourcePrefix + "-" + s.short,
		Handler:         xmppconn.HandlerFunc(func(ev xmppconn.Event) { r.handle(s, ev) }),
		Logger:          logger,
		InitialPresence: initial,
		Reconnect:       true,
		Carbons:         true,
		AuthGate:        r.gate(s),
		SoftwareName:    "imsidecar",
		SoftwareVersion: version,
		Tap:             s.tap,
		MaxStanzaSize:   r.cfg.XMPPMaxStanzaSize,
		MaxSendSize:     r.cfg.XMPPMaxSendSize,
	}
	r.metrics.connects.Inc()
	start := time.Now()
	conn, err := r.dial(ctx, cfg)
	if err != nil {
		if errors.Is(err, xmppconn.ErrAuth) {
			s.setState(xmppconn.StateAuthFailed, "auth_failed")
			s.appendState(xmppconn.StateAuthFailed, "authentication failed")
			logger.Warn("xmpp authentication failed; not retried until the PHP session changes")
			return nil, err
		}
		if errors.Is(err, ErrAuthThrottled) {
			s.setState(xmppconn.StateOffline, "auth_throttled")
			logger.Warn("xmpp login not tried: the authentication failure budget is spent", "err", err)
			return nil, err
		}
		s.setState(xmppconn.StateOffline, "unavailable")
		logger.Warn("xmpp connect failed", "err", err)
		if ctx.Err() == nil && !errors.Is(err, xmppconn.ErrConfig) && !errors.Is(err, ErrShuttingDown) {
			err = fmt.Errorf("%w: %w", errXMPP, err)
		}
		return nil, err
	}
	s.mu.Lock()
	s.conn = conn
	s.fullJID = conn.JID()
	s.mu.Unlock()
	s.setState(xmppconn.StateOnline, "")
	logger.Info("xmpp online", "jid", conn.JID(), "took", time.Since(start).Round(time.Millisecond))
	r.wg.Add(1)
	go r.advertiseAvatar(conn, logger)
	return s, nil
}

// sessionLog is r.logger.With("user", ..., "session", ...) for one session
// without its cost: Logger.With copies the handler and preformats the
// attributes, a few hundred bytes for each of thousands of online users,
// while this adds the two attributes (first, as With would) only to the
// records actually logged.
type sessionLog struct {
	slog.Handler
	s *session
}

func (h sessionLog) attrs() []slog.Attr {
	return []slog.Attr{slog.String("user", h.s.user), slog.String("session", h.s.short)}
}

func (h sessionLog) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	out.AddAttrs(h.attrs()...)
	r.Attrs(func(a slog.Attr) bool { out.AddAttrs(a); return true })
	return h.Handler.Handle(ctx, out)
}

func (h sessionLog) WithAttrs(as []slog.Attr) slog.Handler {
	return h.Handler.WithAttrs(h.attrs()).WithAttrs(as)
}

func (h sessionLog) WithGroup(name string) slog.Handler {
	return h.Handler.WithAttrs(h.attrs()).WithGroup(name)
}

// advertiseAvatar reads the user's own vCard once the stream is up and
// puts its photo's hash into the user's presence (XEP-0153), so contacts
// on desktop clients show the web session with the user's avatar. It ends
// with the vCard request: at most the IQ timeout, at once when the stream
// closes.
func (r *registry) advertiseAvatar(conn xmppSession, logger *slog.Logger) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := conn.VCard(ctx, "")
	if err != nil {
		logger.Debug("own vCard not read; avatar not advertised", "err", err)
		return
	}
	if err := conn.SetAvatarHash(ctx, xmppconn.AvatarHash(v.Photo)); err != nil {
		logger.Debug("advertising the avatar", "err", err)
	}
}

// handle turns an xmppconn event into an event-log entry. It runs on the
// stream's reader goroutine and never blocks.
func (r *registry) handle(s *session, ev xmppconn.Event) {
	switch e := ev.(type) {
	case *xmppconn.Message:
		if e.Body == "" && e.Subject == "" {
			return
		}
		if !s.appendJSONOnce("message", messageKey(e), newMessageJSON(e)) {
			return // a copy of a message still in the log
		}
	case *xmppconn.Occupant:
		s.appendOccupant(e)
	case *xmppconn.Presence:
		s.trackPresence(e)
		typ := e.Type
		if typ == "" {
			typ = "available"
		}
		s.appendJSON("presence", struct {
			From     string        `json:"from"`
			Type     string        `json:"type"`
			Show     xmppconn.Show `json:"show"`
			Status   string        `json:"status"`
			Priority int           `json:"priority"`
			Avatar   *string       `json:"avatar,omitempty"`
		}{e.From, typ, e.Show, e.Status, e.Priority, e.Avatar})
	case *xmppconn.Subscription:
		s.appendJSON("subscription", struct {
			From string `json:"from"`
			Type string `json:"type"`
		}{e.From, e.Type})
	case *xmppconn.RosterPush:
		item := e.Item
		if item.Groups == nil {
			item.Groups = []string{}
		}
		s.appendJSON("roster", struct {
			Item xmppconn.RosterItem `json:"item"`
		}{item})
	case *xmppconn.ChatState:
		s.appendJSON("chatstate", struct {
			From  string                 `json:"from"`
			State xmppconn.ChatStateKind `json:"state"`
		}{e.From, e.State})
	case *xmppconn.Receipt:
		s.appendJSON("receipt", struct {
			From string `json:"from"`
			ID   string `json:"id"`
		}{e.From, e.ID})
	case *xmppconn.Dropped:
		r.metrics.stanzasDropped.Inc()
		s.appendJSON("dropped", struct {
			Stanza string `json:"stanza"`
			From   string `json:"from"`
			Type   string `json:"type"`
			ID     string `json:"id"`
			Bytes  int    `json:"bytes"`
		}{e.Stanza, e.From, e.Type, e.ID, e.Bytes})
	case *xmppconn.SendFailed:
		r.metrics.sendsRefused.Inc()
		s.appendJSON("send_failed", struct {
			Stanza string `json:"stanza"`
			To     string `json:"to"`
			ID     string `json:"id"`
			Bytes  int    `json:"bytes"`
			Reason string `json:"reason"`
		}{e.Stanza, e.To, e.ID, e.Bytes, e.Reason})
	case *xmppconn.StateChange:
		reason := ""
		if e.Err != nil {
			reason = "stream_error"
		}
		switch {
		case e.Resumed:
			r.metrics.resumptions.Inc()
			reason = "resumed"
		case e.ContinuityLost:
			r.metrics.reconnects.Inc()
			reason = "continuity_lost"
			s.log.markGap()
			s.clearPresence()
			s.bridgeReset()
		}
		if e.State == xmppconn.StateAuthFailed {
			reason = "auth_failed" // counted by r.auth
		}
		// The state of a closing session is set by closeSession itself.
		if cur := s.State(); cur == xmppconn.StateOffline && e.State == xmppconn.StateOffline {
			return
		}
		s.setState(e.State, reason)
		s.appendState(e.State, reason)
	}
	r.metrics.eventsQueued.Inc()
}

func (s *session) appendJSON(kind string, v any) { s.appendJSONOnce(kind, "", v) }

// appendJSONOnce appends unless an event with the same non-empty key is
// still in the log, and reports whether it did.
func (s *session) appendJSONOnce(kind, key string, v any) bool {
	b, err := json.Marshal(v)
	if err != nil || len(b) < 2 {
		return false
	}
	return s.log.appendOnce(kind, key, b[1:len(b)-1])
}

// messageKey identifies a message for dedup: the same sender (bare JID),
// id, carbon direction and body. Messages without an id are never merged.
func messageKey(m *xmppconn.Message) string {
	if m.ID == "" {
		return ""
	}
	from := bareOf(m.From)
	if m.Type == "groupchat" {
		from = m.From // room@service/nick: occupants are told apart by nick
	}
	sum := sha256.Sum256([]byte(m.Carbon + "\x00" + from + "\x00" + m.ID + "\x00" + string(m.Type) + "\x00" + m.Subject + "\x00" + m.Body))
	return string(sum[:16])
}

func bareOf(jid string) string {
	bare, _, _ := strings.Cut(jid, "/")
	return bare
}

func (s *session) appendState(st xmppconn.State, reason string) {
	s.appendJSON("state", struct {
		State  xmppconn.State `json:"state"`
		Reason string         `json:"reason"`
	}{st, reason})
}

func (s *session) trackPresence(p *xmppconn.Presence) {
	bare, res, _ := strings.Cut(p.From, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.presence[bare]
	i, found := slices.BinarySearchFunc(list, res, func(pi presenceInfo, res string) int { return strings.Compare(pi.Resource, res) })
	if p.Type == "unavailable" {
		if !found {
			return
		}
		if len(list) == 1 {
			delete(s.presence, bare)
			return
		}
		s.presence[bare] = slices.Delete(list, i, i+1)
		return
	}
	pi := presenceInfo{Resource: res, Show: p.Show, Status: p.Status, Priority: p.Priority, Avatar: p.Avatar}
	if found {
		if pi.Avatar == nil {
			// XEP-0153: a presence without the hash leaves it as it was.
			pi.Avatar = list[i].Avatar
		}
		list[i] = pi
		return
	}
	if len(list) == 0 {
		list = make([]presenceInfo, 0, 1) // most contacts have one resource
	}
	s.presence[bare] = slices.Insert(list, i, pi)
}

func (s *session) clearPresence() {
	s.mu.Lock()
	s.presence = map[string][]presenceInfo{}
	s.mu.Unlock()
}

// presenceOf returns a copy of the resources of bare, sorted by Resource.
func (s *session) presenceOf(bare string) []presenceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(make([]presenceInfo, 0, len(s.presence[bare])), s.presence[bare]...)
}

// stream returns the session's live XMPP stream, or ErrNotConnected.
func (s *session) stream() (xmppSession, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil || s.State() == xmppconn.StateOffline || s.State() == xmppconn.StateAuthFailed {
		return nil, ErrNotConnected
	}
	return s.conn, nil
}

// closeSession sends unavailable and closes the stream, bounded by the
// shutdown timeout. The session stays in the registry, offline, so a last
// poll can see why; the janitor forgets it later.
func (r *registry) closeSession(s *session, reason string) {
	s.mu.Lock()
	conn := s.conn
	s.conn = nil
	b := s.bridge
	s.mu.Unlock()
	if b != nil {
		b.close(reason)
	}
	if s.State() != xmppconn.StateOffline {
		s.setState(xmppconn.StateOffline, reason)
		s.appendState(xmppconn.StateOffline, reason)
	}
	if r.own != nil {
		defer r.own.closed(s.key, reason)
	}
	if conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.ShutdownTimeout)
	defer cancel()
	if err := conn.Close(ctx); err != nil && !errors.Is(err, xmppconn.ErrClosed) {
		r.logger.Warn("xmpp close", "user", s.user, "session", s.short, "err", err)
	}
	r.logger.Info("xmpp offline", "user", s.user, "session", s.short, "reason", reason)
}

// disconnect closes a session at the PHP side's request.
func (r *registry) disconnect(id string) {
	if s := r.get(id); s != nil {
		r.closeSession(s, "disconnected")
	}
}

// janitor re-reads every connected PHP session each RecheckInterval and
// closes the streams whose session is gone, expired, logged out or now
// someone else's, or whose page stopped polling. It returns when ctx ends.
func (r *registry) janitor(ctx context.Context) {
	t := time.NewTicker(r.cfg.RecheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.sweep(ctx)
		}
	}
}

// sweep is one janitor pass. Session ids are not kept, only their hashes,
// so the janitor asks the reader through the ids the API last saw.
func (r *registry) sweep(ctx context.Context) {
	r.mu.Lock()
	list := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	r.mu.Unlock()
	now := time.Now()
	for _, s := range list {
		if ctx.Err() != nil {
			return
		}
		s.log.trim()
		st := s.State()
		if st == xmppconn.StateOffline || st == xmppconn.StateAuthFailed {
			if now.Sub(time.Unix(0, s.lastPoll.Load())) > r.cfg.Inactivity {
				r.forget(s)
			}
			continue
		}
		if now.Sub(time.Unix(0, s.lastPoll.Load())) > r.cfg.Inactivity {
			r.closeSession(s, "inactive")
			continue
		}
		id := r.idOf(s)
		if id == "" {
			continue
		}
		start := time.Now()
		ps, err := r.reader.Lookup(ctx, id)
		r.metrics.storeLatency.Observe(time.Since(start).Seconds())
		switch {
		case errors.Is(err, phpsession.ErrUnavailable):
			// The store is down: keep users chatting, decide later.
			continue
		case errors.Is(err, phpsession.ErrNotFound):
			r.closeSession(s, "logged_out")
		case errors.Is(err, phpsession.ErrExpired):
			r.closeSession(s, "session_expired")
		case err != nil:
			r.closeSession(s, "not_logged_in")
		case ps.Identity.User != s.user:
			r.closeSession(s, "user_changed")
		case credentials(ps.Identity) != s.cred:
			// Same user, new password: a fresh stream with the new one.
			r.closeSession(s, "password_changed")
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if _, _, err := r.connect(dctx, id, ps, nil); err != nil {
					r.logger.Warn("reconnect after password change", "user", s.user, "session", s.short, "err", err)
				}
			}()
		}
	}
}

func (r *registry) remember(s *session, id string) {
	r.idsMu.Lock()
	defer r.idsMu.Unlock()
	if r.ids == nil {
		r.ids = map[string]string{}
	}
	r.ids[s.key] = id
}

func (r *registry) idOf(s *session) string {
	r.idsMu.Lock()
	defer r.idsMu.Unlock()
	return r.ids[s.key]
}

func (r *registry) forget(s *session) {
	r.mu.Lock()
	gone := r.sessions[s.key] == s
	if gone {
		delete(r.sessions, s.key)
		r.mem.release(s.log)
	}
	r.mu.Unlock()
	r.idsMu.Lock()
	delete(r.ids, s.key)
	r.idsMu.Unlock()
	if gone && r.own != nil {
		r.own.forgotten(s.key)
	}
}

// shutdown closes every stream in parallel, bounded by ctx.
func (r *registry) shutdown(ctx context.Context) {
	r.auth.stop()
	r.mu.Lock()
	r.closing = true
	list := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		list = append(list, s)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.closeSession(s, "shutdown")
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); r.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		r.logger.Warn("shutdown timeout: some streams did not close in time")
	}
}

// snapshot lists sessions for /status and metrics.
func (r *registry) snapshot() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session, 0, len(r.sessions))
	for _, s := range r.sessions {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].user < out[j].user })
	return out
}

// tokenBucket limits mutating calls per session.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
}

func (b *tokenBucket) allow(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
