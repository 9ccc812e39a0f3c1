package sidecar

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// registry owns every session and the janitor that ties them to PHP.
type registry struct {
	cfg    *Config
	reader sessionReader
	dial   dialFunc
	// resume continues a stored XMPP session (xmppconn.Resume): a
	// takeover in cluster mode (clusterstate.go).
	resume  func(ctx context.Context, cfg xmppconn.Config, st xmppconn.ResumeState) (xmppSession, error)
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
	// connects bounds the XMPP connection attempts in flight
	// (--xmpp-connect-limit).
	connects *connectGate
	// mem is the daemon-wide byte budget of the event logs.
	mem *eventMemory
	// avatars: whether the server advertises avatars itself.
	avatars serverAvatars
	// ids remembers, per session key, the PHP session id the API last
	// saw, so the janitor can re-read the session. Only in memory.
	idsMu   sync.Mutex
	ids     map[string]string
	closing bool
	wg      sync.WaitGroup
	// logins is the context of the logins the registry owns
	// (connectOwned); endLogins ends them at shutdown.
	logins    context.Context
	endLogins context.CancelFunc
	// own is the cluster's say on who holds each session (cluster.go);
	// nil on a single node.
	own ownership
}

func newRegistry(cfg *Config, reader sessionReader, dial dialFunc, tlsConf *tls.Config, logger *slog.Logger, m *metrics) *registry {
	logins, endLogins := context.WithCancel(context.Background())
	return &registry{cfg: cfg, logins: logins, endLogins: endLogins, reader: reader, dial: dial, tlsConf: tlsConf, logger: logger, metrics: m,
		sessions: map[string]*session{}, dialing: map[string]chan struct{}{}, authFailed: map[string][32]byte{},
		auth: newAuthLimiter(cfg.AuthFailLimit, m.authFailures.Inc), connects: newConnectGate(cfg.ConnectLimit), mem: newEventMemory(int64(cfg.EventMemoryMB) << 20),
		resume: func(ctx context.Context, c xmppconn.Config, st xmppconn.ResumeState) (xmppSession, error) {
			return xmppconn.Resume(ctx, c, st)
		}}
}

func sessionKey(id string) string { return keyOf(phpsession.Hash(id)) }

// keyOf is the registry's key of a session id already hashed: its
// SHA-256 in hex. A request hashes its id once, for the PHP session
// check and the registry both.
func keyOf(h phpsession.HashedID) string {
	sum := h.Sum()
	return hex.EncodeToString(sum[:])
}

func credentials(ident phpsession.Identity) [32]byte {
	return sha256.Sum256([]byte(ident.User + "\x00" + ident.Password))
}

// get returns the session of a PHP session id, if any.
func (r *registry) get(id string) *session { return r.byKey(sessionKey(id)) }

// byKey returns the session of a registry key (keyOf), if any.
func (r *registry) byKey(key string) *session {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sessions[key]
}

// connect returns the live stream of this PHP session, opening it when
// needed. Concurrent connects for one session dial once. After an XMPP
// authentication failure the same credentials are not tried again. The
// dial waits for r.auth to admit the login, bounded by ctx.
func (r *registry) connect(ctx context.Context, id string, ps *phpsession.Session, initial *xmppconn.Presence) (*session, bool, error) {
	return r.connectLogin(ctx, id, ps, initial, false, nil)
}

// connectOwned is connect for a login that must not end with the call
// that started it: a takeover's, or a session's after a restart of the
// daemon. When the caller gives up (a load balancer's timeout, while
// hundreds of users log in again at once), a login cut half-way is work
// thrown away at the Jabber server, and the next call starts another: at
// 2,000 users the poll path's takeovers were cut 110–140 times a run,
// each leaving this node a lease with no stream that the other node then
// took (docs/FAULTS.md, "kill -9 at 2,000 users"). So a login this call
// starts is the registry's: it runs on its own, bounded by
// takeoverLoginTimeout and the shutdown (endLogins); it remembers the PHP
// session id for the session it opened and then calls opened, if set,
// with it (not the caller). The caller waits for it at most until its own context
// ends, as the calls that find it in flight do.
func (r *registry) connectOwned(ctx context.Context, id string, ps *phpsession.Session, opened func(*session)) (*session, bool, error) {
	return r.connectLogin(ctx, id, ps, nil, true, opened)
}

