package sidecar

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/xmppconn"
)

// Cluster mode (--cluster-redis; docs/CLUSTER.md): several daemons share
// their users through Redis. Each PHP session has one owner node, named by
// a lease in Redis (clusterlease.go); only the owner holds the session's
// XMPP stream. A call that lands on another node is forwarded to the owner
// over the private peer listener (clusterpeer.go). A node whose lease is
// gone detaches the session; the next call of the user claims it wherever
// it lands and reconnects the user there.

// heldLease is a lease this node holds, and since when (monoNow). Every
// lease a node claims names it: only the token is kept, the rest being
// the node's own (leaseStore.self), which makes the table's value 24
// bytes a session instead of 80 (issue 20 item 9). other holds a lease
// that does not name this incarnation, which no claim yields.
type heldLease struct {
	token uint64
	since int64
	other *lease
}

// monoNow is the time as a number, nanoseconds since the process started
// on the monotonic clock: kept in a session's structures instead of a
// time.Time (8 bytes, not 24), and not moved by a step of the wall clock.
func monoNow() int64 { return int64(time.Since(monoStart)) }

var monoStart = time.Now()

// lease is the lease h stands for, on a node whose own is self.
func (h heldLease) lease(self lease) lease {
	if h.other != nil {
		return *h.other
	}
	self.token = h.token
	return self
}

// cluster is this node's side of the cluster: the leases it holds, their
// renewal, and the client to the other nodes' peer listeners.
type cluster struct {
	ls      *leaseStore
	rdb     redis.UniversalClient
	secret  string
	logger  *slog.Logger
	metrics *metrics
	peer    *http.Client
	reg     *registry   // set by serve before the API starts
	sealer  *sealer     // PHP session ids in the orphan index
	orphans *orphans    // liveness key and proactive resumption
	handoff *handoff    // the graceful hand-over at shutdown
	warms   *warmPool   // streams prepared for sessions handed to this node (clusterwarm.go)
	silent  silentPeers // peers that did not answer peerAlive (clusteralive.go)
	hints   ownerHints  // the owners of sessions this node forwards for (clusterhint.go)

	// releaseMu orders a renewal pass and the releases: a renewal sets a
	// missing lease again (for a Redis that lost its data), so a release
	// landing while a pass still names its lease brought the lease back
	// for a TTL, held by nobody, the session's calls sent here and told
	// not_owner until it expired. A pass holds it from its snapshot to
	// Redis's answer; a lease's drop and its release hold it (read)
	// together (dropRelease).
	releaseMu sync.RWMutex
	mu        sync.Mutex
	held      map[string]heldLease          // session key → lease
	checks    map[leaseCheckKey]*leaseCheck // lease checks in flight (checkLease)
	claiming  map[string]*sharedClaim       // calls' claims in flight (takeShared)
	// claimed is the state the claim of a session handed over read with
	// its lease (takeHanded), until its resumption loads it.
	claimed map[string]claimedState
	wg      sync.WaitGroup // detaches and lease checks in flight
	// renewed is when the last renewal pass reached Redis (unix nanos).
	// pulse is when watchPauses last saw the clock (0: not running), and
	// woke when it last found the process had not run for a third of the
	// TTL: cluster.mine tells with them a pause of this node from a Redis
	// outage.
	renewed atomic.Int64
	pulse   atomic.Int64
	woke    atomic.Int64
	// redisSteadySince is when Redis last started answering this node's
	// heartbeat after a failure (unix nanos, 0: not answering): other
	// nodes' liveness keys tell only once it has answered for a TTL.
	redisSteadySince atomic.Int64
	// The sessions' state in Redis (clusterstate.go): redisDown is until
	// when writes are not tried (unix nanos, 0: Redis answers);
	// flushList, the sessions with writes kept back meanwhile; flushing,
	// a flusher is writing them (flushAgain: a renewal came meanwhile;
	// flushClosed: the cluster stops, none starts);
	// logCap and logBytes cap each event log in Redis; writes, the group
	// commit of the state scripts.
	redisDown   atomic.Int64
	writes      stateWriter
	flushMu     sync.Mutex
	flushList   []*clusterSession
	flushing    bool
	flushAgain  bool
	flushClosed bool
	// marks are the online marks Redis did not take (cl.mu), written
	// again after a renewal (retryMarks), one at most a lease held (a
	// lease dropped drops its mark); markMus serialise each session's
	// marks (markLock).
	marks    map[string]pendingMark
	markMus  [clusterPartitions]sync.Mutex
	logCap   int
	logBytes int64
	// browserMax is --max-browser-streams, for a taken-over session's
	// bridge.
	browserMax int
}

// newCluster connects to --cluster-redis; nothing is read or written
// until the first call. The incarnation tells this run from an earlier
// one under the same --cluster-node-id.
func newCluster(cfg *Config, secret string, logger *slog.Logger, m *metrics) (*cluster, error) {
	rdb, err := clusterRedis(cfg.ClusterRedis, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: --cluster-redis: %w", ErrConfig, err)
	}
	beat, err := clusterRedis(cfg.ClusterRedis, beatPoolSize)
	if err != nil {
		rdb.Close()
		return nil, fmt.Errorf("%w: --cluster-redis: %w", ErrConfig, err)
	}
	var inc [6]byte
	rand.Read(inc[:])
	cl := &cluster{
		ls: &leaseStore{rdb: rdb, beat: beat, ttl: cfg.ClusterLeaseTTL, metaTTL: cfg.Inactivity + 10*time.Minute,
			self: lease{node: cfg.ClusterNodeID, incarnation: hex.EncodeToString(inc[:]), peer: cfg.ClusterPeerListen}},
		rdb: rdb, secret: secret, logger: logger, metrics: m, held: map[string]heldLease{}, sealer: newSealer(secret),
		logCap: cfg.EventBuffer, logBytes: int64(cfg.EventBufferMB) << 20, browserMax: cfg.MaxBrowserStreams,
		peer: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}},
	}
	cl.orphans = &orphans{cl: cl, sem: make(chan struct{}, adoptionsInFlight), busy: map[string]bool{}, stopped: make(chan struct{})}
	cl.handoff = newHandoff()
	cl.warms = newWarmPool()
	// No lease is held yet, and each one claimed from now on is set with
	// a whole TTL: as current as a renewal at this moment (cluster.mine).
	cl.renewed.Store(time.Now().UnixNano())
	return cl, nil
}

