package sidecar

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

func TestCursorParse(t *testing.T) {
	for _, tt := range []struct {
		in    string
		ok    bool
		given bool
	}{{"", true, false}, {"7:42", true, true}, {"7", false, false}, {"a:1", false, false}, {"1:-1", false, false}, {"99999999999999999999:1", false, false}} {
		_, given, err := parseCursor(tt.in)
		if (err == nil) != tt.ok || given != tt.given {
			t.Errorf("parseCursor(%q) = given %v, err %v", tt.in, given, err)
		}
	}
}

func TestEventLogRecovery(t *testing.T) {
	l := newEventLog(10, nil)
	for i := range 5 {
		l.append("message", []byte(fmt.Sprintf(`"n":%d`, i)))
	}
	res := l.poll(t.Context(), cursor{}, false, 0, 100)
	if len(res.events) != 5 || !res.recovered || res.cursor.offset != 5 {
		t.Fatalf("from start: %d events, recovered %v, cursor %v", len(res.events), res.recovered, res.cursor)
	}
	// The same cursor twice gives the same events: an unacknowledged poll loses nothing.
	a := l.poll(t.Context(), cursor{l.epoch, 2}, true, 0, 100)
	b := l.poll(t.Context(), cursor{l.epoch, 2}, true, 0, 100)
	if len(a.events) != 3 || len(b.events) != 3 || a.events[0].offset != 3 {
		t.Fatalf("repeat: %v %v", a.events, b.events)
	}
	// Limit.
	if p := l.poll(t.Context(), cursor{l.epoch, 0}, true, 0, 2); len(p.events) != 2 || p.cursor.offset != 2 {
		t.Fatalf("limit: %+v", p)
	}
	// Overflow drops the oldest; an old cursor is not recovered.
	for i := range 20 {
		l.append("message", []byte(fmt.Sprintf(`"m":%d`, i)))
	}
	if p := l.poll(t.Context(), cursor{l.epoch, 2}, true, 0, 100); p.recovered || len(p.events) != 10 || p.events[0].offset != 16 {
		t.Fatalf("overflow: recovered %v, %d events from %d", p.recovered, len(p.events), p.events[0].offset)
	}
	// Another epoch (a restart) is not recovered.
	if p := l.poll(t.Context(), cursor{l.epoch - 1, 20}, true, 0, 100); p.recovered {
		t.Fatal("foreign epoch recovered")
	}
	// A gap (stream replaced without resumption) un-recovers older cursors only.
	head := l.head()
	l.markGap()
	l.append("state", []byte(`"state":"online"`))
	if p := l.poll(t.Context(), cursor{l.epoch, head.offset - 1}, true, 0, 100); p.recovered {
		t.Fatal("cursor before the gap recovered")
	}
	if p := l.poll(t.Context(), head, true, 0, 100); !p.recovered || len(p.events) != 1 {
		t.Fatalf("cursor at the gap: %+v", p)
	}
}

