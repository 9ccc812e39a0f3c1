package sidecar_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// The cluster tests run three imsidecar processes on 127.0.0.11..13 that
// share a real redis-server with an append-only file, PHP writing the
// sessions into it, and one real Prosody. The test is the load balancer.

// clusterRig is the servers and the nodes.
type clusterRig struct {
	e      *e2e                         // XMPP, Store and the secrets; e.D is node 0
	Redis  *phpsessiontest.Redis        // the standalone Redis, nil on a Redis Cluster
	RC     *phpsessiontest.RedisCluster // the Redis Cluster, nil on a standalone Redis
	Nodes  []*daemon
	Secret string
	Leases string   // the nodes' --cluster-redis
	peers  []string // each node's peer listener
	api    []string // each node's API host:port
	// retired are nodes stopped and replaced by a new run (their logs are
	// checked for secrets too).
	retired []*daemon
}

// clusterRigOptions shapes a rig.
type clusterRigOptions struct {
	Nodes int
	TTL   time.Duration // --cluster-lease-ttl
	// Leases is a --cluster-redis other than the sessions' Redis.
	Leases string
	// LeasesOf, when it answers non-empty, is node i's own --cluster-redis
	// (a node reaching Redis through a proxy the test can cut).
	LeasesOf func(i int) string
	// RedisCluster keeps the PHP sessions and the leases in a 3-master
	// Redis Cluster with an append-only file (fsync always), instead of
	// a standalone Redis with one.
	RedisCluster bool
	Prosody      xmppconntest.Options
	// Servers are Prosody and Redis already running (shared by several
	// rigs); RedisCluster and Prosody are then theirs.
	Servers *clusterServers
	Extra   []string // more flags for every node
	// FirstHost is the last byte of node0's loopback address, 127.0.0.x
	// (default 11): rigs running side by side take distinct addresses.
	FirstHost int
}

// clusterServers are a rig's Prosody and Redis.
type clusterServers struct {
	XMPP  *xmppconntest.Server
	Redis *phpsessiontest.Redis        // a standalone Redis, or
	RC    *phpsessiontest.RedisCluster // a Redis Cluster
}