// clusterRedis builds the Redis client of --cluster-redis: a redis:// or
// rediss:// URL for one server, redis-cluster://[user:pass@]h:p,h:p for
// the seeds of a Redis Cluster. Each node is dialled once per attempt
// (DialerRetries 1; go-redis's default dials a refused address 5 times
// 100 ms apart, under its own retries): a Redis that is down fails a
// write, renewal or read at once and the mirror keeps the state.
//
// ContextTimeoutEnabled makes a command's context deadline bound its
// socket reads and writes; without it go-redis waits out its read
// timeout whatever the deadline, and retries (a user's call waited 4.5 s
// on the owner and 8.2 s elsewhere with Redis stalled, issue 20 item 6).
// Only a deadline counts, never a cancellation: a caller that leaves
// does not cut a reply off. A deadline that fires mid-reply closes that
// connection, as go-redis's own read timeout does; every command is
// bounded (redisOpTimeout), and none is written to be answered twice.
//
// pool is how many connections it keeps to each Redis server; 0 is
// redisPoolSize, or the pool_size of a redis:// URL.
func clusterRedis(spec string, pool int) (redis.UniversalClient, error) {
	if rest, ok := strings.CutPrefix(spec, "redis-cluster://"); ok {
		auth, hosts, found := strings.Cut(rest, "@")
		if !found {
			auth, hosts = "", rest
		}
		o := &redis.ClusterOptions{DialTimeout: redisOpTimeout, ReadTimeout: redisOpTimeout, WriteTimeout: redisOpTimeout,
			ContextTimeoutEnabled: true, ReadBufferSize: redisBufferSize, WriteBufferSize: redisBufferSize, PoolSize: cmp.Or(pool, redisPoolSize()),
			NewClient: func(no *redis.Options) *redis.Client { no.DialerRetries = 1; return redis.NewClient(no) }}
		if auth != "" {
			u, err := url.Parse("redis://" + auth + "@x")
			if err != nil {
				return nil, fmt.Errorf("malformed credentials in %q", "redis-cluster://…@"+hosts)
			}
			o.Username = u.User.Username()
			o.Password, _ = u.User.Password()
		}
		for _, h := range strings.Split(hosts, ",") {
			if h = strings.TrimSpace(h); h != "" {
				o.Addrs = append(o.Addrs, h)
			}
		}
		if len(o.Addrs) == 0 {
			return nil, errors.New("redis-cluster:// needs at least one host:port")
		}
		return redis.NewClusterClient(o), nil
	}
	if !strings.HasPrefix(spec, "redis://") && !strings.HasPrefix(spec, "rediss://") && !strings.HasPrefix(spec, "unix://") {
		return nil, errors.New("not a redis://, rediss://, unix:// or redis-cluster:// address")
	}
	o, err := redis.ParseURL(spec)
	if err != nil {
		return nil, err
	}
	o.DialTimeout, o.ReadTimeout, o.WriteTimeout = redisOpTimeout, redisOpTimeout, redisOpTimeout
	o.DialerRetries, o.ContextTimeoutEnabled = 1, true
	o.ReadBufferSize, o.WriteBufferSize = redisBufferSize, redisBufferSize
	switch {
	case pool > 0:
		o.PoolSize = pool
	case o.PoolSize == 0: // no pool_size in the URL
		o.PoolSize = redisPoolSize()
	}
	return redis.NewClient(o), nil
}

// redisOpTimeout bounds one Redis operation of the cluster (a script, a
// lookup, a pipeline), its retries and its wait for a pooled connection
// included, where its caller sets no shorter deadline (redisBound); it is
// also the clients' dial, read and write timeout. A Redis that answers
// does so in well under a millisecond: this only ends the wait on one
// that does not (stalled: a master restarting, loading its append-only
// file or failing over, a partition dropping packets), where go-redis
// retried a read timeout up to 3 times (8 s a command).
const redisOpTimeout = 2 * time.Second

// redisBound is ctx bounded by redisOpTimeout, for one Redis operation.
func redisBound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, redisOpTimeout)
}

// redisPoolSize is how many connections a node keeps to each Redis
// server: 2 per CPU, at least 4, where go-redis defaults to 10 per CPU
// (5 per CPU to each master of a Redis Cluster). A node's Redis traffic
// is few round trips at a time: the state writes of all its sessions go
// as one pipeline (stateWriter), a renewal pass as pipelines of 256
// leases; only logins and takeovers (a claim, a mark, a load each) and
// the peers' checks run side by side, and Redis runs one command at a
// time whatever the number of connections. A login storm filled the
// larger pool and kept it for the process's life: 20 connections a node
// on 2 CPUs, each with its 8 KiB of buffers here and a client with its
// own buffers in Redis (docs/PERFORMANCE.md, issue 20 item 9). A
// pool_size in a redis:// URL still sets it.
func redisPoolSize() int { return max(4, 2*runtime.GOMAXPROCS(0)) }

// beatPoolSize is how many connections to each Redis server the lease
// renewals and the node's heartbeat have to themselves (leaseStore.beat):
// they never wait behind the state writes, lookups and claims for a
// pooled connection. On an overloaded machine at 2,000 users the shared
// pool was busy for whole passes (60 waits for a connection timed out on
// one node), the renewals missed their third of the TTL, the leases
// expired and the other nodes took the sessions over (issue 20). The
// heartbeat's reads of the other nodes' liveness keys and of a dead
// node's orphan index go there too: on the shared pool, busy with a
// takeover storm's claims, they missed their bound pass after pass, and
// no orphan was adopted.
const beatPoolSize = 2

// redisBufferSize is each Redis connection's read and write buffer.
// go-redis defaults to 32 KiB each, 64 KiB a connection held for the
// process's life in every pooled connection (10 per CPU, and per master
// of a Redis Cluster), most of a node's fixed memory in cluster mode
// (docs/PERFORMANCE.md, issue 20 item 9). The daemon's replies are short
// (a script's status, a lease) or bulk strings, which go-redis reads
// into their own slice whatever the buffer; its writes are a few KB
// records, and a larger argument is written through. So
// net/http's 4 KiB is enough: it costs no round trip, only, for a
// pipeline larger than the buffer, one more write call per 4 KiB.
const redisBufferSize = 4 << 10

// holds returns the lease this node holds on the session, if any.
func (cl *cluster) holds(sk string) (lease, bool) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	h, ok := cl.held[sk]
	return h.lease(cl.ls.self), ok
}

func (cl *cluster) hold(sk string, l lease) {
	h := heldLease{token: l.token, since: monoNow()}
	if self := cl.ls.self; l.node != self.node || l.incarnation != self.incarnation || l.peer != self.peer {
		h.other = &l
	}
	cl.mu.Lock()
	cl.held[sk] = h
	n := len(cl.held)
	cl.mu.Unlock()
	cl.metrics.clusterLeases.Set(float64(n))
	cl.hints.drop(sk)
}

// touch reports whether this node holds the lease on sk and, if it does,
// counts it as held from now: a login starting on it, not an idle claim
// (giveBackIdle).
func (cl *cluster) touch(sk string) bool {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	h, ok := cl.held[sk]
	if ok {
		h.since = monoNow()
		cl.held[sk] = h
	}
	return ok
}

// drop forgets the lease on sk if it is still l, and reports whether it was.
func (cl *cluster) drop(sk string, l lease) bool {
	cl.mu.Lock()
	h, ok := cl.held[sk]
	ok = ok && h.lease(cl.ls.self) == l
	if ok {
		delete(cl.held, sk)
		delete(cl.marks, sk)
	}
	n := len(cl.held)
	cl.mu.Unlock()
	cl.metrics.clusterLeases.Set(float64(n))
	return ok
}

