package sidecar_test

// The cluster fault matrix (issue 20, items 1–8): three imsidecar nodes on
// 127.0.0.11–13 or .21–23 (one for the one-node deployment) sharing a real Redis,
// PHP writing the sessions into it, one real Prosody, and the test as the
// load balancer (e2e_cluster_test.go's rig and balancer, faults_test.go's
// traffic). Every scenario runs on a standalone Redis with an append-only
// file and on a 3-master Redis Cluster with one.
//
// `go test ./sidecar` runs the reduced form (tens of users, outages of a
// few seconds); IMSIDECAR_FAULTS=full (`make faults`) runs the full one:
// 2,000 users at 500 messages a second and the outages.
// IMSIDECAR_CLUSTER_USERS and IMSIDECAR_CLUSTER_RATE change the size of
// either. The table is logged at the end (go test -v) and, with
// IMSIDECAR_FAULTS_TABLE=path, written there as Markdown.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"expressolivre.org/imsidecar/sidecar"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// clusterScale is how hard the cluster matrix pushes.
type clusterScale struct {
	Full      bool
	Users     int           // web users, chatting with each other
	Rate      float64       // their messages a second, all together
	Desk      float64       // a desktop contact's messages a second to them
	TTL       time.Duration // --cluster-lease-ttl
	Before    time.Duration // traffic before the fault
	After     time.Duration // traffic after it is healed
	Freeze    time.Duration // SIGSTOP
	Rolling   time.Duration // between two SIGTERMs of the rolling restart
	RedisDown time.Duration
	Browsers  int // BOSH pages and WebSockets (each) in the kill scenario
}

func clusterScaleFromEnv(t *testing.T) clusterScale {
	t.Helper()
	sc := clusterScale{Users: 30, Rate: 30, Desk: 10, TTL: 2 * time.Second, Before: time.Second, After: 2 * time.Second,
		Freeze: 5 * time.Second, Rolling: 2 * time.Second, RedisDown: 3 * time.Second, Browsers: 1}
	if os.Getenv("IMSIDECAR_FAULTS") == "full" {
		sc = clusterScale{Full: true, Users: 2000, Rate: 500, Desk: 50, TTL: 5 * time.Second, Before: 10 * time.Second, After: 10 * time.Second,
			Freeze: 15 * time.Second, Rolling: 30 * time.Second, RedisDown: 30 * time.Second, Browsers: 10}
	}
	sc.Users = clusterUsers(t, sc.Users)
	if v := os.Getenv("IMSIDECAR_CLUSTER_RATE"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 {
			t.Fatalf("IMSIDECAR_CLUSTER_RATE=%q: want messages a second > 0", v)
		}
		sc.Rate = f
	}
	return sc
}

// interval is the time between two messages of one web user.
func (sc clusterScale) interval() time.Duration {
	return time.Duration(float64(sc.Users) / sc.Rate * float64(time.Second))
}

// clusterRow is one line of the table.
type clusterRow struct {
	Redis, Scenario  string
	Users, Moved     int
	Sent, Lost, Dup  int
	NotRecovered     int             // pages with recovered:false
	Unavailable      int             // unavailable presences of moved users at their desktop contact
	Served           []time.Duration // each moved user's first successful poll or send after the fault
	Unserved         time.Duration   // longest wait of any user between two successful calls
	Takeovers        int             // sessions claimed by another node (or run) after the fault
	StealBacks       int             // claims beyond the first of one session
	SessionsMax      int             // sessions Prosody created (resources bound) for one PHP session, most
	LoginsMax        int             // logins at Prosody of one PHP session, most (a XEP-0198 resumption logs in too)
	Errors           int             // calls refused or failed (and retried)
	Note             string
	servedNA, failed bool
}

func (r clusterRow) servedText() string {
	if r.servedNA || len(r.Served) == 0 {
		return "—"
	}
	ds := slices.Clone(r.Served)
	slices.Sort(ds)
	return fmt.Sprintf("%v / %v", ds[len(ds)/2].Round(10*time.Millisecond), ds[len(ds)-1].Round(10*time.Millisecond))
}

// clusterScenario is one fault of the matrix.
type clusterScenario struct {
	name string
	run  func(b *clusterBed)
	// open names the part of issue 20 this scenario shows still missing:
	// such a row runs only in the full matrix (`make faults`, which
	// prints it failed), not in `go test`, until the daemon is fixed.
	open string
}

var clusterScenarios = []clusterScenario{
	{"sticky", func(b *clusterBed) { clusterSteady(b, true) }, ""},
	{"round-robin", func(b *clusterBed) { clusterSteady(b, false) }, ""},
	{"kill-9", clusterKill, ""},
	{"sigstop", clusterFreeze, ""},
	{"restart-node", func(b *clusterBed) { clusterRestart(b, 3) }, ""},
	{"restart-one-node", func(b *clusterBed) { clusterRestart(b, 1) }, ""},
	{"rolling-sigterm", clusterRolling, ""},
	{"redis-restart", func(b *clusterBed) { clusterRedisFault(b, 0) }, ""},
	{"redis-down", func(b *clusterBed) { clusterRedisFault(b, b.sc.RedisDown) }, ""},
}

