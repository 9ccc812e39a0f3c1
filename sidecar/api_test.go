package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

const (
	goodID    = "goodsessionid0123456789abcdefghij"
	otherID   = "othersessionid0123456789abcdefghi"
	secretPW  = "pa55-secret-word"
	testToken = "0123456789abcdef0123456789abcdef"
)

// fakeReader serves sessions from a map; err overrides everything.
type fakeReader struct {
	mu       sync.Mutex
	sessions map[string]*phpsession.Session
	errs     map[string]error
	down     bool
	hung     bool // lookups wait for their context to end, as on a store that stops answering
	// readies counts Ready's calls; readyHook, when set, answers them
	// (ops_test.go).
	readies   atomic.Int64
	readyHook func(context.Context) error
}

func (f *fakeReader) Lookup(ctx context.Context, id string) (*phpsession.Session, error) {
	if err := phpsession.ValidateID(id, 0); err != nil {
		return nil, err
	}
	f.mu.Lock()
	if f.hung {
		f.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Second): // the caller did not bound it
			return nil, errors.New("fakeReader: a hung lookup was not bounded")
		}
	}
	defer f.mu.Unlock()
	if f.down {
		return nil, phpsession.ErrUnavailable
	}
	if err := f.errs[id]; err != nil {
		return nil, err
	}
	if s := f.sessions[id]; s != nil {
		return s, nil
	}
	return nil, phpsession.ErrNotFound
}

func (f *fakeReader) LookupHashed(ctx context.Context, h phpsession.HashedID) (*phpsession.Session, error) {
	return f.Lookup(ctx, h.ID())
}

func (f *fakeReader) Ready(ctx context.Context) error {
	f.readies.Add(1)
	f.mu.Lock()
	down, hook := f.down, f.readyHook
	f.mu.Unlock()
	if hook != nil {
		return hook(ctx)
	}
	if down {
		return phpsession.ErrUnavailable
	}
	return nil
}

func (f *fakeReader) set(id, user, pw string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sessions[id] = &phpsession.Session{Identity: phpsession.Identity{User: user, Password: pw, FullName: "Alice A", Email: user + "@example.test"}}
}

// fakeConn records what the API asked of the stream.
type fakeConn struct {
	mu          sync.Mutex
	jid         string
	sent        []xmppconn.Message
	pres        []xmppconn.Presence
	subs        []string
	states      []string
	roster      []xmppconn.RosterItem
	blocked     []string
	lastHistory xmppconn.HistoryQuery
	ownAvatar   *string
	rooms       map[string]xmppconn.JoinedRoom // rooms_test.go
	stanzas     []string                       // SendStanza (bosh_test.go)
	done        chan struct{}
	closed      bool
	fail        error
}

func (c *fakeConn) JID() string           { return c.jid }
func (c *fakeConn) State() xmppconn.State { return xmppconn.StateOnline }
func (c *fakeConn) Done() <-chan struct{} { return c.done }
func (c *fakeConn) Close(context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
	}
	return nil
}
func (c *fakeConn) Send(_ context.Context, m xmppconn.Message) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return "", c.fail
	}
	c.sent = append(c.sent, m)
	if m.ID == "" {
		m.ID = fmt.Sprintf("m%d", len(c.sent))
	}
	return m.ID, nil
}
func (c *fakeConn) SendPresence(_ context.Context, p xmppconn.Presence) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pres = append(c.pres, p)
	return nil
}
func (c *fakeConn) Subscribe(_ context.Context, jid string, action xmppconn.SubscriptionAction) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, string(action)+" "+jid)
	return nil
}
func (c *fakeConn) SendChatState(_ context.Context, to string, state xmppconn.ChatStateKind) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.states = append(c.states, string(state)+" "+to)
	return nil
}
func (c *fakeConn) Roster(context.Context) ([]xmppconn.RosterItem, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]xmppconn.RosterItem(nil), c.roster...), nil
}
func (c *fakeConn) SetRosterItem(_ context.Context, it xmppconn.RosterItem) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.roster = append(c.roster, it)
	return nil
}
func (c *fakeConn) Blocklist(context.Context) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string{}, c.blocked...), nil
}
func (c *fakeConn) Block(_ context.Context, jids ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked = append(c.blocked, jids...)
	return nil
}
func (c *fakeConn) Unblock(_ context.Context, jids ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.blocked = c.blocked[:0]
	return nil
}
func (c *fakeConn) VCard(_ context.Context, jid string) (xmppconn.VCard, error) {
	if jid == "nobody@example.test" {
		return xmppconn.VCard{}, nil
	}
	png := []byte("\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
	return xmppconn.VCard{FullName: "Bob B", Email: "bob@example.test", PhotoType: "image/png", Photo: png}, nil
}
func (c *fakeConn) RemoveRosterItem(_ context.Context, jid string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.roster) == 0 {
		return &xmppconn.StanzaError{Type: "cancel", Condition: "item-not-found"}
	}
	c.roster = c.roster[:0]
	return nil
}

