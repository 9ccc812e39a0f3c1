package sidecar

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The ownership of one PHP session in cluster mode (docs/CLUSTER.md): a
// lease key naming the owner node, renewed by it, and a fencing token that
// only grows. Every key of a session carries the hash tag {pP} of its
// partition, so each script below touches one slot and runs unchanged on
// a Redis Cluster.

// clusterPartitions is how many hash tags the sessions are spread over;
// later phases give each partition a sharded pub/sub channel.
const clusterPartitions = 64

// tokenKeyTTL keeps a session's token counter long after its last lease,
// so a token is never handed out twice for the same session.
const tokenKeyTTL = 7 * 24 * time.Hour

// leaseKeys are the Redis keys of one session, all in one slot.
type leaseKeys struct {
	lease string // STRING "token|node|incarnation|peer", PX lease TTL
	token string // STRING fencing-token counter (INCR)
	meta  string // HASH on (1: the user was online), token (of the last write), and the stream's and log's state (clusterstate.go)
	// unacked and events are the stream's unacknowledged stanzas and the
	// event log (clusterstate.go, clusterlog.go).
	unacked  string // LIST of raw stanzas
	events   string // LIST of event records
	presence string // HASH contact's full JID → its presence (presenceInfo JSON)
}

// keysOf returns the keys of the session whose key (sha256 hex of the PHP
// session id, never the id) is sk.
func keysOf(sk string) leaseKeys {
	base := keyBase(sk)
	return leaseKeys{lease: base + ":lease", token: base + ":tok", meta: base + ":m", unacked: base + ":u", events: base + ":ev", presence: base + ":pr"}
}

// keyBase is what every key of the session sk starts with.
func keyBase(sk string) string {
	p := 0
	if len(sk) >= 2 {
		if b, err := strconv.ParseUint(sk[:2], 16, 8); err == nil {
			p = int(b) % clusterPartitions
		}
	}
	return "ims:{p" + strconv.Itoa(p) + "}:" + sk
}

// leaseKey is keysOf(sk).lease alone: a renewal's one key.
func leaseKey(sk string) string { return keyBase(sk) + ":lease" }

// stateKeys are the keys of the state scripts (clusterstate.go).
func (k leaseKeys) stateKeys() []string {
	return []string{k.lease, k.meta, k.unacked, k.events, k.presence}
}

// stateKeySuffixes are those of stateKeys, in order.
var stateKeySuffixes = [...]string{":lease", ":m", ":u", ":ev", ":pr"}

// stateKeysOf is keysOf(sk).stateKeys() in two allocations (the five
// keys share one string) instead of seven: a session's writes build them
// each time rather than keep them for the session's life (issue 20 item
// 9: 0.4 KB a session).
func stateKeysOf(sk string) []string {
	base := keyBase(sk)
	var b strings.Builder
	b.Grow(len(stateKeySuffixes)*len(base) + len(":lease:m:u:ev:pr"))
	for _, suf := range stateKeySuffixes {
		b.WriteString(base)
		b.WriteString(suf)
	}
	all, keys := b.String(), make([]string, len(stateKeySuffixes))
	for i, suf := range stateKeySuffixes {
		keys[i], all = all[:len(base)+len(suf)], all[len(base)+len(suf):]
	}
	return keys
}

func (k leaseKeys) list() []string { return []string{k.lease, k.token, k.meta} }

// lease is one owner record as the lease key holds it.
type lease struct {
	token       uint64
	node        string
	incarnation string
	peer        string // the owner's --cluster-peer-listen address
}

func (l lease) String() string {
	return strconv.FormatUint(l.token, 10) + "|" + l.node + "|" + l.incarnation + "|" + l.peer
}

