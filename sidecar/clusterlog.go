package sidecar

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// The event log of a session in cluster mode lives on in Redis
// (docs/CLUSTER.md): each event is written there, behind the session's
// lease, before a poll can see it, so the node that takes the session
// over seeds its in-memory log with the same offsets and dedup keys, under
// an epoch of its own that continues the earlier ones, and a page's cursor
// stays valid. This file holds the record
// format of an event in Redis and what the in-memory log offers the
// writer (clusterstate.go): its position, its dedup keys, seeding.

// Bounds of an event record read from Redis, which other processes share:
// a record beyond them is refused (ErrClusterRedis).
const (
	maxRecordKind   = 32
	maxRecordKey    = 64
	maxRecordFields = 16 << 20
)

// encodeRecord is ev as the events list holds it: uvarint(at, unix
// nanoseconds), uvarint(len(kind)), kind, uvarint(len(key)), key, then the
// event's JSON fields to the end. The offset is not in it: the list holds
// consecutive offsets, the last one the meta hash's next minus one.
func encodeRecord(ev *event) []byte {
	b := make([]byte, 0, 3*binary.MaxVarintLen64+len(ev.kind)+len(ev.key)+len(ev.fields))
	b = binary.AppendUvarint(b, uint64(ev.at))
	b = binary.AppendUvarint(b, uint64(len(ev.kind)))
	b = append(b, ev.kind...)
	b = binary.AppendUvarint(b, uint64(len(ev.key)))
	b = append(b, ev.key...)
	return append(b, ev.fields...)
}

// decodeRecord reads a record written by encodeRecord. It checks what a
// poll would otherwise send as is: a kind of lower-case letters and
// underscores, and fields that make a JSON object once braced.
func decodeRecord(b []byte) (event, error) {
	bad := func(what string) (event, error) {
		return event{}, fmt.Errorf("%w: malformed event record: %s", ErrClusterRedis, what)
	}
	at, n := uvarint(b)
	if n <= 0 || at > 1<<62 {
		return bad("time")
	}
	b = b[n:]
	kl, n := uvarint(b)
	if n <= 0 || kl == 0 || kl > maxRecordKind || uint64(len(b)-n) < kl {
		return bad("kind")
	}
	kind := string(b[n : n+int(kl)])
	for _, c := range []byte(kind) {
		if (c < 'a' || c > 'z') && c != '_' {
			return bad("kind")
		}
	}
	b = b[n+int(kl):]
	yl, n := uvarint(b)
	if n <= 0 || yl > maxRecordKey || uint64(len(b)-n) < yl {
		return bad("key")
	}
	key := string(b[n : n+int(yl)])
	fields := b[n+int(yl):]
	if len(fields) > maxRecordFields {
		return bad("fields too large")
	}
	if len(fields) > 0 {
		obj := make([]byte, 0, len(fields)+2)
		obj = append(append(append(obj, '{'), fields...), '}')
		var probe map[string]json.RawMessage
		if json.Unmarshal(obj, &probe) != nil || len(probe) == 0 {
			return bad("fields")
		}
	}
	return event{at: int64(at), kind: kind, key: key, fields: append([]byte(nil), fields...)}, nil
}

// uvarint is binary.Uvarint refusing (n 0) an encoding longer than
// needed: a record has one form.
func uvarint(b []byte) (uint64, int) {
	v, n := binary.Uvarint(b)
	if n > 0 && n != len(binary.AppendUvarint(nil, v)) {
		return 0, 0
	}
	return v, n
}

// logPosition is where the in-memory log stands, for a write to Redis.
type logPosition struct {
	next  uint64 // offset the next event gets
	acked uint64 // highest offset a poll acknowledged
	gap   uint64 // cursors below it are not recovered
}

func (l *eventLog) position() logPosition {
	l.mu.Lock()
	defer l.mu.Unlock()
	return logPosition{next: l.next, acked: l.acked, gap: l.gap}
}

// hasKey reports whether an event with dedup key key is in the log.
func (l *eventLog) hasKey(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetSeenLocked(time.Now().UnixNano())
	_, ok := l.keys[key]
	return ok
}

// forgetSeenLocked drops the keys seedKeys added once ackedRetention
// passed.
func (l *eventLog) forgetSeenLocked(now int64) {
	if l.seenUntil == 0 || now < l.seenUntil {
		return
	}
	for k, off := range l.keys {
		if off == 0 {
			delete(l.keys, k)
		}
	}
	l.seenUntil = 0
}

// seed makes a new, empty log continue the one an earlier owner wrote to
// Redis (sv: its epoch and the epochs before it, its next offset, its
// gap, and the events still kept, with their dedup keys) at the same
// offsets, under an epoch of its own. The earlier epoch's cursors stay
// valid up to the last event Redis holds (continued); a cursor past it
// names an event the earlier owner showed but never wrote (it died with
// Redis away: the double fault, docs/CLUSTER.md) and is answered
// recovered:false, instead of naming whatever this owner puts at that
// offset. Nothing counts as acknowledged: a page's next cursor says what
// it has.
func (l *eventLog) seed(sv *savedSession) {
	first := sv.next - uint64(len(sv.events))
	prev := append(sv.prev[:len(sv.prev):len(sv.prev)], cursor{sv.epoch, sv.next})
	prev = prev[max(len(prev)-maxPrevEpochs, 0):]
	l.mu.Lock()
	for l.epoch == 0 || slices.ContainsFunc(prev, func(c cursor) bool { return c.epoch == l.epoch }) {
		l.epoch = newEpoch() // another node's epoch can be ours by chance
	}
	l.prev, l.next, l.gap = prev, first, sv.gap
	if first > 0 {
		l.acked = first - 1
	}
	l.mu.Unlock()
	for _, ev := range sv.events {
		l.appendAt(ev)
	}
}

