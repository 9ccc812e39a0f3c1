package sidecar

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
)

// eventMemory is the daemon-wide byte budget of the event logs
// (--event-memory-mb): a contact flooding many web users (a busy room, a
// script) must not grow the daemon without bound, each log being capped on
// its own too (--event-buffer-mb).
//
// The append path takes no global lock: a log adds what it appended to
// total (an atomic) and compares it with the cap. Past the cap, one
// appender at a time (the others go on: TryLock) evicts until total is
// under the cap again: first the acknowledged events of every log, largest
// log first (they are only kept for a poll that repeats an older cursor),
// then the oldest unacknowledged events of the largest logs, which are
// counted as dropped and make their next poll say recovered=false. The
// largest log is the one the flood went to; users who chat normally have
// small logs and lose nothing. Every log keeps its newest event, so the
// bound is the cap plus one event per session, plus what appenders add
// while the one evicting works.
type eventMemory struct {
	limit int64 // 0: no daemon-wide cap
	total atomic.Int64

	mu   sync.Mutex // guards logs; held by the one goroutine evicting
	logs map[*eventLog]struct{}
}

func newEventMemory(limit int64) *eventMemory {
	return &eventMemory{limit: limit, logs: map[*eventLog]struct{}{}}
}

// newLog returns an event log of at most size events and maxBytes bytes
// (0: no cap), counted in m until release.
func (m *eventMemory) newLog(size int, maxBytes int64, onDrop func()) *eventLog {
	l := newEventLog(size, onDrop)
	l.maxBytes, l.mem = maxBytes, m
	m.mu.Lock()
	m.logs[l] = struct{}{}
	m.mu.Unlock()
	return l
}

// release lets the log's events go and stops counting it: its session is
// gone. Appending to it afterwards keeps nothing.
func (m *eventMemory) release(l *eventLog) {
	m.mu.Lock()
	delete(m.logs, l)
	m.mu.Unlock()
	l.mu.Lock()
	l.acked = l.next - 1 // nobody is left to miss them
	for l.n > 0 {
		l.evictLocked()
	}
	l.released = true
	l.mu.Unlock()
}

func (m *eventMemory) over() bool { return m.limit > 0 && m.total.Load() > m.limit }

// shrink evicts until total is under the cap, unless another goroutine
// already does.
func (m *eventMemory) shrink() {
	for m.over() && m.mu.TryLock() {
		before := m.total.Load()
		m.shrinkLocked()
		m.mu.Unlock()
		if m.total.Load() >= before {
			return // every log is down to its newest event
		}
	}
}

func (m *eventMemory) shrinkLocked() {
	// Acknowledged events first, largest log first: nobody loses anything.
	logs, _ := m.bySizeLocked()
	for _, l := range logs {
		if !m.over() {
			return
		}
		l.mu.Lock()
		for l.n > 1 && l.buf[l.start].offset <= l.acked && m.over() {
			l.evictLocked()
		}
		l.shrinkRingLocked()
		l.mu.Unlock()
	}
	if !m.over() {
		return
	}
	// Then unacknowledged events, oldest first, from the largest logs:
	// every log over a level is brought down to it, the level chosen so
	// that this frees the excess; smaller logs are not touched. A log of
	// one large event cannot go below it: what it cannot give is then
	// taken from the others, largest first (level 0).
	logs, sizes := m.bySizeLocked()
	for _, level := range []int64{waterLevel(sizes, m.total.Load()-m.limit), 0} {
		for _, l := range logs {
			if !m.over() {
				return
			}
			l.mu.Lock()
			for l.n > 1 && l.bytes.Load() > level && m.over() {
				l.evictLocked()
			}
			l.shrinkRingLocked()
			l.mu.Unlock()
		}
	}
}

// bySizeLocked returns the logs holding events, largest first, with their
// sizes when looked at.
func (m *eventMemory) bySizeLocked() ([]*eventLog, []int64) {
	type sized struct {
		l     *eventLog
		bytes int64
	}
	all := make([]sized, 0, len(m.logs))
	for l := range m.logs {
		if b := l.bytes.Load(); b > 0 {
			all = append(all, sized{l, b})
		}
	}
	slices.SortFunc(all, func(a, b sized) int { return cmp.Compare(b.bytes, a.bytes) })
	logs, sizes := make([]*eventLog, len(all)), make([]int64, len(all))
	for i, s := range all {
		logs[i], sizes[i] = s.l, s.bytes
	}
	return logs, sizes
}

// waterLevel returns the highest level such that cutting every size above
// it down to it frees at least excess; sizes are sorted, largest first.
func waterLevel(sizes []int64, excess int64) int64 {
	var above int64 // sum of sizes[:i]
	for i, s := range sizes {
		above += s
		next := int64(0)
		if i+1 < len(sizes) {
			next = sizes[i+1]
		}
		// Cutting the i+1 largest down to next frees above-(i+1)*next.
		if above-int64(i+1)*next >= excess {
			return max(next, (above-excess)/int64(i+1))
		}
	}
	return 0
}
