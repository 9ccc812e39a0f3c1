package sidecar

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// cursor names a position in an event log: the log's epoch and the offset
// of the last event the caller has processed. Its text form is
// "epoch:offset".
type cursor struct {
	epoch  uint64
	offset uint64
}

func (c cursor) String() string {
	return strconv.FormatUint(c.epoch, 10) + ":" + strconv.FormatUint(c.offset, 10)
}

// parseCursor parses "epoch:offset"; "" is the zero cursor (start).
func parseCursor(s string) (cursor, bool, error) {
	if s == "" {
		return cursor{}, false, nil
	}
	e, o, ok := strings.Cut(s, ":")
	if !ok || len(s) > 41 {
		return cursor{}, false, fmt.Errorf("%w: cursor %q is not epoch:offset", ErrBadRequest, s)
	}
	epoch, err1 := strconv.ParseUint(e, 10, 64)
	offset, err2 := strconv.ParseUint(o, 10, 64)
	if err1 != nil || err2 != nil {
		return cursor{}, false, fmt.Errorf("%w: cursor %q is not epoch:offset", ErrBadRequest, s)
	}
	return cursor{epoch, offset}, true, nil
}

// epochs are unique across restarts of the process (they start from the
// start time, in microseconds, so a restart within the same second, as a
// package upgrade's, starts above the previous run's unless that one made
// more than a million logs a second) and across logs within it.
var epochCounter atomic.Uint64

// firstEpoch is where this process's epochs start: a cursor with an epoch
// at or below it was given by an earlier run of the daemon.
var firstEpoch = uint64(time.Now().UnixMicro())

func init() { epochCounter.Store(firstEpoch) }

// fromEarlierRun reports whether c was given by an earlier run of the
// daemon.
func fromEarlierRun(c cursor) bool { return c.epoch <= firstEpoch }

func newEpoch() uint64 { return epochCounter.Add(1) }

// event is one entry: its kind and its JSON fields, encoded once at append
// time (without braces), so a poll only concatenates bytes.
type event struct {
	offset uint64
	at     int64 // when it was appended, unix nanoseconds
	kind   string
	fields []byte
	key    string // dedup key of a message, "" for other events
}

// eventLog is a bounded, per-session log of events with a monotonic cursor.
// A poll returns the events after the caller's cursor; the caller
// acknowledges by sending the new cursor next time, so a response lost on
// the way costs nothing. An acknowledged event is kept for ackedRetention
// more, for a poll that repeats an older cursor (a lost response, a second
// page), then let go, so a chatty user does not pin --event-buffer events
// for as long as they stay online. When the caller's cursor is older than
// the oldest kept event, from another epoch, or from before a gap (the
// XMPP stream had to be replaced without resumption, so the server may
// have dropped stanzas), the poll says recovered=false.
type eventLog struct {
	mu      sync.Mutex
	epoch   uint64
	buf     []event // ring, grown on demand up to size
	size    int     // most events kept
	start   int     // index of the oldest event in buf
	n       int     // events in buf
	next    uint64  // offset of the next event (offsets start at 1)
	gap     uint64  // cursors below this offset are not recovered
	acked   uint64  // highest offset a poll's cursor has acknowledged
	waiters []waiter
	dropped uint64 // unacknowledged events pushed out of a full ring or by a byte cap
	onDrop  func()
	// bytes is what the kept events cost (eventCost), at most maxBytes
	// (0: no cap) but for the newest event; mem, if set, is the
	// daemon-wide budget the log counts in. Written under mu, read
	// without it by the daemon-wide eviction.
	bytes    atomic.Int64
	maxBytes int64
	mem      *eventMemory
	released bool // its session is gone: keep nothing
	// keys holds the dedup keys of the events still in buf (key → offset),
	// so a stanza the server delivers twice is logged once; and, at
	// offset 0, those of events an earlier owner's page acknowledged
	// (seedKeys), until seenUntil (unix nanoseconds; 0: none).
	keys      map[string]uint64
	seenUntil int64
	// prev are the epochs this log had on earlier owners of its session
	// (cluster mode, clusterlog.go), oldest first: a cursor (e, o) with
	// an entry {e, n} and o < n is the cursor (epoch, o) of this log.
	prev []cursor
}

// initialEvents is the ring's first allocation. Most sessions hold a few
// events at a time, so the ring starts small and doubles up to its size:
// preallocating 1,000 events was 48 KB per online user.
const initialEvents = 4