// take makes this node the session's owner if it can: it holds the lease
// already, or the lease is free, or it still names expected (an owner
// known to be dead), or it names this node's earlier incarnation. It
// returns the current lease when another live node holds it.
func (cl *cluster) take(ctx context.Context, sk string, expected *lease) (claimResult, error) {
	return cl.takeIf(ctx, sk, expected, false)
}

// takeIf is take; with expired, expected is a lease seen expired, taken
// only if it still is (leaseStore.claimExpired).
func (cl *cluster) takeIf(ctx context.Context, sk string, expected *lease, expired bool) (claimResult, error) {
	if l, ok := cl.holds(sk); ok {
		return claimResult{won: true, lease: l}, nil
	}
	sent := monoNow()
	res, err := cl.ls.claimIf(ctx, sk, expected, expected != nil && expired)
	if err != nil {
		return res, err
	}
	self := cl.ls.self
	if res.left > 0 && res.lease.node != self.node {
		cl.hints.put(sk, res.lease, sent+int64(res.left))
	}
	if !res.won && res.expired && res.lease.node != self.node && !cl.mayBeAlive(ctx, res.lease) && !cl.peerAlive(ctx, res.lease, sk) {
		// The last owner's lease expired, Redis no longer sees its node,
		// and the node does not say it holds the session: take it over,
		// if it is still expired. The node may be waking up (SIGCONT)
		// while it is judged: its renewal then sets the same lease again,
		// and the claim must not take it (claimScript).
		prev := res.lease
		if res, err = cl.ls.claimExpired(ctx, sk, prev); err != nil {
			return res, err
		}
		expected = &prev
	}
	if !res.won && res.lease.node == self.node {
		if res.lease.incarnation == self.incarnation {
			// Ours, though not in the table (a claim answered after its
			// caller gave up): take it back.
			cl.hold(sk, res.lease)
			return claimResult{won: true, lease: res.lease}, nil
		}
		// This node's earlier run (killed, restarted): it holds nothing.
		prev := res.lease
		if res, err = cl.ls.claim(ctx, sk, &prev); err != nil {
			return res, err
		}
		expected = &prev
	}
	if !res.won {
		cl.metrics.clusterClaims.WithLabelValues("lost").Inc()
		return res, nil
	}
	cl.hold(sk, res.lease)
	if expected != nil || res.online {
		cl.metrics.clusterClaims.WithLabelValues("takeover").Inc()
	} else {
		cl.metrics.clusterClaims.WithLabelValues("won").Inc()
	}
	return res, nil
}

// sharedClaim is one claim in flight for the calls of a session
// (takeShared): done is closed once res and err are set.
type sharedClaim struct {
	done chan struct{}
	res  claimResult
	err  error
}

// takeShared is take for a call that expects no lease: the calls of one
// session reaching this node at once (a page's poll and sends, and their
// retries after the load balancer gave up on them) share one claim and
// its takeover, instead of one each. In a takeover storm at 2,000 users
// the survivors ran several claims a second for each moved session, and
// queued them for seconds on their Redis pool (issue 20 item 3). The
// claim runs on when its callers leave (each of its steps is bounded):
// a lease it wins is held, and given back if no call comes for a TTL
// (giveBackIdle).
func (cl *cluster) takeShared(ctx context.Context, sk string) (claimResult, error) {
	if l, ok := cl.holds(sk); ok {
		return claimResult{won: true, lease: l}, nil
	}
	cl.mu.Lock()
	c, ok := cl.claiming[sk]
	if !ok {
		if cl.claiming == nil {
			cl.claiming = map[string]*sharedClaim{}
		}
		c = &sharedClaim{done: make(chan struct{})}
		cl.claiming[sk] = c
		cctx := context.WithoutCancel(ctx)
		cl.wg.Go(func() {
			res, err := cl.takeIf(cctx, sk, nil, false)
			cl.mu.Lock()
			delete(cl.claiming, sk)
			c.res, c.err = res, err
			cl.mu.Unlock()
			close(c.done)
		})
	}
	cl.mu.Unlock()
	select {
	case <-c.done:
		if c.err != nil && ok && ctx.Err() == nil {
			// The claim this call joined failed, perhaps started while
			// Redis was away and ended after it came back: the call
			// claims on its own rather than fail for it (issue 20 item
			// 6: the remote users were served again 5.3 s after Redis
			// came back, median, 1.2 s without shared claims).
			return cl.takeIf(ctx, sk, nil, false)
		}
		return c.res, c.err
	case <-ctx.Done():
		return claimResult{}, ctx.Err()
	}
}

// mayBeAlive reports whether the node of an expired lease may still hold
// its session: its liveness key (clusterorphan.go) is there, or this node
// cannot tell yet, Redis having answered it for less than a TTL (after a
// Redis restart or outage the owners renew their keys within a third of
// it). A call for such a session is forwarded to that node: alive, its
// renewal sets the lease again and it serves the call; dead, its peer port
// refuses and the session is taken over then.
func (cl *cluster) mayBeAlive(ctx context.Context, l lease) bool {
	if !cl.redisSteady() {
		return true
	}
	ctx, cancel := redisBound(ctx)
	defer cancel()
	n, err := cl.rdb.Exists(ctx, nodeKeyPrefix+l.member()).Result()
	return err != nil || n == 1
}

// redisSteady reports whether Redis has answered this node's heartbeat
// for a TTL: the other nodes' liveness keys and leases in Redis then tell
// who is alive and who owns what. Not before: Redis is away, or came
// back less than a TTL ago and the owners have not renewed their leases
// and keys yet (or this node has only just started).
func (cl *cluster) redisSteady() bool {
	since := cl.redisSteadySince.Load()
	return since != 0 && time.Since(time.Unix(0, since)) >= cl.ls.ttl
}

// mine reports whether this node holds the session's lease. While the
// renewals are current the table answers; after a gap the lease is
// checked first (checkLease), and how long the call waits for Redis
// depends on why the renewals stopped:
//
//   - Redis does not answer them, or slowly (an outage, or a node so
//     loaded its passes run late): through an outage no other node can
//     claim either, so with Redis unreachable, or slower than
//     leaseCheckWait, the table answers and users keep chatting on their
//     owner (issue 20 item 6). On a loaded node whose lease expired while
//     Redis answered the others, that serves a session another node may
//     have claimed: a known gap (docs/CLUSTER.md).
//   - This process did not run (SIGSTOP, a paused VM) since the last
//     renewal, or is only now waking (watchPauses): its leases may have
//     expired and been taken over meanwhile. The call waits for Redis's
//     answer, and without one within a third of the TTL it is refused
//     (ErrClusterRedis: 503, retried) rather than served from a log and a
//     stream another node has moved on from. A woken node did so after
//     leaseCheckWait when Redis was slow, as it is for it while the other
//     nodes take 667 sessions over (issue 20 item 3 at 2,000 users).
//
// A call that may not be served here is false with a nil error: its lease
// was found another's, and dropped.
func (cl *cluster) mine(ctx context.Context, sk string) (bool, error) {
	l, ok := cl.holds(sk)
	if !ok {
		return false, nil
	}
	renewed := cl.renewed.Load()
	if time.Since(time.Unix(0, renewed)) < cl.ls.ttl*2/3 {
		return true, nil
	}
	return cl.checkLease(ctx, sk, l, !cl.pausedSince(renewed))
}

