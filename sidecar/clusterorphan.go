package sidecar

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/phpsession"
)

// Proactive resumption of a dead node's users (docs/CLUSTER.md, "Orphans"):
// a user whose owner died and whose page makes no call (closed, or just
// idle) would otherwise stay on a hibernating server session until the
// Jabber server gives up on it, and their contacts would see them go
// offline. So every node keeps, per partition, an index of the sessions it
// holds online, written by the same fenced script as the online mark; each
// node renews a key of its own (its liveness); and every node looks, every
// third of the lease TTL, for nodes whose key is gone. A dead node's index
// entries are its orphans: a rendezvous hash over the live nodes says which
// node takes which, and each node resumes its share, a bounded number at a
// time. The user's PHP session id, needed to read the credentials again
// from the PHP session store, is kept in the index sealed with the cluster
// secret.

// Redis keys of the node liveness and the orphan index.
const (
	// nodesKey is the SET of every node incarnation ("node|incarnation")
	// that has run, until its index is empty after its death.
	nodesKey = "ims:nodes"
	// nodeKeyPrefix + "node|incarnation" is a node's liveness key,
	// renewed every third of the lease TTL and expiring after one TTL.
	nodeKeyPrefix = "ims:node:"
)

// adoptionsInFlight bounds the orphans one node resumes at once, so that
// the survivors of a big node do not log all of its users in again in the
// same second (a takeover storm at the Jabber server and its
// authentication backend).
const adoptionsInFlight = 32

// adoptRetries is how often a node tries to resume an orphan it took
// before leaving it to the user's next call.
const adoptRetries = 3

// member is this incarnation's name in nodesKey and its index keys.
func (l lease) member() string { return l.node + "|" + l.incarnation }

// indexKey is the HASH of the sessions incarnation member holds online in
// partition p: session key → "token|sealed PHP session id".
func indexKey(p int, member string) string {
	return "ims:{p" + strconv.Itoa(p) + "}:on:" + member
}

// partitionOf is the partition of a session key, as keysOf computes it.
func partitionOf(sk string) int {
	if len(sk) >= 2 {
		if b, err := strconv.ParseUint(sk[:2], 16, 8); err == nil {
			return int(b) % clusterPartitions
		}
	}
	return 0
}

// adoptScript takes over one orphan of a dead incarnation, atomically: the
// index entry (KEYS[1], field ARGV[1]) must still be there; the user gone
// offline ({0, offline}), a later mark by another owner (its token above
// the entry's) or the lease held by anyone but the dead incarnation
// (ARGV[2] node, ARGV[3] incarnation) ({0, moved}) drop the entry. The
// lease still held by the dead incarnation keeps it ({0, held}): either it
// has not expired yet (its last renewal came after its last heartbeat),
// or the incarnation is not dead but was frozen, and its first renewal
// after waking set the lease again while this node judged it dead (as in
// claimScript: taking it would make two owners until its next renewal,
// both resuming the XMPP session). So does a lease that is gone while the
// meta hash names another owner ('owner', set by every claim, cleared by
// a release): a node claimed the session since (a user's call after the
// dead node gave its lease back, or took it over) and its lease lapsed,
// its renewals late — in a takeover storm at 2,000 users such a node was
// still logging the user in, not yet marked online, when the adoption
// claimed the session too, and both resumed the XMPP session: the one
// that lost it had accepted sends Redis never got, and they were lost.
// That node's next renewal sets its lease again (renewScriptSrc) and the
// entry is dropped as moved; if it died too, the user's next call takes
// the session over (cluster.takeIf asks whether it lives). The next pass
// tries again. Otherwise (no lease, no other owner named) the lease is
// claimed as the claim script does, and the entry moves to this node's
// index: {1, lease, sealed id}.
//
// KEYS: dead index, lease, token, meta, own index. ARGV: session key, dead
// node, dead incarnation, node, incarnation, peer, ttl ms.
var adoptScript = redis.NewScript(`
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e then
  return {0, 'gone'}
end
local sep = string.find(e, '|', 1, true)
if not sep then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {0, 'malformed'}
end
local etok = tonumber(string.sub(e, 1, sep - 1)) or 0
local sealed = string.sub(e, sep + 1)
local m = redis.call('HMGET', KEYS[4], 'on', 'token')
if m[1] == '0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {0, 'offline'}
end
if m[2] and (tonumber(m[2]) or 0) > etok then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {0, 'moved'}
end
local function dead(v)
  local _, _, n, i = string.find(v, '^%d+|([^|]+)|([^|]+)|')
  return n == ARGV[2] and i == ARGV[3]
end
local cur = redis.call('GET', KEYS[2])
if cur then
  if not dead(cur) then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return {0, 'moved'}
  end
  return {0, 'held'}
end
local last = redis.call('HGET', KEYS[4], 'owner')
if last and not dead(last) then
  return {0, 'held'}
end
local t = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ` + strconv.FormatInt(tokenKeyTTL.Milliseconds(), 10) + `)
local v = t .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[6]
redis.call('SET', KEYS[2], v, 'PX', ARGV[7])
redis.call('HSET', KEYS[4], 'owner', v)
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], t .. '|' .. sealed)
redis.call('PEXPIRE', KEYS[5], ` + strconv.FormatInt(tokenKeyTTL.Milliseconds(), 10) + `)
return {1, v, sealed}
`)

