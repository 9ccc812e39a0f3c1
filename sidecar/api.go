package sidecar

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// maxBody caps every request body.
const maxBody = 64 << 10

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

// sseWriteTimeout bounds each write (and flush) of an SSE stream: a
// reader that stops reading ends its stream, and gives back its goroutine
// and connection, this long after the socket's buffers fill up.
const sseWriteTimeout = 10 * time.Second

// caller is who a request speaks for.
type caller struct {
	id       string // PHP session id (never logged)
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
	mux.Handle("/http-bind", a.browserHandler("bosh", http.MethodPost, a.bosh.handle))
	mux.Handle("/xmpp-websocket", a.browserHandler("websocket", http.MethodGet, a.websocket))
	mux.Handle("/", a.wrap("other", true, func(http.ResponseWriter, *http.Request, *caller) error {
		return fmt.Errorf("%w: no such endpoint", ErrNotFound)
	}))
	return mux
}

// statusRecorder remembers the status for logs and metrics, and when the
// request started, for a poll that is answered after its handler returned.
type statusRecorder struct {
	http.ResponseWriter
	status int
	start  time.Time
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// FlushError flushes and says whether the write behind it failed (an SSE
// write past its deadline), which Flush cannot.
func (s *statusRecorder) FlushError() error {
	return http.NewResponseController(s.ResponseWriter).Flush()
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// wrap authenticates the caller, runs h, maps its error, logs and measures.
func (a *api) wrap(route string, cookieOK bool, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, start: start}
		var c *caller
		err := func() error {
			if a.draining.Load() {
				return ErrShuttingDown
			}
			if r.ContentLength > maxBody {
				// Refused before reading, so net/http never answers
				// "100 Continue" and the client sends no body.
				return fmt.Errorf("%w: Content-Length over %d bytes", ErrTooLarge, maxBody)
			}
			if route == "other" {
				return h(rec, r, nil)
			}
			var err error
			c, err = a.authenticate(r, cookieOK)
			if err != nil {
				return err
			}
			if a.cluster != nil {
				if done, err := a.clusterRoute(rec, r, c, route); done || err != nil {
					return err
				}
			}
			return h(rec, r, c)
		}()
		if err == errParked {
			return // the parker answers, logs and measures it (park.go)
		}
		switch {
		case errors.Is(err, ErrTooLarge) && rec.status == 0 && a.refuseBody(rec, r, err):
			rec.status = http.StatusRequestEntityTooLarge
		case err != nil:
			a.writeError(rec, r, err, c)
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		user := ""
		if c != nil && c.php != nil {
			user = c.php.Identity.User
		}
		a.record(r.Context(), route, status, start, user)
	})
}

// record measures and logs one answered request.
func (a *api) record(ctx context.Context, route string, status int, start time.Time, user string) {
	d := time.Since(start)
	a.metrics.apiLatency.WithLabelValues(route, strconv.Itoa(status)).Observe(d.Seconds())
	attrs := []slog.Attr{slog.String("route", route), slog.Int("status", status), slog.Duration("duration", d)}
	if user != "" {
		attrs = append(attrs, slog.String("user", user))
	}
	a.logger.LogAttrs(ctx, slog.LevelDebug, "api", attrs...)
}