// ackedRetention is how long an acknowledged event stays for a repeated
// poll: longer than a page takes to poll again (the longest wait is 55 s)
// and than --inactivity's default, after which a page that stopped polling
// has lost its stream anyway.
const ackedRetention = 2 * time.Minute

func newEventLog(size int, onDrop func()) *eventLog {
	return &eventLog{epoch: newEpoch(), buf: make([]event, min(size, initialEvents)), size: size, next: 1, onDrop: onDrop}
}

// A waiter is woken, once, by the first event appended after it was
// registered with readOrWait. wake runs on the appending goroutine (the
// XMPP stream's reader) outside the log's lock: it must only hand off.
type waiter interface{ wake() }

// chanWaiter wakes by closing its channel: poll and the SSE stream wait on
// it.
type chanWaiter chan struct{}

func (c chanWaiter) wake() { close(c) }

// append adds an event and wakes the pollers.
func (l *eventLog) append(kind string, fields []byte) {
	l.appendOnce(kind, "", fields)
}

// appendOnce is append for an event with a dedup key: when an event with the
// same key is still in the log, nothing is added and it reports false. An
// XMPP message can reach us twice — re-sent by the sender's stream after a
// server crash ate its acknowledgement, or re-delivered from offline storage
// — and the page must see it once.
func (l *eventLog) appendOnce(kind, key string, fields []byte) bool {
	l.mu.Lock()
	if l.released {
		l.mu.Unlock()
		return false
	}
	now := time.Now().UnixNano()
	if key != "" {
		l.forgetSeenLocked(now)
		if _, dup := l.keys[key]; dup {
			l.mu.Unlock()
			return false
		}
		if l.keys == nil {
			l.keys = map[string]uint64{}
		}
		l.keys[key] = l.next
	}
	l.trimLocked(now)
	ev := event{offset: l.next, at: now, kind: kind, fields: fields, key: key}
	l.next++
	cost := eventCost(&ev)
	if l.n == len(l.buf) && len(l.buf) < l.size {
		grown := make([]event, min(2*len(l.buf), l.size))
		for i := range l.n {
			grown[i] = l.buf[(l.start+i)%len(l.buf)]
		}
		l.buf, l.start = grown, 0
	}
	if l.n == len(l.buf) {
		l.evictLocked()
	}
	l.buf[(l.start+l.n)%len(l.buf)] = ev
	l.n++
	l.addBytes(cost)
	for l.maxBytes > 0 && l.bytes.Load() > l.maxBytes && l.n > 1 {
		l.evictLocked()
	}
	ws := l.waiters
	l.waiters = nil
	l.mu.Unlock()
	for _, w := range ws {
		w.wake()
	}
	if m := l.mem; m != nil && m.over() {
		m.shrink()
	}
	return true
}

// eventOverhead is what an event costs besides its bytes: its slot in
// the ring (unsafe.Sizeof(event{}) on 64-bit) and its allocations' headers.
const eventOverhead = 96

// eventCost is what the event log counts for ev against the byte caps.
func eventCost(ev *event) int64 { return int64(len(ev.fields) + len(ev.key) + eventOverhead) }

func (l *eventLog) addBytes(n int64) {
	l.bytes.Add(n)
	if l.mem != nil {
		l.mem.total.Add(n)
	}
}

// evictLocked drops the oldest event. An unacknowledged one is counted as
// dropped: a poller this far behind will be told recovered=false.
func (l *eventLog) evictLocked() {
	ev := &l.buf[l.start]
	if ev.key != "" && l.keys[ev.key] == ev.offset {
		delete(l.keys, ev.key)
	}
	if ev.offset > l.acked {
		l.dropped++
		if l.onDrop != nil {
			l.onDrop()
		}
	}
	l.addBytes(-eventCost(ev))
	*ev = event{} // let the bytes go
	l.start = (l.start + 1) % len(l.buf)
	l.n--
}

// trim lets go of the acknowledged events older than ackedRetention; the
// janitor calls it for logs nothing is appended to.
func (l *eventLog) trim() {
	l.mu.Lock()
	l.trimLocked(time.Now().UnixNano())
	l.mu.Unlock()
}

func (l *eventLog) trimLocked(now int64) {
	cut := 0
	for l.n > 0 {
		ev := &l.buf[l.start]
		if ev.offset > l.acked || now-ev.at < int64(ackedRetention) {
			break
		}
		l.evictLocked()
		cut++
	}
	if cut == 0 {
		return
	}
	l.shrinkRingLocked()
}