// parseLease reads a lease value; a malformed one (written by something
// else) is an error, never an owner.
func parseLease(s string) (lease, error) {
	f := strings.Split(s, "|")
	if len(f) != 4 || f[1] == "" || f[2] == "" || f[3] == "" {
		return lease{}, fmt.Errorf("%w: malformed lease %q", ErrClusterRedis, s)
	}
	t, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || t == 0 {
		return lease{}, fmt.Errorf("%w: malformed lease token %q", ErrClusterRedis, f[0])
	}
	return lease{token: t, node: f[1], incarnation: f[2], peer: f[3]}, nil
}

// claimScript takes a free lease, or, with ARGV[5] set, one still holding
// exactly ARGV[5] (an owner known dead: its incarnation replaced, or its
// peer port refusing connections). It returns {1, lease, on} when taken,
// {0, current lease, "", its TTL left in ms} when another holds it (the
// caller's owner hint, clusterhint.go).
//
// With ARGV[7] = '1', ARGV[5] is a lease the caller saw expired, and it is
// taken only if it still is: no lease there and the meta hash still naming
// ARGV[5] as its last owner. The caller judged that owner dead between two
// scripts (its liveness key gone, its peer port silent); an owner woken
// meanwhile (SIGCONT) sets the very same lease again with its first
// renewal, check or state write (renewScriptSrc, stateScriptSrc), and a
// claim accepting the lease it names would take a lease its owner has
// just been told it holds: two owners until the old one's next renewal,
// both resuming the XMPP session. Absent, the lease proves that nobody
// renewed it since the caller looked; Redis runs scripts one at a time,
// so the owner's renewal comes either before the claim (the claim is
// refused, {0, lease}, and the call goes to the owner) or after it (the
// renewal answers 0 and the owner detaches). TestClusterLeaseRenewRace.
//
// A lease that is gone without having been given back (it expired: its
// owner stopped renewing, or Redis was away longer than the TTL) is not
// free: the meta hash still names its last owner ('owner', cleared by
// release), and without ARGV[5] the script answers {0, that lease,
// 'expired'}. The caller then finds out whether that owner is alive
// (leaseStore.claim's callers: cluster.take) — after a Redis restart or
// outage it is, and its next renewal sets the lease again; a claim that
// took it would log the user in twice and deliver messages twice.
//
// KEYS: lease, token, meta. ARGV: node, incarnation, peer, ttl ms,
// expected lease or "", meta ttl ms, "1" if the expected lease was seen
// expired ("0" otherwise).
var claimScript = redis.NewScript(claimScriptSrc + `
return {1, v, on or '0'}
`)

// claimLoadScript is claimScript reading, when it takes the lease, the
// session's state as loadScript would right after it: {1, lease, on, meta
// pairs, unacked stanzas, event records, presence pairs}. The take of a
// session handed over (clusterwarm.go) runs it: one round trip where a
// claim and a load were two. The state is the one the new lease fences:
// every write of the session's state is checked against the lease in the
// same script (stateScriptSrc), so none can land between the claim and a
// later load; what this script reads is exactly what that load would.
// KEYS: lease, token, meta, unacked, events, presence. ARGV: claimScript's.
var claimLoadScript = redis.NewScript(claimScriptSrc + `
return {1, v, on or '0', redis.call('HGETALL', KEYS[3]), redis.call('LRANGE', KEYS[4], 0, -1), redis.call('LRANGE', KEYS[5], 0, -1), redis.call('HGETALL', KEYS[6])}
`)

// claimScriptSrc is the claim of claimScript and claimLoadScript, up to
// their answer when the lease is taken (v the lease, on the online mark).
var claimScriptSrc = `
local cur = redis.call('GET', KEYS[1])
if cur and (cur ~= ARGV[5] or ARGV[7] == '1') then
  return {0, cur, '', redis.call('PTTL', KEYS[1])}
end
if not cur and (ARGV[5] == '' or ARGV[7] == '1') then
  local last = redis.call('HGET', KEYS[3], 'owner')
  if last and last ~= ARGV[5] then
    return {0, last, 'expired'}
  end
end
local t = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ` + strconv.FormatInt(tokenKeyTTL.Milliseconds(), 10) + `)
local v = t .. '|' .. ARGV[1] .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('SET', KEYS[1], v, 'PX', ARGV[4])
redis.call('HSET', KEYS[3], 'owner', v)
if tonumber(ARGV[6]) > 0 and redis.call('PTTL', KEYS[3]) < 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
local on = redis.call('HGET', KEYS[3], 'on')
`