// connectLogin is connect; with owned, connectOwned.
func (r *registry) connectLogin(ctx context.Context, id string, ps *phpsession.Session, initial *xmppconn.Presence, owned bool, opened func(*session)) (*session, bool, error) {
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
		if owned {
			// Under r.mu, before closing is set: shutdown's Wait follows.
			r.wg.Add(1)
		}
		r.mu.Unlock()

		if !owned {
			s, err := r.open(ctx, key, ps, old, initial)
			return s, true, r.settle(ctx, key, id, cred, ch, s, err)
		}
		type login struct {
			s   *session
			err error
		}
		done := make(chan login, 1)
		go func() {
			defer r.wg.Done()
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), takeoverLoginTimeout)
			defer cancel()
			defer context.AfterFunc(r.logins, cancel)()
			s, err := r.open(lctx, key, ps, old, initial)
			if err = r.settle(lctx, key, id, cred, ch, s, err); err == nil {
				r.remember(s, id)
				if opened != nil {
					opened(s)
				}
			}
			done <- login{s, err}
		}()
		select {
		case l := <-done:
			return l.s, true, l.err
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// settle records how the login of session key, which set ch in
// r.dialing, ended: s is the session's now, or err why not.
func (r *registry) settle(ctx context.Context, key, id string, cred [32]byte, ch chan struct{}, s *session, err error) error {
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
		r.own.opened(ctx, key, id)
	}
	return err
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
	var resume *xmppconn.ResumeState // a takeover's stored XMPP session
	if old != nil && old.user == s.user && !old.durable.isGone() {
		s.log, s.durable = old.log, old.durable
	} else {
		newLog := func() *eventLog {
			return r.mem.newLog(r.cfg.EventBuffer, int64(r.cfg.EventBufferMB)<<20, r.metrics.eventsDropped.Inc)
		}
		if r.own != nil {
			if resume, err = r.own.durable(ctx, s, newLog); err != nil {
				return nil, err
			}
		} else {
			s.log = newLog()
		}
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
	cfg := r.serverConfig(ps.Identity)
	cfg.Resource = r.cfg.XMPPResourcePrefix + "-" + s.short
	cfg.Handler = xmppconn.HandlerFunc(func(ev xmppconn.Event) { r.handle(s, ev) })
	cfg.Logger = logger
	cfg.InitialPresence = initial
	cfg.Reconnect = true
	cfg.Carbons = true
	cfg.AuthGate = r.gate(s)
	cfg.BeforeReconnect = r.beforeReconnect(s)
	cfg.SoftwareName = "imsidecar"
	cfg.SoftwareVersion = version
	cfg.Tap = s.tap
	if s.durable != nil {
		cfg.ResumeStore = s.durable
	}
	r.metrics.connects.Inc()
	start := time.Now()
	var conn xmppSession
	if resume != nil {
		conn, err = r.resumeStream(ctx, cfg, *resume, s)
	} else {
		conn, err = r.dial(ctx, cfg)
	}
	if err != nil {
		if errors.Is(err, xmppconn.ErrAuth) {
			s.setState(xmppconn.StateAuthFailed, "auth_failed")
			s.appendState(xmppconn.StateAuthFailed, "authentication failed")
			logger.Warn("xmpp authentication failed; not retried until the PHP session changes")
			return nil, err
		}
		if errors.Is(err, ErrAuthThrottled) {
			s.setState(xmppconn.StateOffline, "auth_throttled")
			logger.Warn("xmpp login not tried: no unit of the authentication failure budget was free in time", "err", err)
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
	if rc, ok := conn.(interface{ Resumed() bool }); !ok || !rc.Resumed() {
		// A resumed session's presence, avatar included, is the server's.
		r.wg.Add(1)
		go r.advertiseAvatar(conn, logger)
	}
	return s, nil
}

// serverConfig is the part of a stream's xmppconn.Config that says which
// server and account: what a warm stream (clusterwarm.go) is prepared
// with, and what it must match to be used.
func (r *registry) serverConfig(ident phpsession.Identity) xmppconn.Config {
	return xmppconn.Config{
		Addr:          r.cfg.XMPPAddr,
		Domain:        r.cfg.XMPPDomain,
		TLS:           xmppconn.TLSMode(r.cfg.XMPPTLS),
		TLSConfig:     r.tlsConf,
		User:          ident.User,
		Password:      ident.Password,
		MaxStanzaSize: r.cfg.XMPPMaxStanzaSize,
		MaxSendSize:   r.cfg.XMPPMaxSendSize,
		ConnectGate:   r.connects,
	}
}

// advertiseAvatar reads the user's own vCard once the stream is up and
// puts its photo's hash into the user's presence (XEP-0153), so contacts
// on desktop clients show the web session with the user's avatar; not
// when the server puts it there itself (see serverAvatars). It ends with
// the vCard request: at most the IQ timeout, at once when the stream
// closes.
func (r *registry) advertiseAvatar(conn avatarPublisher, logger *slog.Logger) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if r.avatars.serverInjects(ctx, conn) {
		return
	}
	v, err := conn.VCard(ctx, "")
	if err != nil {
		logger.Debug("own vCard not read; avatar not advertised", "err", err)
		return
	}
	if err := conn.SetAvatarHash(ctx, xmppconn.AvatarHash(v.Photo)); err != nil {
		logger.Debug("advertising the avatar", "err", err)
	}
}

// closeSession sends unavailable and closes the stream, bounded by the
// shutdown timeout. The session stays in the registry, offline, so a last
// poll can see why; the janitor forgets it later.
func (r *registry) closeSession(s *session, reason string) {
	conn := s.takeStream(reason)
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

// shutdown closes every stream in parallel, bounded by ctx.
func (r *registry) shutdown(ctx context.Context) {
	r.endLogins()
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