// pauseTick is how often watchPauses looks at the clock.
const pauseTick = 100 * time.Millisecond

// watchPauses looks at the clock every pauseTick until ctx ends: a gap
// longer than a third of the lease TTL means the process did not run
// (stopped, or its VM paused), and its leases may have expired
// meanwhile (cluster.mine). A loaded node still runs this goroutine on
// time; its renewals may be late, its process is not paused.
func (cl *cluster) watchPauses(ctx context.Context) {
	t := time.NewTicker(pauseTick)
	defer t.Stop()
	last := time.Now()
	cl.pulse.Store(last.UnixNano())
	for {
		select {
		case <-ctx.Done():
			cl.pulse.Store(0)
			return
		case <-t.C:
			now := time.Now()
			if gap := now.Sub(last); gap > cl.ls.ttl/3 {
				cl.woke.Store(now.UnixNano())
				cl.logger.Info("cluster: this process did not run for a while; its calls wait for Redis to confirm their leases", "gap", gap.Round(time.Millisecond))
			}
			last = now
			cl.pulse.Store(now.UnixNano())
		}
	}
}

// pausedSince reports whether the process did not run for a third of the
// TTL after the renewal pass that started at renewed, or has not looked
// at the clock for that long (it is waking now, before watchPauses ran).
func (cl *cluster) pausedSince(renewed int64) bool {
	if cl.woke.Load() > renewed {
		return true
	}
	p := cl.pulse.Load()
	return p != 0 && time.Since(time.Unix(0, p)) > cl.ls.ttl/3
}

// leaseCheckWait bounds how long a call waits for the check of its
// session's lease (cluster.mine) through a Redis outage before it is
// served as when Redis fails. Through an outage the renewals stop, so
// every call of every user on their owner checks. With Redis stalled
// (SIGSTOP, a Redis Cluster master failing over or loading, a partition
// dropping packets) a check took 8 s, go-redis's read timeout and
// retries, and each call queued for the small pool behind the others
// (issue 20 item 6). The check itself is now bounded (redisOpTimeout, and
// a third of the TTL), but the call does not wait that long: its session
// keeps a check in flight, shared by its calls, which wait for it at most
// leaseCheckWait. A Redis that answers does so in well under a
// millisecond; 500 ms is the bound liveLookupTimeout puts on the session
// store, and a long-poll keeps most of the balancer's time.
const leaseCheckWait = 500 * time.Millisecond

// leaseCheck is one check of a session's lease in flight, shared by the
// calls waiting for it: however many calls a stalled Redis holds up,
// each session has at most one script waiting on it.
type leaseCheck struct {
	done chan struct{} // closed when held and err are set
	held bool
	err  error
}

type leaseCheckKey struct {
	sk string
	l  lease
}

// checkLease asks Redis whether lease l on sk is still this node's, and
// reports whether the call is to be served here. With ranAllAlong
// (cluster.mine: the process was not paused) it waits at most
// leaseCheckWait and the call is served unless Redis answers that another
// node has the lease;
// otherwise it waits up to a third of the TTL for Redis's answer, and
// without one returns the error. The check runs in its own goroutine, owned by cl.wg and
// ended by its context (a third of the TTL: go-redis honours it dialling,
// waiting for a pooled connection and between retries) or at most one
// read timeout later: one found lost is detached, even if no caller
// waited for the answer.
func (cl *cluster) checkLease(ctx context.Context, sk string, l lease, ranAllAlong bool) (bool, error) {
	key := leaseCheckKey{sk, l}
	cl.mu.Lock()
	c, ok := cl.checks[key]
	if !ok {
		if cl.checks == nil {
			cl.checks = map[leaseCheckKey]*leaseCheck{}
		}
		c = &leaseCheck{done: make(chan struct{})}
		cl.checks[key] = c
		cl.wg.Go(func() {
			rctx, cancel := context.WithTimeout(context.Background(), cl.ls.ttl/3)
			defer cancel()
			held, err := cl.ls.check(rctx, sk, l)
			if err == nil && !held {
				cl.lost(sk, l) // before the waiters see the answer
			}
			cl.mu.Lock()
			delete(cl.checks, key)
			c.held, c.err = held, err
			cl.mu.Unlock()
			close(c.done)
		})
	}
	cl.mu.Unlock()
	bound := cl.ls.ttl / 3
	if ranAllAlong {
		bound = leaseCheckWait
	}
	wait := time.NewTimer(bound)
	defer wait.Stop()
	select {
	case <-c.done:
		if c.err != nil && !ranAllAlong {
			return false, c.err
		}
		return c.err != nil || c.held, nil
	case <-wait.C:
		if !ranAllAlong {
			return false, fmt.Errorf("%w: the check of a lease after a pause of this process outlasted %v", ErrClusterRedis, bound)
		}
		cl.logger.Debug("cluster: the lease check outlasted its wait; served as the owner", "session", sk[:8])
		return true, nil
	case <-ctx.Done():
		return false, ctx.Err() // the caller is gone; its handler ends at once
	}
}

// acquire is ownership.acquire.
func (cl *cluster) acquire(ctx context.Context, sk string) error {
	if cl.touch(sk) {
		return nil
	}
	res, err := cl.take(ctx, sk, nil)
	if err != nil {
		return err
	}
	if !res.won {
		return fmt.Errorf("%w: node %s holds it", ErrNotOwner, res.lease.node)
	}
	return nil
}

// opened records, fenced by the lease, that the user is online, so that
// a node taking the session over reconnects them, and indexes the session
// with its PHP session id sealed, so that a node finding this one dead
// resumes it even if the user makes no call (clusterorphan.go).
func (cl *cluster) opened(ctx context.Context, sk, id string) {
	cl.markOnline(ctx, sk, true, cl.sealer.seal(sk, id))
}

