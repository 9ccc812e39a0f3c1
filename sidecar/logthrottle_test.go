package sidecar

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestThrottle: 2,000 identical warnings of one session in a second give
// logBurst lines, then, when the window ends, one line with the count;
// another session's warnings, other messages and info lines are not held
// back by them; a contact changing its address earns no fresh lines.
func TestThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var buf bytes.Buffer
		h := newThrottle(slog.NewTextHandler(lockedWriter{&mu, &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}), logWindow, logBurst)
		log := slog.New(h)
		lines := func(substr string) int {
			mu.Lock()
			defer mu.Unlock()
			return strings.Count(buf.String(), substr)
		}
		const msg = "xmppconn: dropping carbon not from own account"
		for i := range 2000 {
			log.Warn(msg, "user", "alice", "session", "3f2a91c0", "from", "mallory"+strings.Repeat("x", i%50)+"@evil.example")
			if i%2 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		log.Warn(msg, "user", "bob", "session", "1a2b3c4d", "from", "mallory@evil.example")
		log.Warn("xmpp connect failed", "user", "alice", "session", "3f2a91c0")
		log.Info("stream broken", "user", "alice", "session", "3f2a91c0")
		if n := lines("session=3f2a91c0 from=mallory"); n != logBurst {
			t.Fatalf("%d lines of alice's forged carbons in the window, want %d", n, logBurst)
		}
		if lines("session=1a2b3c4d") != 1 || lines("xmpp connect failed") != 1 || lines("stream broken") != 1 {
			t.Fatalf("other sources held back:\n%s", buf.String())
		}
		if lines("suppressed=") != 0 {
			t.Fatal("a count before the window ended")
		}
		time.Sleep(logWindow)
		synctest.Wait()
		if n := lines(`session=3f2a91c0 suppressed=1995 window=1m0s`); n != 1 {
			t.Fatalf("the count at the end of the window: %d lines\n%s", n, buf.String())
		}
		if lines("suppressed=") != 1 {
			t.Fatalf("counts for sources that suppressed nothing:\n%s", buf.String())
		}
		// A new window: lines pass again.
		log.Warn(msg, "user", "alice", "session", "3f2a91c0", "from", "mallory@evil.example")
		if n := lines("session=3f2a91c0 from=mallory"); n != logBurst+1 {
			t.Fatalf("the next window let %d lines through", n-logBurst)
		}
		// Shutdown writes the counts still held back, and stops the timers.
		for range 10 {
			log.Warn(msg, "user", "bob", "session", "1a2b3c4d")
		}
		h.flush()
		if n := lines("session=1a2b3c4d suppressed=5 window=1m0s"); n != 1 {
			t.Fatalf("flush: %d count lines\n%s", n, buf.String())
		}
		h.st.mu.Lock()
		left := len(h.st.sources)
		h.st.mu.Unlock()
		if left != 0 {
			t.Fatalf("after flush: %d sources", left)
		}
	})
}

// TestThrottleBounded: sources past logMaxSources share one per message,
// so unbounded distinct sources cannot grow the map or the log.
func TestThrottleBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var buf bytes.Buffer
		h := newThrottle(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil), logWindow, logBurst)
		log := slog.New(h)
		for i := range logMaxSources + 1000 {
			log.Warn("api error", "session", i)
		}
		h.st.mu.Lock()
		n := len(h.st.sources)
		h.st.mu.Unlock()
		if n != logMaxSources+1 {
			t.Fatalf("%d sources tracked, want %d", n, logMaxSources+1)
		}
		if n := strings.Count(buf.String(), "\n"); n != logMaxSources+logBurst {
			t.Fatalf("%d lines, want %d", n, logMaxSources+logBurst)
		}
		h.flush()
	})
}
