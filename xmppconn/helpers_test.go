package xmppconn_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// backend is a real XMPP server the integration tests run against.
type backend struct {
	name         string
	addr         string
	domain       string
	tls          *tls.Config
	register     func(t testing.TB, user, pass string)
	restart      func(t testing.TB)
	kill         func(t testing.TB)
	start        func(t testing.TB)
	authFailures func(user string) int
	logTail      func(n int) string
	log          func() string // the whole log
}

func (b *backend) jid(user string) string { return user + "@" + b.domain }

func prosodyBackend(t testing.TB, opts xmppconntest.Options) (*backend, *xmppconntest.Server) {
	t.Helper()
	s := xmppconntest.StartProsody(t, opts)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(s.LogTail(60))
		}
	})
	return &backend{
		name:   "prosody",
		addr:   s.Addr,
		domain: s.Domain,
		tls:    s.TLSConfig(),
		register: func(t testing.TB, user, pass string) {
			s.RegisterMany(t, map[string]string{user: pass})
		},
		restart:      s.Restart,
		kill:         s.Kill,
		start:        s.Start,
		authFailures: s.AuthFailures,
		logTail:      s.LogTail,
		log:          s.Log,
	}, s
}

func ejabberdBackend(t testing.TB) *backend {
	t.Helper()
	e := xmppconntest.StartEjabberd(t, xmppconntest.EjabberdOptions{})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(e.LogTail(60))
		}
	})
	return &backend{
		name:         "ejabberd",
		addr:         e.Addr,
		domain:       e.Domain,
		tls:          e.TLSConfig(),
		register:     e.Register,
		restart:      e.Restart,
		kill:         e.Kill,
		start:        e.Start,
		authFailures: e.AuthFailures,
		logTail:      e.LogTail,
		log:          e.Log,
	}
}

// recorder is a Handler that keeps every event for later inspection.
type recorder struct {
	mu     sync.Mutex
	events []xmppconn.Event
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{})} }

func (r *recorder) HandleEvent(ev xmppconn.Event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	close(r.notify)
	r.notify = make(chan struct{})
	r.mu.Unlock()
}

func (r *recorder) snapshot() ([]xmppconn.Event, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]xmppconn.Event(nil), r.events...), r.notify
}

// waitFor returns the first recorded event matching match, waiting up to d.
func (r *recorder) waitFor(t testing.TB, d time.Duration, what string, match func(xmppconn.Event) bool) xmppconn.Event {
	t.Helper()
	deadline := time.After(d)
	for {
		evs, notify := r.snapshot()
		for _, ev := range evs {
			if match(ev) {
				return ev
			}
		}
		select {
		case <-notify:
		case <-deadline:
			t.Fatalf("timed out after %v waiting for %s; got %d events:\n%s", d, what, len(evs), describe(evs))
			return nil
		}
	}
}

// waitUntil waits until cond holds over all recorded events.
func (r *recorder) waitUntil(d time.Duration, cond func([]xmppconn.Event) bool) bool {
	deadline := time.After(d)
	for {
		evs, notify := r.snapshot()
		if cond(evs) {
			return true
		}
		select {
		case <-notify:
		case <-deadline:
			return false
		}
	}
}

func (r *recorder) messages() []*xmppconn.Message {
	evs, _ := r.snapshot()
	var ms []*xmppconn.Message
	for _, ev := range evs {
		if m, ok := ev.(*xmppconn.Message); ok {
			ms = append(ms, m)
		}
	}
	return ms
}

func (r *recorder) states() []*xmppconn.StateChange {
	evs, _ := r.snapshot()
	var sc []*xmppconn.StateChange
	for _, ev := range evs {
		if s, ok := ev.(*xmppconn.StateChange); ok {
			sc = append(sc, s)
		}
	}
	return sc
}

func describe(evs []xmppconn.Event) string {
	var b strings.Builder
	for i, ev := range evs {
		if i >= 40 {
			fmt.Fprintf(&b, "  ... %d more\n", len(evs)-i)
			break
		}
		fmt.Fprintf(&b, "  %T %+v\n", ev, ev)
	}
	return b.String()
}

func messageWithBody(body string) func(xmppconn.Event) bool {
	return func(ev xmppconn.Event) bool {
		m, ok := ev.(*xmppconn.Message)
		return ok && m.Body == body
	}
}

// logBuffer collects a test's client logs and prints them only on failure
// (or always with XMPPCONN_TEST_LOG=1),
// so goroutines logging after the test ends never touch testing.T.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.buf.Len() > 4<<20 {
		return len(p), nil
	}
	return l.buf.Write(p)
}

func clientLogger(t testing.TB, name string) *slog.Logger {
	lb := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("XMPPCONN_TEST_LOG") != "" {
			lb.mu.Lock()
			out := lb.buf.String()
			lb.mu.Unlock()
			if len(out) > 16<<10 {
				out = "...\n" + out[len(out)-16<<10:]
			}
			t.Logf("client log %s:\n%s", name, out)
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})).With("conn", name)
}

// client is a connected xmppconn.Conn with its recorded events.
type client struct {
	*xmppconn.Conn
	rec  *recorder
	user string
	name string
}

// baseConfig returns a Config for user on b, logging to the test.
func baseConfig(t testing.TB, b *backend, user, pass, resource string, h xmppconn.Handler) xmppconn.Config {
	return xmppconn.Config{
		Addr:       b.addr,
		Domain:     b.domain,
		TLSConfig:  b.tls,
		User:       user,
		Password:   pass,
		Resource:   resource,
		Handler:    h,
		Logger:     clientLogger(t, user+"/"+resource),
		IQTimeout:  10 * time.Second,
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: time.Second,
	}
}

// connect dials user on b; mod may adjust the Config. Close is registered
// with t.Cleanup.
func connect(t testing.TB, b *backend, user, pass, resource string, mod func(*xmppconn.Config)) *client {
	t.Helper()
	rec := newRecorder()
	cfg := baseConfig(t, b, user, pass, resource, rec)
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := xmppconn.Dial(ctx, cfg)
	if err != nil {
		t.Fatalf("Dial %s/%s on %s: %v\n%s", user, resource, b.name, err, b.logTail(30))
	}
	t.Cleanup(func() { closeConn(t, c) })
	return &client{Conn: c, rec: rec, user: user, name: user + "/" + cfg.Resource}
}

func closeConn(t testing.TB, c *xmppconn.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.Close(ctx); err != nil && !errors.Is(err, xmppconn.ErrClosed) {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("Close took %v", d)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Errorf("Done not closed 5s after Close")
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func bare(jid string) string {
	if i := strings.IndexByte(jid, '/'); i >= 0 {
		return jid[:i]
	}
	return jid
}