// authenticate finds the PHP session: X-Session-Id (server-side PHP), else
// the session cookie (the browser through Apache, read-only routes only).
// With an API token configured every call needs it, the cookie ones too
// (Apache adds it on its proxied paths): a local user who learns a session
// id cannot read that user's events on loopback.
func (a *api) authenticate(r *http.Request, cookieOK bool) (*caller, error) {
	if a.token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
			return nil, ErrUnauthorized
		}
	}
	c := &caller{}
	if id := r.Header.Get("X-Session-Id"); id != "" {
		c.id = id
	} else if id, ok := phpsession.IDFromCookie(strings.Join(r.Header.Values("Cookie"), "; "), a.cfg.SessionCookie); ok {
		if !cookieOK {
			return nil, fmt.Errorf("%w: this call needs X-Session-Id (server-side only)", ErrSessionMissing)
		}
		c.id, c.byCookie = id, true
	} else {
		return nil, ErrSessionMissing
	}
	start := time.Now()
	ps, err := a.reader.Lookup(r.Context(), c.id)
	a.metrics.storeLatency.Observe(time.Since(start).Seconds())
	if errors.Is(err, phpsession.ErrUnavailable) {
		// The store is down (Redis restarting). A session with a live
		// stream keeps working on what it last read, as the janitor keeps
		// it online; anything else waits for the store.
		if s := a.reg.get(c.id); s != nil && s.live() {
			c.php = &phpsession.Session{Identity: s.ident}
			return c, nil
		}
	}
	if err != nil {
		a.warnPasswordUnavailable(err)
		return nil, err
	}
	c.php = ps
	return c, nil
}

// refuseTooLargeTimeout bounds the drain after a 413 (refuseBody).
const refuseTooLargeTimeout = 2 * time.Second

// refuseBody answers a body over the limit on HTTP/1.x itself: net/http
// would close the connection with the rest of the upload unread, and the
// TCP reset that follows can wipe the 413 before the client reads it
// (curl and PHP's curl, uploading while they wait). Here the answer is
// written, the connection half-closed and the upload drained, up to
// 2 s and 16 MiB, so the client reads its 413. It reports false where it
// cannot take the connection (HTTP/2, whose streams end without a reset
// of the connection): the caller then answers as usual.
func (a *api) refuseBody(w http.ResponseWriter, r *http.Request, err error) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	conn, brw, herr := http.NewResponseController(w).Hijack()
	if herr != nil {
		return false
	}
	brw.Reader.Discard(brw.Reader.Buffered())
	refuse(conn, err, refuseTooLargeTimeout, 16<<20)
	return true
}

// warnPasswordUnavailable logs, once per user, that the session keeps the
// password only encrypted and which session key to have Expresso fill.
func (a *api) warnPasswordUnavailable(err error) {
	var pe *phpsession.PasswordUnavailableError
	if !errors.As(err, &pe) {
		return
	}
	a.pwWarnedMu.Lock()
	_, seen := a.pwWarned[pe.User]
	if !seen {
		if a.pwWarned == nil || len(a.pwWarned) >= 10000 {
			a.pwWarned = map[string]struct{}{}
		}
		a.pwWarned[pe.User] = struct{}{}
	}
	a.pwWarnedMu.Unlock()
	if !seen {
		a.logger.Warn("password unavailable: not connecting to XMPP", "user", pe.User, "key", pe.Key,
			"reason", pe.Reason, "enable", pe.Enable)
	}
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error, c *caller) {
	status, code := statusFor(err)
	var body errorBody
	body.Error.Code = code
	body.Error.Message = publicMessage(err, status)
	if status >= 500 {
		attrs := []any{"route", r.Pattern, "status", status, "code", code, "err", err}
		if c != nil && c.php != nil {
			attrs = append(attrs, "user", c.php.Identity.User)
		}
		a.logger.Warn("api error", attrs...)
	}
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, body)
}

// publicMessage is the error text the client sees: ours and the session
// package's are safe; anything internal is generic.
func publicMessage(err error, status int) string {
	if status == http.StatusInternalServerError {
		return "internal error (see the sidecar's log)"
	}
	if status == http.StatusBadGateway {
		if errors.Is(err, xmppconn.ErrAuth) {
			return "the Jabber server rejected the user's credentials"
		}
		return "the Jabber server is unavailable"
	}
	return err.Error()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if v != nil {
		json.NewEncoder(w).Encode(v)
	}
}

// decode reads a JSON body strictly: capped, unknown fields rejected, one
// value only. An empty body leaves v untouched when optional.
func decode(r *http.Request, v any, optional bool) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return fmt.Errorf("%w: reading body: %w", ErrBadRequest, err)
	}
	if len(body) > maxBody {
		return fmt.Errorf("%w: body over %d bytes", ErrTooLarge, maxBody)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		if optional {
			return nil
		}
		return fmt.Errorf("%w: JSON body required", ErrBadRequest)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s", ErrBadRequest, strings.TrimPrefix(err.Error(), "json: "))
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON body", ErrBadRequest)
	}
	return nil
}