// adoption is the outcome of adoptScript.
type adoption struct {
	won    bool
	lease  lease
	sealed string
	why    string // when not won: gone, malformed, offline, moved, held
}

// adopt runs adoptScript for session sk of dead incarnation dead.
func (ls *leaseStore) adopt(ctx context.Context, sk string, dead lease) (adoption, error) {
	ctx, cancel := redisBound(ctx)
	defer cancel()
	k := keysOf(sk)
	p := partitionOf(sk)
	won, s, sealed, err := scriptAnswer("adopt", adoptScript.Run(ctx, ls.rdb, []string{indexKey(p, dead.member()), k.lease, k.token, k.meta, indexKey(p, ls.self.member())},
		sk, dead.node, dead.incarnation, ls.self.node, ls.self.incarnation, ls.self.peer, ls.ttl.Milliseconds()))
	if err != nil {
		return adoption{}, err
	}
	if !won {
		return adoption{why: s}, nil
	}
	l, err := parseLease(s)
	if err != nil {
		return adoption{}, err
	}
	a := adoption{won: true, lease: l, sealed: sealed}
	return a, nil
}

// sealer seals PHP session ids for the index with a key derived from the
// cluster secret (AES-256-GCM, the session key as associated data): Redis
// alone, or an entry moved to another session, yields no id.
type sealer struct{ aead cipher.AEAD }

func newSealer(secret string) *sealer {
	k := sha256.Sum256([]byte("imsidecar cluster: sealed PHP session ids, v1\x00" + secret))
	block, _ := aes.NewCipher(k[:]) // a 32-byte key: no error
	aead, _ := cipher.NewGCM(block)
	return &sealer{aead: aead}
}

// errSealed: an index entry that does not open with this cluster's secret
// for this session (tampered, another cluster's, another session's).
var errSealed = errors.New("sidecar: sealed session id does not open")

func (s *sealer) seal(sk, id string) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(id)+s.aead.Overhead())
	rand.Read(nonce)
	return base64.RawURLEncoding.EncodeToString(s.aead.Seal(nonce, nonce, []byte(id), []byte(sk)))
}

// open is the decoder of an index entry read from Redis: it returns the
// PHP session id sealed for sk, or errSealed.
func (s *sealer) open(sk, sealed string) (string, error) {
	if len(sealed) > 1024 {
		return "", errSealed
	}
	b, err := base64.RawURLEncoding.DecodeString(sealed)
	if err != nil || len(b) < s.aead.NonceSize()+s.aead.Overhead() {
		return "", errSealed
	}
	id, err := s.aead.Open(nil, b[:s.aead.NonceSize()], b[s.aead.NonceSize():], []byte(sk))
	if err != nil || sessionKey(string(id)) != sk {
		return "", errSealed
	}
	return string(id), nil
}

// orphans is a node's side of the proactive resumption: its liveness key
// and the scan for dead nodes' sessions.
type orphans struct {
	cl  *cluster
	sem chan struct{} // adoptions in flight
	// okSince is when Redis last started answering this node after a
	// failure: dead nodes are judged only once it has answered for a whole
	// TTL, so that after a Redis restart the owners renew their keys
	// before anyone takes them for dead.
	okSince time.Time
	mu      sync.Mutex
	busy    map[string]bool   // session keys being adopted here
	peers   map[string]string // node|incarnation → its peer address, as its liveness key said (tick only)
	stopped chan struct{}     // closed when watch has returned
}