// markOnline writes the online mark of sk, fenced by its lease. One that
// Redis does not take (down, or slower than the mark's 2 s: a login storm
// at 2,000 users, any login while Redis is down) is kept and written again
// after the next renewal that reaches Redis (retryMarks), for as long as
// this node holds the same lease: without it a user logged in during an
// outage was never in the orphan index, so no node resumed them when
// this one died, and a node taking their session over on a call found
// them offline and did not reconnect them. A later mark of the session
// replaces it; the marks of one session never run side by side.
func (cl *cluster) markOnline(ctx context.Context, sk string, online bool, sealed string) {
	lk := cl.markLock(sk)
	lk.Lock()
	defer lk.Unlock()
	l, ok := cl.holds(sk)
	if !ok {
		cl.setPendingMark(sk, nil)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := cl.writeMark(ctx, sk, pendingMark{lease: l, online: online, sealed: sealed}); err != nil {
		cl.logger.Warn("cluster: recording the session's state in Redis; written again when Redis answers", "session", sk[:8], "err", err)
	}
}

// writeMark writes pm, sk's mark lock held, and reports whether Redis
// took it: one Redis does not answer is kept for retryMarks (the error),
// one refused (the lease is another's) loses the session here, and
// either way an earlier kept mark is gone.
func (cl *cluster) writeMark(ctx context.Context, sk string, pm pendingMark) (bool, error) {
	done, err := cl.ls.markSealed(ctx, sk, pm.lease, pm.online, pm.sealed)
	switch {
	case err != nil:
		cl.setPendingMark(sk, &pm)
		return false, err
	case !done:
		cl.setPendingMark(sk, nil)
		cl.lost(sk, pm.lease)
	default:
		cl.setPendingMark(sk, nil)
	}
	return done, nil
}

// pendingMark is an online mark Redis did not take, to write again under
// the same lease.
type pendingMark struct {
	lease  lease
	online bool
	sealed string
}

// markLock is the lock of sk's marks, one per partition (partitionOf):
// the marks of a session never run side by side, so a mark written again
// never lands after a later one.
func (cl *cluster) markLock(sk string) *sync.Mutex {
	return &cl.markMus[partitionOf(sk)]
}

// setPendingMark keeps pm as sk's mark to write again (nil: none).
func (cl *cluster) setPendingMark(sk string, pm *pendingMark) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if pm == nil {
		delete(cl.marks, sk)
		return
	}
	if cl.marks == nil {
		cl.marks = map[string]pendingMark{}
	}
	cl.marks[sk] = *pm
}

// retryMarks writes again the marks Redis did not take, each while this
// node holds the lease it was made under (a mark of a lease since lost or
// given back is dropped), until Redis fails one: the rest wait for the
// next renewal that reaches it.
func (cl *cluster) retryMarks(ctx context.Context) {
	cl.mu.Lock()
	sks := make([]string, 0, len(cl.marks))
	for sk := range cl.marks {
		sks = append(sks, sk)
	}
	cl.mu.Unlock()
	for _, sk := range sks {
		if !cl.retryMark(ctx, sk) {
			return
		}
	}
}

// retryMark is retryMarks for sk; false when Redis did not take it.
func (cl *cluster) retryMark(ctx context.Context, sk string) bool {
	lk := cl.markLock(sk)
	lk.Lock()
	defer lk.Unlock()
	cl.mu.Lock()
	pm, ok := cl.marks[sk]
	cl.mu.Unlock()
	if !ok {
		return true // a later mark was written meanwhile
	}
	if l, held := cl.holds(sk); !held || l != pm.lease {
		cl.setPendingMark(sk, nil)
		return true
	}
	ctx, cancel := redisBound(ctx)
	defer cancel()
	done, err := cl.writeMark(ctx, sk, pm)
	if err != nil {
		return false
	}
	if done {
		cl.logger.Info("cluster: the session's state recorded in Redis after a failure", "session", sk[:8], "online", pm.online)
	}
	return true
}

// closed is ownership.closed. A stream closed because the user or PHP
// ended it marks the user offline, so no other node brings them back; one
// closed by this node's shutdown hands the lease over at once and leaves
// the user online, for the next node their calls reach.
func (cl *cluster) closed(sk, reason string) {
	switch reason {
	case "replaced", "password_changed", "moved":
		return // a new stream follows, or another node has it
	case "shutdown":
		if l, ok := cl.holds(sk); ok {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if _, err := cl.dropRelease(ctx, sk, l); err != nil {
				cl.logger.Warn("cluster: releasing a lease at shutdown", "session", sk[:8], "err", err)
			}
		}
		return
	}
	cl.markOnline(context.Background(), sk, false, "")
}

// forgotten gives the lease of a session the registry dropped back.
func (cl *cluster) forgotten(sk string) {
	cl.giveBack(context.Background(), sk)
}

// giveBack drops the lease on sk from the table and releases it in Redis,
// within ctx and redisOpTimeout; when Redis does not answer, the lease
// expires with its TTL.
func (cl *cluster) giveBack(ctx context.Context, sk string) {
	l, ok := cl.holds(sk)
	if !ok {
		return
	}
	if _, err := cl.dropRelease(ctx, sk, l); err != nil {
		cl.logger.Debug("cluster: releasing a forgotten session's lease", "session", sk[:8], "err", err)
	}
}

// dropRelease drops lease l on sk from the table and, if it was there,
// releases it in Redis, with no renewal pass in between (releaseMu). It
// reports whether l was dropped and still l in Redis, now given back
// (false with a nil error: not held here, or another node's already).
func (cl *cluster) dropRelease(ctx context.Context, sk string, l lease) (bool, error) {
	cl.releaseMu.RLock()
	defer cl.releaseMu.RUnlock()
	if !cl.drop(sk, l) {
		return false, nil
	}
	return cl.ls.release(ctx, sk, l)
}

// lost handles a lease found to be another node's: the session is
// detached from this node without a word to the Jabber server or the
// contacts.
func (cl *cluster) lost(sk string, l lease) {
	if !cl.drop(sk, l) {
		return
	}
	cl.metrics.clusterLeasesLost.Inc()
	cl.logger.Info("cluster: lease lost; session detached", "session", sk[:8])
	cl.wg.Go(func() { cl.reg.detach(sk) })
}

// gate is ownership.gate.
func (cl *cluster) gate(sk string, inner xmppconn.AuthGate) xmppconn.AuthGate {
	return fencedGate{cl: cl, sk: sk, inner: inner}
}

// fencedGate admits a login only while this node holds the session's
// lease; a reconnection first proves it in Redis, so a node woken from a
// pause does not log in over the new owner's stream.
type fencedGate struct {
	cl    *cluster
	sk    string
	inner xmppconn.AuthGate
}

func (g fencedGate) Acquire(ctx context.Context, knownGood bool) (func(xmppconn.AuthResult), error) {
	l, ok := g.cl.holds(g.sk)
	if !ok {
		return nil, ErrNotOwner
	}
	if knownGood {
		held, err := g.cl.ls.check(ctx, g.sk, l)
		if err != nil {
			return nil, err
		}
		if !held {
			g.cl.lost(g.sk, l)
			return nil, ErrNotOwner
		}
	}
	return g.inner.Acquire(ctx, knownGood)
}

// run renews the held leases every third of their TTL until ctx ends,
// each pass followed by also, if set (the hand-over's heartbeat), and
// watches for pauses of the process meanwhile (watchPauses).
func (cl *cluster) run(ctx context.Context, also func(context.Context)) {
	wctx, stop := context.WithCancel(ctx)
	var watching sync.WaitGroup
	watching.Go(func() { cl.watchPauses(wctx) })
	defer watching.Wait()
	defer stop()
	t := time.NewTicker(cl.ls.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cl.renew(ctx)
			if also != nil {
				also(ctx)
			}
		}
	}
}