// renewScriptSrc extends the lease if ARGV[1] still holds it (1); sets it
// again if no lease is there at all and nobody claimed the session since
// (2): the keys expired while Redis was down or restarting, or a failover
// lost them, so its owner keeps it instead of a takeover storm when Redis
// comes back. Held by another, or claimed since (the token counter is past
// the lease's token): 0. An owner waking from a pause sets its expired
// lease again the same way; a node that judged it dead meanwhile claims
// only a lease still gone (claimScript, ARGV[7]), so the two never both
// hold it: whichever script Redis runs first wins. The counter matters
// when the taker's own lease has expired by the time the owner wakes (its
// renewals late in a takeover storm): the woken owner set its old lease
// again over a session the taker had moved on, and served it from its
// stale log (issue 20 item 3 at 2,000 users). The counter expires only
// long after any lease (tokenKeyTTL); a counter gone, with the keys, is
// Redis having lost them.
// KEYS: lease, token. ARGV: lease, ttl ms.
const renewScriptSrc = `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  local t = tonumber(redis.call('GET', KEYS[2]))
  local mine = tonumber(string.match(ARGV[1], '^(%d+)|'))
  if t and mine and t > mine then
    return 0
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
`

var renewScript = redis.NewScript(renewScriptSrc)

// markScript is the fenced write: it records whether the user is online
// only if ARGV[1] holds the lease, and answers 1, else 0. Later phases
// write the event log and the XEP-0198 state behind the same check. The
// owner's orphan index (clusterorphan.go) follows the mark: online, the
// session is in it with its sealed PHP session id (ARGV[6], "" to keep
// the one there), and the index lives a week past its last entry;
// offline, it leaves it.
//
// A lease that is gone while the meta hash still names it as the owner's
// (nobody claimed the session since: every claim names its own, a release
// clears it) lapsed, its owner's renewals late: it is set again and the
// mark goes on, as the state script and the renewal do. Until then the
// mark answered 0 and its owner let the session go as lost: at 2,000
// users a node that had just logged a user in, its renewals late in a
// takeover storm, dropped the session at its online mark, with events
// its pages had seen and Redis had not (its writes kept back), and the
// next owner gave them again (the rolling restart's duplicates).
// KEYS: lease, token, meta, owner's index. ARGV: lease, token, on (0/1),
// meta ttl ms, session key, sealed id, lease ttl ms.
var markScript = redis.NewScript(fencedLua("KEYS[1]", "KEYS[3]", "ARGV[7]") + `
redis.call('HSET', KEYS[3], 'on', ARGV[3], 'token', ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
if ARGV[3] == '1' then
  local sealed = ARGV[6]
  if sealed == '' then
    local e = redis.call('HGET', KEYS[4], ARGV[5])
    if e then
      local sep = string.find(e, '|', 1, true)
      if sep then sealed = string.sub(e, sep + 1) end
    end
  end
  if sealed ~= '' then
    redis.call('HSET', KEYS[4], ARGV[5], ARGV[2] .. '|' .. sealed)
    redis.call('PEXPIRE', KEYS[4], ` + strconv.FormatInt(tokenKeyTTL.Milliseconds(), 10) + `)
  end
else
  redis.call('HDEL', KEYS[4], ARGV[5])
end
return 1
`)

