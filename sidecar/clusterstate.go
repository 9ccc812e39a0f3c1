package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/xmppconn"
)

// A session's stream state and event log in Redis, behind its lease
// (docs/CLUSTER.md, "Lossless takeover"). The owner writes every change
// of the XEP-0198 state (xmppconn.ResumeStore) and every event of the
// session's log there, each call one fenced script in the session's slot;
// a node taking the session over loads both, seeds its in-memory log with
// the same offsets (the earlier epochs' cursors stay valid), and resumes
// the very XMPP session
// (xmppconn.Resume): no message lost or repeated, no presence change.

// stateScriptSrc applies a sequence of operations to a session's state if
// ARGV[1] still holds its lease, and answers 1; another lease: 0 and
// nothing written; -1 when the stored acknowledgement is not the one an
// 'A' expects (the caller then writes the whole state, 'S').
//
// A lease that is not there at all, though the meta hash still names it
// as the owner's (a lease given back clears that), expired while Redis
// was away or restarting, and no node claimed the session since: it is
// set again, as the renewal does, and the write goes on — a write kept
// back by the outage must not make the owner drop its session.
//
// KEYS: lease, meta, unacked, events, presence. ARGV: lease, TTL ms,
// lease TTL ms,
// then the operations, each its letter and its arguments:
//
//	A old new                        the server acknowledged up to new
//	R epoch user                     a new log: no event kept, next unchanged
//	F epoch earlier                  the log goes on under a new epoch (meta 'pe')
//	S json h acked count stanza...   the whole stream state
//	U stanza                         one more unacknowledged stanza
//	E first gap acked max maxbytes count record...   events from offset first
//	H h                              inbound stanzas handled
//	P jid json / X jid / Z           a contact's presence set / gone / all gone
//	B                                a browser stream attached
//	K seq stanza keep maxbytes       a stanza kept for browsers (bridgedurable.go)
//	k seq                            browsers took the stanzas up to seq
//	T                                the keys' TTLs set again
//
// An 'E' whose first is below the stored next skips what is stored already
// (a write retried); above it (events kept back by an outage were let go),
// the list starts again at first with a gap there. Then the events a poll
// acknowledged and those beyond max events or maxbytes leave the list;
// the dedup keys of the acknowledged ones stay, in the meta field 'dk'
// (each a length byte and the key, the newest ackedKeysMax bytes), for
// the node that takes the session over (ackedKeys).
//
// The script is lean because it runs for nearly every stanza: the meta
// fields 'E' and 'H' change are set by one HSET at the end, 'E' reads them
// with one HMGET and counts the list by RPUSH's answer, 'K' and 'k' read
// the browser backlog's bounds with one HMGET. The keys' TTLs are
// set again only when the caller asks ('T', at most once a minute per
// session: clusterSession.ttlAt), and on a list or hash this call created
// (an emptied list is deleted by Redis; the next push makes it anew).
var stateScriptSrc = fencedLua("KEYS[1]", "KEYS[2]", "ARGV[3]") + `
local hs = {}
local exp = {}
local function uv(x, p)
  local v, f = 0, 1
  while true do
    local c = string.byte(x, p)
    if not c then
      return nil, p
    end
    v, p = v + (c % 128) * f, p + 1
    if c < 128 then
      return v, p
    end
    f = f * 128
  end
end
local function reckey(x)
  local _, p = uv(x, 1)
  local kl
  kl, p = uv(x, p)
  if not kl then
    return nil
  end
  local yl
  yl, p = uv(x, p + kl)
  if not yl or yl == 0 or yl > 255 or p + yl - 1 > #x then
    return nil
  end
  return string.sub(x, p, p + yl - 1)
end
local function push(key, from, to)
  local len = 0
  for j = from, to, 500 do
    len = redis.call('RPUSH', key, unpack(ARGV, j, math.min(j + 499, to)))
  end
  if len == to - from + 1 then
    exp[key] = true
  end
  return len
end
local i, n = 4, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'A' then
    if redis.call('HGET', KEYS[2], 'acked') ~= ARGV[i+1] then
      return -1
    end
    local d = (tonumber(ARGV[i+2]) - tonumber(ARGV[i+1])) % 4294967296
    if d > 0 then
      redis.call('LTRIM', KEYS[3], d, -1)
    end
    hs['acked'] = ARGV[i+2]
    i = i + 3
  elseif op == 'R' then
    redis.call('DEL', KEYS[4])
    redis.call('HSET', KEYS[2], 'ep', ARGV[i+1], 'user', ARGV[i+2], 'eb', 0)
    redis.call('HDEL', KEYS[2], 'next', 'gap', 'dk', 'pe')
    i = i + 3
  elseif op == 'F' then
    hs['ep'], hs['pe'] = ARGV[i+1], ARGV[i+2]
    i = i + 3
  elseif op == 'S' then
    local c = tonumber(ARGV[i+4])
    redis.call('HSET', KEYS[2], 'st', ARGV[i+1], 'h', ARGV[i+2], 'acked', ARGV[i+3])
    hs['acked'] = nil
    redis.call('DEL', KEYS[3])
    if c > 0 then
      push(KEYS[3], i+5, i+4+c)
    end
    i = i + 5 + c
  elseif op == 'U' then
    push(KEYS[3], i+1, i+1)
    i = i + 2
  elseif op == 'E' then
    local first = tonumber(ARGV[i+1])
    local c = tonumber(ARGV[i+6])
    local m = redis.call('HMGET', KEYS[2], 'next', 'eb', 'gap', 'dk')
    local nxt = tonumber(m[1] or ARGV[i+1])
    local bytes = tonumber(m[2] or '0')
    local gap = tonumber(m[3] or '0')
    local dk = m[4] or ''
    local skip = 0
    if first > nxt then
      redis.call('DEL', KEYS[4])
      hs['gap'] = ARGV[i+1]
      bytes, nxt, gap = 0, first, first
    elseif first < nxt then
      skip = nxt - first
    end
    local len
    if c > skip then
      len = push(KEYS[4], i+7+skip, i+6+c)
      for j = i+7+skip, i+6+c do
        bytes = bytes + #ARGV[j]
      end
      nxt = first + c
    else
      len = redis.call('LLEN', KEYS[4])
    end
    local cut = tonumber(ARGV[i+3]) - (nxt - len) + 1
    local acked = cut
    if len - cut > tonumber(ARGV[i+4]) then
      cut = len - tonumber(ARGV[i+4])
    end
    if cut > 0 then
      local xs = redis.call('LPOP', KEYS[4], math.min(cut, len))
      if xs then
        local keys = dk
        for j, x in ipairs(xs) do
          bytes, len = bytes - #x, len - 1
          if j <= acked then
            local k = reckey(x)
            if k then
              keys = keys .. string.char(#k) .. k
            end
          end
        end
        while #keys > ` + strconv.Itoa(ackedKeysMax) + ` do
          keys = string.sub(keys, string.byte(keys, 1) + 2)
        end
        if keys ~= dk then
          hs['dk'] = keys
        end
      end
    end
    local maxb = tonumber(ARGV[i+5])
    while len > 1 and bytes > maxb do
      local x = redis.call('LPOP', KEYS[4])
      bytes, len = bytes - #x, len - 1
    end
    hs['next'] = string.format('%d', nxt)
    hs['eb'] = string.format('%d', bytes)
    local g = tonumber(ARGV[i+2])
    if g > gap then
      hs['gap'] = ARGV[i+2]
    end
    i = i + 7 + c
  elseif op == 'H' then
    hs['h'] = ARGV[i+1]
    i = i + 2
  elseif op == 'P' then
    redis.call('HSET', KEYS[5], ARGV[i+1], ARGV[i+2])
    exp[KEYS[5]] = true
    i = i + 3
  elseif op == 'X' then
    redis.call('HDEL', KEYS[5], ARGV[i+1])
    i = i + 2
  elseif op == 'Z' then
    redis.call('DEL', KEYS[5])
    i = i + 1
  elseif op == 'B' then
    hs['br'] = '1'
    i = i + 1
  elseif op == 'T' then
    exp[KEYS[2]], exp[KEYS[3]], exp[KEYS[4]], exp[KEYS[5]] = true, true, true, true
    i = i + 1
  elseif op == 'K' or op == 'k' then
    local sq = tonumber(ARGV[i+1])
    local m = redis.call('HMGET', KEYS[2], 'bl', 'bn', 'bb')
    local lo = tonumber(m[1] or ARGV[i+1])
    local hi = tonumber(m[2] or '0')
    local bb = tonumber(m[3] or '0')
    local keep, maxb = sq, math.huge
    if op == 'K' and sq < lo then
      keep = 0 -- below what was forgotten already: not kept again
    elseif op == 'K' then
      redis.call('HSET', KEYS[2], 'k' .. ARGV[i+1], ARGV[i+2])
      bb, hi = bb + #ARGV[i+2], math.max(hi, sq)
      keep, maxb = sq - tonumber(ARGV[i+3]), tonumber(ARGV[i+4])
    end
    while lo <= hi and (lo <= keep or bb > maxb) and not (op == 'K' and lo >= sq) do
      local f = string.format('k%d', lo)
      local x = redis.call('HGET', KEYS[2], f)
      if x then
        bb = bb - #x
        redis.call('HDEL', KEYS[2], f)
      end
      lo = lo + 1
    end
    redis.call('HSET', KEYS[2], 'bl', string.format('%d', lo), 'bn', string.format('%d', hi), 'bb', string.format('%d', bb))
    if op == 'K' then i = i + 5 else i = i + 2 end
  else
    return redis.error_reply('imsidecar: unknown state operation')
  end
end
local kv = {}
for k, v in pairs(hs) do
  kv[#kv+1] = k
  kv[#kv+1] = v
end
if #kv > 0 then
  redis.call('HSET', KEYS[2], unpack(kv))
end
for k in pairs(exp) do
  redis.call('PEXPIRE', k, ARGV[2])
end
return 1
`