// harness is an API over fakes, with every log line captured.
type harness struct {
	t       testing.TB
	api     *api
	reg     *registry
	reader  *fakeReader
	srv     http.Handler
	logs    *bytes.Buffer
	logMu   *sync.Mutex
	dials   int
	dialErr error
	handler xmppconn.Handler
	tap     func(*xmppconn.Stanza) // bridge_test.go
	conn    *fakeConn
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func newHarness(t testing.TB, token string) *harness {
	t.Helper()
	cfg, _, err := parseConfig([]string{"--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.test", "--session-save-path=" + t.TempDir()}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, reader: &fakeReader{sessions: map[string]*phpsession.Session{}, errs: map[string]error{}}, logs: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	logger := slog.New(slog.NewTextHandler(lockedWriter{h.logMu, h.logs}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dial := func(ctx context.Context, c xmppconn.Config) (xmppSession, error) {
		// As xmppconn.Dial does: the gate admits the login, within the
		// dial's own timeout, and learns how it ended.
		ctx, cancel := context.WithTimeout(ctx, xmppconn.DefaultIQTimeout+xmppconn.DefaultWriteTimeout)
		defer cancel()
		release, err := c.AuthGate.Acquire(ctx, false)
		if err != nil {
			return nil, fmt.Errorf("xmppconn: authentication not admitted: %w", err)
		}
		h.dials++
		if h.dialErr != nil {
			res := xmppconn.AuthAborted
			if errors.Is(h.dialErr, xmppconn.ErrAuth) {
				res = xmppconn.AuthFailed
			}
			release(res)
			return nil, h.dialErr
		}
		release(xmppconn.AuthSucceeded)
		h.handler = c.Handler
		h.tap = c.Tap
		h.conn = &fakeConn{jid: c.User + "@" + c.Domain + "/" + c.Resource, done: make(chan struct{})}
		return h.conn, nil
	}
	var reg *registry
	m := newMetrics(func() map[xmppconn.State]int { return reg.stateCounts() }, func() int64 { return reg.mem.total.Load() })
	reg = newRegistry(cfg, h.reader, dial, nil, logger, m)
	h.reg = reg
	h.api = &api{cfg: cfg, reg: reg, reader: h.reader, token: token, logger: logger, metrics: m, now: time.Now}
	h.srv = h.api.routes()
	h.reader.set(goodID, "alice", secretPW)
	return h
}

// holdLogins makes the harness's logins wait until release is closed (or
// their context ends); each sends its context on started first.
func (h *harness) holdLogins() (started chan context.Context, release chan struct{}) {
	started = make(chan context.Context, 10)
	release = make(chan struct{})
	dial := h.reg.dial
	h.reg.dial = func(ctx context.Context, c xmppconn.Config) (xmppSession, error) {
		started <- ctx
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return dial(ctx, c)
	}
	return started, release
}

// wantOneLoginRunning fails t unless the login whose context is loginCtx
// (held by holdLogins) still runs and no other login started: the calls
// (what: "poll", "request") that gave up neither cut it nor began another.
func wantOneLoginRunning(t *testing.T, loginCtx context.Context, started chan context.Context, what string) {
	t.Helper()
	if err := loginCtx.Err(); err != nil {
		t.Fatalf("the login ended with the %s that started it: %v", what, err)
	}
	select {
	case <-started:
		t.Fatalf("a %s that found the login in flight started another", what)
	default:
	}
}

func (h *harness) do(method, path, body string, hdr ...string) *httptest.ResponseRecorder {
	h.t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.srv.ServeHTTP(rec, req)
	return rec
}

func (h *harness) code(rec *httptest.ResponseRecorder) string {
	var b errorBody
	if err := jsonUnmarshal(rec.Body.Bytes(), &b); err != nil {
		return ""
	}
	return b.Error.Code
}

// TestErrorCodes drives the API to every documented error code.
func TestErrorCodes(t *testing.T) {
	h := newHarness(t, "")
	sid := func(id string) []string { return []string{"X-Session-Id", id} }
	h.reader.errs["expiredsession0123456789abcdefgh"] = phpsession.ErrExpired
	h.reader.errs["loggedoutsession0123456789abcdef"] = phpsession.ErrNotLoggedIn
	h.reader.errs["malformedsession0123456789abcdef"] = &phpsession.SyntaxError{Offset: 3, Msg: "x"}
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		hdr    []string
		status int
		code   string
	}{
		{"no session", "GET", "/v1/me", "", nil, 401, "session_missing"},
		{"invalid id", "GET", "/v1/me", "", sid("../../etc/passwd"), 401, "session_invalid"},
		{"malformed session", "GET", "/v1/me", "", sid("malformedsession0123456789abcdef"), 401, "session_invalid"},
		{"not found", "GET", "/v1/me", "", sid("missingsession0123456789abcdefgh"), 401, "session_not_found"},
		{"expired", "GET", "/v1/me", "", sid("expiredsession0123456789abcdefgh"), 401, "session_expired"},
		{"not logged in", "GET", "/v1/me", "", sid("loggedoutsession0123456789abcdef"), 401, "not_logged_in"},
		{"unknown route", "GET", "/v2/nothing", "", sid(goodID), 404, "not_found"},
		{"not connected", "POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, sid(goodID), 409, "not_connected"},
		{"events not connected", "GET", "/v1/events?wait=0", "", sid(goodID), 409, "not_connected"},
		{"bad json", "POST", "/v1/connect", `{"show":`, sid(goodID), 400, "bad_request"},
		{"unknown field", "POST", "/v1/connect", `{"colour":"red"}`, sid(goodID), 400, "bad_request"},
		{"bad show", "POST", "/v1/connect", `{"show":"sleepy"}`, sid(goodID), 400, "bad_request"},
		{"too large", "POST", "/v1/connect", `{"status":"` + strings.Repeat("x", maxBody) + `"}`, sid(goodID), 413, "too_large"},
		{"cookie mutation", "POST", "/v1/connect", ``, []string{"Cookie", "sessionid=" + goodID}, 401, "session_missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := h.do(tt.method, tt.path, tt.body, tt.hdr...)
			if rec.Code != tt.status || h.code(rec) != tt.code {
				t.Fatalf("%s %s = %d %q, want %d %q (%s)", tt.method, tt.path, rec.Code, h.code(rec), tt.status, tt.code, rec.Body)
			}
		})
	}

	// The rest need a connected session.
	if rec := h.do("POST", "/v1/connect", "", sid(goodID)...); rec.Code != 200 {
		t.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	more := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		code   string
	}{
		{"bad jid", "POST", "/v1/messages", `{"to":"not a jid@@","body":"hi"}`, 400, "bad_request"},
		{"empty body", "POST", "/v1/messages", `{"to":"bob@example.test","body":""}`, 400, "bad_request"},
		{"bad type", "POST", "/v1/messages", `{"to":"bob@example.test","body":"x","type":"spam"}`, 400, "bad_request"},
		{"bad cursor", "GET", "/v1/events?cursor=abc", "", 400, "bad_request"},
		{"bad wait", "GET", "/v1/events?wait=99", "", 400, "bad_request"},
		{"bad action", "POST", "/v1/subscriptions/bob@example.test", `{"action":"spy"}`, 400, "bad_request"},
		{"bad chat state", "POST", "/v1/chatstates", `{"to":"bob@example.test","state":"sleeping"}`, 400, "bad_request"},
		{"roster item missing", "DELETE", "/v1/roster/nobody@example.test", ``, 404, "not_found"},
		{"full jid in roster", "PUT", "/v1/roster/bob@example.test%2Fres", `{}`, 400, "bad_request"},
	}
	for _, tt := range more {
		t.Run(tt.name, func(t *testing.T) {
			rec := h.do(tt.method, tt.path, tt.body, sid(goodID)...)
			if rec.Code != tt.status || h.code(rec) != tt.code {
				t.Fatalf("%s %s = %d %q, want %d %q (%s)", tt.method, tt.path, rec.Code, h.code(rec), tt.status, tt.code, rec.Body)
			}
		})
	}
	t.Run("xmpp unavailable", func(t *testing.T) {
		h.conn.fail = fmt.Errorf("%w: down", errXMPP)
		defer func() { h.conn.fail = nil }()
		rec := h.do("POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, sid(goodID)...)
		if rec.Code != 502 || h.code(rec) != "xmpp_unavailable" {
			t.Fatalf("= %d %s", rec.Code, rec.Body)
		}
	})
	t.Run("rate limited", func(t *testing.T) {
		var last *httptest.ResponseRecorder
		for range 100 {
			last = h.do("POST", "/v1/chatstates", `{"to":"bob@example.test","state":"composing"}`, sid(goodID)...)
			if last.Code == 429 {
				break
			}
		}
		if last.Code != 429 || h.code(last) != "rate_limited" {
			t.Fatalf("= %d %s", last.Code, last.Body)
		}
	})
	t.Run("store unavailable", func(t *testing.T) {
		// A session without a live stream waits for the store; one with a
		// live stream keeps working on what was last read (Redis restarting
		// must not stop users who are chatting).
		h.reader.set(otherID, "bob", "pw")
		h.reader.mu.Lock()
		h.reader.down = true
		h.reader.mu.Unlock()
		defer func() { h.reader.mu.Lock(); h.reader.down = false; h.reader.mu.Unlock() }()
		for _, call := range [][2]string{{"GET", "/v1/me"}, {"POST", "/v1/connect"}} {
			rec := h.do(call[0], call[1], "", sid(otherID)...)
			if rec.Code != 503 || h.code(rec) != "store_unavailable" || rec.Header().Get("Retry-After") == "" {
				t.Fatalf("%s %s of a session not connected = %d %s", call[0], call[1], rec.Code, rec.Body)
			}
		}
		rec := h.do("GET", "/v1/me", "", sid(goodID)...)
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"state":"online"`) {
			t.Fatalf("GET /v1/me of a connected session while the store is down = %d %s", rec.Code, rec.Body)
		}
		if rec := h.do("GET", "/v1/events?wait=0", "", sid(goodID)...); rec.Code != 200 {
			t.Fatalf("poll of a connected session while the store is down = %d %s", rec.Code, rec.Body)
		}
	})
	t.Run("store hung", func(t *testing.T) {
		// A store that stops answering mid-lookup (a Redis dying) does not
		// hold a connected session's calls: past liveLookupTimeout they go
		// on with the stream's identity.
		h.reader.mu.Lock()
		h.reader.hung = true
		h.reader.mu.Unlock()
		defer func() { h.reader.mu.Lock(); h.reader.hung = false; h.reader.mu.Unlock() }()
		rec := h.do("GET", "/v1/me", "", sid(goodID)...)
		if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"state":"online"`) {
			t.Fatalf("GET /v1/me of a connected session while the store hangs = %d %s", rec.Code, rec.Body)
		}
		if rec := h.do("POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, sid(goodID)...); rec.Code != 202 {
			t.Fatalf("send of a connected session while the store hangs = %d %s", rec.Code, rec.Body)
		}
	})
	t.Run("shutting down", func(t *testing.T) {
		h.api.draining.Store(true)
		defer h.api.draining.Store(false)
		rec := h.do("GET", "/v1/me", "", sid(goodID)...)
		if rec.Code != 503 || h.code(rec) != "shutting_down" {
			t.Fatalf("= %d %s", rec.Code, rec.Body)
		}
	})
}

func TestAuthFailureNotRetried(t *testing.T) {
	h := newHarness(t, "")
	h.dialErr = fmt.Errorf("%w: not-authorized", xmppconn.ErrAuth)
	for range 5 {
		rec := h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
		if rec.Code != 502 || h.code(rec) != "xmpp_auth_failed" {
			t.Fatalf("= %d %s", rec.Code, rec.Body)
		}
	}
	if h.dials != 1 {
		t.Fatalf("dialed %d times with the same failing password, want 1", h.dials)
	}
	// A new password in the PHP session is tried again.
	h.reader.set(goodID, "alice", "new-password")
	h.dialErr = nil
	if rec := h.do("POST", "/v1/connect", "", "X-Session-Id", goodID); rec.Code != 200 {
		t.Fatalf("after password change: %d %s", rec.Code, rec.Body)
	}
	if h.dials != 2 {
		t.Fatalf("dials = %d, want 2", h.dials)
	}
}

// TestAuthFailureLimit: past --auth-failure-limit failures in an hour, no
// password is sent to the server (503 auth_throttled at once), not even
// one that worked before: the limit bounds what the server sees. An hour
// later the limit is free again.
func TestAuthFailureLimit(t *testing.T) {
	h := newHarness(t, "")
	h.reg.cfg.AuthFailLimit = 3
	h.reg.auth = newAuthLimiter(3, h.reg.metrics.authFailures.Inc)
	// alice connects once: her password is known to work.
	if rec := h.do("POST", "/v1/connect", "", "X-Session-Id", goodID); rec.Code != 200 {
		t.Fatalf("alice: %d %s", rec.Code, rec.Body)
	}
	h.dialErr = fmt.Errorf("%w: not-authorized", xmppconn.ErrAuth)
	for i := range 6 {
		id := fmt.Sprintf("badsession%02d0123456789abcdefghijk", i)
		h.reader.set(id, fmt.Sprintf("user%d", i), "stale")
		rec := h.do("POST", "/v1/connect", "", "X-Session-Id", id)
		want, code := 502, "xmpp_auth_failed"
		if i >= 3 {
			want, code = 503, "auth_throttled"
		}
		if rec.Code != want || h.code(rec) != code {
			t.Fatalf("bad session %d: %d %s, want %d %s", i, rec.Code, rec.Body, want, code)
		}
	}
	if h.dials != 1+3 {
		t.Fatalf("dialed %d times, want 4 (alice + 3 failures)", h.dials)
	}
	// alice's known password is not tried either (a new PHP session of
	// hers): it could have changed on the server.
	h.dialErr = nil
	h.reader.set(otherID, "alice", secretPW)
	if rec := h.do("POST", "/v1/connect", "", "X-Session-Id", otherID); rec.Code != 503 || h.code(rec) != "auth_throttled" {
		t.Fatalf("alice's known password past the limit: %d %s, want 503 auth_throttled", rec.Code, rec.Body)
	}
	if h.dials != 1+3 {
		t.Fatalf("dialed %d times, want 4", h.dials)
	}
	// An hour later the failures have aged out.
	l := h.reg.auth
	l.mu.Lock()
	for i := range l.failures {
		l.failures[i] = l.failures[i].Add(-time.Hour)
	}
	l.mu.Unlock()
	h.reader.set("newcomer0123456789abcdefghijklm", "newcomer", "fine")
	if rec := h.do("POST", "/v1/connect", "", "X-Session-Id", "newcomer0123456789abcdefghijklm"); rec.Code != 200 {
		t.Fatalf("a new password an hour later: %d %s", rec.Code, rec.Body)
	}
}

func TestTokenRequired(t *testing.T) {
	h := newHarness(t, testToken)
	if rec := h.do("GET", "/v1/me", "", "X-Session-Id", goodID); rec.Code != 401 || h.code(rec) != "session_invalid" {
		t.Fatalf("without token: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("GET", "/v1/me", "", "X-Session-Id", goodID, "Authorization", "Bearer wrong"); rec.Code != 401 {
		t.Fatalf("wrong token: %d", rec.Code)
	}
	if rec := h.do("GET", "/v1/me", "", "X-Session-Id", goodID, "Authorization", "Bearer "+testToken); rec.Code != 200 {
		t.Fatalf("with token: %d %s", rec.Code, rec.Body)
	}
	// The cookie calls need the token too (Apache adds it): a local user
	// who learns a session id cannot read its events on loopback.
	for _, path := range []string{"/v1/me", "/v1/events?wait=0", "/v1/avatar/bob@example.test"} {
		for _, auth := range []string{"", "Bearer wrong", "Bearer " + testToken[:len(testToken)-1], testToken} {
			if rec := h.do("GET", path, "", "Cookie", "other=1; sessionid="+goodID, "Authorization", auth); rec.Code != 401 || h.code(rec) != "session_invalid" {
				t.Fatalf("cookie %s with Authorization %q: %d %s", path, auth, rec.Code, rec.Body)
			}
		}
	}
	if rec := h.do("GET", "/v1/me", "", "Cookie", "other=1; sessionid="+goodID, "Authorization", "Bearer "+testToken); rec.Code != 200 {
		t.Fatalf("cookie me with the token: %d %s", rec.Code, rec.Body)
	}
	// Still read-only: the token does not open the mutating routes to a cookie.
	if rec := h.do("POST", "/v1/connect", "", "Cookie", "sessionid="+goodID, "Authorization", "Bearer "+testToken); rec.Code != 401 || h.code(rec) != "session_missing" {
		t.Fatalf("cookie connect with the token: %d %s", rec.Code, rec.Body)
	}
	// Without a configured token the cookie path works as before.
	if rec := newHarness(t, "").do("GET", "/v1/me", "", "Cookie", "sessionid="+goodID); rec.Code != 200 {
		t.Fatalf("cookie me without a token configured: %d %s", rec.Code, rec.Body)
	}
}

// TestConversationAndCursor: events flow to the poll, a poll whose response
// was lost is repeated with the old cursor and gets the same events.
func TestConversationAndCursor(t *testing.T) {
	h := newHarness(t, "")
	sid := []string{"X-Session-Id", goodID}
	rec := h.do("POST", "/v1/connect", `{"show":"away","status":"at lunch","priority":5}`, sid...)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"jid":"alice@example.test/expresso-`) {
		t.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	var conn struct{ Cursor string }
	jsonUnmarshal(rec.Body.Bytes(), &conn)
	h.handler.HandleEvent(&xmppconn.Presence{From: "bob@example.test/web", Show: "dnd", Status: "busy", Priority: 1})
	h.handler.HandleEvent(&xmppconn.Message{From: "bob@example.test/web", To: "alice@example.test", ID: "m1", Type: "chat", Body: "olá"})
	h.handler.HandleEvent(&xmppconn.ChatState{From: "bob@example.test/web", State: "composing"})
	h.handler.HandleEvent(&xmppconn.Receipt{From: "bob@example.test/web", ID: "a1"})
	h.handler.HandleEvent(&xmppconn.Subscription{From: "carol@example.test", Type: "subscribe"})
	h.handler.HandleEvent(&xmppconn.RosterPush{Item: xmppconn.RosterItem{JID: "bob@example.test", Subscription: "both"}})
	first := h.do("GET", "/v1/events?wait=0&cursor="+conn.Cursor, "", sid...)
	again := h.do("GET", "/v1/events?wait=0&cursor="+conn.Cursor, "", sid...)
	if first.Body.String() != again.Body.String() {
		t.Fatalf("same cursor, different events:\n%s\n%s", first.Body, again.Body)
	}
	body := first.Body.String()
	for _, want := range []string{
		`"event":"presence","from":"bob@example.test/web","type":"available","show":"dnd","status":"busy","priority":1`,
		`"event":"message","from":"bob@example.test/web","to":"alice@example.test","id":"m1","type":"chat","body":"olá","thread":"","delay":null,"carbon":null`,
		`"event":"chatstate","from":"bob@example.test/web","state":"composing"`,
		`"event":"receipt","from":"bob@example.test/web","id":"a1"`,
		`"event":"subscription","from":"carol@example.test","type":"subscribe"`,
		`"event":"roster","item":{"jid":"bob@example.test","name":"","groups":[],"subscription":"both","ask":""}`,
		`"recovered":true`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("events lack %s\n%s", want, body)
		}
	}
	var page struct{ Cursor string }
	jsonUnmarshal(first.Body.Bytes(), &page)
	empty := h.do("GET", "/v1/events?wait=0&cursor="+page.Cursor, "", sid...)
	if !strings.Contains(empty.Body.String(), `"events":[]`) {
		t.Fatalf("after the last cursor: %s", empty.Body)
	}
	// Roster shows presence per resource.
	h.conn.roster = []xmppconn.RosterItem{{JID: "bob@example.test", Subscription: "both", Groups: []string{"Work"}}}
	roster := h.do("GET", "/v1/roster", "", sid...)
	if !strings.Contains(roster.Body.String(), `"presence":[{"resource":"web","show":"dnd","status":"busy","priority":1}]`) {
		t.Fatalf("roster: %s", roster.Body)
	}
	// Mutations reach the stream.
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/messages", `{"to":"bob@example.test","body":"hi","receipt":true}`},
		{"POST", "/v1/presence", `{"show":"xa","status":"gone"}`},
		{"PUT", "/v1/roster/carol@example.test", `{"name":"Carol","groups":["Friends"]}`},
		{"POST", "/v1/subscriptions/carol@example.test", `{"action":"approve"}`},
		{"POST", "/v1/chatstates", `{"to":"bob@example.test","state":"paused"}`},
		{"PUT", "/v1/blocklist/spam@example.test", ``},
	} {
		if rec := h.do(c.method, c.path, c.body, sid...); rec.Code/100 != 2 {
			t.Errorf("%s %s = %d %s", c.method, c.path, rec.Code, rec.Body)
		}
	}
	if len(h.conn.sent) != 1 || !h.conn.sent[0].Receipt || len(h.conn.subs) != 1 || len(h.conn.states) != 1 {
		t.Fatalf("stream saw sent=%v subs=%v states=%v", h.conn.sent, h.conn.subs, h.conn.states)
	}
	if rec := h.do("GET", "/v1/blocklist", "", sid...); rec.Code != 200 || !strings.Contains(rec.Body.String(), `{"items":["spam@example.test"]}`) {
		t.Fatalf("blocklist: %d %s", rec.Code, rec.Body)
	}
	if rec := h.do("DELETE", "/v1/blocklist/spam@example.test", "", sid...); rec.Code != 204 || len(h.conn.blocked) != 0 {
		t.Fatalf("unblock: %d %v", rec.Code, h.conn.blocked)
	}
	if rec := h.do("GET", "/v1/vcard/bob@example.test", "", sid...); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"fullname":"Bob B"`) || !strings.Contains(rec.Body.String(), `"has_photo":true`) {
		t.Fatalf("vcard: %d %s", rec.Code, rec.Body)
	}
	av := h.do("GET", "/v1/avatar/bob@example.test", "", "Cookie", "sessionid="+goodID)
	if av.Code != 200 || av.Header().Get("Content-Type") != "image/png" || av.Header().Get("ETag") == "" {
		t.Fatalf("avatar: %d %v", av.Code, av.Header())
	}
	if rec := h.do("GET", "/v1/avatar/bob@example.test", "", append(sid, "If-None-Match", av.Header().Get("ETag"))...); rec.Code != 304 {
		t.Fatalf("avatar revalidation: %d", rec.Code)
	}
	if rec := h.do("GET", "/v1/avatar/nobody@example.test", "", sid...); rec.Code != 404 {
		t.Fatalf("missing avatar: %d", rec.Code)
	}
	if rec := h.do("POST", "/v1/disconnect", "", sid...); rec.Code != 204 || !h.conn.closed {
		t.Fatalf("disconnect: %d closed=%v", rec.Code, h.conn.closed)
	}
}

// TestSSE: the same events as Server-Sent Events, resumable by Last-Event-ID.
func TestSSE(t *testing.T) {
	h := newHarness(t, "")
	srv := httptest.NewServer(h.srv)
	defer srv.Close()
	h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
	h.handler.HandleEvent(&xmppconn.Message{From: "bob@example.test/web", ID: "m1", Type: "chat", Body: "one"})
	head := h.reg.get(goodID).log.head()
	h.handler.HandleEvent(&xmppconn.Message{From: "bob@example.test/web", ID: "m2", Type: "chat", Body: "two"})
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/v1/events", nil)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Cookie", "sessionid="+goodID)
	req.Header.Set("Last-Event-ID", head.String())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	buf := make([]byte, 4096)
	var got strings.Builder
	for !strings.Contains(got.String(), `"body":"two"`) {
		n, err := resp.Body.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("read: %v; got %q", err, got.String())
		}
	}
	if strings.Contains(got.String(), `"body":"one"`) || !strings.Contains(got.String(), "event: message\n") {
		t.Fatalf("resume from Last-Event-ID wrong: %q", got.String())
	}
}

// TestJanitorClosesEndedSessions: logout, another user, inactivity.
func TestJanitorClosesEndedSessions(t *testing.T) {
	h := newHarness(t, "")
	h.reader.set(otherID, "bob", "pw")
	h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
	alice := h.conn
	h.do("POST", "/v1/connect", "", "X-Session-Id", otherID)
	bob := h.conn
	delete(h.reader.sessions, goodID) // Expresso logout: session_destroy()
	h.reader.set(otherID, "mallory", "pw")
	h.reg.sweep(t.Context())
	if !alice.closed || !bob.closed {
		t.Fatalf("closed alice=%v bob=%v", alice.closed, bob.closed)
	}
	res := h.reg.get(goodID).log.poll(t.Context(), cursor{}, false, 0, 100)
	last := res.events[len(res.events)-1]
	if last.kind != "state" || !strings.Contains(string(last.fields), `"state":"offline","reason":"logged_out"`) {
		t.Fatalf("last event %s %s", last.kind, last.fields)
	}
	// Inactivity.
	h.reader.set(goodID, "alice", secretPW)
	h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
	s := h.reg.get(goodID)
	s.lastPoll.Store(time.Now().Add(-time.Hour).UnixNano())
	h.reg.sweep(t.Context())
	if !h.conn.closed || s.State() != xmppconn.StateOffline {
		t.Fatalf("inactive session not closed: %v", s.State())
	}
}

// TestLogsNeverLeakSecrets runs a scripted session and checks that no log
// line carries the password or the session id.
func TestLogsNeverLeakSecrets(t *testing.T) {
	h := newHarness(t, testToken)
	sid := []string{"X-Session-Id", goodID, "Authorization", "Bearer " + testToken}
	h.do("POST", "/v1/connect", "", sid...)
	h.do("POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, sid...)
	h.do("GET", "/v1/events?wait=0", "", sid...)
	h.do("GET", "/v1/me", "", "Cookie", "sessionid="+goodID)
	h.conn.fail = errors.New("boom " + goodID[:4])
	h.do("POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, sid...)
	h.reg.closeSession(h.reg.get(goodID), "test")
	h.logMu.Lock()
	logs := h.logs.String()
	h.logMu.Unlock()
	if logs == "" {
		t.Fatal("nothing was logged")
	}
	for _, secret := range []string{secretPW, goodID, testToken} {
		if strings.Contains(logs, secret) {
			t.Fatalf("log contains a secret %q:\n%s", secret, logs)
		}
	}
}

// FuzzAPI: whatever arrives, the API answers 2xx or 4xx and never panics.
func FuzzAPI(f *testing.F) {
	f.Add("POST", "/v1/messages", `{"to":"bob@example.test","body":"hi"}`, goodID, "")
	f.Add("GET", "/v1/events?cursor=1:2&wait=0&limit=5", "", goodID, "text/event-stream")
	f.Add("PUT", "/v1/roster/bob@example.test", `{"name":"x","groups":["a"]}`, goodID, "")
	f.Add("POST", "/v1/connect", `{"priority":1e99}`, "sessionid=../../x", "")
	f.Add("GET", "/v1/history?with=bob@example.test&before=&max=5&start=2026-01-02T03:04:05Z", "", goodID, "")
	f.Fuzz(func(t *testing.T, method, path, body, id, accept string) {
		h := newHarness(t, "")
		h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
		if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n\t#") || strings.ContainsAny(method, " \r\n\t/()<>@,;:\\\"[]?={}") || method == "" {
			return
		}
		req, err := http.NewRequest(method, "http://sidecar"+path, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("X-Session-Id", id)
		if strings.Contains(accept, "event-stream") {
			return // streams never end on their own; covered by TestSSE
		}
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		req = req.WithContext(ctx)
		rec := httptest.NewRecorder()
		h.srv.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %s %q -> %d %s", method, path, body, rec.Code, rec.Body)
		}
	})
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// TestRunShutdownLeavesNothing starts the whole daemon over fakes, parks
// long polls on it, then cancels it: every parked poll is answered at once
// and its connection closed, Run returns and no goroutine is left behind.
func TestRunShutdownLeavesNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg, _, err := parseConfig([]string{"--listen=" + addr, "--ops-listen=127.0.0.1:0", "--xmpp-addr=127.0.0.1:5222",
		"--xmpp-domain=example.test", "--session-save-path=" + t.TempDir(), "--shutdown-timeout=2s", "--max-polls-per-session=10"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	reader := &fakeReader{sessions: map[string]*phpsession.Session{}, errs: map[string]error{}}
	reader.set(goodID, "alice", secretPW)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	started := make(chan *api, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.DiscardHandler), &deps{reader: reader, dial: func(context.Context, xmppconn.Config) (xmppSession, error) {
			return &fakeConn{done: make(chan struct{})}, nil
		}, started: func(a *api) { started <- a }})
	}()
	a := <-started
	hc := &http.Client{Transport: &http.Transport{}}
	var head struct{ Cursor string }
	for _, call := range []struct{ method, path string }{{"POST", "/v1/connect"}, {"GET", "/v1/events?wait=0"}} {
		req, _ := http.NewRequestWithContext(t.Context(), call.method, "http://"+addr+call.path, nil)
		req.Header.Set("X-Session-Id", goodID)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&head) // the events page's cursor is the head
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %v", call.method, call.path, resp.StatusCode, err)
		}
	}
	hc.CloseIdleConnections()
	const polls = 10
	var conns []net.Conn
	for range polls {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /v1/events?cursor=%s&wait=55 HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: %s\r\n\r\n", head.Cursor, goodID)
		conns = append(conns, c)
	}
	for deadline := time.Now().Add(10 * time.Second); a.parked.parkedCount() != polls; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d polls parked", a.parked.parkedCount(), polls)
		}
	}
	start := time.Now()
	cancel()
	for i, c := range conns {
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusOK || !resp.Close {
			t.Fatalf("parked poll %d at shutdown: %v %v", i, resp, err)
		}
		io.Copy(io.Discard, resp.Body)
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("parked poll %d: the connection stayed open: %v", i, err)
		}
	}
	t.Logf("%d parked polls answered and closed %v after the shutdown began", polls, time.Since(start).Round(time.Millisecond))
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return")
	}
}

// TestStatusNeedsToken: /status shows any local user the counts only; the
// per-user rows (logins, JIDs, last polls) need the ops or the API token.
func TestStatusNeedsToken(t *testing.T) {
	const opsToken = "ops-token-0123456789abcdef"
	h := newHarness(t, testToken)
	if rec := h.do("POST", "/v1/connect", "", "X-Session-Id", goodID, "Authorization", "Bearer "+testToken); rec.Code != 200 {
		t.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	o := &ops{cfg: h.api.cfg, reg: h.reg, reader: h.reader, metrics: h.api.metrics, api: h.api, tokens: []string{testToken, opsToken}}
	srv := o.routes()
	get := func(path, auth string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", path, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		return rec
	}
	personal := []string{"alice", "example.test", "expresso-"}
	for _, path := range []string{"/status", "/status?format=json"} {
		for _, auth := range []string{"", "Bearer wrong", "Basic " + opsToken, "Bearer " + opsToken[:len(opsToken)-1], opsToken} {
			rec := get(path, auth)
			for _, p := range personal {
				if strings.Contains(rec.Body.String(), p) {
					t.Fatalf("%s with Authorization %q shows %q: %d %s", path, auth, p, rec.Code, rec.Body)
				}
			}
			if auth == "" {
				if rec.Code != 200 || !strings.Contains(rec.Body.String(), "online") {
					t.Fatalf("%s without a token: %d %s, want the counts", path, rec.Code, rec.Body)
				}
			} else if rec.Code != http.StatusUnauthorized {
				t.Fatalf("%s with Authorization %q: %d, want 401", path, auth, rec.Code)
			}
		}
	}
	var anon struct {
		Counts   map[string]int `json:"counts"`
		Sessions *[]statusRow   `json:"sessions"`
	}
	if err := json.Unmarshal(get("/status?format=json", "").Body.Bytes(), &anon); err != nil || anon.Counts["online"] != 1 || anon.Sessions != nil {
		t.Fatalf("counts-only status: %+v %v", anon, err)
	}
	for _, tok := range []string{opsToken, testToken} {
		var full struct {
			Sessions []statusRow `json:"sessions"`
		}
		rec := get("/status?format=json", "Bearer "+tok)
		if err := json.Unmarshal(rec.Body.Bytes(), &full); err != nil || len(full.Sessions) != 1 || full.Sessions[0].User != "alice" ||
			!strings.HasPrefix(full.Sessions[0].JID, "alice@example.test/expresso-") {
			t.Fatalf("status with a token: %d %s", rec.Code, rec.Body)
		}
		if html := get("/status", "Bearer "+tok).Body.String(); !strings.Contains(html, "<td>alice</td>") || strings.Contains(html, goodID) {
			t.Fatalf("HTML status with a token: %s", html)
		}
	}
	// No token configured at all: nobody gets the rows.
	o.tokens = []string{""}
	if rec := get("/status?format=json", "Bearer "); strings.Contains(rec.Body.String(), "alice") {
		t.Fatalf("an empty bearer opened the rows: %d %s", rec.Code, rec.Body)
	}
}

// TestRunShutdownAPIDrainBounded: a call still running when the daemon
// stops (a connect whose login does not end with its request: a claim's
// login runs up to takeoverLoginTimeout) holds the API's drain for at
// most a third of --shutdown-timeout, so that in a cluster the
// hand-over, which comes next, keeps its share. At 2,000 users such
// calls held the drain for the whole timeout and nothing was handed over.
// The parked connections' drain, which comes first, shares that third.
func TestRunShutdownAPIDrainBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const timeout = 3 * time.Second
	cfg, _, err := parseConfig([]string{"--listen=" + addr, "--ops-listen=127.0.0.1:0", "--xmpp-addr=127.0.0.1:5222",
		"--xmpp-domain=example.test", "--session-save-path=" + t.TempDir(), "--shutdown-timeout=" + timeout.String()}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	reader := &fakeReader{sessions: map[string]*phpsession.Session{}, errs: map[string]error{}}
	reader.set(goodID, "alice", secretPW)
	release := make(chan struct{})
	dialing := make(chan struct{}, 1)
	var logs bytes.Buffer
	var logMu sync.Mutex
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	started := make(chan *api, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logs}, nil)), &deps{reader: reader, dial: func(context.Context, xmppconn.Config) (xmppSession, error) {
			dialing <- struct{}{}
			<-release // a login that outlives the shutdown
			return nil, xmppconn.ErrClosed
		}, started: func(a *api) { started <- a }})
	}()
	<-started
	go func() {
		req, _ := http.NewRequest("POST", "http://"+addr+"/v1/connect", nil)
		req.Header.Set("X-Session-Id", goodID)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-dialing
	cancel()
	select {
	case <-done:
	case <-time.After(3 * timeout):
		t.Fatal("serve did not return")
	}
	close(release)
	logMu.Lock()
	log := logs.String()
	logMu.Unlock()
	m := regexp.MustCompile(`msg="imsidecar stopped".* parked=(\S+) api=(\S+)`).FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("no stop line in the log:\n%s", log)
	}
	parked, err1 := time.ParseDuration(m[1])
	api, err2 := time.ParseDuration(m[2])
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if parked+api > timeout/3+500*time.Millisecond {
		t.Errorf("the parked connections' and the API's drains took %v and %v of the %v shutdown timeout, want at most a third together", parked, api, timeout)
	}
}

// TestClientHangUp: a call whose client hangs up while it waits (a load
// balancer's timeout, here on a session store that hangs) is counted 499
// and logged at debug, not as a 500 "internal" warning; an error of the
// store's own, the client gone or not, is still the store's.
func TestClientHangUp(t *testing.T) {
	for _, tc := range []struct {
		name     string
		hung     bool          // lookups wait for their context
		down     bool          // the store answers that it is down
		hangUp   time.Duration // when the client leaves, into the call (0: before it, -1: never)
		status   string
		apiError bool // a warning "api error" is logged
	}{
		{name: "store hung, client hangs up", hung: true, hangUp: 50 * time.Millisecond, status: "499"},
		{name: "store down, client gone", down: true, hangUp: 0, status: "503", apiError: true},
		{name: "store down, client waits", down: true, hangUp: -1, status: "503", apiError: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, "")
			h.reader.set(otherID, "bob", "pw")
			h.reader.mu.Lock()
			h.reader.hung, h.reader.down = tc.hung, tc.down
			h.reader.mu.Unlock()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			switch {
			case tc.hangUp == 0:
				cancel()
			case tc.hangUp > 0:
				time.AfterFunc(tc.hangUp, cancel)
			}
			req := httptest.NewRequest("GET", "/v1/me", nil).WithContext(ctx)
			req.Header.Set("X-Session-Id", otherID)
			h.srv.ServeHTTP(httptest.NewRecorder(), req)

			if got := apiStatuses(t, h.api.metrics, "GET /v1/me"); len(got) != 1 || got[0] != tc.status {
				t.Errorf("imsidecar_api_request_duration_seconds counted statuses %v, want [%s]", got, tc.status)
			}
			h.logMu.Lock()
			logs := h.logs.String()
			h.logMu.Unlock()
			if got := strings.Contains(logs, `msg="api error"`); got != tc.apiError {
				t.Errorf("warning \"api error\" logged: %v, want %v; logs:\n%s", got, tc.apiError, logs)
			}
			if got := strings.Contains(logs, "abandoned by its client"); got != (tc.status == "499") {
				t.Errorf("debug line on the hang-up: %v, want %v; logs:\n%s", got, tc.status == "499", logs)
			}
		})
	}
}

// apiStatuses lists the statuses imsidecar_api_request_duration_seconds
// counted for route.
func apiStatuses(t *testing.T, m *metrics, route string) []string {
	t.Helper()
	var out []string
	for _, se := range metricSeries(t, m, "imsidecar_api_request_duration_seconds") {
		if se.labels["route"] == route {
			out = append(out, se.labels["status"])
		}
	}
	return out
}

// series is one series of a metric: its labels and its value (a
// counter's, or a histogram's count).
type series struct {
	labels map[string]string
	value  float64
}

// metricSeries gathers metric name's series from m's registry.
func metricSeries(t *testing.T, m *metrics, name string) []series {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []series
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			se := series{labels: map[string]string{}, value: mt.GetCounter().GetValue()}
			for _, lp := range mt.GetLabel() {
				se.labels[lp.GetName()] = lp.GetValue()
			}
			if h := mt.GetHistogram(); h != nil {
				se.value = float64(h.GetSampleCount())
			}
			out = append(out, se)
		}
	}
	return out
}

// TestResumeLoginOutlivesItsCall: the login a poll starts for a session
// the daemon no longer has (a restart; in cluster mode a takeover whose
// first login failed) is the registry's, not the poll's. Polls that give
// up while it runs (a balancer's timeout, a user's next poll) end at once,
// with 499 and no login of their own; the login goes on, uncut, once; and
// the next poll finds the session online. The shutdown ends such a login.
func TestResumeLoginOutlivesItsCall(t *testing.T) {
	h := newHarness(t, "")
	started, release := h.holdLogins()
	old := cursor{epoch: firstEpoch - 1, offset: 3}.String()
	poll := func(ctx context.Context) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/v1/events?wait=0&cursor="+old, nil).WithContext(ctx)
		req.Header.Set("X-Session-Id", goodID)
		rec := httptest.NewRecorder()
		h.srv.ServeHTTP(rec, req)
		return rec
	}
	// The first poll starts the login and gives up; so do five more,
	// which find it in flight.
	var loginCtx context.Context
	for i := range 6 {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan *httptest.ResponseRecorder)
		go func() { done <- poll(ctx) }()
		if i == 0 {
			loginCtx = <-started
		} else {
			time.Sleep(10 * time.Millisecond) // waiting on the login in flight
		}
		cancel()
		select {
		case rec := <-done:
			if rec.Code != 499 {
				t.Fatalf("poll %d that gave up: %d %s, want 499", i, rec.Code, rec.Body)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("poll %d did not end with its client", i)
		}
	}
	wantOneLoginRunning(t, loginCtx, started, "poll")
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		rec := poll(t.Context())
		if rec.Code == http.StatusOK {
			if !strings.Contains(rec.Body.String(), `"recovered":false`) {
				t.Errorf("first page after the restart: %s, want recovered:false", rec.Body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the login: %d %s, want 200", rec.Code, rec.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h.dials != 1 {
		t.Errorf("%d logins, want 1", h.dials)
	}
	// The login logs it right after it puts the session in the registry,
	// where the poll above may have found it first: wait for the line.
	var n int
	for {
		h.logMu.Lock()
		n = strings.Count(h.logs.String(), "session resumed after a restart")
		h.logMu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n != 1 {
		t.Errorf("the log says %d times that the session resumed, want once", n)
	}

	// The shutdown ends a login nobody waits for.
	h2 := newHarness(t, "")
	h2.reg.dial = func(ctx context.Context, c xmppconn.Config) (xmppSession, error) {
		started <- ctx
		<-ctx.Done()
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		req := httptest.NewRequest("GET", "/v1/events?wait=0&cursor="+old, nil).WithContext(ctx)
		req.Header.Set("X-Session-Id", goodID)
		h2.srv.ServeHTTP(httptest.NewRecorder(), req)
	}()
	loginCtx = <-started
	cancel()
	sctx, scancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer scancel()
	h2.reg.shutdown(sctx)
	if sctx.Err() != nil || loginCtx.Err() == nil {
		t.Fatalf("shutdown: %v; the owned login: %v, want ended", sctx.Err(), loginCtx.Err())
	}
}