// renew is one pass: the held leases are extended, and those found lost
// are detached; then a lease claimed by a call that opened no stream is
// given back after a TTL. With Redis unreachable nothing changes: no
// other node can claim either, and users keep chatting on their owner.
func (cl *cluster) renew(ctx context.Context) {
	cl.releaseMu.Lock()
	now, mono := time.Now(), monoNow()
	snap := map[string]lease{}
	var idle []string
	// While the node hands its sessions over, none is idle: each session
	// let go leaves the registry a moment before the hand-over gives its
	// lease back, and a pass in between dropped it as idle, and its
	// release then died with the pass's context as the hand-over ended
	// (the lease stayed, held by nobody, for a TTL:
	// TestClusterHandOverPipeline, 4 runs in 12). What the hand-over
	// leaves, the shutdown's stop gives back.
	handing := cl.handoff.running()
	cl.mu.Lock()
	for sk, h := range cl.held {
		if handing || !cl.idleLocked(sk, h, mono) {
			snap[sk] = h.lease(cl.ls.self)
		} else {
			idle = append(idle, sk)
		}
	}
	cl.mu.Unlock()
	// The pass ends within a third of the TTL, whatever Redis does: the
	// next one starts then (a pass outliving it would let a lease expire).
	// The renewal goes first: on a slow Redis, giving idle leases back
	// one by one took the whole third and the renewal then failed at
	// once, so the sessions' leases expired and the other nodes took
	// them over (issue 20, 2,000 users).
	rctx, cancel := context.WithTimeout(ctx, cl.ls.ttl/3)
	defer cancel()
	lost, err := cl.ls.renew(rctx, snap)
	cl.releaseMu.Unlock()
	// The leases found lost leave the table before the pass counts as a
	// renewal: with the renewals current, a call is served from the table
	// at once (mine). Woken from SIGSTOP with 667 sessions taken over, a
	// node spent 0.8 s detaching them after marking the pass, and served
	// the pages of those not yet detached from its stale logs: 142 polls,
	// each told recovered:false and given its events again (issue 20
	// item 3 at 2,000 users).
	for _, sk := range lost {
		cl.lost(sk, snap[sk])
	}
	if err != nil {
		cl.logger.Warn("cluster: renewing leases", "leases", len(snap), "err", err)
	} else {
		cl.renewed.Store(now.UnixNano())
		cl.flushKeptBack()
	}
	cl.giveBackIdle(rctx, idle)
	if cl.redisSteady() {
		// Through an outage no hint is forgotten: they route then
		// (toOwner). They are bounded (ownerHintsMax).
		cl.hints.prune(monoNow() - int64(endedHintKept))
	}
}

// idleLocked reports whether lease h on sk is idle at mono: held for a
// TTL, its session neither in the registry nor being logged in. cl.mu is
// held.
func (cl *cluster) idleLocked(sk string, h heldLease, mono int64) bool {
	return time.Duration(mono-h.since) >= cl.ls.ttl && !cl.reg.has(sk)
}

// giveBackIdle drops the leases of idle and gives them back in one round
// trip, within what ctx leaves; those Redis does not answer for expire
// with their TTL. Each is looked at again first: the pass's renewal ran
// since the list was made (up to a third of the TTL on a slow Redis),
// and a login may have started on the session meanwhile (acquire counts
// its lease as held from then). Dropped, the lease failed that login at
// its fenced gate, and the user's next call logged in again: at 2,000
// users a renewal pass did so in the middle of a takeover's login.
func (cl *cluster) giveBackIdle(ctx context.Context, idle []string) {
	if len(idle) == 0 || cl.handoff.running() {
		return
	}
	cl.releaseMu.RLock()
	defer cl.releaseMu.RUnlock()
	back := make(map[string]lease, len(idle))
	mono := monoNow()
	cl.mu.Lock()
	for _, sk := range idle {
		h, ok := cl.held[sk]
		if !ok || !cl.idleLocked(sk, h, mono) {
			continue
		}
		back[sk] = h.lease(cl.ls.self)
		delete(cl.held, sk)
		delete(cl.marks, sk)
	}
	n := len(cl.held)
	cl.mu.Unlock()
	cl.metrics.clusterLeases.Set(float64(n))
	if err := cl.ls.releaseAll(ctx, back); err != nil {
		cl.logger.Debug("cluster: giving idle leases back; they expire instead", "leases", len(back), "err", err)
	}
}

// stop gives back every lease still held (their streams are closed by
// now) and closes the Redis client.
func (cl *cluster) stop(ctx context.Context) {
	cl.warms.close()
	cl.flushMu.Lock()
	cl.flushClosed = true
	cl.flushMu.Unlock()
	cl.wg.Wait()
	cl.mu.Lock()
	held := cl.held
	cl.held, cl.marks = map[string]heldLease{}, nil
	cl.mu.Unlock()
	for sk, h := range held {
		if ctx.Err() != nil {
			break
		}
		if _, err := cl.ls.release(ctx, sk, h.lease(cl.ls.self)); err != nil && !errors.As(err, new(redis.Error)) {
			// Redis does not answer: the leases left expire with their
			// TTL, and the shutdown does not wait a bound per lease.
			cl.logger.Warn("cluster: Redis does not answer; leases left to expire", "leases", len(held), "err", err)
			break
		}
	}
	cl.rdb.Close()
	if cl.ls.beat != nil {
		cl.ls.beat.Close()
	}
	cl.peer.CloseIdleConnections()
}

// has reports whether the registry keeps a session under key sk, or is
// dialing one (a login may wait its turn longer than a lease lasts).
func (r *registry) has(sk string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.sessions[sk]
	_, dialing := r.dialing[sk]
	return ok || dialing
}

// detach drops a session whose lease another node now holds: its browser
// streams end, a last state event (offline, reason "moved") wakes its
// polls, which then reach the new owner, and its XMPP stream is detached
// silently (closed, for a stream that cannot).
func (r *registry) detach(sk string) {
	r.mu.Lock()
	s := r.sessions[sk]
	r.mu.Unlock()
	r.detachSession(s)
}

// detachStore detaches the session whose stream writes to store cs, if
// it is still in the registry (clusterSession.goneLocked).
func (r *registry) detachStore(cs *clusterSession) {
	r.mu.Lock()
	s := r.sessions[cs.sk]
	r.mu.Unlock()
	if s != nil && s.durable == cs {
		r.detachSession(s)
	}
}

// detachSession is detach's work on session s (nil: none).
func (r *registry) detachSession(s *session) {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	r.letGo(ctx, s, "moved")
	cancel()
	r.logger.Info("xmpp stream handed over to another node", "user", s.user, "session", s.short)
}