// fencedLua is the fence of the owner's writes (the state script, the
// mark), in Lua: go on only if leaseKey holds the caller's lease,
// ARGV[1]. A lease gone while metaKey's 'owner' still names it lapsed,
// its owner's renewals late, and nobody claimed the session since (every
// claim names its own lease there, a release clears it): it is set again
// for ttlArg milliseconds and the write goes on. Otherwise the script
// answers 0, having written nothing.
func fencedLua(leaseKey, metaKey, ttlArg string) string {
	return `
local cur = redis.call('GET', ` + leaseKey + `)
if cur ~= ARGV[1] then
  if cur or redis.call('HGET', ` + metaKey + `, 'owner') ~= ARGV[1] then
    return 0
  end
  redis.call('SET', ` + leaseKey + `, ARGV[1], 'PX', ` + ttlArg + `)
end`
}

// releaseScript gives the lease up if ARGV[1] holds it, and forgets its
// owner in the meta hash (a given-back lease is free): 1, else 0.
// KEYS: lease, meta. ARGV: lease.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HDEL', KEYS[2], 'owner')
  return 1
end
return 0
`)

// leaseStore runs the scripts; the cluster keeps the policy.
type leaseStore struct {
	rdb redis.UniversalClient
	// beat is the renewals' and the heartbeat's own client, with a pool
	// of beatPoolSize (newCluster); nil: rdb.
	beat redis.UniversalClient
	self lease // token 0: this node's name, incarnation and peer address
	ttl  time.Duration
	// metaTTL keeps the online mark past the last lease, so the user's
	// next call after a long outage still reconnects them.
	metaTTL time.Duration
}

// claimResult is the outcome of a claim: won, and the lease it names
// (ours when won, the holder's when not); online reports that the user
// was online before the claim, so the new owner reconnects them.
type claimResult struct {
	won    bool
	lease  lease
	online bool
	// expired: not won, and lease is the last owner's, which is gone
	// from Redis without having been given back (claimScript).
	expired bool
	// left: not won, and lease held in Redis for that long yet (0 when
	// not known).
	left time.Duration
}

// claim takes the session's lease if it is free, or if it still holds
// exactly expected (a known-dead owner's lease); expected nil claims only a
// free lease.
func (ls *leaseStore) claim(ctx context.Context, sk string, expected *lease) (claimResult, error) {
	return ls.claimIf(ctx, sk, expected, false)
}

// claimExpired takes the session's lease if it is free, or if last, which
// the caller saw expired and whose node it judged dead, is still expired
// and was the last owner (claimScript, ARGV[7]): a lease its owner set
// again meanwhile is not taken (claimResult lease is then that owner's).
func (ls *leaseStore) claimExpired(ctx context.Context, sk string, last lease) (claimResult, error) {
	return ls.claimIf(ctx, sk, &last, true)
}

func (ls *leaseStore) claimIf(ctx context.Context, sk string, expected *lease, expired bool) (claimResult, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	exp, gone := "", "0"
	if expected != nil {
		exp = expected.String()
	}
	if expired {
		gone = "1"
	}
	res, _, err := claimAnswer(claimScript.Run(ctx, ls.rdb, keysOf(sk).list(), ls.self.node, ls.self.incarnation, ls.self.peer, ls.ttl.Milliseconds(), exp, ls.metaTTL.Milliseconds(), gone))
	return res, err
}

// claimLoad takes the session's lease if it still holds exactly from (as
// claim), and then returns its state, read in the same script
// (claimLoadScript); the state is empty when the lease was not taken.
func (ls *leaseStore) claimLoad(ctx context.Context, sk string, from lease) (claimResult, stored, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	k := keysOf(sk)
	keys := []string{k.lease, k.token, k.meta, k.unacked, k.events, k.presence}
	res, v, err := claimAnswer(claimLoadScript.Run(ctx, ls.rdb, keys, ls.self.node, ls.self.incarnation, ls.self.peer, ls.ttl.Milliseconds(), from.String(), ls.metaTTL.Milliseconds(), "0"))
	if err != nil || !res.won {
		return res, stored{}, err
	}
	if len(v) != 7 {
		return claimResult{}, stored{}, fmt.Errorf("%w: claim and load answered %d parts", ErrClusterRedis, len(v))
	}
	return res, storedOf(v[3:]), nil
}

// claimAnswer reads the answer of claimScript or claimLoadScript; v is
// the whole answer.
func claimAnswer(cmd *redis.Cmd) (res claimResult, v []any, err error) {
	won, val, third, err := scriptAnswer("claim", cmd)
	if err != nil {
		return claimResult{}, nil, err
	}
	l, err := parseLease(val)
	if err != nil {
		return claimResult{}, nil, err
	}
	res = claimResult{won: won, lease: l}
	res.online = res.won && third == "1"
	res.expired = !res.won && third == "expired"
	v, _ = cmd.Slice()
	if !res.won && !res.expired && len(v) == 4 {
		if ms, ok := v[3].(int64); ok && ms > 0 {
			res.left = time.Duration(ms) * time.Millisecond
		}
	}
	return res, v, nil
}

// scriptAnswer reads the answer {won, string[, third]} of the claim and
// adopt scripts (what names the script in errors).
func scriptAnswer(what string, cmd *redis.Cmd) (won bool, s, third string, err error) {
	v, err := cmd.Slice()
	if err != nil {
		return false, "", "", fmt.Errorf("%w: %s: %w", ErrClusterRedis, what, err)
	}
	if len(v) < 2 {
		return false, "", "", fmt.Errorf("%w: %s answered %v", ErrClusterRedis, what, v)
	}
	n, _ := v[0].(int64)
	s, _ = v[1].(string)
	if len(v) > 2 {
		third, _ = v[2].(string)
	}
	return n == 1, s, third, nil
}

// owner returns the session's current lease, or ok false when none.
func (ls *leaseStore) owner(ctx context.Context, sk string) (lease, bool, error) {
	return ls.leaseAt(ctx, "owner", func(ctx context.Context) *redis.StringCmd { return ls.rdb.Get(ctx, leaseKey(sk)) })
}

// lastOwner returns the lease the session's meta hash names as the last
// claimed (the claim scripts set it, a lease given back clears it): the
// node that held the session when its lease expired.
func (ls *leaseStore) lastOwner(ctx context.Context, sk string) (lease, bool, error) {
	return ls.leaseAt(ctx, "last owner", func(ctx context.Context) *redis.StringCmd {
		return ls.rdb.HGet(ctx, keysOf(sk).meta, "owner")
	})
}

// leaseAt is the lease read answers (none: false), within redisBound; what
// names the read in errors.
func (ls *leaseStore) leaseAt(ctx context.Context, what string, read func(context.Context) *redis.StringCmd) (lease, bool, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	v, err := read(ctx).Result()
	if errors.Is(err, redis.Nil) {
		return lease{}, false, nil
	}
	if err != nil {
		return lease{}, false, fmt.Errorf("%w: %s: %w", ErrClusterRedis, what, err)
	}
	l, err := parseLease(v)
	return l, err == nil, err
}

// renew extends every lease of held, renewBatchMax leases a round trip per
// Redis node; it returns the session keys whose lease is no longer
// theirs.
func (ls *leaseStore) renew(ctx context.Context, held map[string]lease) (lost []string, err error) {
	if len(held) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(held))
	for sk := range held {
		keys = append(keys, sk)
	}
	for len(keys) > 0 {
		batch := keys[:min(len(keys), renewBatchMax)]
		keys = keys[len(batch):]
		l, berr := ls.renewBatch(ctx, held, batch)
		lost = append(lost, l...)
		if err == nil {
			err = berr
		}
	}
	if err != nil {
		err = fmt.Errorf("%w: renew: %w", ErrClusterRedis, err)
	}
	return lost, err
}

// beatClient is the client of the renewals and the heartbeat.
func (ls *leaseStore) beatClient() redis.UniversalClient {
	if ls.beat != nil {
		return ls.beat
	}
	return ls.rdb
}

// renewBatchMax bounds the leases of one renewal pipeline: what a pass holds
// at once (its commands, keys and replies, about 1 KB a lease) stays the
// same whatever the node's sessions, instead of growing with them (issue
// 20 item 9).
const renewBatchMax = 256

// renewBatch is one pipeline of renew, for the sessions keys of held.
func (ls *leaseStore) renewBatch(ctx context.Context, held map[string]lease, keys []string) (lost []string, err error) {
	ttl := ls.ttl.Milliseconds()
	cmds := evalPipelined(ctx, ls.beatClient(), renewScript, len(keys), func(i int) ([]string, []any) {
		k := keysOf(keys[i])
		return []string{k.lease, k.token}, []any{held[keys[i]].String(), ttl}
	})
	for _, c := range cmds {
		if cerr := c.Err(); cerr != nil && err == nil {
			err = cerr
		}
	}
	for i, c := range cmds {
		n, cerr := c.Int()
		if cerr == nil && n == 0 {
			lost = append(lost, keys[i])
		}
	}
	return lost, err
}

// mark records whether the user is online, fenced by l: false when l no
// longer holds the lease (the write was refused).
func (ls *leaseStore) mark(ctx context.Context, sk string, l lease, online bool) (bool, error) {
	return ls.markSealed(ctx, sk, l, online, "")
}

// markSealed is mark with the PHP session id sealed for the orphan index
// ("" keeps the one indexed).
func (ls *leaseStore) markSealed(ctx context.Context, sk string, l lease, online bool, sealed string) (bool, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	on := "0"
	if online {
		on = "1"
	}
	keys := append(keysOf(sk).list(), indexKey(partitionOf(sk), l.member()))
	n, err := markScript.Run(ctx, ls.rdb, keys, l.String(), l.token, on, ls.metaTTL.Milliseconds(), sk, sealed, ls.ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("%w: mark: %w", ErrClusterRedis, err)
	}
	return n == 1, nil
}

// check reports whether l still holds the session's lease, renewing it
// (or setting it again where no lease is left, as renew does).
func (ls *leaseStore) check(ctx context.Context, sk string, l lease) (bool, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	k := keysOf(sk)
	n, err := renewScript.Run(ctx, ls.rdb, []string{k.lease, k.token}, l.String(), ls.ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("%w: check: %w", ErrClusterRedis, err)
	}
	return n != 0, nil
}

// release gives the lease up if l holds it, and reports whether it did
// (false: the lease was another's, or gone, already).
func (ls *leaseStore) release(ctx context.Context, sk string, l lease) (bool, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	k := keysOf(sk)
	n, err := releaseScript.Run(ctx, ls.rdb, []string{k.lease, k.meta}, l.String()).Int()
	if err != nil {
		return false, fmt.Errorf("%w: release: %w", ErrClusterRedis, err)
	}
	return n == 1, nil
}

// releaseAll gives back every lease of held (session key → lease) in one
// pipeline, bounded by ctx and redisOpTimeout.
func (ls *leaseStore) releaseAll(ctx context.Context, held map[string]lease) error {
	if len(held) == 0 {
		return nil
	}
	ctx, cancel := redisBound(ctx)
	defer cancel()
	keys := make([]string, 0, len(held))
	for sk := range held {
		keys = append(keys, sk)
	}
	cmds := evalPipelined(ctx, ls.rdb, releaseScript, len(keys), func(i int) ([]string, []any) {
		k := keysOf(keys[i])
		return []string{k.lease, k.meta}, []any{held[keys[i]].String()}
	})
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return fmt.Errorf("%w: release: %w", ErrClusterRedis, err)
		}
	}
	return nil
}