// TestEventLogEarlierEpochs: a log that continues earlier owners' logs
// (cluster mode: seed) takes their cursors up to the end of what each
// wrote, and answers recovered:false past it, where this owner's own
// events stand at offsets the earlier one may have shown for others.
func TestEventLogEarlierEpochs(t *testing.T) {
	l := newEventLog(10, nil)
	l.seed(&savedSession{epoch: 6, prev: []cursor{{5, 4}}, next: 8, events: []event{
		{kind: "state", fields: []byte(`"state":"online"`)}, {kind: "message", fields: []byte(`"n":7`)}}})
	l.append("state", []byte(`"state":"connecting"`)) // this owner's: offset 8
	l.append("message", []byte(`"n":9`))
	if l.epoch == 5 || l.epoch == 6 || l.head().offset != 9 {
		t.Fatalf("seeded log at %v", l.head())
	}
	for _, tc := range []struct {
		name      string
		cur       cursor
		recovered bool
		first     uint64 // offset of the first event answered
	}{
		{"the last epoch, before its last event", cursor{6, 6}, true, 7},
		{"the last epoch, at its last event", cursor{6, 7}, true, 8},
		{"the last epoch, past what it wrote", cursor{6, 8}, false, 6},
		{"the last epoch, far past it", cursor{6, 1 << 40}, false, 6},
		{"an older epoch, before its end", cursor{5, 3}, false, 6}, // older than the oldest kept
		{"an older epoch, past its end", cursor{5, 5}, false, 6},
		{"this epoch", cursor{l.epoch, 8}, true, 9},
		{"an unknown epoch", cursor{4, 7}, false, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := l.read(tc.cur, true, 100)
			if res.recovered != tc.recovered || len(res.events) == 0 || res.events[0].offset != tc.first || res.cursor != l.head() {
				t.Fatalf("after %v: recovered %v, %d events from %+v, cursor %v; want recovered %v from %d", tc.cur, res.recovered, len(res.events), res.events, res.cursor, tc.recovered, tc.first)
			}
		})
	}
	// An older epoch's cursor inside what is kept is current too.
	l2 := newEventLog(10, nil)
	l2.seed(&savedSession{epoch: 6, prev: []cursor{{5, 7}}, next: 8, events: []event{
		{kind: "state", fields: []byte(`"state":"online"`)}, {kind: "message", fields: []byte(`"n":7`)}}})
	if res := l2.read(cursor{5, 6}, true, 100); !res.recovered || len(res.events) != 1 || res.events[0].offset != 7 {
		t.Fatalf("an older epoch's cursor in what is kept: %+v", res)
	}
}

func TestEventLogWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newEventLog(10, nil)
		start := time.Now()
		res := l.poll(t.Context(), l.head(), true, 25*time.Second, 10)
		if len(res.events) != 0 || time.Since(start) != 25*time.Second {
			t.Fatalf("empty wait returned %d events after %v", len(res.events), time.Since(start))
		}
		if len(l.waiters) != 0 {
			t.Fatalf("a poll that timed out left %d waiters", len(l.waiters))
		}
		go func() {
			time.Sleep(3 * time.Second)
			l.append("message", []byte(`"x":1`))
		}()
		start = time.Now()
		res = l.poll(t.Context(), l.head(), true, 25*time.Second, 10)
		if len(res.events) != 1 || time.Since(start) != 3*time.Second {
			t.Fatalf("woke with %d events after %v", len(res.events), time.Since(start))
		}
		ctx, cancel := context.WithCancel(t.Context())
		go func() { time.Sleep(time.Second); cancel() }()
		start = time.Now()
		l.poll(ctx, l.head(), true, 25*time.Second, 10)
		if time.Since(start) != time.Second {
			t.Fatalf("cancel honoured after %v", time.Since(start))
		}
	})
}

// countWaiter counts its wakes.
type countWaiter struct{ n atomic.Int32 }

func (w *countWaiter) wake() { w.n.Add(1) }

// TestEventLogWaiter: a waiter is registered only when there is nothing to
// read, woken once by the next append, and not at all once cancelled.
func TestEventLogWaiter(t *testing.T) {
	tests := []struct {
		name    string
		before  int  // events appended before readOrWait
		cancel  bool // cancelWait before the appends
		appends int
		waiting bool
		wakes   int32
	}{
		{"woken by the next append", 0, false, 1, true, 1},
		{"woken once", 0, false, 3, true, 1},
		{"cancelled", 0, true, 2, true, 0},
		{"events ready: not registered", 2, false, 1, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newEventLog(10, nil)
			head := l.head()
			for range tt.before {
				l.append("message", []byte(`"x":1`))
			}
			w, other := &countWaiter{}, &countWaiter{}
			res, waiting := l.readOrWait(head, true, 10, w)
			if waiting != tt.waiting || len(res.events) != tt.before {
				t.Fatalf("readOrWait: waiting %v with %d events, want %v with %d", waiting, len(res.events), tt.waiting, tt.before)
			}
			l.readOrWait(l.head(), true, 10, other)
			if tt.cancel {
				l.cancelWait(w)
				l.cancelWait(w) // twice is harmless
			}
			for range tt.appends {
				l.append("message", []byte(`"y":2`))
			}
			if got := w.n.Load(); got != tt.wakes {
				t.Errorf("woken %d times, want %d", got, tt.wakes)
			}
			if other.n.Load() != 1 {
				t.Errorf("the other waiter was woken %d times, want 1", other.n.Load())
			}
			if len(l.waiters) != 0 {
				t.Errorf("%d waiters left registered", len(l.waiters))
			}
		})
	}
}