// clusterRoute decides where a call is served. On the owner it returns
// false and the handler runs here; elsewhere the call is forwarded to the
// owner and clusterRoute answers it (true). A session nobody owns is
// claimed by the node the call reached; if its user was online (the owner
// died or shut down), a server-side call reconnects them here first.
func (a *api) clusterRoute(w http.ResponseWriter, r *http.Request, c *caller, route string) (bool, error) {
	cl := a.cluster
	sk := c.key
	ctx := r.Context()
	own, err := cl.mine(ctx, sk)
	if err != nil {
		return true, err
	}
	if own {
		if rec, ok := w.(*statusRecorder); ok && a.peer {
			rec.beforeHeader = cl.tellLeaseLeft
		}
		a.reg.awaitDial(ctx, sk) // an orphan being resumed here: serve its stream
		if route == "POST /v1/connect" {
			// A connect that logs in can find the session moved while the
			// login ran (routeAgain): keep its body to send it again. Only
			// connect, once a login: the hot calls copy nothing.
			if s := a.reg.get(c.id); s == nil || !s.live() {
				if _, err := keepBody(r, maxBody); err != nil {
					return true, err
				}
			}
		}
		return false, nil
	}
	if a.peer {
		// Forwarded by a node that saw this one as the owner: serve only
		// as the owner (this incarnation's lease, or the one an earlier
		// run left), never forward again.
		l, found, err := cl.ls.owner(ctx, sk)
		if _, held := cl.holds(sk); err != nil && held {
			// This node's link to Redis is down, and the peer asked it
			// (peerAlive) before forwarding: its table answers, as mine.
			return false, nil
		}
		if err != nil {
			return true, err
		}
		if !found || l.node != cl.ls.self.node {
			return true, ErrNotOwner
		}
		if l.incarnation == cl.ls.self.incarnation {
			cl.hold(sk, l)
			return false, nil
		}
		res, err := cl.take(ctx, sk, &l)
		if err != nil {
			return true, err
		}
		if !res.won {
			return true, ErrNotOwner
		}
		return false, a.afterClaim(r, c, route, res)
	}
	body, err := keepBody(r, maxBody)
	if err != nil {
		return true, err
	}
	local, res, err := cl.toOwner(w, r, sk, body, true)
	if err != nil || !local {
		return true, err
	}
	return false, a.afterClaim(r, c, route, res)
}

// forwardUnchecked relays a call whose PHP session this node could not
// read, the store not answering (Redis away), to the session's owner as
// its hint names it (clusterhint.go; an ended one too while Redis is
// away), and reports whether the call was answered so. The owner checks
// the session itself and, holding its stream, serves it through the
// outage as it serves the calls that reach it (authenticate): without
// this, a user whose calls come through another node was refused every
// call until the store was back, while the owner's own users went on
// chatting (issue 20 item 6). A session with no hint here, or an owner
// that refuses or no longer holds it, gets the store's error, as before:
// nothing is served on a session this node has not seen checked.
func (a *api) forwardUnchecked(w http.ResponseWriter, r *http.Request, c *caller) bool {
	cl := a.cluster
	if cl == nil || a.peer {
		return false
	}
	l, ok := cl.hint(c.key)
	if !ok {
		return false
	}
	body, err := keepBody(r, maxBody)
	if err != nil {
		return false
	}
	out := cl.forward(w, r, c.key, body, l)
	switch {
	case out.refused:
		cl.metrics.clusterForwards.WithLabelValues("refused").Inc()
		cl.hints.drop(c.key)
		return false
	case out.notOwner:
		cl.metrics.clusterForwards.WithLabelValues("not_owner").Inc()
		cl.hints.drop(c.key)
		return false
	case out.err != nil:
		cl.metrics.clusterForwards.WithLabelValues("error").Inc()
		return false
	}
	cl.metrics.clusterForwards.WithLabelValues("unchecked").Inc()
	if out.leaseUntil != 0 {
		cl.hints.put(c.key, l, out.leaseUntil)
	}
	return true
}

// hint returns the owner hinted for sk that a call through this node
// would go to (toOwner): a current hint, or, while Redis does not
// answer this node's heartbeat, an ended one; none for a session this
// node holds. Once Redis answers again, an ended hint routes nothing:
// the calls claim, as without hints, and Redis names the owner again
// (while the owners renew their leases, mayBeAlive forwards to the one
// an expired lease names).
func (cl *cluster) hint(sk string) (lease, bool) {
	if _, held := cl.holds(sk); held {
		return lease{}, false
	}
	return cl.hints.get(sk, monoNow(), cl.redisSteadySince.Load() == 0)
}

// keepBody reads the request's body whole (at most limit bytes) and sets
// GetBody, so that it can be forwarded, or routed again (routeAgain). It
// returns nil for a request without a body.
func keepBody(r *http.Request, limit int) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	b, err := readCapped(r.Body, limit)
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	return b, nil
}

// toOwner sends the request to the session's owner and relays its answer
// (local false, err nil), or reports that this node is to serve it itself
// (local true). With claim, a session nobody holds, or whose owner's peer
// port refuses (its process is gone), is claimed here; without it (a BOSH
// request naming a sid, which lived on its owner only) such a request is
// served here, where no sid is known.
func (cl *cluster) toOwner(w http.ResponseWriter, r *http.Request, sk string, body []byte, claim bool) (bool, claimResult, error) {
	ctx := r.Context()
	var expected *lease
	expired := false // expected was seen expired, not refusing
	askedLast := false
	for attempt := 0; attempt < 4; attempt++ {
		var res claimResult
		if claim {
			// The owner a claim answered lately is asked again without
			// Redis, until its lease could have expired; and, while
			// Redis does not answer, the last owner known, however
			// long ago (clusterhint.go).
			l, hinted := lease{}, false
			if expected == nil {
				l, hinted = cl.hint(sk)
			}
			var err error
			switch {
			case hinted:
				res = claimResult{lease: l}
			case expected == nil:
				res, err = cl.takeShared(ctx, sk)
			default:
				res, err = cl.takeIf(ctx, sk, expected, expired)
			}
			if err != nil {
				return false, res, err
			}
		} else {
			l, found, err := cl.ls.owner(ctx, sk)
			if err == nil && !found && !askedLast {
				// No lease: it was given back, or it expired, its
				// owner's renewal late (a loaded node, Redis slow). A
				// BOSH session lives where its session was held, so the
				// last owner the meta hash names is asked before the
				// request is answered here (item-not-found), as a claim
				// asks it (takeIf): a late renewal must not end a page's
				// BOSH session.
				l, found, err = cl.ls.lastOwner(ctx, sk)
				askedLast = found
			}
			if err != nil {
				return false, res, err
			}
			res = claimResult{won: !found || l.node == cl.ls.self.node, lease: l}
		}
		if res.won {
			return true, res, nil
		}
		out := cl.forward(w, r, sk, body, res.lease)
		switch {
		case out.refused:
			// Nothing listens on the owner's peer port: its process is
			// gone, and its lease can be taken before it expires.
			cl.metrics.clusterForwards.WithLabelValues("refused").Inc()
			cl.hints.drop(sk)
			if !claim {
				return true, res, nil
			}
			expected, expired = &res.lease, false
		case out.notOwner:
			cl.metrics.clusterForwards.WithLabelValues("not_owner").Inc()
			cl.hints.drop(sk)
			if askedLast {
				return true, res, nil // the last owner has it no more either
			}
			expected, expired = nil, false
			if res.expired {
				// The node named by the expired lease does not hold the
				// session (anymore): it is free to take, while it stays
				// expired (that node, frozen during the forward, may be
				// renewing it now).
				expected, expired = &res.lease, true
			}
			// The first time at once: an owner that handed the session
			// over (a shutdown) gave its lease back before answering.
			select {
			case <-ctx.Done():
				return false, res, ctx.Err()
			case <-time.After(time.Duration(attempt) * 50 * time.Millisecond):
			}
		case out.err != nil:
			cl.metrics.clusterForwards.WithLabelValues("error").Inc()
			return false, res, out.err
		default:
			cl.metrics.clusterForwards.WithLabelValues("ok").Inc()
			if claim && out.leaseUntil != 0 {
				cl.hints.put(sk, res.lease, out.leaseUntil)
			}
			return false, res, nil
		}
	}
	return false, claimResult{}, fmt.Errorf("%w: the session's owner kept changing", ErrPeerUnavailable)
}