// shrinkRingLocked forgets an empty key map and gives back a ring that
// grew for a burst.
func (l *eventLog) shrinkRingLocked() {
	if len(l.keys) == 0 {
		l.keys = nil // a map never shrinks
	}
	// Give back a ring that grew for a burst: halve it while a quarter
	// or less of it is used.
	size := len(l.buf)
	for size > initialEvents && l.n <= size/4 {
		size /= 2
	}
	if size < len(l.buf) {
		small := make([]event, size)
		for i := range l.n {
			small[i] = l.buf[(l.start+i)%len(l.buf)]
		}
		l.buf, l.start = small, 0
	}
}

// markGap makes every cursor before the next event unrecovered.
func (l *eventLog) markGap() {
	l.mu.Lock()
	l.gap = l.next
	l.mu.Unlock()
}

// head is the cursor after the newest event.
func (l *eventLog) head() cursor {
	l.mu.Lock()
	defer l.mu.Unlock()
	return cursor{l.epoch, l.next - 1}
}

// pollResult is what a poll returns.
type pollResult struct {
	events    []event
	cursor    cursor
	recovered bool
}

// read returns up to limit events after c without waiting.
func (l *eventLog) read(c cursor, given bool, limit int) pollResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.readLocked(c, given, limit)
}

// readOrWait is read that, when there is nothing to return, registers w
// under the same lock, so an event appended between the read and the
// registration cannot be missed: w is woken by the next append. It reports
// whether w was registered; the caller cancels it with cancelWait when it
// stops waiting first.
func (l *eventLog) readOrWait(c cursor, given bool, limit int, w waiter) (pollResult, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	res := l.readLocked(c, given, limit)
	if len(res.events) > 0 {
		return res, false
	}
	l.waiters = append(l.waiters, w)
	return res, true
}

// cancelWait unregisters w if it is still waiting (not yet woken).
func (l *eventLog) cancelWait(w waiter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.waiters {
		if x == w {
			last := len(l.waiters) - 1
			l.waiters[i] = l.waiters[last]
			l.waiters[last] = nil
			l.waiters = l.waiters[:last]
			return
		}
	}
}

func (l *eventLog) readLocked(c cursor, given bool, limit int) pollResult {
	if given && c.epoch != l.epoch {
		c = l.continued(c)
	}
	oldest := l.next - uint64(l.n) // offset of buf[start]
	after := c.offset
	recovered := true
	switch {
	case !given:
		after = oldest - 1
	case c.epoch != l.epoch || c.offset >= l.next:
		// Another epoch (a restart, or a log replaced) or a cursor from the
		// future: start again from the oldest we have.
		recovered = false
		after = oldest - 1
	case c.offset < oldest-1:
		recovered = false
		after = oldest - 1
	}
	if given && c.epoch == l.epoch && l.gap > 0 && c.offset < l.gap-1 {
		recovered = false
	}
	if given && c.epoch == l.epoch && c.offset < l.next && c.offset > l.acked {
		l.acked = c.offset // the caller has processed everything up to here
	}
	res := pollResult{cursor: cursor{l.epoch, after}, recovered: recovered}
	for i := 0; i < l.n && len(res.events) < limit; i++ {
		ev := l.buf[(l.start+i)%len(l.buf)]
		if ev.offset <= after {
			continue
		}
		res.events = append(res.events, ev)
		res.cursor.offset = ev.offset
	}
	return res
}

// poll returns the events after c, waiting up to wait for the first one
// on the calling goroutine.
func (l *eventLog) poll(ctx context.Context, c cursor, given bool, wait time.Duration, limit int) pollResult {
	if wait <= 0 {
		return l.read(c, given, limit)
	}
	ch := make(chanWaiter)
	res, waiting := l.readOrWait(c, given, limit, ch)
	if !waiting {
		return res
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ch:
		return l.read(c, given, limit)
	case <-t.C:
	case <-ctx.Done():
	}
	l.cancelWait(ch)
	return res
}

// encode writes the events of a poll as a JSON array.
func encodeEvents(b *strings.Builder, epoch uint64, evs []event) {
	b.WriteByte('[')
	for i, ev := range evs {
		if i > 0 {
			b.WriteByte(',')
		}
		encodeEvent(b, epoch, ev)
	}
	b.WriteByte(']')
}

func encodeEvent(b *strings.Builder, epoch uint64, ev event) {
	b.WriteString(`{"cursor":"`)
	b.WriteString(cursor{epoch, ev.offset}.String())
	b.WriteString(`","event":"`)
	b.WriteString(ev.kind)
	b.WriteByte('"')
	if len(ev.fields) > 0 {
		b.WriteByte(',')
		b.Write(ev.fields)
	}
	b.WriteByte('}')
}