// startClusterServers starts Prosody and a Redis with an append-only file
// (fsync always): a standalone one, or a 3-master Redis Cluster.
func startClusterServers(t *testing.T, redisCluster bool, prosody xmppconntest.Options) *clusterServers {
	t.Helper()
	requireBinary(t, "php", "php-cli php-redis")
	s := &clusterServers{}
	if redisCluster {
		s.RC = phpsessiontest.StartRedisCluster(t, 3, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		s.Redis = phpsessiontest.StartPersistentRedis(t)
	}
	s.XMPP = xmppconntest.StartProsody(t, prosody)
	return s
}

// startClusterRig starts Prosody, Redis and n nodes with lease TTL ttl;
// the nodes keep their leases in that Redis too unless leases names
// another (--cluster-redis).
func startClusterRig(t *testing.T, n int, ttl time.Duration, leases ...string) *clusterRig {
	t.Helper()
	o := clusterRigOptions{Nodes: n, TTL: ttl}
	if len(leases) > 0 {
		o.Leases = leases[0]
	}
	return startClusterRigWith(t, o)
}

// startClusterRigWith starts Prosody, the Redis of o and o.Nodes nodes.
func startClusterRigWith(t *testing.T, o clusterRigOptions) *clusterRig {
	t.Helper()
	srv := o.Servers
	if srv == nil {
		srv = startClusterServers(t, o.RedisCluster, o.Prosody)
	}
	rig := &clusterRig{Secret: "peer-" + randomID(), Redis: srv.Redis, RC: srv.RC}
	var store phpStore
	if rig.RC != nil {
		var seeds []string
		for _, n := range rig.RC.Nodes {
			seeds = append(seeds, n.Addr)
		}
		store = phpStore{Kind: "rediscluster", SavePath: rig.RC.Spec()}
		rig.Leases = "redis-cluster://" + strings.Join(seeds, ",")
	} else {
		store = phpStore{Kind: "redis", SavePath: "tcp://" + rig.Redis.Addr}
		rig.Leases = "redis://" + rig.Redis.Addr
	}
	if o.Leases != "" {
		rig.Leases = o.Leases
	}
	rig.e = &e2e{XMPP: srv.XMPP, Store: store}
	secretFile := filepath.Join(t.TempDir(), "cluster-secret")
	if err := os.WriteFile(secretFile, []byte(rig.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if o.FirstHost == 0 {
		o.FirstHost = 11
	}
	for i := range o.Nodes {
		host := "127.0.0." + strconv.Itoa(o.FirstHost+i)
		var api, peer string
		listeners := func() []string {
			ports := freePortsOn(t, host, 2)
			api = net.JoinHostPort(host, strconv.Itoa(ports[0]))
			peer = net.JoinHostPort(host, strconv.Itoa(ports[1]))
			return []string{"--listen=" + api, "--cluster-peer-listen=" + peer}
		}
		leases := rig.Leases
		if o.LeasesOf != nil && o.LeasesOf(i) != "" {
			leases = o.LeasesOf(i)
		}
		d := startDaemon(t, daemonOptions{Store: rig.e.Store, XMPP: rig.e.XMPP, Listeners: listeners, Extra: append([]string{
			"--cluster-redis=" + leases,
			"--cluster-node-id=node" + strconv.Itoa(i),
			"--cluster-secret-file=" + secretFile,
			"--cluster-lease-ttl=" + o.TTL.String(),
		}, o.Extra...)})
		d.URL = "http://" + api
		rig.Nodes = append(rig.Nodes, d)
		rig.peers = append(rig.peers, peer)
		rig.api = append(rig.api, api)
	}
	rig.e.D = rig.Nodes[0]
	t.Cleanup(func() {
		for _, d := range append(rig.Nodes, rig.retired...) {
			for _, s := range append(rig.e.secrets, rig.Secret) {
				if len(s) >= 6 && strings.Contains(d.Log(), s) {
					t.Errorf("a node's log contains a secret (%q...)", s[:3])
				}
			}
		}
	})
	return rig
}

// freePortsOn returns n distinct TCP ports of host that were free a
// moment ago. It holds every listener until it has them all: ports taken
// one after the other may come back equal once the first is closed (a
// node then failed to start with its API and peer listener on one port).
func freePortsOn(tb testing.TB, host string, n int) []int {
	tb.Helper()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			tb.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// balancer is the test's load balancer: round robin over the nodes'
// APIs, skipping a node whose port refused a connection; when every node
// has, it tries them all again on the next call (a node restarted).
type balancer struct {
	mu    sync.Mutex
	hosts []string
	down  map[string]bool
	next  int
	base  http.RoundTripper
	// sticky sends each PHP session to one node (by its id's hash)
	// instead of round robin.
	sticky bool
}

// balancerTimeout is how long the test's load balancer waits for an
// answer's headers, as a load balancer's timeout would (the tests poll
// with wait=1).
const balancerTimeout = 3 * time.Second

// newBalancer gives up on a node that sends no answer's headers within
// balancerTimeout.
func newBalancer(hosts []string) *balancer {
	return &balancer{hosts: hosts, down: map[string]bool{}, base: &http.Transport{MaxIdleConnsPerHost: 64, ResponseHeaderTimeout: balancerTimeout}}
}

func (b *balancer) pick(sid string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := b.next
	if b.sticky {
		f := fnv.New32a()
		f.Write([]byte(sid))
		next = int(f.Sum32() % uint32(len(b.hosts)))
	}
	for i := range b.hosts {
		h := b.hosts[(next+i)%len(b.hosts)]
		b.next++
		if !b.down[h] {
			return h, true
		}
	}
	return "", false
}

func (b *balancer) RoundTrip(req *http.Request) (*http.Response, error) {
	for {
		host, ok := b.pick(req.Header.Get("X-Session-Id"))
		if !ok {
			b.mu.Lock()
			clear(b.down)
			b.mu.Unlock()
			return nil, errors.New("balancer: every node is down")
		}
		r := req.Clone(req.Context())
		r.URL.Host, r.Host = host, host
		if req.GetBody != nil {
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			r.Body = body
		}
		resp, err := b.base.RoundTrip(r)
		if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
			b.mu.Lock()
			b.down[host] = true
			b.mu.Unlock()
			continue
		}
		return resp, err
	}
}

// client is an API client for sid through the balancer.
func (b *balancer) client(sid string) *apiClient {
	return &apiClient{base: "http://balancer", sid: sid, hc: &http.Client{Timeout: 70 * time.Second, Transport: b}}
}

// clusterMetric sums a series (name{labels} as written by /metrics, or an
// unlabelled name) over the nodes still running.
func (rig *clusterRig) clusterMetric(t *testing.T, series string, nodes ...*daemon) float64 {
	t.Helper()
	if len(nodes) == 0 {
		nodes = rig.Nodes
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	sum := 0.0
	for _, d := range nodes {
		d.mu.Lock()
		stopped := d.stopped
		d.mu.Unlock()
		if stopped {
			continue // killed or stopped by the test: nothing to ask
		}
		if m := re.FindStringSubmatch(metricsText(t, d)); m != nil {
			v, _ := strconv.ParseFloat(m[1], 64)
			sum += v
		}
	}
	return sum
}

// loginUsers registers and logs in n users named tag0.., with clients
// through the balancer.
func (rig *clusterRig) loginUsers(t *testing.T, lb *balancer, tag string, n int) []*fuser {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%d", tag, i)
	}
	rig.e.register(t, names...)
	var users []*fuser
	for _, name := range names {
		u := rig.e.login(t, name)
		u.C = lb.client(u.SID)
		users = append(users, &fuser{user: u, autoConnect: true, pause: make(chan bool)})
	}
	return users
}

// connectEverywhere sends each user's first POST /v1/connect to every node
// at once, as a round-robin balancer may when a page opens, and checks
// that all answer online with one and the same JID. At most 16 users
// connect at a time: the logins of thousands at once would only queue.
func (rig *clusterRig) connectEverywhere(t *testing.T, users []*fuser) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(users)*len(rig.Nodes))
	sem := make(chan struct{}, 16)
	for _, u := range users {
		jids := make([]string, len(rig.Nodes))
		var uwg sync.WaitGroup
		sem <- struct{}{}
		for i, d := range rig.Nodes {
			uwg.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer uwg.Done()
				var r connectResp
				st, err := d.client(u.SID).call(t.Context(), "POST", "/v1/connect", nil, &r)
				if err != nil || st != http.StatusOK || r.State != "online" {
					errs <- fmt.Errorf("%s: connect on node %d: %d %v %+v", u.Name, i, st, err, r)
					return
				}
				jids[i] = r.JID
				if i == 0 {
					u.cursor = r.Cursor
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			uwg.Wait()
			<-sem
			for _, j := range jids[1:] {
				if j != jids[0] {
					errs <- fmt.Errorf("%s: the nodes answered different JIDs: %q", u.Name, jids)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}

// TestClusterRoundRobin: every user's first connect hits the three nodes
// at once, then every call goes round robin. Each user gets one stream
// (one login at Prosody, one connect in all the nodes), and every message,
// between users and from a desktop client, reaches its page once.
func TestClusterRoundRobin(t *testing.T) {
	rig := startClusterRig(t, 3, 3*time.Second)
	lb := newBalancer(rig.api)
	users := rig.loginUsers(t, lb, "rr", clusterUsers(t, 12))
	rig.e.register(t, "rrdesk")
	desk := dialDesktop(t, rig.e.XMPP, "rrdesk")
	rig.connectEverywhere(t, users)
	if got := rig.clusterMetric(t, "imsidecar_connects_total"); got != float64(len(users)) {
		t.Errorf("the nodes opened %v streams for %d users", got, len(users))
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_leases"); got != float64(len(users)) {
		t.Errorf("the nodes hold %v leases for %d users", got, len(users))
	}
	tr := trafficOf(t, "rr", users, clusterInterval(users))
	tr.start()
	tr.sendFromDesktop(desk, "rrdesk")
	time.Sleep(5 * time.Second)
	tr.stop(30 * time.Second)
	row := tr.row(t)
	for _, u := range users {
		if n := rig.e.XMPP.AuthSuccesses(u.Name); n != 1 {
			t.Errorf("%s logged in %d times at Prosody, want 1", u.Name, n)
		}
		if tr.reconnects[u.Name] != 0 || tr.notRecovered[u.Name] != 0 {
			t.Errorf("%s: %d reconnects, %d pages with recovered:false", u.Name, tr.reconnects[u.Name], tr.notRecovered[u.Name])
		}
	}
	forwarded := rig.clusterMetric(t, `imsidecar_cluster_forwards_total{result="ok"}`)
	if forwarded == 0 {
		t.Errorf("no call was forwarded to an owner")
	}
	// A forwarded call is sent to the owner the node's hint names, not
	// after a claim of its own (clusterhint.go): a claim per call made
	// these equal.
	claims := rig.clusterMetric(t, `imsidecar_cluster_claims_total{result="lost"}`)
	if claims*2 > forwarded {
		t.Errorf("%v claims found another owner for %v calls forwarded: the forwarded calls still claim", claims, forwarded)
	}
	t.Logf("round robin, 3 nodes, %d users: sent %d, received %d, lost %d, duplicated %d; %v calls forwarded, %v claims found another owner",
		len(users), row.Sent, row.Received, row.Lost, row.Dup, forwarded, claims)
}

// clusterKinds are the Redis deployments the cluster tests run on: one
// redis-server with an append-only file (the sessions' own), and a
// 3-master Redis Cluster for the cluster's keys.
func clusterKinds() []struct {
	name   string
	leases func(t *testing.T) []string
} {
	return []struct {
		name   string
		leases func(t *testing.T) []string
	}{
		{"redis-aof", func(*testing.T) []string { return nil }},
		{"redis-cluster", func(t *testing.T) []string {
			rc := phpsessiontest.StartRedisCluster(t, 3)
			var seeds []string
			for _, n := range rc.Nodes {
				seeds = append(seeds, n.Addr)
			}
			return []string{"redis-cluster://" + strings.Join(seeds, ",")}
		}},
	}
}

// TestClusterKillOwner: a node is killed (SIGKILL) mid-conversation. Its
// users' next calls land on the other nodes, which take their sessions
// over (the dead node's peer port refuses) and resume their XMPP
// sessions and event logs from Redis: nothing is lost or duplicated
// (counted with a desktop contact writing to all), no page is told
// recovered:false, the contact sees no unavailable, and each moved user
// keeps one session at Prosody (resumed, not logged in afresh).
func TestClusterKillOwner(t *testing.T) {
	for _, kind := range clusterKinds() {
		t.Run(kind.name, func(t *testing.T) {
			rig := startClusterRig(t, 3, 3*time.Second, kind.leases(t)...)
			lb := newBalancer(rig.api)
			users, desk, moved := rig.chatting(t, lb, "kill", clusterUsers(t, 12))
			victim := rig.Nodes[0]
			tr := trafficOf(t, "kill", users, clusterInterval(users))
			tr.start()
			tr.sendFromDesktop(desk, "killdesk")
			time.Sleep(3 * time.Second)
			drainDesktop(desk)
			tr.fault()
			victim.Signal(t, syscall.SIGKILL, 5*time.Second)
			tr.healed()
			time.Sleep(6 * time.Second)
			tr.stop(60 * time.Second)
			row := tr.row(t)
			survivors := rig.Nodes[1:]
			if got := rig.clusterMetric(t, "imsidecar_cluster_leases", survivors...); got != float64(len(users)) {
				t.Errorf("the surviving nodes hold %v leases for %d users", got, len(users))
			}
			rig.checkResumed(t, tr, desk, users, moved, survivors)
			served := servedAgain(t, tr, moved)
			t.Logf("kill -9 of 1 of 3 nodes (%d of %d users moved), %s: sent %d, received %d, lost %d, duplicated %d; moved users served again after %s; first delivery after the kill %v; %s",
				len(moved), len(users), kind.name, row.Sent, row.Received, row.Lost, row.Dup, served, row.recoverText(), row.Note)
		})
	}
}

// chatting logs in n users named tag0.. through lb, befriends each with a
// desktop contact tagdesk, connects them, and returns them, the desktop
// client and the users node0 owns (at least one).
func (rig *clusterRig) chatting(t *testing.T, lb *balancer, tag string, n int) ([]*fuser, *desktop, map[string]bool) {
	t.Helper()
	users := rig.loginUsers(t, lb, tag, n)
	rig.e.register(t, tag+"desk")
	for _, u := range users {
		rig.e.XMPP.Befriend(t, u.Name, tag+"desk")
	}
	desk := dialDesktop(t, rig.e.XMPP, tag+"desk")
	for _, u := range users {
		var r connectResp
		u.C.mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
		u.cursor = r.Cursor
	}
	moved := rig.ownedBy(t, users, "node0")
	if len(moved) == 0 {
		t.Fatalf("node0 owns no session: nothing to move")
	}
	return users, desk, moved
}

// ownedBy returns the users whose session's lease in Redis names node.
func (rig *clusterRig) ownedBy(t *testing.T, users []*fuser, node string) map[string]bool {
	t.Helper()
	rdb := rig.leasesClient(t)
	defer rdb.Close()
	out := map[string]bool{}
	for _, u := range users {
		v, err := rdb.Get(t.Context(), sessionKeyBase(u.SID)+":lease").Result()
		if err != nil {
			t.Fatalf("%s's lease: %v", u.Name, err)
		}
		if f := strings.Split(v, "|"); len(f) == 4 && f[1] == node {
			out[u.Name] = true
		}
	}
	return out
}

// leasesClient is a Redis client of the nodes' --cluster-redis.
func (rig *clusterRig) leasesClient(t *testing.T) redis.UniversalClient {
	t.Helper()
	if rest, ok := strings.CutPrefix(rig.Leases, "redis-cluster://"); ok {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(rest, ",")})
	}
	o, err := redis.ParseURL(rig.Leases)
	if err != nil {
		t.Fatal(err)
	}
	return redis.NewClient(o)
}

// sessionKeyBase is what the Redis keys of the PHP session phpSID start
// with (docs/CLUSTER.md's key table).
func sessionKeyBase(phpSID string) string {
	sum := sha256.Sum256([]byte(phpSID))
	return fmt.Sprintf("ims:{p%d}:%s", int(sum[0])%64, hex.EncodeToString(sum[:]))
}

// checkResumed checks what a takeover must keep for the moved users: no
// page told recovered:false or made to connect again, no unavailable at
// the desktop contact, each moved session resumed (counted by the new
// owners, none logged in afresh) and so one session per user at Prosody:
// a first login, and one resumption's authentication per move.
func (rig *clusterRig) checkResumed(t *testing.T, tr *traffic, desk *desktop, users []*fuser, moved map[string]bool, nodes []*daemon) {
	t.Helper()
	tr.mu.Lock()
	for _, u := range users {
		if n := tr.notRecovered[u.Name]; n > 0 {
			t.Errorf("%s's page saw recovered:false %d times", u.Name, n)
		}
		if n := tr.reconnects[u.Name]; n > 0 {
			t.Errorf("%s's page had to call connect again %d times", u.Name, n)
		}
	}
	tr.mu.Unlock()
	if n := unavailableSeen(desk); n > 0 {
		t.Errorf("the desktop contact saw %d unavailable presences", n)
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_resumes_total{result="resumed"}`, nodes...); got != float64(len(moved)) {
		t.Errorf("%v sessions resumed for %d moved", got, len(moved))
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_resumes_total{result="fresh"}`, nodes...); got != 0 {
		t.Errorf("%v moved sessions logged in afresh", got)
	}
	for _, u := range users {
		want := 1
		if moved[u.Name] {
			want = 2
		}
		if n := rig.e.XMPP.AuthSuccesses(u.Name); n != want {
			t.Errorf("%s authenticated %d times at Prosody, want %d", u.Name, n, want)
		}
	}
}

// TestClusterPeerHostile: the peer listener refuses a call without the
// cluster secret or with a wrong one, before reading the session; with
// the secret, it serves only sessions its node owns, and never forwards
// them on. The nodes keep their leases in a 3-master Redis Cluster.
func TestClusterPeerHostile(t *testing.T) {
	rc := phpsessiontest.StartRedisCluster(t, 3)
	var seeds []string
	for _, n := range rc.Nodes {
		seeds = append(seeds, n.Addr)
	}
	rig := startClusterRig(t, 2, 3*time.Second, "redis-cluster://"+strings.Join(seeds, ","))
	lb := newBalancer(rig.api[:1]) // everything through node0
	users := rig.loginUsers(t, lb, "peer", 1)
	u := users[0]
	u.C.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	peer0, peer1 := rig.peers[0], rig.peers[1]
	call := func(peer, secret string) (int, error) {
		c := &apiClient{base: "http://" + peer, sid: u.SID, token: secret, hc: &http.Client{Timeout: 10 * time.Second}}
		return c.call(t.Context(), "GET", "/v1/roster", nil, nil)
	}
	for _, tc := range []struct {
		name, peer, secret string
		status             int
		code               string
	}{
		{"no secret", peer0, "", http.StatusUnauthorized, "peer_unauthorized"},
		{"wrong secret", peer0, rig.Secret + "x", http.StatusUnauthorized, "peer_unauthorized"},
		{"the API token's place, empty", peer0, " ", http.StatusUnauthorized, "peer_unauthorized"},
		{"secret, not the owner", peer1, rig.Secret, http.StatusConflict, "not_owner"},
		{"secret, the owner", peer0, rig.Secret, http.StatusOK, ""},
	} {
		st, err := call(tc.peer, tc.secret)
		if st != tc.status || errCode(err) != tc.code {
			t.Errorf("%s: %d %v, want %d %s", tc.name, st, err, tc.status, tc.code)
		}
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_peer_refused_total"); got != 3 {
		t.Errorf("peer_refused_total = %v, want 3", got)
	}
	// The owner's answer to a forwarded call tells how long its lease
	// lasts (the forwarding node's owner hint), and only there: neither
	// its own API nor a node relaying its answer passes that to PHP.
	const leaseLeftHeader = "Imsidecar-Lease-Left"
	leaseLeft := func(base, secret string) string {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/v1/roster", nil)
		req.Header.Set("X-Session-Id", u.SID)
		if secret != "" {
			req.Header.Set("Authorization", "Bearer "+secret)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s/v1/roster: %d", base, resp.StatusCode)
		}
		return resp.Header.Get(leaseLeftHeader)
	}
	if v := leaseLeft("http://"+peer0, rig.Secret); v == "" {
		t.Errorf("the owner's answer on the peer listener has no %s", leaseLeftHeader)
	} else if ms, err := strconv.Atoi(v); err != nil || ms <= 0 || ms > 3000 {
		t.Errorf("the owner told %s: %q, want 1..3000 ms", leaseLeftHeader, v)
	}
	for _, base := range []string{rig.Nodes[0].URL, rig.Nodes[1].URL} {
		if v := leaseLeft(base, ""); v != "" {
			t.Errorf("%s's API answered PHP with %s: %q", base, leaseLeftHeader, v)
		}
	}
	// The API of node1 forwards to node0; node1 opened no stream.
	c1 := rig.Nodes[1].client(u.SID)
	if _, err := c1.roster(t.Context()); err != nil {
		t.Fatalf("roster through node1: %v", err)
	}
	if n := rig.clusterMetric(t, "imsidecar_connects_total", rig.Nodes[1]); n != 0 {
		t.Errorf("node1 opened %v streams", n)
	}
	// An SSE stream opened on node1 is relayed from node0 as it goes:
	// a roster change made through node1 arrives on it as an event.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", rig.Nodes[1].URL+"/v1/events", nil)
	req.Header.Set("X-Session-Id", u.SID)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("SSE through node1: %v %v", resp, err)
	}
	defer resp.Body.Close()
	c1.mustCall(t, "PUT", "/v1/roster/"+url.PathEscape("friend@"+rig.e.XMPP.Domain), map[string]any{"name": "Friend"}, nil, http.StatusNoContent)
	sc := bufio.NewScanner(resp.Body)
	deadline := time.AfterFunc(15*time.Second, func() { resp.Body.Close() })
	defer deadline.Stop()
	for sc.Scan() {
		if sc.Text() == "event: roster" {
			break
		}
	}
	if sc.Err() != nil || sc.Text() != "event: roster" {
		t.Fatalf("no roster event on the SSE stream through node1: %v", sc.Err())
	}
	if n := rig.e.XMPP.AuthSuccesses(u.Name); n != 1 {
		t.Errorf("%d logins at Prosody, want 1", n)
	}
}

// markDown takes a node out of the balancer, as a health check would.
func (b *balancer) markDown(host string) {
	b.mu.Lock()
	b.down[host] = true
	b.mu.Unlock()
}

// TestClusterFrozenOwner: a node is frozen (SIGSTOP) for five lease TTLs,
// then woken (SIGCONT). The balancer takes it out, as its health check
// would; the other nodes see its leases expire and take its users over
// while it is still frozen, one takeover per session, resuming their XMPP
// sessions and logs; the woken node finds its leases gone, detaches
// silently and serves none of those sessions again. Nothing is lost or
// duplicated, no page is told recovered:false, no contact sees an
// unavailable.
func TestClusterFrozenOwner(t *testing.T) {
	for _, kind := range clusterKinds() {
		t.Run(kind.name, func(t *testing.T) {
			const ttl = 2 * time.Second
			rig := startClusterRig(t, 3, ttl, kind.leases(t)...)
			lb := newBalancer(rig.api)
			users, desk, moved := rig.chatting(t, lb, "stop", 9)
			frozen := rig.Nodes[0]
			tr := trafficOf(t, "stop", users, 300*time.Millisecond)
			tr.start()
			tr.sendFromDesktop(desk, "stopdesk")
			time.Sleep(2 * time.Second)
			drainDesktop(desk)
			tr.fault()
			lb.markDown(rig.api[0])
			if err := frozen.cmdSignal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(5 * ttl)
			if err := frozen.cmdSignal(syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			tr.healed()
			time.Sleep(4 * time.Second)
			tr.stop(60 * time.Second)
			row := tr.row(t)
			if got := rig.clusterMetric(t, "imsidecar_cluster_leases", frozen); got != 0 {
				t.Errorf("the woken node still holds %v leases", got)
			}
			if got := rig.clusterMetric(t, "imsidecar_cluster_leases_lost_total", frozen); got != float64(len(moved)) {
				t.Errorf("the woken node found %v of its %d leases lost", got, len(moved))
			}
			takeovers := rig.clusterMetric(t, `imsidecar_cluster_claims_total{result="takeover"}`, rig.Nodes[1:]...)
			if takeovers != float64(len(moved)) {
				t.Errorf("%v takeovers for %d sessions: want one each", takeovers, len(moved))
			}
			if got := rig.clusterMetric(t, "imsidecar_cluster_leases", rig.Nodes[1:]...); got != float64(len(users)) {
				t.Errorf("the other nodes hold %v leases for %d users", got, len(users))
			}
			rig.checkResumed(t, tr, desk, users, moved, rig.Nodes[1:])
			served := servedAgain(t, tr, moved)
			tr.mu.Lock()
			for name := range moved {
				if at, ok := tr.servedAt[name]; ok && at.Sub(tr.faultAt) >= 5*ttl {
					t.Errorf("%s was served only after the frozen node woke up (%v)", name, at.Sub(tr.faultAt))
				}
			}
			tr.mu.Unlock()
			t.Logf("SIGSTOP of 1 of 3 nodes for %v (%d of %d users moved), %s: sent %d, received %d, lost %d, duplicated %d; moved users served again after %s; %s",
				5*ttl, len(moved), len(users), kind.name, row.Sent, row.Received, row.Lost, row.Dup, served, row.Note)
		})
	}
}

// cmdSignal sends sig to the running daemon without waiting for an exit.
func (d *daemon) cmdSignal(sig syscall.Signal) error { return d.cmd.Process.Signal(sig) }

// TestClusterRestartOneNode: a one-node deployment that keeps its leases
// in Redis is killed (SIGKILL) and started again under the same node id.
// The new run takes its earlier run's sessions back on each user's next
// call and resumes their XMPP sessions and logs: nothing lost or
// duplicated, no page told recovered:false or made to connect again, no
// unavailable at the contact.
func TestClusterRestartOneNode(t *testing.T) {
	rig := startClusterRig(t, 1, 3*time.Second)
	lb := newBalancer(rig.api)
	users := rig.loginUsers(t, lb, "one", 6)
	rig.e.register(t, "onedesk")
	for _, u := range users {
		rig.e.XMPP.Befriend(t, u.Name, "onedesk")
	}
	desk := dialDesktop(t, rig.e.XMPP, "onedesk")
	for _, u := range users {
		var r connectResp
		u.C.mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
		u.cursor = r.Cursor
	}
	tr := trafficOf(t, "one", users, 300*time.Millisecond)
	tr.start()
	tr.sendFromDesktop(desk, "onedesk")
	time.Sleep(2 * time.Second)
	drainDesktop(desk)
	tr.fault()
	rig.Nodes[0].Signal(t, syscall.SIGKILL, 5*time.Second)
	d := respawn(t, rig.Nodes[0])
	rig.Nodes[0] = d // its log is checked for secrets too
	tr.healed()
	time.Sleep(4 * time.Second)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	if got := rig.clusterMetric(t, `imsidecar_cluster_claims_total{result="takeover"}`, d); got != float64(len(users)) {
		t.Errorf("the restarted node took %v sessions back, want %d", got, len(users))
	}
	moved := map[string]bool{}
	for _, u := range users {
		moved[u.Name] = true
	}
	rig.checkResumed(t, tr, desk, users, moved, []*daemon{d})
	served := servedAgain(t, tr, moved)
	t.Logf("kill -9 and restart of a single node (%d users): sent %d, received %d, lost %d, duplicated %d; served again after %s; first delivery after the restart %v; %s",
		len(users), row.Sent, row.Received, row.Lost, row.Dup, served, row.recoverText(), row.Note)
}

// servedAgain checks that each moved user was served a page within 10 s
// of the fault, and describes the times: median and slowest.
func servedAgain(t *testing.T, tr *traffic, moved map[string]bool) string {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	var ds []time.Duration
	for name := range moved {
		at, ok := tr.servedAt[name]
		if !ok {
			t.Errorf("%s was never served after the fault", name)
			continue
		}
		ds = append(ds, at.Sub(tr.faultAt))
	}
	if len(ds) == 0 {
		return "—"
	}
	slices.Sort(ds)
	if slowest := ds[len(ds)-1]; slowest > 10*time.Second {
		t.Errorf("a moved user waited %v to be served", slowest)
	}
	return fmt.Sprintf("median %v, slowest %v", ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond))
}

// drainDesktop discards the events the desktop client has received so far.
func drainDesktop(d *desktop) {
	for {
		select {
		case <-d.events:
		default:
			return
		}
	}
}

// unavailableSeen counts the unavailable presences the desktop client has
// received since the last drain: a contact's view of a presence flap.
func unavailableSeen(d *desktop) int {
	n := 0
	for {
		select {
		case ev := <-d.events:
			if p, ok := ev.(*xmppconn.Presence); ok && p.Type == "unavailable" {
				n++
			}
		default:
			return n
		}
	}
}

// TestClusterRedisDown: Redis (the sessions' and the cluster's, with an
// append-only file) is stopped for longer than the lease TTL, then started
// again, under sticky traffic. Each owner keeps serving its users from
// what it holds; when Redis is back its renewals set the expired leases
// again: no takeover, no second login, nothing lost or duplicated. A
// node that forwarded a user's calls to their owner before the outage
// goes on doing so through it, once its owner hint has ended, though it
// cannot read the PHP session (forwardUnchecked); a node that never
// forwarded that session's calls, and a session id no node knows, are
// refused 503 store_unavailable, as before.
func TestClusterRedisDown(t *testing.T) {
	const ttl = 2 * time.Second
	rig := startClusterRig(t, 3, ttl)
	lb := newBalancer(rig.api)
	lb.sticky = true
	users := rig.loginUsers(t, lb, "rd", 9)
	rig.e.register(t, "rddesk")
	desk := dialDesktop(t, rig.e.XMPP, "rddesk")
	for _, u := range users {
		var r connectResp
		u.C.mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
		u.cursor = r.Cursor
	}
	// Three users also call through the node after their owner (it
	// forwards, and keeps a hint); the node after that never sees them.
	type detour struct {
		u          *fuser
		via, never *apiClient
	}
	var detours []detour
	for i := range rig.api {
		owned := rig.ownedBy(t, users, fmt.Sprintf("node%d", i))
		for _, u := range users {
			if owned[u.Name] && len(detours) < 3 {
				detours = append(detours, detour{u,
					newBalancer([]string{rig.api[(i+1)%3]}).client(u.SID),
					newBalancer([]string{rig.api[(i+2)%3]}).client(u.SID)})
				break
			}
		}
	}
	if len(detours) == 0 {
		t.Fatal("no node owns a session: none to call through another node")
	}
	for _, d := range detours {
		d.via.mustCall(t, "GET", "/v1/roster", nil, nil, http.StatusOK)
	}
	tr := trafficOf(t, "rd", users, 300*time.Millisecond)
	tr.start()
	tr.sendFromDesktop(desk, "rddesk")
	time.Sleep(2 * time.Second)
	tr.fault()
	rig.Redis.Stop()
	time.Sleep(ttl + time.Second) // every hint has ended
	for _, d := range detours {
		if code, err := d.via.call(t.Context(), "GET", "/v1/roster", nil, nil); code != http.StatusOK {
			t.Errorf("%s's call through another node during the outage: %d %v, want it served by the owner", d.u.Name, code, err)
		}
		if code, err := d.never.call(t.Context(), "GET", "/v1/roster", nil, nil); code != http.StatusServiceUnavailable || errCode(err) != "store_unavailable" {
			t.Errorf("%s's call through a node that never saw the session: %d %v, want 503 store_unavailable", d.u.Name, code, err)
		}
	}
	stranger := newBalancer(rig.api).client(randomID())
	if code, err := stranger.call(t.Context(), "GET", "/v1/roster", nil, nil); code != http.StatusServiceUnavailable || errCode(err) != "store_unavailable" {
		t.Errorf("an unknown session id during the outage: %d %v, want 503 store_unavailable", code, err)
	}
	time.Sleep(time.Second)
	rig.Redis.Start()
	tr.healed()
	time.Sleep(3 * time.Second)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	for _, series := range []string{`imsidecar_cluster_claims_total{result="takeover"}`, "imsidecar_cluster_leases_lost_total"} {
		if got := rig.clusterMetric(t, series); got != 0 {
			t.Errorf("%s = %v after a Redis outage", series, got)
		}
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_leases"); got != float64(len(users)) {
		t.Errorf("the nodes hold %v leases for %d users", got, len(users))
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_forwards_total{result="unchecked"}`); got < float64(len(detours)) {
		t.Errorf("%v calls forwarded unchecked, want at least %d", got, len(detours))
	}
	for _, u := range users {
		if n := rig.e.XMPP.AuthSuccesses(u.Name); n != 1 {
			t.Errorf("%s logged in %d times at Prosody, want 1", u.Name, n)
		}
		if tr.reconnects[u.Name] != 0 || tr.notRecovered[u.Name] != 0 {
			t.Errorf("%s: %d reconnects, %d pages with recovered:false", u.Name, tr.reconnects[u.Name], tr.notRecovered[u.Name])
		}
	}
	t.Logf("Redis down %v (lease TTL %v), sticky traffic, 3 nodes, %d users: sent %d, received %d, lost %d, duplicated %d; %s",
		2*ttl+time.Second, ttl, len(users), row.Sent, row.Received, row.Lost, row.Dup, row.Note)
}

// clusterInterval keeps the web users' traffic at about 40 messages a
// second however many users run (one every 300 ms each for 12 users).
func clusterInterval(users []*fuser) time.Duration {
	return time.Duration(len(users)) * 25 * time.Millisecond
}

// clusterUsers is how many users a cluster test runs: def, or
// IMSIDECAR_CLUSTER_USERS for a bigger run by hand (make test keeps the
// default, a few seconds per scenario).
func clusterUsers(t *testing.T, def int) int {
	if v := os.Getenv("IMSIDECAR_CLUSTER_USERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 3 {
			t.Fatalf("IMSIDECAR_CLUSTER_USERS=%q: want a number of users, 3 or more", v)
		}
		return n
	}
	return def
}