// TestEventLogWaiterRace: an event appended concurrently with readOrWait is
// either returned by it or wakes the waiter it registered, never neither.
func TestEventLogWaiterRace(t *testing.T) {
	l := newEventLog(1000, nil)
	for i := range 2000 {
		head := l.head()
		w := make(chanWaiter)
		done := make(chan struct{})
		go func() {
			defer close(done)
			l.append("message", []byte(strconv.Itoa(i)))
		}()
		res, waiting := l.readOrWait(head, true, 10, w)
		<-done
		if !waiting {
			if len(res.events) != 1 {
				t.Fatalf("round %d: not waiting and %d events", i, len(res.events))
			}
			continue
		}
		select {
		case <-w:
		default:
			t.Fatalf("round %d: registered after an empty read, but the append did not wake it", i)
		}
	}
}

func BenchmarkEventLogAppendPoll(b *testing.B) {
	l := newEventLog(1000, nil)
	fields := []byte(`"from":"bob@example.test/web","to":"alice@example.test","id":"m1","type":"chat","body":"hello"`)
	cur := l.head()
	for b.Loop() {
		l.append("message", fields)
		res := l.poll(b.Context(), cur, true, 0, 10)
		cur = res.cursor
	}
}

// TestEventLogDedup: a message delivered twice while the first copy is
// still in the log is logged once; once the first copy has left the ring,
// the key is free again; events without a key are never merged.
func TestEventLogDedup(t *testing.T) {
	l := newEventLog(4, nil)
	for _, tt := range []struct {
		key  string
		want bool
	}{{"a", true}, {"b", true}, {"a", false}, {"", true}, {"", true}, {"b", false}, {"c", true}, {"a", true}, {"c", false}} {
		if got := l.appendOnce("message", tt.key, []byte(`"k":1`)); got != tt.want {
			t.Errorf("appendOnce(%q) = %v, want %v", tt.key, got, tt.want)
		}
	}
	if len(l.keys) > len(l.buf) {
		t.Errorf("%d keys kept for a log of %d events", len(l.keys), len(l.buf))
	}
	if p := l.poll(t.Context(), cursor{}, false, 0, 100); len(p.events) != 4 || p.cursor.offset != 6 {
		t.Errorf("after dedup the log has %d events up to %d, want 4 up to 6", len(p.events), p.cursor.offset)
	}
}

func TestMessageKey(t *testing.T) {
	base := xmppconn.Message{From: "bob@example.org/desk", ID: "m1", Type: "chat", Body: "oi"}
	same := base
	same.From = "bob@example.org/other" // the same sender from another resource
	for _, tt := range []struct {
		name string
		m    xmppconn.Message
		eq   bool
	}{
		{"same sender bare JID", same, true},
		{"another body", xmppconn.Message{From: base.From, ID: "m1", Type: "chat", Body: "tchau"}, false},
		{"another sender", xmppconn.Message{From: "carol@example.org/desk", ID: "m1", Type: "chat", Body: "oi"}, false},
		{"a carbon", xmppconn.Message{From: base.From, ID: "m1", Type: "chat", Body: "oi", Carbon: "sent"}, false},
	} {
		if got := messageKey(&tt.m) == messageKey(&base); got != tt.eq {
			t.Errorf("%s: same key = %v, want %v", tt.name, got, tt.eq)
		}
	}
	if k := messageKey(&xmppconn.Message{From: base.From, Body: "no id"}); k != "" {
		t.Errorf("a message without an id got key %q", k)
	}
}

