package sidecar

import (
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/phpsession"
)

// api serves the HTTP API v1 (docs/API.md).
type api struct {
	cfg      *Config
	reg      *registry
	reader   sessionReader
	token    string // "" = no token required
	logger   *slog.Logger
	metrics  *metrics
	draining atomic.Bool
	now      func() time.Time
	// parked holds the JSON long polls waiting without net/http (park.go);
	// nil holds them in their handler, as the tests' recorders need.
	parked *parker
	// bosh holds the BOSH sessions (bosh.go).
	bosh *boshServer
	// sseWrite bounds each write of an SSE stream (0: sseWriteTimeout).
	sseWrite time.Duration
	// cluster, in cluster mode, routes each call to its session's owner
	// (cluster.go); peer marks the API served on the peer listener.
	cluster *cluster
	peer    bool

	pwWarnedMu sync.Mutex
	pwWarned   map[string]struct{} // users already logged as password_unavailable
}

// caller is who a request speaks for.
type caller struct {
	id       string // PHP session id (never logged)
	key      string // its registry key (keyOf), hashed once per request
	byCookie bool
	php      *phpsession.Session
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c *caller) error

func (a *api) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, cookieOK bool, h handlerFunc) {
		mux.Handle(pattern, a.wrap(pattern, cookieOK, h))
	}
	handle("POST /v1/connect", false, a.connect)
	handle("POST /v1/disconnect", false, a.disconnect)
	handle("GET /v1/me", true, a.me)
	handle("GET /v1/events", true, a.events)
	handle("POST /v1/messages", false, a.message)
	handle("POST /v1/presence", false, a.presence)
	handle("GET /v1/roster", false, a.roster)
	handle("PUT /v1/roster/{jid}", false, a.rosterSet)
	handle("DELETE /v1/roster/{jid}", false, a.rosterRemove)
	handle("POST /v1/subscriptions/{jid}", false, a.subscription)
	handle("POST /v1/chatstates", false, a.chatState)
	handle("GET /v1/blocklist", false, a.blocklist)
	handle("GET /v1/vcard/{jid}", false, a.vcard)
	handle("GET /v1/avatar/{jid}", true, a.avatar)
	handle("PUT /v1/blocklist/{jid}", false, a.block)
	handle("DELETE /v1/blocklist/{jid}", false, a.unblock)
	handle("GET /v1/rooms", false, a.rooms)
	handle("POST /v1/rooms/{room}/join", false, a.roomJoin)
	handle("POST /v1/rooms/{room}/leave", false, a.roomLeave)
	handle("PUT /v1/rooms/{room}/subject", false, a.roomSubject)
	handle("GET /v1/history", false, a.history)
	handle("POST /v1/prebind", false, a.prebind)
	if a.bosh == nil {
		a.bosh = newBOSHServer(a)
	}
	mux.Handle("/http-bind", a.browserHandler("bosh", http.MethodPost, func(w http.ResponseWriter, r *http.Request) (string, error) {
		return a.bosh.handle(a, w, r)
	}))
	mux.Handle("/xmpp-websocket", a.browserHandler("websocket", http.MethodGet, a.websocket))
	mux.Handle("/", a.wrap("other", true, func(http.ResponseWriter, *http.Request, *caller) error {
		return fmt.Errorf("%w: no such endpoint", ErrNotFound)
	}))
	return mux
}

// session returns the caller's session, which must belong to the same user.
func (a *api) session(c *caller) (*session, error) {
	s := a.reg.byKey(c.key)
	if s == nil {
		return nil, ErrNotConnected
	}
	if s.user != c.php.Identity.User {
		a.reg.closeSession(s, "user_changed")
		return nil, ErrNotConnected
	}
	return s, nil
}

// live is the caller's session and its live XMPP stream, for the calls
// that read through the stream.
func (a *api) live(c *caller) (*session, xmppSession, error) {
	s, err := a.session(c)
	if err != nil {
		return nil, nil, err
	}
	conn, err := s.stream()
	return s, conn, err
}

// mutate returns the live stream for a state-changing call, rate limited.
func (a *api) mutate(c *caller) (*session, xmppSession, error) {
	s, err := a.session(c)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	ok := s.limiter.allow(time.Now())
	s.mu.Unlock()
	if !ok {
		return nil, nil, ErrRateLimited
	}
	conn, err := s.stream()
	return s, conn, err
}