var stateScript = redis.NewScript(stateScriptSrc)

// loadScript reads a session's state if ARGV[1] holds its lease:
// {1, meta as field/value pairs, unacked stanzas, event records,
// presences as field/value pairs}; else {0}.
// KEYS: lease, meta, unacked, events, presence. ARGV: lease.
var loadScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {0}
end
return {1, redis.call('HGETALL', KEYS[2]), redis.call('LRANGE', KEYS[3], 0, -1), redis.call('LRANGE', KEYS[4], 0, -1), redis.call('HGETALL', KEYS[5])}
`)

// errLogStopped refuses a stanza's events, and its count, once the
// session's log is stopped.
var errLogStopped = errors.New("sidecar: the session's log is stopped")

// stateWriteTimeout bounds one batch of writes (stateWriter): a write
// waits at most for the batch in flight and its own, with the stream's
// write lock held meanwhile (xmppconn.ResumeStore).
const stateWriteTimeout = time.Second

// maxUnsynced is how many events of a session are kept back for Redis
// while it does not answer; past it the oldest are let go (they stay in
// the in-memory log) and Redis's log starts again after a gap.
const maxUnsynced = 1000

// errRedisDown: a write was not tried, Redis having failed a moment ago.
var errRedisDown = fmt.Errorf("%w: not answering; retried shortly", ErrClusterRedis)

// clusterSession is one session's state in Redis: the xmppconn.ResumeStore
// of its stream and the writer of its event log. It lives as long as the
// session's in-memory log, across the streams that share that log.
//
// Inbound, the events of a stanza wait (pending) until the stream reports
// the stanza handled; then they and the count are written in one script,
// and only then appended to the in-memory log, where polls see them. An
// event no stanza caused (a state change) is written on its own first.
// While Redis does not answer the events are appended at once and kept
// back (unsynced) for the next write; the count stays unacknowledged to
// the server. Outbound never fails a send for Redis, nor does a new
// session's Save fail its login: the store keeps a mirror of the whole
// state and writes it whole (dirty) at the next write that reaches Redis.
//
// It is kept small (issue 20 item 9): what the node knows already (the
// log's caps, the Redis keys, derived from sk) is not copied into it, and
// the times are monoNow's numbers.
type clusterSession struct {
	cl   *cluster
	sk   string
	log  *eventLog
	user string

	// resumable: the stream's session can be resumed (its Save had an
	// id), so the stream reports every stanza handled: a stanza's events
	// wait for that report.
	resumable atomic.Bool

	mu       sync.Mutex
	mirror   xmppconn.ResumeState
	saved    bool // mirror holds a state
	dirty    bool // Redis may not hold mirror: the next write writes it whole
	wantH    uint32
	hasWant  bool // a count Redis refused, written with the next write
	newLog   bool // Redis holds another log: the next write starts ours ('R')
	newEpoch bool // Redis holds our log under an earlier epoch: the next write says ours ('F')
	flushing bool // on the cluster's list of sessions to write again
	// gone: a write found the lease not this node's (writeLocked), and
	// dropped what it carried, a stanza's events among them; nothing is
	// written for this store again, whoever holds the lease later, and
	// its stream is detached.
	gone     bool
	pending  []event // a stanza's events, not in the log yet
	unsynced []event // in the log, not yet in Redis
	// presOps are the contacts' presence changes ('P', 'X', 'Z'
	// operations) to write with the next write.
	presOps []any
	held    clusterHeld // the browser backlog's writes (bridgedurable.go)
	// ackedStored is the server's acknowledgement Redis holds; ackDue,
	// that the mirror's is newer: an acknowledgement is not a write of its
	// own but rides on the session's next one ('A'), or on the flush after
	// the next lease renewal (docs/CLUSTER.md, "The write path").
	ackedStored uint32
	ackDue      bool
	ackAt       int64 // when ackDue was set (monoNow)
	// ttlAt is when the keys' TTLs were last set ('T', monoNow; 0: never):
	// at most once every ttlRefresh.
	ttlAt int64
}

// ttlRefresh is how often a session's writes set its keys' TTLs again
// (the meta TTL, --inactivity plus 10 minutes, is far longer).
const ttlRefresh = time.Minute

// append is the session's event append in cluster mode (appendJSONOnce):
// it reports false for a duplicate of an event still in the log.
func (cs *clusterSession) append(kind, key string, fields []byte) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if key != "" {
		if cs.log.hasKey(key) {
			return false
		}
		for _, p := range cs.pending {
			if p.key == key {
				return false
			}
		}
	}
	ev := event{at: time.Now().UnixNano(), kind: kind, key: key, fields: fields}
	if stanzaEvent(kind) && cs.resumable.Load() {
		cs.pending = append(cs.pending, ev)
		return true
	}
	cs.writeLocked([]event{ev}, nil, false)
	return true
}

// stanzaEvent reports whether events of kind come from an inbound stanza,
// which the stream reports handled (ResumeStore.Handled) right after.
func stanzaEvent(kind string) bool {
	return kind != "state" && kind != "send_failed"
}

// notePresence records a contact's presence change (pi nil: the
// resource left) for Redis, written with the stanza's events: a resumed
// session is not told its contacts' presences again.
func (cs *clusterSession) notePresence(full string, pi *presenceInfo) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(cs.presOps) > 3*maxUnsynced {
		cs.presOps = []any{"Z"} // an outage this long forgets them
	}
	if pi == nil {
		cs.presOps = append(cs.presOps, "X", full)
		return
	}
	js, _ := json.Marshal(pi)
	cs.presOps = append(cs.presOps, "P", full, js)
}

// noteBrowser records that a browser stream attached to the session: a
// node taking it over keeps what the resumed stream delivers for the
// browser's next stream, as the bridge keeps it between two requests.
func (cs *clusterSession) noteBrowser() {
	cs.mu.Lock()
	cs.presOps = append(cs.presOps, "B")
	cs.mu.Unlock()
}

// clearPresence forgets every contact's presence (a new XMPP session).
func (cs *clusterSession) clearPresence() {
	cs.mu.Lock()
	cs.presOps = []any{"Z"}
	cs.mu.Unlock()
}

// presenceAt is the presence a contact's full JID has now, nil if none.
func (s *session) presenceAt(full string) *presenceInfo {
	bare, res, _ := strings.Cut(full, "/")
	for _, pi := range s.presenceOf(bare) {
		if pi.Resource == res {
			return &pi
		}
	}
	return nil
}

// Save is xmppconn.ResumeStore.Save. Redis not answering does not fail
// it, as it does not fail a send: the mirror holds the state, dirty, and
// the next write that reaches Redis writes it whole. Failing it would
// fail the login that saves it (a fresh one, or a resumption after a
// takeover): the stream would log in again and again, unserved, for as
// long as Redis does not answer. Only a lease found another node's fails
// it (ErrNotOwner): that login must not go on.
func (cs *clusterSession) Save(st xmppconn.ResumeState) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	st.Unacked = append([][]byte(nil), st.Unacked...)
	if st.ID != cs.mirror.ID {
		cs.hasWant = false // another XMPP session: its count starts again
	}
	cs.mirror, cs.saved, cs.dirty = st, true, true
	cs.resumable.Store(st.ID != "")
	return ownerLost(cs.writeLocked(nil, nil, false))
}

// ownerLost is err if the lease was found another node's (ErrNotOwner),
// else nil: Save and Sent fail on nothing else, the mirror keeping what
// a Redis that did not answer has not written.
func ownerLost(err error) error {
	if errors.Is(err, ErrNotOwner) {
		return err
	}
	return nil
}

// Handled is xmppconn.ResumeStore.Handled: the stanza's events and the
// count h in one script.
func (cs *clusterSession) Handled(h uint32) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.log.stopped() {
		// The session is being let go, its log takes no more events: the
		// stanza is not counted, and the server gives it to the next
		// owner. (Written, its events would land at the stopped log's
		// stale offset, and the next stanza's be skipped as a retry.)
		cs.pending, cs.held.pending = nil, nil
		return errLogStopped
	}
	cs.wantH, cs.hasWant = h, true
	cs.presOps = cs.held.opsInto(cs.presOps) // the stanza's, if browsers get it
	return cs.writeLocked(nil, nil, true)
}

// Sent is xmppconn.ResumeStore.Sent. Redis not answering does not fail
// the send: the mirror keeps the stanza for the next write.
func (cs *clusterSession) Sent(raw []byte) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !cs.saved {
		return nil // no session yet: a Save follows with it
	}
	cs.mirror.Sent(raw)
	var tail []any
	if !cs.dirty {
		tail = []any{"U", raw}
	}
	return ownerLost(cs.writeLocked(nil, tail, false))
}

// Acked is xmppconn.ResumeStore.Acked. It writes nothing: the
// acknowledgement goes with the session's next write, or the flush after
// the next lease renewal. Meanwhile Redis holds stanzas the server has,
// which is safe: a resumption drops them by position (the server's
// <resumed h>), and a state written whole ('S') or refused ('-1') is
// never behind the mirror.
func (cs *clusterSession) Acked(h uint32) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if !cs.saved {
		return nil
	}
	if err := cs.mirror.Ack(h); err != nil {
		return err
	}
	if len(cs.mirror.Unacked) == 0 {
		// Everything sent is acknowledged: an idle session keeps no array.
		cs.mirror.Unacked = nil
	}
	if cs.mirror.Acked != cs.ackedStored && !cs.ackDue {
		cs.ackDue, cs.ackAt = true, monoNow()
		cs.cl.toFlush(cs)
	}
	return nil
}

// flush writes what an outage kept back, and an acknowledgement no write
// carried yet; the hand-over calls it at SIGTERM.
func (cs *clusterSession) flush() { cs.flushDue(0) }

// flushDue is flush from the pass after a lease renewal: an
// acknowledgement alone, younger than wait, stays for a later write of
// the session or a later pass (it is safe in the mirror; most ride on the
// session's next write instead of costing a script of their own).
func (cs *clusterSession) flushDue(wait time.Duration) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.flushing = false
	kept := cs.dirty || len(cs.unsynced) > 0 || cs.hasWant || len(cs.presOps) > 0
	switch {
	case kept || cs.ackDue && time.Duration(monoNow()-cs.ackAt) >= wait:
		cs.writeLocked(nil, nil, false)
	case cs.ackDue:
		cs.cl.toFlush(cs)
	}
}

// writeLocked writes, in one script: an acknowledgement due, tail, a new log's start, the whole
// state if Redis may not hold it, the events kept back, evs (new events
// no stanza caused) or, for a stanza's count (handled), its pending
// events, the count Redis has yet to take, and the presences. Then the
// new events are appended to the in-memory log. When Redis does not
// answer, they are appended all the same and kept back; when the lease
// is another node's, nothing is written, the pending events are dropped
// (the new owner gets their stanzas again) and the session is lost here.
func (cs *clusterSession) writeLocked(evs []event, tail []any, handled bool) error {
	if len(evs) > 0 && cs.log.stopped() {
		return errLogStopped // see Handled
	}
	fresh := evs
	if handled {
		fresh = append(cs.pending, evs...)
		cs.pending = nil
	}
	l, ok := cs.cl.holds(cs.sk)
	if !ok || cs.gone {
		cs.presOps = nil
		cs.appendLocal(evs)
		cs.goneLocked()
		return ErrNotOwner
	}
	err := errRedisDown
	if cs.cl.redisUsable() {
		for range 2 {
			var res int
			res, err = cs.run(l, fresh, tail)
			if err == nil && res == -1 {
				cs.dirty, tail = true, nil // the stored state is not ours: write it whole
				continue
			}
			if err == nil && res == 0 {
				cs.presOps = nil
				cs.appendLocal(evs) // a state event for local polls only
				cs.cl.lost(cs.sk, l)
				cs.goneLocked()
				return ErrNotOwner
			}
			break
		}
	}
	if err != nil {
		cs.cl.redisFailed(err)
		cs.appendLocal(fresh)
		cs.unsynced = append(cs.unsynced, cs.lastAppended(len(fresh))...)
		if over := len(cs.unsynced) - maxUnsynced; over > 0 {
			cs.unsynced = append(cs.unsynced[:0:0], cs.unsynced[over:]...)
		}
		if cs.saved && tail != nil {
			cs.dirty = true
		}
		cs.cl.toFlush(cs)
		return err
	}
	cs.dirty, cs.newLog, cs.newEpoch, cs.unsynced, cs.presOps = false, false, false, nil, nil
	if cs.saved {
		cs.ackedStored, cs.ackDue = cs.mirror.Acked, false
	}
	if cs.hasWant {
		cs.mirror.H, cs.hasWant = cs.wantH, false
	}
	cs.appendLocal(fresh)
	return nil
}

// goneLocked marks the store gone, once, and has its stream detached.
// A stanza's events dropped here (they would show what the lease's holder
// may give again) must never be covered by a count written later: the
// count the stream offers next covers every stanza since the last one
// the store accepted, and a write that succeeded then (the lease back in
// this node's table: a call claiming it again found the stream still
// up) told the server it could forget stanzas whose events nobody had
// (issue 20, the rolling restart at 2,000 users: 3 messages of one user
// lost so). Detached, the stream leaves them to the server, which gives
// them to the next stream of the session, here or on another node.
func (cs *clusterSession) goneLocked() {
	if cs.gone {
		return
	}
	cs.gone = true
	cs.pending, cs.held.pending, cs.unsynced = nil, nil, nil
	cs.hasWant = false
	cs.cl.wg.Go(func() { cs.cl.reg.detachStore(cs) })
}

// isGone reports whether the store is gone (goneLocked); nil is not.
func (cs *clusterSession) isGone() bool {
	if cs == nil {
		return false
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.gone
}

// run is one script.
func (cs *clusterSession) run(l lease, fresh []event, tail []any) (int, error) {
	args := []any{l.String(), cs.cl.ls.metaTTL.Milliseconds(), cs.cl.ls.ttl.Milliseconds()}
	// The acknowledgement first: an 'A' refused (-1) must find nothing
	// written yet.
	if cs.ackDue && !cs.dirty && cs.saved {
		args = append(args, "A", strconv.FormatUint(uint64(cs.ackedStored), 10), strconv.FormatUint(uint64(cs.mirror.Acked), 10))
	}
	args = append(args, tail...)
	if cs.newLog {
		args = append(args, "R", strconv.FormatUint(cs.logEpoch(), 10), cs.user)
	}
	if cs.newEpoch {
		ep, prev := cs.log.epochs()
		args = append(args, "F", strconv.FormatUint(ep, 10), formatEpochs(prev))
	}
	if cs.dirty && cs.saved {
		st := cs.mirror
		unacked := st.Unacked
		st.Unacked = nil
		js, err := stateJSON(st)
		if err != nil {
			return 0, err
		}
		args = append(args, "S", js, strconv.FormatUint(uint64(st.H), 10), strconv.FormatUint(uint64(st.Acked), 10), len(unacked))
		for _, raw := range unacked {
			args = append(args, raw)
		}
	}
	if n := len(cs.unsynced) + len(fresh); n > 0 {
		pos := cs.log.position()
		first := pos.next
		if len(cs.unsynced) > 0 {
			first = cs.unsynced[0].offset
		}
		args = append(args, "E", strconv.FormatUint(first, 10), strconv.FormatUint(pos.gap, 10), strconv.FormatUint(pos.acked, 10),
			cs.cl.logCap, cs.cl.logBytes, n)
		for i := range cs.unsynced {
			args = append(args, encodeRecord(&cs.unsynced[i]))
		}
		for i := range fresh {
			args = append(args, encodeRecord(&fresh[i]))
		}
	}
	if cs.hasWant {
		args = append(args, "H", strconv.FormatUint(uint64(cs.wantH), 10))
	}
	args = append(args, cs.presOps...)
	now := monoNow()
	ttl := cs.ttlAt == 0 || time.Duration(now-cs.ttlAt) >= ttlRefresh
	if ttl {
		args = append(args, "T")
	}
	n, err := cs.cl.writes.run(cs.cl, stateKeysOf(cs.sk), args)
	if err != nil {
		return 0, fmt.Errorf("%w: state write: %w", ErrClusterRedis, err)
	}
	if ttl && n == 1 {
		cs.ttlAt = now
	}
	return n, nil
}

func (cs *clusterSession) logEpoch() uint64 {
	cs.log.mu.Lock()
	defer cs.log.mu.Unlock()
	return cs.log.epoch
}

// appendLocal appends events to the in-memory log, where polls see them.
func (cs *clusterSession) appendLocal(evs []event) {
	for _, ev := range evs {
		cs.log.appendOnce(ev.kind, ev.key, ev.fields)
	}
}

// lastAppended returns the last n events of the log with their offsets,
// for keeping them back: they were just appended.
func (cs *clusterSession) lastAppended(n int) []event {
	if n == 0 {
		return nil
	}
	l := cs.log
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]event, 0, n)
	for i := max(l.n-n, 0); i < l.n; i++ {
		out = append(out, l.buf[(l.start+i)%len(l.buf)])
	}
	return out
}

// stateJSON is the stored form of a state without its stanzas.
func stateJSON(st xmppconn.ResumeState) (string, error) {
	b, err := json.Marshal(st)
	return string(b), err
}

// savedSession is what an earlier owner left of a session in Redis.
type savedSession struct {
	state  *xmppconn.ResumeState // nil: none, or not resumable
	epoch  uint64
	prev   []cursor // the epochs before it ('pe'), each at its next
	next   uint64   // offset after the last event kept
	gap    uint64
	events []event
	keys   []string // dedup keys of acknowledged events ('dk')
	online bool
	logOK  bool // a sound log of the user asking
	// browser: a browser stream was attached (the bridge is made before
	// the resumption, to keep what the server sends again for it).
	browser bool
	// presence is the contacts' available resources, by bare JID, sorted
	// by resource (session.presence).
	presence map[string][]presenceInfo
	// held is what no browser took (bridgedurable.go), heldNext the last
	// number given; heldOK: it is the user's.
	held     []heldStanza
	heldNext uint64
	heldOK   bool
}

// stored is a session's state as Redis holds it, undecoded.
type stored struct {
	meta     map[string]string
	unacked  [][]byte
	records  [][]byte
	presence map[string]string
}

// load reads the session's state, if this node holds the lease: the
// state its claim read already, for a session handed over (takeHanded),
// or Redis's.
func (cl *cluster) load(ctx context.Context, sk string) (stored, error) {
	l, ok := cl.holds(sk)
	if !ok {
		return stored{}, ErrNotOwner
	}
	if in, ok := cl.preloaded(sk, l); ok {
		return in, nil
	}
	ctx, cancel := redisBound(ctx)
	defer cancel()
	v, err := loadScript.Run(ctx, cl.rdb, stateKeysOf(sk), l.String()).Slice()
	if err != nil {
		return stored{}, fmt.Errorf("%w: state load: %w", ErrClusterRedis, err)
	}
	if len(v) == 0 {
		return stored{}, fmt.Errorf("%w: state load answered nothing", ErrClusterRedis)
	}
	if n, _ := v[0].(int64); n != 1 || len(v) != 5 {
		cl.lost(sk, l)
		return stored{}, ErrNotOwner
	}
	return storedOf(v[1:]), nil
}

// storedOf reads the state parts of loadScript's answer (and
// claimLoadScript's): meta pairs, unacked stanzas, event records,
// presence pairs. A part of the wrong type reads as empty.
func storedOf(v []any) stored {
	strs := func(x any) [][]byte {
		list, _ := x.([]any)
		out := make([][]byte, 0, len(list))
		for _, e := range list {
			s, _ := e.(string)
			out = append(out, []byte(s))
		}
		return out
	}
	pairs := func(x any) map[string]string {
		kv := strs(x)
		m := make(map[string]string, len(kv)/2)
		for i := 0; i+1 < len(kv); i += 2 {
			m[string(kv[i])] = string(kv[i+1])
		}
		return m
	}
	return stored{meta: pairs(v[0]), unacked: strs(v[1]), records: strs(v[2]), presence: pairs(v[3])}
}

// parseSaved decodes what load read, for user: the log if it is user's
// and sound, the stream state if it is resumable and sound. A part that
// does not decode is left out (logged by the caller), never trusted.
func parseSaved(user string, in stored) (savedSession, []error) {
	meta, unacked, records := in.meta, in.unacked, in.records
	var errs []error
	sv := savedSession{online: meta["on"] == "1", browser: meta["br"] == "1"}
	num := func(k string) (uint64, bool) {
		n, err := strconv.ParseUint(meta[k], 10, 64)
		return n, err == nil
	}
	if meta["user"] == user && meta["user"] != "" {
		ep, ok1 := num("ep")
		next, ok2 := num("next")
		if !ok2 {
			next, ok2 = 1, true // a log started, no event written yet
		}
		gap, _ := num("gap")
		if ok1 && ok2 && ep > 0 && next >= uint64(len(records))+1 {
			evs := make([]event, 0, len(records))
			for _, rec := range records {
				ev, err := decodeRecord(rec)
				if err != nil {
					errs = append(errs, err)
					evs = nil
					break
				}
				evs = append(evs, ev)
			}
			if len(evs) == len(records) {
				sv.epoch, sv.next, sv.gap, sv.events, sv.logOK = ep, next, gap, evs, true
				keys, err := ackedKeys(meta["dk"])
				if err != nil {
					errs = append(errs, err)
				}
				sv.keys = keys
				prev, err := parseEpochs(meta["pe"])
				if err != nil {
					errs = append(errs, err) // the earlier epochs' cursors get recovered:false
				}
				sv.prev = prev
			}
		} else if meta["ep"] != "" {
			errs = append(errs, fmt.Errorf("%w: malformed log position", ErrClusterRedis))
		}
	}
	if js := meta["st"]; js != "" {
		st, err := xmppconn.ParseResumeState([]byte(js))
		h, okH := num("h")
		acked, okA := num("acked")
		if err == nil && okH && okA && h <= 1<<32-1 && acked <= 1<<32-1 {
			st.H, st.Acked, st.Unacked = uint32(h), uint32(acked), unacked
			err = st.Validate()
		} else if err == nil {
			err = fmt.Errorf("%w: malformed counts", ErrClusterRedis)
		}
		if err != nil {
			errs = append(errs, err)
		} else if j, _ := xmppconn.ParseJID(st.JID); j.Local == user && st.ID != "" {
			sv.state = &st
		}
	}
	sv.presence, errs = parsePresences(in.presence, errs)
	sv.held, sv.heldNext = parseHeld(meta)
	sv.heldOK = meta["user"] == user && user != ""
	return sv, errs
}

// parsePresences reads the contacts' presences a session kept: field a
// full JID, value its presenceInfo as JSON. Bad entries are left out.
func parsePresences(in map[string]string, errs []error) (map[string][]presenceInfo, []error) {
	out := map[string][]presenceInfo{}
	for full, js := range in {
		bare, res, _ := strings.Cut(full, "/")
		var pi presenceInfo
		if bare == "" || len(full) > 3071 || json.Unmarshal([]byte(js), &pi) != nil || pi.Resource != res {
			errs = append(errs, fmt.Errorf("%w: malformed presence of %.64q", ErrClusterRedis, full))
			continue
		}
		list := out[bare]
		i, _ := slices.BinarySearchFunc(list, res, func(p presenceInfo, res string) int { return strings.Compare(p.Resource, res) })
		out[bare] = slices.Insert(list, i, pi)
	}
	return out, errs
}

// redisRetry is how long writes are not tried after Redis failed one,
// unless a lease renewal reaches it first: a stream does not wait on a
// dead Redis for every stanza.
const redisRetry = 2 * time.Second

// redisUsable reports whether a write may be tried now.
func (cl *cluster) redisUsable() bool { return time.Now().UnixNano() >= cl.redisDown.Load() }

// redisFailed notes that Redis did not answer a write (not a refusal, not
// a script's error), or answered that it cannot serve yet (a Redis Cluster
// restarting: CLUSTERDOWN; an AOF loading: LOADING): writes wait until a
// renewal reaches it, or redisRetry, instead of each one waiting out the
// client's retries with the stream's write lock held.
func (cl *cluster) redisFailed(err error) {
	var re redis.Error
	if errors.As(err, &re) && !redisUnready(err) || errors.Is(err, errRedisDown) {
		return
	}
	if cl.redisDown.Swap(time.Now().Add(redisRetry).UnixNano()) == 0 {
		cl.logger.Warn("cluster: Redis does not answer the sessions' state writes; users keep chatting, their state is written when it answers", "err", err)
	}
}

// redisUnready reports whether err is Redis saying it cannot serve yet.
func redisUnready(err error) bool {
	for _, p := range []string{"CLUSTERDOWN", "LOADING", "MASTERDOWN", "TRYAGAIN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

// flushKeptBack is called when a renewal reached Redis: redisBack runs in
// the background, one flusher at a time, owned by cl.wg; a renewal that
// comes while it runs has it run once more. The renewal pass does not
// wait for it: after a 30 s Redis outage at 2,000 users a node's flush of
// what it kept back took 2–3 s (its sessions 32 at a time, each batch
// behind Redis's fsync), and its next renewal came that late: 3.2 s
// after the last one of a 5 s lease, near the 2/3 of the TTL after which
// every call of its users checks its lease in Redis first; a longer flush
// (more sessions a node, a slower Redis) would have let the leases expire
// and the other nodes take the sessions over (issue 20 item 6: no
// takeover while Redis is down or after).
//
// Once the cluster stops (cluster.stop waits for cl.wg), a pass still
// running writes inline instead, as before: no goroutine joins a
// WaitGroup being waited for.
func (cl *cluster) flushKeptBack() {
	cl.flushMu.Lock()
	if cl.flushClosed {
		cl.flushMu.Unlock()
		cl.redisBack()
		return
	}
	defer cl.flushMu.Unlock()
	if cl.flushing {
		cl.flushAgain = true
		return
	}
	cl.flushing = true
	cl.wg.Go(func() {
		for {
			cl.redisBack()
			cl.flushMu.Lock()
			again := cl.flushAgain
			cl.flushAgain, cl.flushing = false, again
			cl.flushMu.Unlock()
			if !again {
				return
			}
		}
	})
}

// redisBack writes, by a few writers at once so that the group commit
// batches them, the writes an outage kept back and the acknowledgements no
// later write carried for a renewal interval (ackWait); it clears the
// mark that Redis is down first, and writes the online marks Redis did
// not take (retryMarks).
func (cl *cluster) redisBack() {
	if cl.redisDown.Swap(0) != 0 {
		cl.logger.Info("cluster: Redis answers again; writing the state kept back")
	}
	cl.retryMarks(context.Background())
	cl.flushMu.Lock()
	list := cl.flushList
	cl.flushList = nil
	cl.flushMu.Unlock()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(list), flushWriters) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(list)); i = next.Add(1) - 1 {
				list[i].flushDue(ackWait(cl.ls.ttl))
			}
		})
	}
	wg.Wait()
}

// ackWait is how long an acknowledgement waits for a write of its
// session to carry it: one renewal interval, so it is written by the
// second pass after it came at the latest (within 2/3 of the lease TTL).
func ackWait(leaseTTL time.Duration) time.Duration { return leaseTTL / 3 }

// flushWriters is how many sessions redisBack writes at once.
const flushWriters = 32

// toFlush puts cs on the list of sessions to write when Redis answers
// again; the caller holds cs.mu.
func (cl *cluster) toFlush(cs *clusterSession) {
	if cs.flushing {
		return
	}
	cs.flushing = true
	cl.flushMu.Lock()
	cl.flushList = append(cl.flushList, cs)
	cl.flushMu.Unlock()
}

// durable is ownership.durable: it loads what an earlier owner of the
// session left in Redis, gives s its event log (seeded with the earlier
// owner's offsets, epochs and events when the log is the same user's, a
// new one otherwise) and its store, and returns the XEP-0198 state to
// resume when the user was online, nil for a fresh login. A user online
// with nothing to resume gets a gap in the log: their page's next poll
// says recovered:false, honestly.
func (cl *cluster) durable(ctx context.Context, s *session, newLog func() *eventLog) (*xmppconn.ResumeState, error) {
	in, err := cl.load(ctx, s.key)
	if err != nil {
		return nil, err
	}
	sv, errs := parseSaved(s.user, in)
	for _, e := range errs {
		cl.logger.Warn("cluster: part of a session's state in Redis is not usable; left out", "session", s.short, "err", e)
	}
	cs := &clusterSession{cl: cl, sk: s.key, user: s.user}
	s.log = newLog()
	if sv.logOK {
		s.log.seed(&sv)
		s.log.seedKeys(sv.keys)
		cs.newEpoch = true
	} else {
		cs.newLog = true
	}
	if sv.state != nil && sv.online {
		s.mu.Lock()
		s.presence = sv.presence // the server tells a resumed session nothing again
		s.mu.Unlock()
	} else {
		cs.presOps = []any{"Z"}
	}
	cs.log = s.log
	cs.seedHeld(sv)
	s.durable = cs
	switch {
	case !sv.online:
		return nil, nil
	case sv.state != nil:
		if sv.browser {
			s.bridgeOf(cl.browserMax, cl.logCap, cl.metrics)
		}
		return sv.state, nil
	}
	if sv.logOK {
		s.log.markGap()
	}
	cl.metrics.clusterResumes.WithLabelValues("fresh").Inc()
	return nil, nil
}

// resumeStream is a takeover's login: it continues the XMPP session an
// earlier owner left (st, loaded by durable), so that nothing is lost or
// repeated and contacts see no presence change. When the server refuses
// the resumption, xmppconn.Resume logs in afresh (its first state change
// has ContinuityLost: the log gets a gap, the page recovered:false); a
// state Resume refuses outright is logged in afresh here, with a gap too.
// Either way the outcome is counted (imsidecar_cluster_resumes_total).
//
// A warm stream this node prepared for the session (clusterwarm.go) is
// resumed on first: the login was done ahead, and the resumption is one
// round trip. xmppconn logs in afresh when it cannot serve.
func (r *registry) resumeStream(ctx context.Context, cfg xmppconn.Config, st xmppconn.ResumeState, s *session) (xmppSession, error) {
	var conn xmppSession
	var err error
	if w := r.own.warm(s.key); w != nil {
		var c *xmppconn.Conn
		if c, err = w.Resume(ctx, cfg, st); err == nil {
			conn = c
			result := "stale"
			if c.Warmed() {
				result = "used"
			}
			r.metrics.clusterWarm.WithLabelValues(result).Inc()
		}
	} else {
		conn, err = r.resume(ctx, cfg, st)
	}
	if errors.Is(err, xmppconn.ErrResumeState) {
		r.logger.Warn("cluster: the session's stored state cannot be resumed; logging in afresh", "session", s.short, "err", err)
		s.log.markGap()
		conn, err = r.dial(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	result := "fresh"
	if rc, ok := conn.(interface{ Resumed() bool }); ok && rc.Resumed() {
		result = "resumed"
	}
	r.metrics.clusterResumes.WithLabelValues(result).Inc()
	return conn, nil
}

// stateWriter is a node's group commit of the state scripts: the writes
// of all its sessions that wait while one batch is in Redis go together
// as the next batch, one pipeline (EVALSHA each; go-redis's cluster
// client splits it by node and sends the parts at once). The first writer
// to find none in flight sends its own at once: no timer, no wait at low
// load. Every caller still waits for its own script's answer, so a write
// is in Redis before its caller goes on (the guarantees of
// xmppconn.ResumeStore); what falls is the round trips and system calls
// per write, on the node and in Redis. The zero value is ready.
type stateWriter struct {
	mu      sync.Mutex
	queue   []*stateCall
	running bool // a batch is in flight: new calls queue
}

// stateCall is one script of a batch.
type stateCall struct {
	keys []string
	args []any
	n    int
	err  error
	lead bool          // woken to send the next batch, not answered
	wake chan struct{} // answered, or lead set
}

// stateBatchMax bounds a batch: beyond it the rest wait for the next.
const stateBatchMax = 256

// run sends a state script (stateScriptSrc) with the others waiting and
// returns its answer. A batch that Redis does not answer marks it down
// (cluster.redisFailed) before the next batch goes, and a batch whose
// turn comes while Redis is down is not sent: its writes are kept back at
// once, so a write waits at most for one batch on a stalled Redis, not
// for each batch queued before it.
func (w *stateWriter) run(cl *cluster, keys []string, args []any) (int, error) {
	c := &stateCall{keys: keys, args: args, wake: make(chan struct{}, 1)}
	w.mu.Lock()
	w.queue = append(w.queue, c)
	if w.running {
		w.mu.Unlock()
		<-c.wake
		if !c.lead {
			return c.n, c.err
		}
		w.mu.Lock()
	}
	// This caller sends the batch its call is in, then hands the calls
	// that queued meanwhile to the first of them.
	w.running = true
	batch := w.queue[:min(len(w.queue), stateBatchMax)]
	w.queue = w.queue[len(batch):]
	w.mu.Unlock()
	if cl.redisUsable() {
		execState(cl.rdb, batch)
		for _, o := range batch {
			if o.err != nil {
				cl.redisFailed(o.err)
			}
		}
	} else {
		for _, o := range batch {
			o.err = errRedisDown
		}
	}
	for _, o := range batch {
		if o != c {
			o.wake <- struct{}{}
		}
	}
	w.mu.Lock()
	if len(w.queue) == 0 {
		w.running = false
	} else {
		next := w.queue[0]
		next.lead = true
		next.wake <- struct{}{}
	}
	w.mu.Unlock()
	return c.n, c.err
}

// execState sends a batch of state scripts, bounded by stateWriteTimeout,
// and sets each call's answer. Scripts run by their digest; those Redis
// no longer knows (its script cache empties on a restart) go again with
// their source, which caches them.
func execState(rdb redis.UniversalClient, batch []*stateCall) {
	ctx, cancel := context.WithTimeout(context.Background(), stateWriteTimeout)
	defer cancel()
	if len(batch) == 1 {
		c := batch[0]
		c.n, c.err = stateScript.Run(ctx, rdb, c.keys, c.args...).Int()
		return
	}
	cmds := evalPipelined(ctx, rdb, stateScript, len(batch), func(i int) ([]string, []any) {
		return batch[i].keys, batch[i].args
	})
	for i, c := range batch {
		c.n, c.err = cmds[i].Int()
	}
}

// evalPipelined runs script n times in one pipeline, the i-th with the
// keys and arguments of args(i), by digest; those Redis answers NOSCRIPT
// (its script cache empties on a restart) go again with the source, in a
// second pipeline, which caches it (a pipeline cannot retry a NOSCRIPT on
// its own, as a lone Script.Run does). Each command's error is its own,
// for the caller to read.
func evalPipelined(ctx context.Context, rdb redis.UniversalClient, script *redis.Script, n int, args func(i int) ([]string, []any)) []*redis.Cmd {
	cmds := make([]*redis.Cmd, n)
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range cmds {
			keys, argv := args(i)
			cmds[i] = script.EvalSha(ctx, p, keys, argv...)
		}
		return nil
	})
	unanswered(cmds, err)
	var missing []int
	for i, c := range cmds {
		if err := c.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			missing = append(missing, i)
		}
	}
	if len(missing) == 0 {
		return cmds
	}
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, i := range missing {
			keys, argv := args(i)
			cmds[i] = script.Eval(ctx, p, keys, argv...)
		}
		return nil
	})
	unanswered(cmds, err)
	return cmds
}

// unanswered sets err, a pipeline's, on its commands Redis never answered.
// go-redis (v9.17) leaves them with neither a value nor an error when its
// retries of a connection error run out: a renewal pass with the Redis
// server gone (connection refused) read as renewed, every lease kept, and
// a release as done (TestClusterPipelinesRedisGone).
func unanswered(cmds []*redis.Cmd, err error) {
	if err == nil {
		return
	}
	for _, c := range cmds {
		if c != nil && c.Err() == nil && c.Val() == nil {
			c.SetErr(err)
		}
	}
}