// TestEventLogGrows: the ring starts small and grows up to its size,
// keeping the newest events in order across every growth and wrap.
func TestEventLogGrows(t *testing.T) {
	tests := []struct {
		size, appended int
	}{
		{1, 3}, {5, 5}, {16, 16}, {17, 40}, {40, 10}, {40, 100}, {1000, 2500},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("size %d appended %d", tt.size, tt.appended), func(t *testing.T) {
			l := newEventLog(tt.size, nil)
			for i := 1; i <= tt.appended; i++ {
				l.append("message", []byte(strconv.Itoa(i)))
			}
			if len(l.buf) > tt.size {
				t.Fatalf("ring of %d events exceeds size %d", len(l.buf), tt.size)
			}
			res := l.read(cursor{}, false, 10000)
			want := min(tt.size, tt.appended)
			if len(res.events) != want {
				t.Fatalf("read %d events, want %d", len(res.events), want)
			}
			for i, ev := range res.events {
				off := uint64(tt.appended - want + i + 1)
				if ev.offset != off || string(ev.fields) != strconv.FormatUint(off, 10) {
					t.Fatalf("event %d = offset %d %q, want %d", i, ev.offset, ev.fields, off)
				}
			}
		})
	}
}

// TestEventLogRetention: an acknowledged event stays for ackedRetention
// (a repeated poll gets it again), then goes, and the ring that grew for a
// burst shrinks; unacknowledged events stay however old; only they count
// as dropped when a full ring pushes them out.
func TestEventLogRetention(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		drops := 0
		l := newEventLog(64, func() { drops++ })
		for i := range 64 {
			l.append("message", []byte(strconv.Itoa(i)))
		}
		if len(l.buf) != 64 {
			t.Fatalf("ring of %d after a burst of 64", len(l.buf))
		}
		// The page acknowledges the first 60 (its next poll carries 60).
		if p := l.read(cursor{l.epoch, 60}, true, 100); len(p.events) != 4 || !p.recovered {
			t.Fatalf("poll after 60: %d events, recovered %v", len(p.events), p.recovered)
		}
		time.Sleep(ackedRetention - time.Second)
		l.trim()
		if p := l.read(cursor{l.epoch, 10}, true, 100); !p.recovered || len(p.events) != 54 {
			t.Fatalf("a repeated older cursor within the retention: %d events, recovered %v", len(p.events), p.recovered)
		}
		time.Sleep(2 * time.Second)
		l.trim()
		if l.n != 4 || len(l.buf) > 16 {
			t.Fatalf("after the retention: %d events in a ring of %d, want the 4 unacknowledged in a shrunk ring", l.n, len(l.buf))
		}
		if p := l.read(cursor{l.epoch, 10}, true, 100); p.recovered || len(p.events) != 4 || p.events[0].offset != 61 {
			t.Fatalf("a cursor behind the let-go events must not be recovered: %+v", p)
		}
		if p := l.read(cursor{l.epoch, 60}, true, 100); !p.recovered || len(p.events) != 4 {
			t.Fatalf("the acknowledged cursor: %d events, recovered %v", len(p.events), p.recovered)
		}
		// Unacknowledged events are kept however old.
		time.Sleep(time.Hour)
		l.trim()
		if l.n != 4 {
			t.Fatalf("%d unacknowledged events kept after an hour, want 4", l.n)
		}
		// A full ring: evicting acknowledged events is no drop, evicting
		// unacknowledged ones is.
		l.read(cursor{l.epoch, 64}, true, 100)
		for i := range 64 {
			l.append("message", []byte(strconv.Itoa(i)))
		}
		if drops != 0 {
			t.Fatalf("%d drops counted for acknowledged events", drops)
		}
		l.append("message", []byte(`"one more"`))
		if drops != 1 || l.dropped != 1 {
			t.Fatalf("%d drops (%d) for one unacknowledged event pushed out, want 1", drops, l.dropped)
		}
	})
}

// TestEventLogRetentionDedup: the dedup key of a let-go event goes with it.
func TestEventLogRetentionDedup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newEventLog(16, nil)
		l.appendOnce("message", "k", []byte(`"n":1`))
		if l.appendOnce("message", "k", []byte(`"n":1`)) {
			t.Fatal("duplicate accepted while the first is in the log")
		}
		l.read(cursor{l.epoch, 1}, true, 100)
		time.Sleep(ackedRetention)
		l.trim()
		if l.keys != nil {
			t.Fatalf("keys kept after their events went: %v", l.keys)
		}
	})
}