// watch renews this node's liveness key and looks for orphans every third
// of the lease TTL until ctx ends; the adoptions it starts end with ctx.
func (o *orphans) watch(ctx context.Context) {
	defer close(o.stopped)
	t := time.NewTicker(o.cl.ls.ttl / 3)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		o.tick(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick is one pass: the heartbeat, the list of incarnations, and the
// orphans of the dead ones assigned to this node.
func (o *orphans) tick(ctx context.Context, wg *sync.WaitGroup) {
	cl := o.cl
	ls := cl.ls
	me := ls.self.member()
	rctx, cancel := context.WithTimeout(ctx, ls.ttl/3)
	defer cancel()
	var members *redis.StringSliceCmd
	_, err := ls.beatClient().Pipelined(rctx, func(p redis.Pipeliner) error {
		p.Set(rctx, nodeKeyPrefix+me, ls.self.peer, ls.ttl)
		p.SAdd(rctx, nodesKey, me)
		members = p.SMembers(rctx, nodesKey)
		return nil
	})
	now := time.Now()
	if err != nil {
		o.okSince = time.Time{}
		cl.redisSteadySince.Store(0)
		cl.logger.Debug("cluster: node heartbeat", "err", err)
		return
	}
	if o.okSince.IsZero() {
		o.okSince = now
		cl.redisSteadySince.Store(now.UnixNano())
	}
	all := members.Val()
	alive, err := nodePeers(rctx, ls.beatClient(), all)
	if err != nil {
		return
	}
	for _, c := range alive {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return // a key Redis did not answer for says nothing of its node
		}
	}
	var live, dead []string
	for i, m := range all {
		if m == me || alive[i].Val() != "" {
			live = append(live, m)
		} else {
			dead = append(dead, m)
		}
	}
	dead = o.askDead(ctx, all, alive, dead)
	cl.metrics.clusterNodes.Set(float64(len(live)))
	if now.Sub(o.okSince) < ls.ttl || cl.reg.isClosing() || len(dead) == 0 {
		return
	}
	// The sweeps have a third of the TTL of their own: askDead may have
	// spent the heartbeat's waiting for a frozen node (peerAskTimeout),
	// and a sweep left the rest read nothing on a loaded machine (issue
	// 20 item 3 at 2,000 users: two passes of three). With one frozen
	// node the pass lasts at most 2/3 of the TTL and one ask (a quarter
	// of it): the next heartbeat still comes before this node's liveness
	// key expires.
	sctx, scancel := context.WithTimeout(ctx, ls.ttl/3)
	defer scancel()
	for _, d := range dead {
		o.sweep(ctx, sctx, d, live, wg)
	}
}

// nodePeers reads the liveness key of each node incarnation of members
// in one pipeline: a command per member, whose value is its peer address
// ("" once the key expired: the node is gone). A key Redis did not
// answer for has the command's error, for the caller to judge.
func nodePeers(ctx context.Context, rdb redis.UniversalClient, members []string) ([]*redis.StringCmd, error) {
	cmds := make([]*redis.StringCmd, len(members))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, m := range members {
			cmds[i] = p.Get(ctx, nodeKeyPrefix+m)
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	return cmds, nil
}

// sweep reads a dead incarnation's index and starts the adoptions of the
// orphans the rendezvous hash gives this node; an empty index is
// forgotten.
func (o *orphans) sweep(ctx, rctx context.Context, dead string, live []string, wg *sync.WaitGroup) {
	cl := o.cl
	node, inc, ok := strings.Cut(dead, "|")
	if !ok || node == "" || inc == "" {
		cl.ls.rdb.SRem(rctx, nodesKey, dead) // not a member this code wrote
		return
	}
	d := lease{node: node, incarnation: inc}
	cmds := make([]*redis.MapStringStringCmd, clusterPartitions)
	if _, err := cl.ls.beatClient().Pipelined(rctx, func(p redis.Pipeliner) error {
		for i := range cmds {
			cmds[i] = p.HGetAll(rctx, indexKey(i, dead))
		}
		return nil
	}); err != nil {
		return
	}
	me := cl.ls.self.member()
	empty := true
	for i, c := range cmds {
		for sk := range c.Val() {
			empty = false
			if len(sk) != 64 || partitionOf(sk) != i {
				cl.ls.rdb.HDel(rctx, indexKey(i, dead), sk) // not an entry this code wrote
				continue
			}
			if rendezvous(live, sk) != me {
				continue
			}
			if !o.start(sk) {
				continue
			}
			select {
			case o.sem <- struct{}{}:
			default:
				o.done(sk)
				return // the rest at the next pass
			}
			wg.Go(func() {
				defer func() { <-o.sem; o.done(sk) }()
				o.adopt(ctx, sk, d)
			})
		}
	}
	if empty {
		// Nothing left to resume: the incarnation is forgotten (a node
		// that was only frozen adds itself back at its next heartbeat).
		cl.ls.rdb.SRem(rctx, nodesKey, dead)
	}
}

func (o *orphans) start(sk string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.busy[sk] {
		return false
	}
	o.busy[sk] = true
	return true
}

func (o *orphans) done(sk string) {
	o.mu.Lock()
	delete(o.busy, sk)
	o.mu.Unlock()
}

// rendezvous picks, among the live incarnations, the one that takes
// session sk: the highest hash of (incarnation, session). Every node
// computing it over the same live set picks the same one; when a node
// joins or leaves, only its share moves.
func rendezvous(live []string, sk string) string {
	best, bestScore := "", uint64(0)
	for _, m := range live {
		h := fnv.New64a()
		h.Write([]byte(m))
		h.Write([]byte{0})
		h.Write([]byte(sk))
		// FNV's high bits mix the last bytes poorly: a splitmix64
		// finalizer spreads them before the comparison.
		s := h.Sum64()
		s = (s ^ s>>30) * 0xbf58476d1ce4e5b9
		s = (s ^ s>>27) * 0x94d049bb133111eb
		s ^= s >> 31
		if best == "" || s > bestScore || (s == bestScore && m < best) {
			best, bestScore = m, s
		}
	}
	return best
}

// adopt takes one orphan over and resumes it here: the lease, then the
// PHP session read again from the store (the user may have logged out
// meanwhile: then they are marked offline), then the stream, through the
// same path as a user's own call after a takeover.
func (o *orphans) adopt(ctx context.Context, sk string, dead lease) {
	cl := o.cl
	res, err := cl.ls.adopt(ctx, sk, dead)
	if err != nil {
		cl.logger.Debug("cluster: adopting an orphan", "session", sk[:8], "err", err)
		return
	}
	if !res.won {
		cl.metrics.clusterAdoptions.WithLabelValues(res.why).Inc()
		return
	}
	cl.hold(sk, res.lease)
	cl.metrics.clusterClaims.WithLabelValues("takeover").Inc()
	id, err := cl.sealer.open(sk, res.sealed)
	if err != nil {
		cl.logger.Warn("cluster: an orphan's index entry does not open with this cluster's secret; left to the user's next call", "session", sk[:8])
		cl.metrics.clusterAdoptions.WithLabelValues("failed").Inc()
		return
	}
	for attempt := range adoptRetries {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
		ps, err := cl.reg.reader.Lookup(ctx, id)
		switch {
		case errors.Is(err, phpsession.ErrUnavailable):
			continue
		case err != nil:
			// Logged out or expired while nobody held the stream: offline,
			// as the janitor would have made them.
			cl.markOnline(ctx, sk, false, "")
			cl.forgotten(sk)
			cl.metrics.clusterAdoptions.WithLabelValues("offline").Inc()
			return
		}
		lctx, cancel := context.WithTimeout(ctx, takeoverLoginTimeout)
		s, _, err := cl.reg.connect(lctx, id, ps, nil)
		cancel()
		if err == nil {
			cl.reg.remember(s, id)
			cl.metrics.clusterAdoptions.WithLabelValues("resumed").Inc()
			cl.logger.Info("cluster: a dead node's session resumed here", "user", s.user, "session", s.short, "from", dead.node)
			return
		}
		if errors.Is(err, ErrNotOwner) || errors.Is(err, ErrShuttingDown) || ctx.Err() != nil {
			return
		}
		cl.logger.Debug("cluster: resuming an orphan", "session", sk[:8], "attempt", attempt+1, "err", err)
	}
	// Left to the user's next call: the lease goes back at the next
	// renewal (no stream holds it) and the online mark stays.
	cl.metrics.clusterAdoptions.WithLabelValues("failed").Inc()
}

// isClosing reports whether the registry is shutting down.
func (r *registry) isClosing() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closing
}

// awaitDial waits, bounded by ctx, for a stream of session sk being opened
// here (an orphan's resumption), so that a call reaching this node
// meanwhile is served on it rather than answered not_connected.
func (r *registry) awaitDial(ctx context.Context, sk string) {
	r.mu.Lock()
	ch, ok := r.dialing[sk]
	r.mu.Unlock()
	if ok {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}