// TestClusterFaults runs the cluster matrix on both Redis deployments and
// prints the table.
func TestClusterFaults(t *testing.T) {
	sc := clusterScaleFromEnv(t)
	var (
		mu   sync.Mutex
		rows = map[string]clusterRow{}
	)
	kinds := []string{"redis-aof", "redis-cluster"}
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			if !sc.Full {
				t.Parallel() // the reduced form is light: both Redis deployments at once
			}
			// One Prosody and one Redis for the rows of a deployment (each
			// row has its own nodes and users); the Redis rows restart it.
			// The server's message archive is not under test, and at 500
			// messages a second it is the machine's bottleneck (as in
			// TestSoak).
			srv := startClusterServers(t, kind == "redis-cluster", xmppconntest.Options{LogLevel: "info",
				MaxOpenFiles: uint64(4*sc.Users + 512), DisableModules: []string{"mam"}})
			for _, s := range clusterScenarios {
				if s.open != "" && !sc.Full {
					continue // listed under the table
				}
				t.Run(s.name, func(t *testing.T) {
					b := &clusterBed{t: t, sc: sc, srv: srv, firstHost: 11 + 10*slices.Index(kinds, kind)}
					b.row = clusterRow{Redis: kind, Scenario: s.name, Unserved: -1}
					defer func() { // also after a t.Fatal
						b.checkCrossSlot()
						b.row.failed = t.Failed()
						mu.Lock()
						rows[kind+"/"+s.name] = b.row
						mu.Unlock()
					}()
					s.run(b)
				})
			}
		})
	}
	t.Cleanup(func() {
		form := "reduced"
		if sc.Full {
			form = "full"
		}
		var tb strings.Builder
		fmt.Fprintf(&tb, "| Redis | scenario | users | moved | messages | lost | dup | recovered:false | unavailable (moved) | served again median / max | longest unserved | takeovers | steal-backs | Prosody sessions / logins per PHP session (max) | errors | notes |\n")
		fmt.Fprintf(&tb, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
		for _, kind := range kinds {
			for _, s := range clusterScenarios {
				r, ok := rows[kind+"/"+s.name]
				if !ok {
					continue
				}
				note := r.Note
				if r.failed {
					note = "FAILED " + note
				}
				unserved := "—"
				if r.Unserved >= 0 {
					unserved = r.Unserved.Round(10 * time.Millisecond).String()
				}
				fmt.Fprintf(&tb, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %s | %s | %d | %d | %d / %d | %d | %s |\n",
					strings.TrimPrefix(r.Redis, "redis-"), r.Scenario, r.Users, r.Moved, r.Sent, r.Lost, r.Dup, r.NotRecovered, r.Unavailable,
					r.servedText(), unserved, r.Takeovers, r.StealBacks, r.SessionsMax, r.LoginsMax, r.Errors, strings.TrimSuffix(note, "; "))
			}
		}
		for _, s := range clusterScenarios {
			if s.open != "" && !sc.Full {
				fmt.Fprintf(&tb, "\nNot run in this form (`make faults` runs it): %s — %s\n", s.name, s.open)
			}
		}
		t.Logf("cluster fault matrix (%s form: %d users, %.0f msg/s, lease TTL %v):\n%s", form, sc.Users, sc.Rate, sc.TTL, tb.String())
		if out := os.Getenv("IMSIDECAR_FAULTS_TABLE"); out != "" {
			if err := os.WriteFile(out, []byte(tb.String()), 0o644); err != nil {
				t.Errorf("writing %s: %v", out, err)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// The bed: a rig, its users, a desktop contact, the traffic

// clusterBed is one scenario's rig with its users under traffic.
type clusterBed struct {
	t         *testing.T
	sc        clusterScale
	srv       *clusterServers
	firstHost int // node0 is on 127.0.0.firstHost
	rig       *clusterRig
	lb        *balancer
	users     []*fuser
	desk      *desktop
	watch     *presenceWatch
	leases    *leaseReader
	tr        *traffic
	row       clusterRow
}

// setup starts the rig with nodes nodes, logs the users in (each a contact
// of one desktop user, who is online), and connects them: with
// everywhere, each user's first connect goes to every node at once.
func (b *clusterBed) setup(nodes int, sticky, everywhere bool) {
	t := b.t
	t.Helper()
	start := time.Now()
	b.rig = startClusterRigWith(t, clusterRigOptions{Nodes: nodes, TTL: b.sc.TTL, Servers: b.srv, FirstHost: b.firstHost})
	b.leases = newLeaseReader(t, b.rig.Leases)
	b.lb = newBalancer(b.rig.api)
	b.lb.sticky = sticky
	b.lb.base.(*http.Transport).MaxIdleConnsPerHost = b.sc.Users + 64
	tag := "c" + strings.ReplaceAll(b.row.Scenario, "-", "")
	if b.srv.RC != nil {
		tag += "rc"
	}
	names := make([]string, b.sc.Users)
	for i := range names {
		names[i] = tag + strconv.Itoa(i)
	}
	desk := tag + "desk"
	b.rig.e.register(t, append(names, desk)...)
	for _, n := range names {
		b.rig.e.XMPP.Befriend(t, n, desk)
	}
	for _, u := range b.rig.e.loginMany(t, names, nil) {
		u.C = b.lb.client(u.SID)
		b.users = append(b.users, &fuser{user: u, autoConnect: true, pause: make(chan bool)})
	}
	b.desk = dialDesktop(t, b.rig.e.XMPP, desk)
	b.watch = watchPresence(t, b.desk)
	if everywhere {
		b.rig.connectEverywhere(t, b.users)
	} else {
		b.connect(b.users)
	}
	b.watch.reset() // the unavailable answering the desktop's probes before the users connected
	b.tr = trafficOf(t, tag, b.users, b.sc.interval())
	b.row.Users = len(b.users)
	t.Logf("%d nodes, %d users logged in and connected in %v", nodes, len(b.users), time.Since(start).Round(time.Millisecond))
}

// connect connects users through a balancer like b.lb (sticky or not)
// that waits for a login as long as it takes, 16 at a time, keeping each
// one's cursor.
func (b *clusterBed) connect(users []*fuser) {
	t := b.t
	t.Helper()
	lb := newBalancer(b.rig.api)
	lb.sticky = b.lb.sticky
	lb.base = &http.Transport{MaxIdleConnsPerHost: 64}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var failed []string
	for _, u := range users {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var r connectResp
			st, err := lb.client(u.SID).call(t.Context(), "POST", "/v1/connect", nil, &r)
			if err != nil || st != http.StatusOK || r.State != "online" {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s: %d %v", u.Name, st, err))
				mu.Unlock()
				return
			}
			u.cursor = r.Cursor
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d of %d connects failed: %v", len(failed), len(users), first10(failed))
	}
}

// start runs the traffic: every web user sends and polls, and the
// desktop contact writes to the users of to (all when empty).
func (b *clusterBed) start(to []*fuser) {
	if len(to) == 0 {
		to = b.users
	}
	b.tr.start()
	b.tr.sendFromDesktopTo(b.desk, "desk", time.Duration(float64(time.Second)/b.sc.Desk), to)
}

// setupVictim is setup of 3 nodes with round robin, and returns node0's
// users, the ones its fault will move.
func (b *clusterBed) setupVictim() []*fuser {
	b.setup(3, false, false)
	moved := b.owned(0)
	if len(moved) == 0 {
		b.t.Fatal("node0 owns no session")
	}
	return moved
}

// owned returns the users whose lease names node (nodeN).
func (b *clusterBed) owned(node int) []*fuser {
	owners, _ := b.leases.read(b.t, b.users)
	var out []*fuser
	for _, u := range b.users {
		if owners[u.Name] == "node"+strconv.Itoa(node) {
			out = append(out, u)
		}
	}
	return out
}

// finish stops the traffic and fills the row: messages, recovered:false,
// the moved users' unavailable and served-again times, the longest
// unserved wait, the claims since tokBefore, logins and errors.
func (b *clusterBed) finish(moved []*fuser, tokBefore map[string]int64) {
	t := b.t
	t.Helper()
	drain := 15 * time.Second
	if b.sc.Full {
		drain = 60 * time.Second
	}
	b.tr.stop(drain)
	fr := b.tr.row(t)
	r := &b.row
	r.Sent, r.Lost, r.Dup = fr.Sent, fr.Lost, fr.Dup
	r.Moved = len(moved)
	r.Note += fr.Note
	tr := b.tr
	tr.mu.Lock()
	for _, n := range tr.notRecovered {
		r.NotRecovered += n
	}
	r.Errors = tr.refused + tr.pollErrs
	r.Unserved = 0
	for _, g := range tr.maxGap {
		r.Unserved = max(r.Unserved, g)
	}
	for _, u := range moved {
		at, ok := tr.servedAt[u.Name]
		if !ok {
			t.Errorf("%s (moved) was never served again after the fault", u.Name)
			continue
		}
		r.Served = append(r.Served, at.Sub(tr.servedFrom))
	}
	tr.mu.Unlock()
	for _, u := range moved {
		r.Unavailable += b.watch.unavailable(u.Bare)
	}
	if tokBefore != nil {
		_, tokAfter := b.leases.read(t, b.users)
		for _, u := range b.users {
			if d := int(tokAfter[u.Name] - tokBefore[u.Name]); d > 0 {
				r.Takeovers++
				r.StealBacks += d - 1
			}
		}
	}
	audit, err := os.ReadFile(b.rig.e.XMPP.AuditFile)
	if err != nil {
		t.Fatal(err)
	}
	logins, binds := map[string]int{}, map[string]int{}
	for _, m := range auditLine.FindAllStringSubmatch(string(audit), -1) {
		if m[1] == "auth-success" {
			logins[m[2]]++
		} else {
			binds[m[2]]++
		}
	}
	for _, u := range b.users {
		r.LoginsMax = max(r.LoginsMax, logins[u.Name])
		r.SessionsMax = max(r.SessionsMax, binds[u.Name])
	}
	t.Logf("%s/%s: users %d, moved %d, sent %d, lost %d, dup %d, recovered:false %d, unavailable %d, served %s, unserved %v, takeovers %d, steal-backs %d, sessions/logins max %d/%d, errors %d (%d sends refused, %d polls failed); %s",
		r.Redis, r.Scenario, r.Users, r.Moved, r.Sent, r.Lost, r.Dup, r.NotRecovered, r.Unavailable, r.servedText(), r.Unserved,
		r.Takeovers, r.StealBacks, r.SessionsMax, r.LoginsMax, r.Errors, tr.refused, tr.pollErrs, r.Note)
}

// checkCrossSlot fails the scenario if a node logged a Redis Cluster
// cross-slot error (issue 20 item 7).
func (b *clusterBed) checkCrossSlot() {
	if b.rig == nil {
		return
	}
	for _, d := range append(b.rig.Nodes, b.rig.retired...) {
		if strings.Contains(d.Log(), "CROSSSLOT") {
			b.t.Errorf("a node logged a CROSSSLOT error")
		}
	}
}

// The criteria, each a check on the row.

func (b *clusterBed) wantNoRecoveredFalse() {
	if b.row.NotRecovered != 0 {
		b.t.Errorf("criterion: no recovered:false; %d pages said recovered:false", b.row.NotRecovered)
	}
}

func (b *clusterBed) wantNoFlap(who string) {
	if b.row.Unavailable != 0 {
		b.t.Errorf("criterion: no unavailable seen by contacts for %s; the desktop contact saw %d", who, b.row.Unavailable)
	}
}

func (b *clusterBed) wantServedWithin(maxWait, median time.Duration) {
	ds := slices.Clone(b.row.Served)
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	if ds[len(ds)-1] > maxWait {
		b.t.Errorf("criterion: every affected user served again within %v; the slowest waited %v", maxWait, ds[len(ds)-1])
	}
	if median > 0 && ds[len(ds)/2] > median {
		b.t.Errorf("criterion: median served again within %v; it was %v", median, ds[len(ds)/2])
	}
}

// ---------------------------------------------------------------------------
// Scenarios

// clusterSteady (item 1): sticky or round-robin traffic; with round robin
// each session's first connect goes to all three nodes at once. One
// stream and one login per PHP session; every call reaches it.
func clusterSteady(b *clusterBed, sticky bool) {
	b.setup(3, sticky, !sticky)
	t := b.t
	if got := b.rig.clusterMetric(t, "imsidecar_connects_total"); got != float64(len(b.users)) {
		t.Errorf("criterion: one stream per PHP session; the nodes opened %v streams for %d users", got, len(b.users))
	}
	b.start(nil)
	time.Sleep(b.sc.Before + b.sc.After)
	b.finish(nil, nil)
	b.row.servedNA = true
	if b.row.SessionsMax != 1 || b.row.LoginsMax != 1 {
		t.Errorf("criterion: one Prosody session per PHP session; one had %d sessions, %d logins", b.row.SessionsMax, b.row.LoginsMax)
	}
	b.wantNoRecoveredFalse()
	if n := b.watch.unavailableAll(); n != 0 {
		t.Errorf("the desktop contact saw %d unavailable without a fault", n)
	}
	forwarded := b.rig.clusterMetric(t, `imsidecar_cluster_forwards_total{result="ok"}`)
	b.row.Note = fmt.Sprintf("%.0f calls forwarded to the owner; ", forwarded) + b.row.Note
	if !sticky && forwarded == 0 {
		t.Errorf("round robin forwarded no call to an owner")
	}
}

// clusterKill (items 2 and 8): kill -9 of the node owning a third of the
// sessions, mid-conversation with a desktop contact writing to its users,
// and browser tabs (BOSH and WebSocket) among them.
func clusterKill(b *clusterBed) {
	t, victim, moved := b.t, 0, b.setupVictim()
	tabs := b.openTabs(victim)
	_, tok := b.leases.read(t, b.users)
	b.start(moved)
	time.Sleep(b.sc.Before)
	b.watch.reset()
	b.tr.fault()
	b.rig.Nodes[victim].Signal(t, syscall.SIGKILL, 5*time.Second)
	killed := time.Now()
	b.tr.healed()
	b.reattachTabs(tabs, victim, killed)
	time.Sleep(b.sc.After)
	b.finish(moved, tok)
	b.row.Note = fmt.Sprintf("node0 of 3 killed; desktop writing to its %d users at %.0f msg/s; ", len(moved), b.sc.Desk) + b.row.Note
	b.wantNoRecoveredFalse()
	b.wantNoFlap("moved users")
	b.wantServedWithin(5*time.Second, 2*time.Second)
}

// clusterFreeze (item 3): SIGSTOP of a node, then SIGCONT. Its users are
// taken over; the woken node detaches them silently and steals back at
// most one per session.
func clusterFreeze(b *clusterBed) {
	t, victim, moved := b.t, 0, b.setupVictim()
	_, tok := b.leases.read(t, b.users)
	b.start(moved)
	time.Sleep(b.sc.Before)
	b.watch.reset()
	b.tr.fault()
	b.lb.markDown(b.rig.api[victim]) // its health check fails
	if err := b.rig.Nodes[victim].cmdSignal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(b.sc.Freeze)
	if err := b.rig.Nodes[victim].cmdSignal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	b.tr.healed()
	b.lb.markUp(b.rig.api[victim])
	time.Sleep(b.sc.After)
	b.finish(moved, tok)
	b.row.Note = fmt.Sprintf("node0 of 3 stopped %v (lease TTL %v); ", b.sc.Freeze, b.sc.TTL) + b.row.Note
	owners, after := b.leases.read(t, b.users)
	notMoved := 0
	maxClaims := 0
	for _, u := range moved {
		if after[u.Name] == tok[u.Name] {
			notMoved++
		}
		maxClaims = max(maxClaims, int(after[u.Name]-tok[u.Name]))
	}
	if notMoved > 0 {
		t.Errorf("criterion: the frozen node's users are taken over; %d of %d were not", notMoved, len(moved))
	}
	if maxClaims > 2 {
		t.Errorf("criterion: at most one steal-back per session; a session was claimed %d times", maxClaims)
	}
	woken := 0
	for _, u := range b.users {
		if owners[u.Name] == "node0" {
			woken++
		}
	}
	b.row.Note = fmt.Sprintf("the woken node owns %d sessions at the end; ", woken) + b.row.Note
	b.wantNoFlap("moved users (the woken node detaches silently)")
}

// clusterRestart (item 4): kill -9 of node0 and its restart at once under
// the same node id, in a 3-node cluster or a one-node deployment that
// keeps its state in Redis. Its users resume with no recovered:false.
func clusterRestart(b *clusterBed, nodes int) {
	b.setup(nodes, false, false)
	t := b.t
	moved := b.owned(0)
	_, tok := b.leases.read(t, b.users)
	b.start(moved)
	time.Sleep(b.sc.Before)
	b.watch.reset()
	b.tr.fault()
	b.restartNode(0, syscall.SIGKILL)
	b.tr.healed()
	time.Sleep(b.sc.After)
	b.finish(moved, tok)
	b.row.Note = fmt.Sprintf("node0 of %d killed and started again; ", nodes) + b.row.Note
	b.wantNoRecoveredFalse()
}

// restartNode stops node i with sig, starts it again with the same flags
// and puts it back in the balancer.
func (b *clusterBed) restartNode(i int, sig syscall.Signal) time.Duration {
	t := b.t
	old := b.rig.Nodes[i]
	_, took := old.Signal(t, sig, 30*time.Second)
	b.rig.retired = append(b.rig.retired, old)
	n := respawn(t, old)
	b.rig.Nodes[i] = n
	if i == 0 {
		b.rig.e.D = n
	}
	b.lb.markUp(b.rig.api[i])
	return took
}

// clusterRolling (item 5): SIGTERM of each node in turn, Rolling apart,
// each started again at once: no presence flap, nobody unserved more than
// 2 s, nothing lost.
func clusterRolling(b *clusterBed) {
	b.setup(3, false, false)
	t := b.t
	_, tok := b.leases.read(t, b.users)
	b.start(nil)
	time.Sleep(b.sc.Before)
	b.watch.reset()
	b.tr.fault()
	var exits, terms []string
	for i := range b.rig.Nodes {
		if i > 0 {
			time.Sleep(b.sc.Rolling)
		}
		terms = append(terms, time.Since(b.tr.faultAt).Round(time.Millisecond).String())
		took := b.restartNode(i, syscall.SIGTERM)
		exits = append(exits, took.Round(10*time.Millisecond).String())
	}
	b.tr.healed()
	time.Sleep(b.sc.After)
	b.finish(b.users, tok)
	t.Logf("SIGTERMs at %v after the fault; the longest wait: %s", terms, b.tr.worstWait(b.tr.faultAt))
	for i, d := range b.rig.retired {
		for _, l := range strings.Split(d.Log(), "\n") {
			if strings.Contains(l, "imsidecar stopped") || strings.Contains(l, "handed over") {
				t.Logf("node%d: %s", i, l)
			}
		}
	}
	for i, d := range append(slices.Clone(b.rig.retired), b.rig.Nodes...) {
		var took []string
		for _, m := range onlineTook.FindAllStringSubmatch(d.Log(), -1) {
			took = append(took, m[1])
		}
		t.Logf("daemon %d: xmpp online took %v", i, took)
	}
	b.row.Note = fmt.Sprintf("SIGTERM %v apart, each node back at once; exits took %s; ", b.sc.Rolling, strings.Join(exits, ", ")) + b.row.Note
	b.wantNoFlap("any user")
	if b.row.Unserved > 2*time.Second {
		t.Errorf("criterion: nobody unserved > 2 s; a user waited %v", b.row.Unserved)
	}
}

// clusterRedisFault (item 6): Redis (every master of the Redis Cluster)
// killed and started again after down (0: at once). Half the users call
// their owner (sticky) and keep chatting; the other half call another
// node, whose forwards need Redis, and are served again within 2 s of
// Redis; no takeover happens.
func clusterRedisFault(b *clusterBed, down time.Duration) {
	b.setup(3, true, false)
	t := b.t
	home, remote := b.users[:len(b.users)/2], b.users[len(b.users)/2:]
	// remote users' calls go to the node after their owner.
	rot := newBalancer(append(b.rig.api[1:len(b.rig.api):len(b.rig.api)], b.rig.api[0]))
	rot.sticky = true
	rot.base.(*http.Transport).MaxIdleConnsPerHost = b.sc.Users + 64
	for _, u := range remote {
		u.C = rot.client(u.SID)
	}
	_, tok := b.leases.read(t, b.users)
	b.start(nil)
	time.Sleep(b.sc.Before)
	homeErrs := b.homeErrors(home)
	b.watch.reset()
	b.tr.fault()
	b.redisStop()
	time.Sleep(down)
	b.redisStart()
	b.tr.healed()
	b.tr.serveClock()
	time.Sleep(b.sc.After)
	b.finish(remote, tok)
	homeErrs = b.homeErrors(home) - homeErrs
	b.row.Note = fmt.Sprintf("Redis down %v; half the users sticky to their owner (%d calls of theirs failed), half calling another node; served again = remote users, from Redis back; ", down, homeErrs) + b.row.Note
	if b.row.Takeovers != 0 {
		t.Errorf("criterion: no takeover happens; %d sessions were claimed again", b.row.Takeovers)
	}
	if homeErrs != 0 {
		t.Errorf("criterion: users on their owner keep chatting; %d of their calls failed (%d given up late: see lateGiveUps):%s", homeErrs, b.lateGiveUps(home), b.failedCalls(home))
	}
	b.wantServedWithin(2*time.Second, 0)
}

// homeErrors counts the calls of users that failed so far (sends refused,
// polls failed).
func (b *clusterBed) homeErrors(users []*fuser) int {
	b.tr.mu.Lock()
	defer b.tr.mu.Unlock()
	n := 0
	for _, u := range users {
		n += b.tr.userErrs[u.Name]
	}
	return n
}

// lateGiveUps counts the failed calls of users since the fault that the
// balancer gave up on more than half a second past its timeout
// (newBalancer): the test process itself did not run then, its timers
// firing late, on a machine whose cores the daemons, Prosody, Redis and
// the simulated pages share. Such a failure still counts; it says
// nothing of how long the daemon took (docs/FAULTS.md, item 6 at 2,000
// users: most of some runs' failures).
func (b *clusterBed) lateGiveUps(users []*fuser) int {
	b.tr.mu.Lock()
	defer b.tr.mu.Unlock()
	n := 0
	for _, u := range users {
		for _, c := range b.tr.failedAll[u.Name] {
			if c.end.After(b.tr.faultAt) && strings.Contains(c.outcome, "timeout awaiting response headers") && c.end.Sub(c.start) > balancerTimeout+500*time.Millisecond {
				n++
			}
		}
	}
	return n
}

// failedCalls lists the failed calls of users since the fault, each at
// its offset from it.
func (b *clusterBed) failedCalls(users []*fuser) string {
	b.tr.mu.Lock()
	defer b.tr.mu.Unlock()
	var s strings.Builder
	for _, u := range users {
		for _, c := range b.tr.failedAll[u.Name] {
			if c.end.After(b.tr.faultAt) {
				fmt.Fprintf(&s, " %s %s %v..%v %s;", u.Name, c.what, c.start.Sub(b.tr.faultAt).Round(time.Millisecond), c.end.Sub(b.tr.faultAt).Round(time.Millisecond), c.outcome)
			}
		}
	}
	return s.String()
}

// redisStop kills the Redis (every master of the Redis Cluster).
func (b *clusterBed) redisStop() {
	if b.rig.RC != nil {
		for _, n := range b.rig.RC.Nodes {
			n.Stop()
		}
		return
	}
	b.rig.Redis.Stop()
}

// redisStart starts it again and waits until it serves (the Redis Cluster:
// until every master says cluster_state:ok).
func (b *clusterBed) redisStart() {
	if b.rig.RC != nil {
		for _, n := range b.rig.RC.Nodes {
			n.Start()
		}
		b.rig.RC.WaitReady(30 * time.Second)
		return
	}
	b.rig.Redis.Start()
}

// ---------------------------------------------------------------------------
// Browser tabs (item 8)

// tab is a browser page of one web user, on BOSH or a WebSocket.
type tab struct {
	u     *user
	bosh  *sidecar.BOSHClient
	ws    *wsClient
	moved bool
}

// openTabs opens Browsers BOSH pages (round robin over the nodes) and as
// many WebSockets (on the node after victim, forwarded to the owner when
// it is another), each of its own user, a contact of the desktop user; the
// desktop's first message reaches each.
func (b *clusterBed) openTabs(victim int) []*tab {
	t := b.t
	n := b.sc.Browsers
	if n == 0 {
		return nil
	}
	names := make([]string, 2*n)
	for i := range names {
		names[i] = b.tr.tag + "tab" + strconv.Itoa(i)
	}
	desk := strings.TrimSuffix(b.desk.Bare, "@"+b.rig.e.XMPP.Domain)
	b.rig.e.register(t, names...)
	for _, nm := range names {
		b.rig.e.XMPP.Befriend(t, nm, desk)
	}
	lb := b.rig.browserBalancer()
	dom := b.rig.e.XMPP.Domain
	var tabs []*tab
	for i, u := range b.rig.e.loginMany(t, names, nil) {
		tb := &tab{u: u}
		if i < n {
			tb.bosh = b.rig.clusterPage(t, lb, u)
		} else {
			wsNode := b.rig.Nodes[(victim+1)%len(b.rig.Nodes)]
			tb.ws = dialClusterWS(t, wsNode.URL, wsNode.URL, u.SID)
			tb.ws.login(dom, u)
		}
		tabs = append(tabs, tb)
	}
	var us []*fuser
	for _, tb := range tabs {
		us = append(us, &fuser{user: tb.u})
	}
	owners, _ := b.leases.read(t, us)
	for _, tb := range tabs {
		tb.moved = owners[tb.u.Name] == "node"+strconv.Itoa(victim)
		b.deskSay(tb.u, "antes")
		tb.wait("antes")
	}
	return tabs
}

// deskSay sends body from the desktop contact to u.
func (b *clusterBed) deskSay(u *user, body string) {
	if _, err := b.desk.Conn.Send(b.t.Context(), xmppconn.Message{To: u.Bare, Type: "chat", Body: body}); err != nil {
		b.t.Fatal(err)
	}
}

// wait waits until the tab received body (consumed on BOSH).
func (tb *tab) wait(body string) {
	if tb.bosh != nil {
		tb.bosh.WaitFor(30*time.Second, body, contains(">"+body+"<"))
		return
	}
	tb.ws.waitFor(body, contains(">"+body+"<"))
}

// reattachTabs runs after the kill: the desktop writes 3 messages to each
// tab's user; a tab whose session the dead node owned opens a new stream
// through the balancer (BOSH) or a live node (WebSocket), as Expresso's
// messenger and Strophe do on item-not-found or a closed socket; every
// tab then gets each message once, and the desktop sees no unavailable of
// the moved ones.
//
// Each tab polls from then on as its page would, on its own goroutine: a
// live tab at once, a moved one once its new stream is open, and every
// one until all the moved tabs are back and it has its messages (30 s at
// most after that). A page keeps a request pending all the time; a tab
// left silent loses its BOSH session after the inactivity period (60 s)
// and its user's stream after --inactivity (120 s). At 2,000 users the
// moved tabs took 75 s to reattach one after another, and the first of
// them, checked only after the last, had lost its BOSH session: HTTP 404.
func (b *clusterBed) reattachTabs(tabs []*tab, victim int, killed time.Time) {
	if len(tabs) == 0 {
		return
	}
	t := b.t
	const k = 3
	for _, tb := range tabs {
		for i := range k {
			b.deskSay(tb.u, fmt.Sprintf("durante-%s-%d", tb.u.Name, i))
		}
	}
	lb := b.rig.browserBalancer()
	lb.markDown(b.rig.api[victim])
	dom := b.rig.e.XMPP.Domain
	counts := make([]map[string]int, len(tabs))
	ready := make([]chan struct{}, len(tabs))
	allIn, quit := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	// A reattachment that fails the test ends the pages before the test
	// does: none of them may use t once it has ended.
	defer func() { close(quit); wg.Wait() }()
	for i, tb := range tabs {
		ready[i] = make(chan struct{})
		if !tb.moved {
			close(ready[i])
		}
		got := map[string]int{}
		counts[i] = got
		wg.Go(func() {
			select {
			case <-ready[i]:
			case <-quit:
				return
			}
			var deadline time.Time
			for {
				select {
				case <-quit:
					return
				case <-allIn:
					if deadline.IsZero() {
						deadline = time.Now().Add(30 * time.Second)
					}
				default:
				}
				if !deadline.IsZero() && (len(got) >= k || time.Now().After(deadline)) {
					break
				}
				for _, s := range tb.received() {
					for j := range k {
						if strings.Contains(s, fmt.Sprintf(">durante-%s-%d<", tb.u.Name, j)) {
							got[strconv.Itoa(j)]++
						}
					}
				}
			}
			for _, s := range tb.received() { // late duplicates
				if strings.Contains(s, ">durante-") {
					got["late"]++
				}
			}
		})
	}
	// The moved tabs reattach one after another, so that each one's time
	// from the kill is its own new stream's and the ones before it.
	var served []time.Duration
	moved := 0
	for i, tb := range tabs {
		if !tb.moved {
			continue
		}
		moved++
		if tb.bosh != nil {
			tb.bosh = b.rig.clusterPage(t, lb, tb.u)
		} else {
			live := b.rig.Nodes[(victim+2)%len(b.rig.Nodes)]
			tb.ws = dialClusterWS(t, live.URL, live.URL, tb.u.SID)
			tb.ws.login(dom, tb.u)
		}
		served = append(served, time.Since(killed))
		close(ready[i])
	}
	close(allIn)
	wg.Wait()
	lost, dup, flap := 0, 0, 0
	for i, tb := range tabs {
		got := counts[i]
		dup += got["late"]
		delete(got, "late")
		lost += k - len(got)
		for _, c := range got {
			dup += c - 1
		}
		if len(got) < k {
			kind := "WebSocket"
			if tb.bosh != nil {
				kind = "BOSH"
			}
			t.Errorf("%s tab of %s (on the dead node: %v) got %d of %d messages", kind, tb.u.Name, tb.moved, len(got), k)
		}
		if tb.moved {
			flap += b.watch.unavailable(tb.u.Bare)
		}
	}
	b.row.Unavailable += flap
	kinds := fmt.Sprintf("%d BOSH + %d WebSocket tabs", b.sc.Browsers, b.sc.Browsers)
	st := "—"
	if len(served) > 0 {
		slices.Sort(served)
		st = fmt.Sprintf("median %v, max %v", served[len(served)/2].Round(10*time.Millisecond), served[len(served)-1].Round(10*time.Millisecond))
	}
	b.row.Note += fmt.Sprintf("%s, %d on the dead node: %d messages, %d lost, %d dup, %d unavailable, reattached one after another after %s; ",
		kinds, moved, k*len(tabs), lost, dup, flap, st)
	if lost != 0 || dup != 0 {
		t.Errorf("browser tabs: %d messages lost, %d duplicated", lost, dup)
	}
}

// received polls the tab once and returns the stanzas received since the
// last call (BOSH: one request; WebSocket: what arrived within 500 ms).
func (tb *tab) received() []string {
	if tb.bosh != nil {
		tb.bosh.Send("", "")
		got := tb.bosh.Got
		tb.bosh.Got = nil
		return got
	}
	var out []string
	timeout := time.After(500 * time.Millisecond)
	for {
		select {
		case s, ok := <-tb.ws.in:
			if !ok {
				return out
			}
			out = append(out, s)
		case <-timeout:
			return out
		}
	}
}

// ---------------------------------------------------------------------------
// What the test reads on the side: presences at the desktop, leases in Redis

// presenceWatch counts the unavailable presences the desktop contact
// receives, per bare JID, since the last reset.
type presenceWatch struct {
	mu  sync.Mutex
	gen map[string]int
}

func watchPresence(t *testing.T, d *desktop) *presenceWatch {
	w := &presenceWatch{gen: map[string]int{}}
	go func() {
		for {
			select {
			case <-t.Context().Done():
				return
			case ev := <-d.events:
				if p, ok := ev.(*xmppconn.Presence); ok && p.Type == "unavailable" {
					w.mu.Lock()
					w.gen[bareJID(p.From)]++
					w.mu.Unlock()
				}
			}
		}
	}()
	return w
}

func (w *presenceWatch) reset() {
	w.mu.Lock()
	clear(w.gen)
	w.mu.Unlock()
}

func (w *presenceWatch) unavailable(bare string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen[bare]
}

func (w *presenceWatch) unavailableAll() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.gen {
		n += c
	}
	return n
}

// leaseReader reads the sessions' leases and fencing tokens from the
// cluster's Redis, as docs/CLUSTER.md's data model lays them out.
type leaseReader struct{ rdb redis.UniversalClient }

func newLeaseReader(t *testing.T, spec string) *leaseReader {
	t.Helper()
	var rdb redis.UniversalClient
	if hosts, ok := strings.CutPrefix(spec, "redis-cluster://"); ok {
		rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(hosts, ",")})
	} else {
		o, err := redis.ParseURL(spec)
		if err != nil {
			t.Fatal(err)
		}
		rdb = redis.NewClient(o)
	}
	t.Cleanup(func() { rdb.Close() })
	return &leaseReader{rdb: rdb}
}

// leaseKey is a session's key prefix: ims:{pP}:<sha256 hex of the id>.
func leaseKey(sid string) string {
	sum := sha256.Sum256([]byte(sid))
	sk := hex.EncodeToString(sum[:])
	return fmt.Sprintf("ims:{p%d}:%s", int(sum[0])%64, sk)
}

// read returns each user's owner node ("" when no lease) and fencing
// token, retrying while Redis does not answer.
func (lr *leaseReader) read(t *testing.T, users []*fuser) (map[string]string, map[string]int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		owners, toks := map[string]string{}, map[string]int64{}
		p := lr.rdb.Pipeline()
		leases := make([]*redis.StringCmd, len(users))
		tokens := make([]*redis.StringCmd, len(users))
		for i, u := range users {
			leases[i] = p.Get(t.Context(), leaseKey(u.SID)+":lease")
			tokens[i] = p.Get(t.Context(), leaseKey(u.SID)+":tok")
		}
		_, err := p.Exec(t.Context())
		if err == nil || errors.Is(err, redis.Nil) {
			for i, u := range users {
				if f := strings.Split(leases[i].Val(), "|"); len(f) == 4 {
					owners[u.Name] = f[1]
				}
				toks[u.Name], _ = strconv.ParseInt(tokens[i].Val(), 10, 64)
			}
			return owners, toks
		}
		if time.Now().After(deadline) {
			t.Fatalf("reading the leases: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// auditLine is a login or a resource bound in the test Prosody's audit
// file (xmppconntest).
var onlineTook = regexp.MustCompile(`xmpp online.* took=(\S+)`)

var auditLine = regexp.MustCompile(`xmppconntest: (auth-success|bind) user=(\S+)`)