// maxPrevEpochs is how many earlier epochs a log remembers: a page's
// cursor stays valid across that many takeovers between two of its
// polls.
const maxPrevEpochs = 8

// continued is c, of another epoch, as a cursor of this log: the same
// offset in this epoch when c is an earlier epoch's and before the end
// of what it wrote, else c itself (answered recovered:false).
func (l *eventLog) continued(c cursor) cursor {
	for _, p := range l.prev {
		if p.epoch == c.epoch && c.offset < p.offset {
			return cursor{l.epoch, c.offset}
		}
	}
	return c
}

// epochs is the log's epoch and the earlier epochs it continues, for
// the write that records them in Redis ('F').
func (l *eventLog) epochs() (uint64, []cursor) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.epoch, l.prev
}

// formatEpochs is prev as the meta field 'pe' holds it: "epoch:next"
// entries, oldest first, separated by commas.
func formatEpochs(prev []cursor) string {
	var b strings.Builder
	for i, c := range prev {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(c.String())
	}
	return b.String()
}

// parseEpochs reads the meta field 'pe' (formatEpochs); a malformed one
// gives none.
func parseEpochs(pe string) ([]cursor, error) {
	if pe == "" {
		return nil, nil
	}
	parts := strings.Split(pe, ",")
	if len(parts) > maxPrevEpochs {
		return nil, fmt.Errorf("%w: more than %d earlier epochs", ErrClusterRedis, maxPrevEpochs)
	}
	prev := make([]cursor, 0, len(parts))
	for _, p := range parts {
		c, ok, err := parseCursor(p)
		if err != nil || !ok || c.epoch == 0 || c.String() != p {
			return nil, fmt.Errorf("%w: malformed earlier epoch", ErrClusterRedis)
		}
		prev = append(prev, c)
	}
	return prev, nil
}

// seedKeys adds the dedup keys of events an earlier owner's page
// acknowledged (they left the log in Redis, their keys stayed: 'dk'):
// for as long as an acknowledged event stays in a log (ackedRetention),
// the same message delivered again — the server sending again, from
// offline storage, what the old session had not seen acknowledged — is
// not logged twice.
func (l *eventLog) seedKeys(keys []string) {
	if len(keys) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string]uint64, len(keys))
	}
	for _, k := range keys {
		if _, ok := l.keys[k]; !ok {
			l.keys[k] = 0 // no event has offset 0: eviction leaves it
		}
	}
	l.seenUntil = time.Now().Add(ackedRetention).UnixNano()
}

// ackedKeysMax bounds the dedup keys of acknowledged events a session
// keeps in Redis (meta 'dk', each key with its length byte): 60 message
// keys (messageKey, 16 bytes), a minute of a busy chat, more than the
// server has unacknowledged at a time.
const ackedKeysMax = 1020

// ackedKeys decodes the meta field 'dk' (each key a length byte then the
// key); a malformed one gives none.
func ackedKeys(dk string) ([]string, error) {
	var keys []string
	for len(dk) > 0 {
		n := int(dk[0])
		if n == 0 || n > maxRecordKey || 1+n > len(dk) {
			return nil, fmt.Errorf("%w: malformed acknowledged keys", ErrClusterRedis)
		}
		keys = append(keys, dk[1:1+n])
		dk = dk[1+n:]
	}
	return keys, nil
}

// appendAt appends ev as appendOnce does, keeping its time: it is an
// earlier owner's event, at the offset the log is at.
func (l *eventLog) appendAt(ev event) {
	if !l.appendOnce(ev.kind, ev.key, ev.fields) {
		// A record with a key already seen (another owner's duplicate):
		// the offset is taken all the same, so that offsets stay those
		// of Redis.
		l.mu.Lock()
		l.next++
		l.mu.Unlock()
		return
	}
	l.mu.Lock()
	if l.n > 0 {
		l.buf[(l.start+l.n-1)%len(l.buf)].at = ev.at
	}
	l.mu.Unlock()
}

// stopAndWake ends the log on this node (its session moved to another
// node): nothing more is appended, and every waiting poll is answered
// now, with what it has, so that its page's next poll reaches the new
// owner. No event is added for it: a page's cursor must never be ahead of
// what the new owner has in Redis.
func (l *eventLog) stopAndWake() {
	l.mu.Lock()
	l.released = true
	ws := l.waiters
	l.waiters = nil
	l.mu.Unlock()
	for _, w := range ws {
		w.wake()
	}
}

// stopped reports whether the log takes no more events (its session is
// gone from this node).
func (l *eventLog) stopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.released
}
