package sidecar

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// What every /v1 call passes through (wrap): draining, the body cap, the
// caller's authentication (API token, PHP session by header or cookie),
// the error answer, the log line and the latency metric.

// maxBody caps every request body.
const maxBody = 64 << 10

// statusRecorder remembers the status for logs and metrics, and when the
// request started, for a poll that is answered after its handler returned.
// beforeHeader, when set, adds to the answer's header as it is written
// (the owner's leaseLeftHeader on a forwarded call).
type statusRecorder struct {
	http.ResponseWriter
	status       int
	start        time.Time
	beforeHeader func(http.Header)
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.headerOut(code)
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.headerOut(http.StatusOK)
	}
	return s.ResponseWriter.Write(b)
}

// headerOut records the status of the header being written.
func (s *statusRecorder) headerOut(code int) {
	if s.beforeHeader != nil {
		s.beforeHeader(s.Header())
	}
	s.status = code
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
				if c != nil && a.forwardUnchecked(rec, r, c) {
					return nil
				}
				return err
			}
			if a.cluster == nil {
				return h(rec, r, c)
			}
			done, err := a.clusterRoute(rec, r, c, route)
			if !done && err == nil {
				err = h(rec, r, c)
			}
			if a.routeAgain(err, rec, r) {
				if done, err = a.clusterRoute(rec, r, c, route); !done && err == nil {
					err = h(rec, r, c)
				}
			}
			return err
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
	if !a.logger.Enabled(ctx, slog.LevelDebug) {
		return // production logs at info or above: no attributes to build
	}
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
// id cannot read that user's events on loopback. When the store does not
// answer, it returns the caller, its session unread, with the error.
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
	h := phpsession.Hash(c.id) // once: the session check and the registry's key
	c.key = keyOf(h)
	ctx := r.Context()
	s := a.reg.byKey(c.key)
	bound := lookupTimeout
	if s != nil && s.live() {
		// A session with a live stream here does not wait on a store
		// that stops answering (liveLookupTimeout).
		bound = liveLookupTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	start := time.Now()
	ps, err := a.reader.LookupHashed(ctx, h)
	a.metrics.storeLatency.Observe(time.Since(start).Seconds())
	if errors.Is(err, phpsession.ErrUnavailable) || err != nil && ctx.Err() != nil && r.Context().Err() == nil {
		// The store is down (Redis restarting) or slow. A session with a
		// live stream keeps working on what it last read, as the janitor
		// keeps it online; anything else waits for the store, or, in
		// cluster mode, goes to the node holding its stream
		// (forwardUnchecked): c comes back with the error.
		if s != nil && s.live() {
			c.php = &phpsession.Session{Identity: s.ident}
			return c, nil
		}
		return c, err
	}
	if err != nil {
		a.warnPasswordUnavailable(err)
		return nil, err
	}
	c.php = ps
	return c, nil
}

// liveLookupTimeout bounds the session store lookup of a call whose
// session has a live stream on this node: past it the call goes on with
// the identity the stream was opened with, as when the store answers
// that it is down. A user on the node holding their stream keeps chatting
// through a store (Redis) that dies or hangs mid-lookup; a session
// logged out meanwhile is still ended by the janitor's next check.
const liveLookupTimeout = 500 * time.Millisecond

// lookupTimeout bounds the session store lookup of any other call, which
// cannot be served without it: past it the call is answered 503
// store_unavailable (Retry-After: 1). A store that answers does so in
// milliseconds; go-redis's own read timeout and retries held such a call
// 4 s on a stalled Redis, 8 s on a stalled Redis Cluster (issue 20 item
// 6). The same 2 s as the Redis clients' read timeout: an answer they
// would have taken on their first attempt still is.
const lookupTimeout = 2 * time.Second

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

func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error, c *caller) {
	if r.Context().Err() != nil && errors.Is(err, context.Canceled) {
		// The call ended because its client hung up: not an error of
		// ours (a 500 "internal" before), and too common to log above
		// debug (a balancer giving up on calls waiting for a takeover).
		err = fmt.Errorf("%w: %w", errClientClosed, err)
		a.logger.Debug("api call abandoned by its client", "route", r.Pattern, "err", err)
	}
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