func validJID(s string, bareOnly bool) (string, error) {
	j, err := xmppconn.ParseJID(s)
	if err != nil || j.Domain == "" || (bareOnly && j.Resource != "") {
		return "", fmt.Errorf("%w: %q is not a valid JID", ErrBadRequest, s)
	}
	return j.String(), nil
}

type presenceBody struct {
	Show     xmppconn.Show `json:"show"`
	Status   string        `json:"status"`
	Priority *int          `json:"priority"`
}

// toXMPP is the presence the body asks for, checked by xmppconn's rules
// (an error wrapping xmppconn.ErrInvalidArgument: 400) before any stream
// is touched.
func (p presenceBody) toXMPP() (xmppconn.Presence, error) {
	if len(p.Status) > 1024 {
		return xmppconn.Presence{}, fmt.Errorf("%w: status longer than 1024 bytes", ErrBadRequest)
	}
	out := xmppconn.Presence{Show: p.Show, Status: p.Status}
	if p.Priority != nil {
		out.Priority = *p.Priority
	}
	return out, out.Validate()
}

func (a *api) connect(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body presenceBody
	if err := decode(r, &body, true); err != nil {
		return err
	}
	initial, err := body.toXMPP()
	if err != nil {
		return err
	}
	s, fresh, err := a.reg.connect(r.Context(), c.id, c.php, &initial)
	if err != nil {
		return err
	}
	a.reg.remember(s, c.id)
	s.lastPoll.Store(time.Now().UnixNano())
	cur := s.log.head()
	if fresh {
		// A new stream: the caller starts before its first event, so the
		// presences that arrived while connecting are not skipped.
		cur = s.start
	} else if body != (presenceBody{}) {
		conn, err := s.stream()
		if err != nil {
			return err
		}
		if err := conn.SendPresence(r.Context(), initial); err != nil {
			return err
		}
	}
	s.mu.Lock()
	jid := s.fullJID
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]string{"jid": jid, "state": string(s.State()), "cursor": cur.String()})
	return nil
}

func (a *api) disconnect(w http.ResponseWriter, _ *http.Request, c *caller) error {
	a.reg.disconnect(c.id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) me(w http.ResponseWriter, _ *http.Request, c *caller) error {
	ident := c.php.Identity
	state := string(xmppconn.StateOffline)
	jid := ident.User + "@" + a.cfg.XMPPDomain
	if s := a.reg.get(c.id); s != nil && s.user == ident.User {
		state = string(s.State())
		s.mu.Lock()
		if s.fullJID != "" {
			jid = s.fullJID
		}
		s.mu.Unlock()
	}
	writeJSON(w, http.StatusOK, map[string]string{"user": ident.User, "jid": jid, "fullname": ident.FullName, "email": ident.Email, "state": state})
	return nil
}

// session returns the caller's session, which must belong to the same user.
func (a *api) session(c *caller) (*session, error) {
	s := a.reg.get(c.id)
	if s == nil {
		return nil, ErrNotConnected
	}
	if s.user != c.php.Identity.User {
		a.reg.closeSession(s, "user_changed")
		return nil, ErrNotConnected
	}
	return s, nil
}

// mutate returns the live stream for a state-changing call, rate limited.
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

func (a *api) events(w http.ResponseWriter, r *http.Request, c *caller) error {
	q := r.URL.Query()
	raw := q.Get("cursor")
	if raw == "" {
		raw = r.Header.Get("Last-Event-ID")
	}
	cur, given, curErr := parseCursor(raw)
	s, err := a.session(c)
	if errors.Is(err, ErrNotConnected) && curErr == nil && given && !c.byCookie && fromEarlierRun(cur) {
		s, err = a.resume(r, c)
	}
	if err != nil {
		return err
	}
	if curErr != nil {
		return curErr
	}
	wait := 25 * time.Second
	if v := q.Get("wait"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 55 {
			return fmt.Errorf("%w: wait must be 0..55 seconds", ErrBadRequest)
		}
		wait = time.Duration(n) * time.Second
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return fmt.Errorf("%w: limit must be 1..1000", ErrBadRequest)
		}
		limit = n
	}
	// One session (a page in a loop, a hostile script) must not hold every
	// API connection: its polls in flight are capped, and the one over the
	// cap is answered at once and its connection closed, so the slot goes
	// back to other users.
	if !s.acquirePoll(a.cfg.MaxPolls) {
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		return ErrTooManyPolls
	}
	parked := false
	defer func() {
		if !parked {
			s.releasePoll()
		}
	}()
	s.lastPoll.Store(time.Now().UnixNano())
	if strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		return a.stream(w, r, s, cur, given)
	}
	res := s.log.read(cur, given, limit)
	if len(res.events) == 0 && wait > 0 {
		// Nothing yet: the poll waits parked, holding no goroutine and
		// no buffer of net/http's, or, where it cannot be, here. A parked
		// poll counts against the cap until it is answered (park.go).
		if a.park(w, r, c, s, pollQuery{cur, given, limit}, wait) {
			parked = true
			return errParked
		}
		res = s.log.poll(r.Context(), cur, given, wait, limit)
	}
	s.lastPoll.Store(time.Now().UnixNano())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, eventsPage(res))
	return nil
}