// routeAgain reports whether a request this node was serving is to be
// routed again, once, and rewinds its body: its session went to another
// node while this one opened its stream (the login refused by the fenced
// gate, or its first state write finding the lease another node's).
// Answered 409 not_owner, a page's BOSH client gives up, and PHP gets an
// error it cannot act on (issue 20, kill -9 at 2,000 users). Only a
// request nothing was written for, with its body kept (keepBody: a
// forwarded one, or a connect that logs in on its owner) or none, is
// routed again; on the peer listener not_owner is the answer: the
// forwarding node asks again.
func (a *api) routeAgain(err error, rec *statusRecorder, r *http.Request) bool {
	if a.cluster == nil || a.peer || rec.status != 0 || !errors.Is(err, ErrNotOwner) {
		return false
	}
	switch {
	case r.GetBody != nil:
		body, err := r.GetBody()
		if err != nil {
			return false
		}
		r.Body = body
	case r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0:
		return false // read by the handler, not kept
	}
	a.metrics.clusterForwards.WithLabelValues("rerouted").Inc()
	a.logger.Debug("cluster: the session went to another node while this one opened it; routed again")
	return true
}

// takeoverLoginTimeout bounds a takeover's login, and a session's after a
// restart, which do not end with the call that started them
// (registry.connectOwned): a caller that gives up (a load balancer's
// timeout while many users of a dead node log in again) must not cut a
// login in half, which would make the next call log in once more and the
// server replace the half-made session.
const takeoverLoginTimeout = 40 * time.Second

// afterClaim reconnects a user who was online on the node this one took
// the session from, for a server-side call other than connect and
// disconnect (which do their own). Cookie calls change no state.
func (a *api) afterClaim(r *http.Request, c *caller, route string, res claimResult) error {
	if !res.online || c.byCookie || route == "POST /v1/connect" || route == "POST /v1/disconnect" {
		return nil
	}
	if s := a.reg.get(c.id); s != nil && s.live() {
		return nil
	}
	_, _, err := a.reg.connectOwned(r.Context(), c.id, c.php, func(s *session) {
		a.logger.Info("cluster: session taken over; user reconnected here", "user", s.user, "session", s.short)
	})
	return err
}

// validateCluster checks the cluster flags, for Validate. Without
// --cluster-redis the other cluster flags must stay unset: a half-made
// cluster configuration is an error, not a silent single node.
func (c *Config) validateCluster(bad func(flagName, format string, args ...any)) {
	if c.ClusterRedis == "" {
		for _, f := range []struct{ name, value string }{
			{"cluster-node-id", c.ClusterNodeID}, {"cluster-peer-listen", c.ClusterPeerListen}, {"cluster-secret-file", c.ClusterSecretFile},
		} {
			if f.value != "" {
				bad(f.name, "needs --cluster-redis")
			}
		}
		return
	}
	if rdb, err := clusterRedis(c.ClusterRedis, 0); err != nil {
		bad("cluster-redis", "%v", err)
	} else {
		rdb.Close()
	}
	if c.ClusterNodeID == "" {
		if h, err := os.Hostname(); err == nil {
			c.ClusterNodeID = h
		}
	}
	if c.ClusterNodeID == "" || len(c.ClusterNodeID) > 64 || strings.ContainsAny(c.ClusterNodeID, "| \t\n") {
		bad("cluster-node-id", "%q must be 1..64 characters without spaces or |", c.ClusterNodeID)
	}
	if c.ClusterPeerListen == "" {
		bad("cluster-peer-listen", "required with --cluster-redis")
	} else if host, port, err := net.SplitHostPort(c.ClusterPeerListen); err != nil || port == "" || port == "0" {
		bad("cluster-peer-listen", "%q is not host:port", c.ClusterPeerListen)
	} else if ip, err := netip.ParseAddr(host); err != nil || !(ip.IsLoopback() || ip.IsPrivate()) {
		bad("cluster-peer-listen", "%q must be a loopback or private IP address (the other nodes dial it as given)", c.ClusterPeerListen)
	}
	if c.ClusterSecretFile == "" {
		bad("cluster-secret-file", "required with --cluster-redis")
	} else if _, err := readToken(c.ClusterSecretFile); err != nil {
		bad("cluster-secret-file", "%v", err)
	}
	if c.ClusterLeaseTTL < time.Second || c.ClusterLeaseTTL > time.Minute {
		bad("cluster-lease-ttl", "must be within 1s..60s, got %v", c.ClusterLeaseTTL)
	}
}

// gate is the AuthGate of a session's stream: the daemon's failure limiter,
// fenced by the session's lease in cluster mode.
func (r *registry) gate(s *session) xmppconn.AuthGate {
	g := r.auth.gate(s.user, s.cred)
	if r.own != nil {
		g = r.own.gate(s.key, g)
	}
	return g
}

// stopAll is stop on a cluster that may be nil (a single node).
func (cl *cluster) stopAll(ctx context.Context) {
	if cl != nil {
		cl.stop(ctx)
	}
}

// beforeReconnect is the BeforeReconnect of a session's stream: nil on a
// single node; in cluster mode the stream stops, detached and silent, when
// another node holds its lease.
func (r *registry) beforeReconnect(s *session) func(context.Context) error {
	if r.own == nil {
		return nil
	}
	return func(ctx context.Context) error { return r.own.stepAside(ctx, s.key) }
}

// stepAside is ownership.stepAside: a reconnection is refused only when
// Redis says another node holds the lease (the stream then stops for good
// and the session is detached); when Redis does not answer, it is put off
// ("not now": xmppconn.ErrNotAdmitted and the ErrClusterRedis), before
// its dial, so that the stream asks again at the backoff it had and the
// Jabber server sees nothing until Redis answers. The fenced AuthGate
// checks again once the stream is up, should Redis fail in between.
func (cl *cluster) stepAside(ctx context.Context, sk string) error {
	l, ok := cl.holds(sk)
	if !ok {
		return ErrNotOwner
	}
	held, err := cl.ls.check(ctx, sk, l)
	if err != nil {
		return fmt.Errorf("%w: %w", xmppconn.ErrNotAdmitted, err)
	}
	if held {
		return nil
	}
	cl.lost(sk, l)
	return ErrNotOwner
}
