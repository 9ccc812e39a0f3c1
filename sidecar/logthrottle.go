package sidecar

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// Warnings repeat when someone else drives them: a contact sending forged
// carbons by the thousand once wrote as many WARN lines. throttle is the
// daemon's log handler in front of the real one: per source — a session
// (or user) and the message — it lets through logBurst warnings (and
// errors) in logWindow, counts the rest, and when the window ends writes
// one line, the same message with suppressed=N and window. Debug and info
// lines pass untouched.
const (
	logWindow = time.Minute
	logBurst  = 5
	// logMaxSources bounds the sources tracked at once; past it, lines of
	// new sources share one per message.
	logMaxSources = 10_000
)

// throttleKeys are the attributes that name a source: a record's own
// (sessionLog adds user and session to every line of a session) or its
// logger's (With). Others — a contact's JID, an error text — are left out,
// so a contact cannot earn fresh lines by changing its address.
var throttleKeys = map[string]bool{"user": true, "session": true, "route": true, "code": true}

type throttle struct {
	next   slog.Handler
	prefix string // the source attributes of With, rendered
	st     *throttleState
}

type throttleState struct {
	window time.Duration
	burst  int

	mu      sync.Mutex
	sources map[string]*throttleSource
}

type throttleSource struct {
	n          int // lines in this window
	suppressed int
	level      slog.Level
	msg        string
	attrs      []slog.Attr // the source attributes, for the summary
	h          slog.Handler
	timer      *time.Timer // ends the window
}

func newThrottle(next slog.Handler, window time.Duration, burst int) *throttle {
	return &throttle{next: next, st: &throttleState{window: window, burst: burst, sources: map[string]*throttleSource{}}}
}

func (t *throttle) Enabled(ctx context.Context, l slog.Level) bool { return t.next.Enabled(ctx, l) }

func (t *throttle) WithAttrs(attrs []slog.Attr) slog.Handler {
	var b strings.Builder
	b.WriteString(t.prefix)
	for _, a := range attrs {
		if throttleKeys[a.Key] {
			b.WriteString(a.Key + "=" + a.Value.String() + "\x00")
		}
	}
	return &throttle{next: t.next.WithAttrs(attrs), prefix: b.String(), st: t.st}
}

func (t *throttle) WithGroup(name string) slog.Handler {
	return &throttle{next: t.next.WithGroup(name), prefix: t.prefix + name + ".", st: t.st}
}

func (t *throttle) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return t.next.Handle(ctx, r)
	}
	var b strings.Builder
	b.WriteString(t.prefix)
	var attrs []slog.Attr
	r.Attrs(func(a slog.Attr) bool {
		if throttleKeys[a.Key] {
			b.WriteString(a.Key + "=" + a.Value.String() + "\x00")
			attrs = append(attrs, a)
		}
		return true
	})
	b.WriteString(r.Message)
	if t.st.admit(b.String(), r, attrs, t.next) {
		return t.next.Handle(ctx, r)
	}
	return nil
}

// admit reports whether the record of source key is written, counting it
// otherwise.
func (st *throttleState) admit(key string, r slog.Record, attrs []slog.Attr, h slog.Handler) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	src := st.sources[key]
	if src == nil {
		if len(st.sources) >= logMaxSources {
			key, attrs = "\x00overflow\x00"+r.Message, nil
			if src = st.sources[key]; src != nil {
				return src.add(st.burst)
			}
		}
		src = &throttleSource{level: r.Level, msg: r.Message, attrs: attrs, h: h}
		st.sources[key] = src
		src.timer = time.AfterFunc(st.window, func() { st.end(key, src) })
	}
	return src.add(st.burst)
}

func (src *throttleSource) add(burst int) bool {
	src.n++
	if src.n <= burst {
		return true
	}
	src.suppressed++
	return false
}

// end closes the window of a source: its summary line, if it had lines
// suppressed, and it is forgotten.
func (st *throttleState) end(key string, src *throttleSource) {
	st.mu.Lock()
	if st.sources[key] != src {
		st.mu.Unlock()
		return // flushed already
	}
	delete(st.sources, key)
	st.mu.Unlock()
	src.summary(st.window)
}

func (src *throttleSource) summary(window time.Duration) {
	if src.suppressed == 0 {
		return
	}
	r := slog.NewRecord(time.Now(), src.level, src.msg, 0)
	r.AddAttrs(src.attrs...)
	r.AddAttrs(slog.Int("suppressed", src.suppressed), slog.Duration("window", window))
	src.h.Handle(context.Background(), r)
}

// flush ends every window now (shutdown): the counts are written, no
// timer is left.
func (t *throttle) flush() {
	st := t.st
	st.mu.Lock()
	sources := st.sources
	for _, src := range sources {
		src.timer.Stop()
	}
	st.sources = map[string]*throttleSource{}
	st.mu.Unlock()
	for _, src := range sources {
		src.summary(st.window)
	}
}