// resume reconnects a session whose page polls with a cursor an earlier
// run of the daemon gave it: the daemon was restarted (a package upgrade)
// and lost its registry, but the user was online and nothing of theirs
// asked to go offline, so their next poll brings them back, with the
// default presence, and answers recovered:false (the cursor is from another
// epoch). Only server-side calls get here, never a cookie call: those change
// no state (see routes).
func (a *api) resume(r *http.Request, c *caller) (*session, error) {
	s, _, err := a.reg.connect(r.Context(), c.id, c.php, nil)
	if err != nil {
		return nil, err
	}
	a.reg.remember(s, c.id)
	a.logger.Info("session resumed after a restart", "user", s.user, "session", s.short)
	return s, nil
}

// eventsPage is the JSON answer of GET /v1/events.
func eventsPage(res pollResult) string {
	var b strings.Builder
	b.WriteString(`{"events":`)
	encodeEvents(&b, res.cursor.epoch, res.events)
	b.WriteString(`,"cursor":"`)
	b.WriteString(res.cursor.String())
	b.WriteString(`","recovered":`)
	b.WriteString(strconv.FormatBool(res.recovered))
	b.WriteString("}\n")
	return b.String()
}

// stream serves the events as Server-Sent Events: each event's id is its
// cursor, so EventSource resumes with Last-Event-ID; a comment line every
// 15 s keeps proxies from timing out; the response ends after 10 minutes
// and the browser reconnects where it was.
func (a *api) stream(w http.ResponseWriter, r *http.Request, s *session, cur cursor, given bool) error {
	if _, ok := w.(http.Flusher); !ok {
		return fmt.Errorf("%w: streaming unsupported", ErrBadRequest)
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	// Every write and flush has a deadline: a reader that stops reading
	// (the socket's buffers full) ends the stream instead of holding this
	// goroutine and its connection for the stream's 10 minutes.
	rc := http.NewResponseController(w)
	timeout := a.sseWrite
	if timeout <= 0 {
		timeout = sseWriteTimeout
	}
	send := func(b string) error {
		rc.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(w, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	// A stream that ended on a failed write keeps its passed deadline, so
	// net/http's last flush fails at once too; one that ended normally is
	// freed for the connection's next request.
	failed := false
	defer func() {
		if !failed {
			rc.SetWriteDeadline(time.Time{})
		}
	}()
	w.WriteHeader(http.StatusOK)
	if failed = send("retry: 2000\n\n") != nil; failed {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Minute)
	defer cancel()
	first := true
	for ctx.Err() == nil && !a.draining.Load() {
		res := s.log.poll(ctx, cur, given, 15*time.Second, 100)
		s.lastPoll.Store(time.Now().UnixNano())
		var b strings.Builder
		if first && !res.recovered {
			fmt.Fprintf(&b, "id: %s\nevent: reset\ndata: {\"recovered\":false,\"cursor\":\"%s\"}\n\n", res.cursor, res.cursor)
		}
		first = false
		for _, ev := range res.events {
			var data strings.Builder
			encodeEvent(&data, res.cursor.epoch, ev)
			fmt.Fprintf(&b, "id: %s\nevent: %s\ndata: %s\n\n", cursor{res.cursor.epoch, ev.offset}, ev.kind, data.String())
		}
		if len(res.events) == 0 {
			b.WriteString(": ping\n\n")
		}
		if err := send(b.String()); err != nil {
			a.logger.Debug("SSE stream ended: the client does not read", "user", s.user, "err", err)
			failed = true
			return nil
		}
		cur, given = res.cursor, true
	}
	return nil
}

type messageBody struct {
	To      string               `json:"to"`
	Body    string               `json:"body"`
	Type    xmppconn.MessageType `json:"type"`
	ID      string               `json:"id"`
	Thread  string               `json:"thread"`
	Receipt bool                 `json:"receipt"`
}

func (a *api) message(w http.ResponseWriter, r *http.Request, c *caller) error {
	var m messageBody
	if err := decode(r, &m, false); err != nil {
		return err
	}
	to, err := validJID(m.To, false)
	if err != nil {
		return err
	}
	if m.Body == "" {
		return fmt.Errorf("%w: body is required", ErrBadRequest)
	}
	if len(m.ID) > 128 || len(m.Thread) > 256 {
		return fmt.Errorf("%w: id or thread too long", ErrBadRequest)
	}
	// xmppconn's rules (type, a groupchat to a bare room JID, no receipt
	// in a room), checked before the stream is touched.
	out, err := xmppconn.Message{To: to, Body: m.Body, Type: m.Type, ID: m.ID, Thread: m.Thread, Receipt: m.Receipt, ChatState: xmppconn.ChatActive}.Outgoing()
	if err != nil {
		return err
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	id, err := conn.Send(r.Context(), out)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"id": id})
	return nil
}

func (a *api) presence(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body presenceBody
	if err := decode(r, &body, false); err != nil {
		return err
	}
	p, err := body.toXMPP()
	if err != nil {
		return err
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.SendPresence(r.Context(), p); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type rosterItemOut struct {
	JID          string         `json:"jid"`
	Name         string         `json:"name"`
	Groups       []string       `json:"groups"`
	Subscription string         `json:"subscription"`
	Ask          string         `json:"ask"`
	Presence     []presenceInfo `json:"presence"`
}

func (a *api) roster(w http.ResponseWriter, r *http.Request, c *caller) error {
	s, conn, err := a.live(c)
	if err != nil {
		return err
	}
	items, err := conn.Roster(r.Context())
	if err != nil {
		return err
	}
	out := make([]rosterItemOut, 0, len(items))
	for _, it := range items {
		groups := it.Groups
		if groups == nil {
			groups = []string{}
		}
		out = append(out, rosterItemOut{JID: it.JID, Name: it.Name, Groups: groups, Subscription: it.Subscription, Ask: it.Ask, Presence: s.presenceOf(it.JID)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": out})
	return nil
}

func (a *api) rosterSet(w http.ResponseWriter, r *http.Request, c *caller) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	var body struct {
		Name   string   `json:"name"`
		Groups []string `json:"groups"`
	}
	if err := decode(r, &body, true); err != nil {
		return err
	}
	if len(body.Name) > 1024 || len(body.Groups) > 64 {
		return fmt.Errorf("%w: name or groups too long", ErrBadRequest)
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.SetRosterItem(r.Context(), xmppconn.RosterItem{JID: jid, Name: body.Name, Groups: body.Groups}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) rosterRemove(w http.ResponseWriter, r *http.Request, c *caller) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.RemoveRosterItem(r.Context(), jid); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) subscription(w http.ResponseWriter, r *http.Request, c *caller) error {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return err
	}
	var body struct {
		Action string `json:"action"`
	}
	if err := decode(r, &body, false); err != nil {
		return err
	}
	action, err := xmppconn.ParseSubscriptionAction(body.Action)
	if err != nil {
		return err
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.Subscribe(r.Context(), jid, action); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) chatState(w http.ResponseWriter, r *http.Request, c *caller) error {
	var body struct {
		To    string `json:"to"`
		State string `json:"state"`
	}
	if err := decode(r, &body, false); err != nil {
		return err
	}
	to, err := validJID(body.To, false)
	if err != nil {
		return err
	}
	state, err := xmppconn.ParseChatState(body.State)
	if err != nil {
		return err
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	if err := conn.SendChatState(r.Context(), to, state); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// blocklist lists the blocked JIDs (XEP-0191).
func (a *api) blocklist(w http.ResponseWriter, r *http.Request, c *caller) error {
	_, conn, err := a.live(c)
	if err != nil {
		return err
	}
	items, err := conn.Blocklist(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"items": items})
	return nil
}

// block blocks a JID: the server drops everything it sends to the user.
func (a *api) block(w http.ResponseWriter, r *http.Request, c *caller) error {
	return a.blocking(w, r, c, true)
}

func (a *api) unblock(w http.ResponseWriter, r *http.Request, c *caller) error {
	return a.blocking(w, r, c, false)
}

func (a *api) blocking(w http.ResponseWriter, r *http.Request, c *caller, block bool) error {
	jid, err := validJID(r.PathValue("jid"), false)
	if err != nil {
		return err
	}
	_, conn, err := a.mutate(c)
	if err != nil {
		return err
	}
	if block {
		err = conn.Block(r.Context(), jid)
	} else {
		err = conn.Unblock(r.Context(), jid)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// fetchVCard reads a contact's vCard through the caller's stream.
func (a *api) fetchVCard(r *http.Request, c *caller) (xmppconn.VCard, error) {
	jid, err := validJID(r.PathValue("jid"), true)
	if err != nil {
		return xmppconn.VCard{}, err
	}
	_, conn, err := a.live(c)
	if err != nil {
		return xmppconn.VCard{}, err
	}
	return conn.VCard(r.Context(), jid)
}

// vcard answers {"jid","fullname","nickname","email","photo_type","has_photo"}.
func (a *api) vcard(w http.ResponseWriter, r *http.Request, c *caller) error {
	v, err := a.fetchVCard(r, c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"jid": r.PathValue("jid"), "fullname": v.FullName, "nickname": v.Nickname,
		"email": v.Email, "photo_type": v.PhotoType, "has_photo": len(v.Photo) > 0})
	return nil
}

// avatar serves a contact's vCard photo as an image, cacheable by ETag. It
// is also allowed by cookie so an <img> on the page can load it.
func (a *api) avatar(w http.ResponseWriter, r *http.Request, c *caller) error {
	v, err := a.fetchVCard(r, c)
	if err != nil {
		return err
	}
	if len(v.Photo) == 0 {
		return fmt.Errorf("%w: no avatar", ErrNotFound)
	}
	ctype := http.DetectContentType(v.Photo)
	if !strings.HasPrefix(ctype, "image/") {
		// Never serve a contact's bytes as anything but an image.
		return fmt.Errorf("%w: the vCard photo is not an image", ErrNotFound)
	}
	// The ETag is the XEP-0153 hash that presence events carry as avatar.
	etag := `"` + xmppconn.AvatarHash(v.Photo) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	h.Set("Cache-Control", "private, max-age=300")
	h.Set("X-Content-Type-Options", "nosniff")
	if r.Header.Get("If-None-Match") == etag {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(len(v.Photo)))
	w.WriteHeader(http.StatusOK)
	w.Write(v.Photo)
	return nil
}
