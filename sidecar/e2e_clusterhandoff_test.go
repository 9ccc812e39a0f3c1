package sidecar_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// markUp puts a node back in the balancer, as its health check would once
// the node is ready again.
func (b *balancer) markUp(host string) {
	b.mu.Lock()
	delete(b.down, host)
	b.mu.Unlock()
}

// handedOver reads how many sessions a stopped node's log says it handed
// over at its shutdown.
var handedOverLine = regexp.MustCompile(`cluster: sessions handed over to the other nodes.* sessions=(\d+) taken=(\d+)`)

// TestClusterRollingSIGTERM: the three nodes are stopped with SIGTERM one
// after another, a few seconds apart, each started again, while the web
// users chat with each other and with a desktop contact through a round
// robin balancer. Each stopped node hands its sessions over instead of
// logging its users out: nothing is lost or duplicated, nobody goes
// unserved for long, and no page has to connect again. Before, a peer
// without the cluster secret cannot make a node hand anything over.
func TestClusterRollingSIGTERM(t *testing.T) {
	rig := startClusterRig(t, 3, 3*time.Second)
	lb := newBalancer(rig.api)
	users := rig.loginUsers(t, lb, "roll", clusterUsers(t, 24))
	rig.e.register(t, "rolldesk")
	for _, u := range users {
		rig.e.XMPP.Befriend(t, u.Name, "rolldesk")
	}
	desk := dialDesktop(t, rig.e.XMPP, "rolldesk")
	for _, u := range users {
		var r connectResp
		u.C.mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
		u.cursor = r.Cursor
	}
	// Hostile: calls on a peer listener without the secret are refused
	// and move nothing.
	before := rig.clusterMetric(t, "imsidecar_cluster_leases", rig.Nodes[0])
	for _, path := range []string{"/v1/events?wait=0", "/v1/disconnect", "/v1/connect"} {
		c := &apiClient{base: "http://" + rig.peers[0], sid: users[0].SID, hc: &http.Client{Timeout: 5 * time.Second}}
		method := "POST"
		if path[:10] == "/v1/events" {
			method = "GET"
		}
		if st, err := c.call(t.Context(), method, path, nil, nil); st != http.StatusUnauthorized || errCode(err) != "peer_unauthorized" {
			t.Errorf("%s %s without the secret: %d %v", method, path, st, err)
		}
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_leases", rig.Nodes[0]); got != before {
		t.Errorf("node0 held %v leases, %v after calls without the secret", before, got)
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_handoffs_total{result="detached"}`); got != 0 {
		t.Errorf("%v sessions handed over before any SIGTERM", got)
	}

	tr := trafficOf(t, "roll", users, clusterInterval(users))
	tr.start()
	tr.sendFromDesktop(desk, "rolldesk")
	time.Sleep(3 * time.Second)
	drainDesktop(desk)
	tr.fault()
	handed, taken := 0, 0
	var warmUsed float64 // sessions resumed on a prepared stream, by the nodes stopped since
	var takes float64    // takes timed (imsidecar_cluster_take_seconds), by the nodes stopped since
	var stops []time.Duration
	for i, d := range rig.Nodes {
		owned := int(rig.clusterMetric(t, "imsidecar_cluster_leases", d))
		warmUsed += rig.clusterMetric(t, `imsidecar_cluster_warm_total{result="used"}`, d)
		takes += rig.clusterMetric(t, "imsidecar_cluster_take_seconds_count", d)
		code, took := d.Signal(t, syscall.SIGTERM, 30*time.Second)
		if code != 0 {
			t.Errorf("node%d exited %d after SIGTERM", i, code)
		}
		stops = append(stops, took.Round(time.Millisecond))
		m := handedOverLine.FindStringSubmatch(d.Log())
		if m == nil {
			t.Errorf("node%d's log says nothing of a hand-over:\n%s", i, d.LogTail(30))
		} else if n, _ := strconv.Atoi(m[1]); n < owned-1 || n > owned+1 {
			// A session may arrive or leave while the node stops.
			t.Errorf("node%d handed %d sessions over, it held %d", i, n, owned)
		} else {
			k, _ := strconv.Atoi(m[2])
			handed += n
			taken += k
		}
		rig.Nodes[i] = respawn(t, d)
		lb.markUp(rig.api[i])
		time.Sleep(4 * time.Second)
	}
	tr.healed()
	time.Sleep(3 * time.Second)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	if handed == 0 {
		t.Errorf("no session was handed over")
	}
	// Make before break: the successors logged in ahead and resumed the
	// sessions handed to them on those streams, one round trip each.
	warmUsed += rig.clusterMetric(t, `imsidecar_cluster_warm_total{result="used"}`)
	if taken == 0 || warmUsed == 0 {
		t.Errorf("of %d sessions handed over, %d were taken at once by a successor, %v resumed on a prepared stream", handed, taken, warmUsed)
	}
	// Each take is timed by the node that took the session (a take the
	// stopping node gave up on is timed too, and not counted taken).
	if takes += rig.clusterMetric(t, "imsidecar_cluster_take_seconds_count"); takes < float64(taken) {
		t.Errorf("%v takes timed, %d sessions taken", takes, taken)
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_leases"); got != float64(len(users)) {
		t.Errorf("the nodes hold %v leases for %d users", got, len(users))
	}
	var gaps []time.Duration
	tr.mu.Lock()
	for _, u := range users {
		if tr.reconnects[u.Name] != 0 {
			t.Errorf("%s's page had to connect again %d times", u.Name, tr.reconnects[u.Name])
		}
		g := tr.maxGap[u.Name]
		gaps = append(gaps, g)
		if g > 10*time.Second {
			t.Errorf("%s went %v between two pages answered", u.Name, g.Round(time.Millisecond))
		}
	}
	notRecovered := 0
	for _, n := range tr.notRecovered {
		notRecovered += n
	}
	// How long a message took to reach its page: a user not served for a
	// while sees the messages sent meanwhile late.
	var late []time.Duration
	for id, m := range tr.sent {
		if at, ok := tr.gotAt[id]; ok && m.at.After(tr.faultAt) {
			late = append(late, at.Sub(m.at))
			if at.Sub(m.at) > 3*time.Second {
				t.Logf("%s to %s, sent %v after the first SIGTERM, reached its page %v later", id, m.to, m.at.Sub(tr.faultAt).Round(time.Millisecond), at.Sub(m.at).Round(time.Millisecond))
			}
		}
	}
	tr.mu.Unlock()
	slices.Sort(late)
	if len(late) == 0 {
		t.Fatalf("no message was sent and received during the rolling restart")
	}
	// The goal is 2 s (issue 20 item 5); the reduced test on a shared
	// machine under -race checks that every user is served again, and
	// reports the times (docs/CLUSTER.md).
	if worst := late[len(late)-1]; worst > 10*time.Second {
		t.Errorf("a message sent during the rolling restart reached its page after %v", worst.Round(time.Millisecond))
	}
	slices.Sort(gaps)
	flaps := unavailableSeen(desk)
	logins := 0
	for _, u := range users {
		logins += rig.e.XMPP.AuthSuccesses(u.Name)
	}
	t.Logf("rolling SIGTERM of 3 nodes, 4 s apart, %d users round robin: sent %d, received %d, lost %d, duplicated %d; %d sessions handed over, %d taken at once by their successor, %v resumed on a prepared stream; each stop took %v; longest time between two pages of a user: median %v, max %v; a message sent meanwhile reached its page after median %v, p99 %v, max %v; %d pages with recovered:false; %d logins at Prosody for %d users; the desktop contact saw %d unavailable; %s",
		len(users), row.Sent, row.Received, row.Lost, row.Dup, handed, taken, warmUsed, stops, gaps[len(gaps)/2].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond),
		late[len(late)/2].Round(time.Millisecond), late[len(late)*99/100].Round(time.Millisecond), late[len(late)-1].Round(time.Millisecond),
		notRecovered, logins, len(users), flaps, row.Note)
}

// TestClusterOrphansResumed: the users of a node that dies (kill -9) or
// freezes (SIGSTOP for several lease TTLs, then SIGCONT) make no call at
// all, their pages idle. The other nodes find the node gone by its
// liveness key, share its sessions out by the rendezvous hash and resume
// them, with no call from anyone; what the desktop contact sent meanwhile
// reaches each page when it polls later, once. A frozen node, woken, holds
// none of them again: a stale node cannot steal a session back.
func TestClusterOrphansResumed(t *testing.T) {
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"kill", syscall.SIGKILL},
		{"freeze", syscall.SIGSTOP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const ttl = 2 * time.Second
			rig := startClusterRig(t, 3, ttl)
			lb := newBalancer(rig.api)
			users := rig.loginUsers(t, lb, "orph"+tc.name[:1], 12)
			desk := "orphdesk" + tc.name[:1]
			rig.e.register(t, desk)
			for _, u := range users {
				rig.e.XMPP.Befriend(t, u.Name, desk)
			}
			d := dialDesktop(t, rig.e.XMPP, desk)
			for _, u := range users {
				var r connectResp
				u.C.mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
				u.cursor = r.Cursor
			}
			victim := rig.Nodes[0]
			survivors := rig.Nodes[1:]
			moved := int(rig.clusterMetric(t, "imsidecar_cluster_leases", victim))
			if moved == 0 {
				t.Fatalf("node0 owns no session: nothing to move")
			}
			time.Sleep(time.Second)
			drainDesktop(d)
			lb.markDown(rig.api[0])
			start := time.Now()
			if tc.sig == syscall.SIGKILL {
				victim.Signal(t, syscall.SIGKILL, 5*time.Second)
			} else if err := victim.cmdSignal(syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			// The contact writes to every user while nobody polls.
			sent := map[string]string{} // id → user
			for round := range 3 {
				for _, u := range users {
					id := fmt.Sprintf("orph-%s-%d", u.Name, round)
					if _, err := d.Conn.Send(t.Context(), xmppconn.Message{To: u.Bare, Type: "chat", ID: id, Body: "enquanto ninguém olha nº " + strconv.Itoa(round)}); err != nil {
						t.Fatal(err)
					}
					sent[id] = u.Name
				}
				time.Sleep(time.Second)
			}
			var took time.Duration
			for deadline := time.Now().Add(30 * time.Second); ; {
				if got := rig.clusterMetric(t, `imsidecar_cluster_adoptions_total{result="resumed"}`, survivors...); got >= float64(moved) {
					took = time.Since(start)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the survivors resumed %v of the %d orphans in 30 s", rig.clusterMetric(t, `imsidecar_cluster_adoptions_total{result="resumed"}`, survivors...), moved)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if tc.sig == syscall.SIGSTOP {
				if wait := 4*ttl - time.Since(start); wait > 0 {
					time.Sleep(wait)
				}
				if err := victim.cmdSignal(syscall.SIGCONT); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * ttl)
				if got := rig.clusterMetric(t, "imsidecar_cluster_leases", victim); got != 0 {
					t.Errorf("the woken node holds %v leases again", got)
				}
				if got := rig.clusterMetric(t, "imsidecar_cluster_leases_lost_total", victim); got != float64(moved) {
					t.Errorf("the woken node found %v of its %d leases lost", got, moved)
				}
			}
			if got := rig.clusterMetric(t, "imsidecar_cluster_leases", survivors...); got != float64(len(users)) {
				t.Errorf("the survivors hold %v leases for %d users", got, len(users))
			}
			if got := rig.clusterMetric(t, `imsidecar_cluster_adoptions_total{result="resumed"}`, survivors...); got != float64(moved) {
				t.Errorf("%v adoptions for the %d orphans: want one each", got, moved)
			}
			flaps := unavailableSeen(d)
			// The pages poll only now.
			got := map[string]int{}
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			notRecovered := 0
			for _, u := range users {
				want := 0
				for _, to := range sent {
					if to == u.Name {
						want++
					}
				}
				have := 0
				for have < want && ctx.Err() == nil {
					page, err := u.C.events(ctx, u.cursor, time.Second, 1000)
					if err != nil {
						t.Fatalf("%s polls after the fault: %v", u.Name, err)
					}
					if !page.Recovered {
						notRecovered++
					}
					for _, ev := range page.Events {
						if ev.Event == "message" && sent[ev.ID] == u.Name {
							got[ev.ID]++
							if got[ev.ID] == 1 {
								have++
							}
						}
					}
					u.cursor = page.Cursor
				}
			}
			lost, dup := 0, 0
			for id := range sent {
				switch n := got[id]; {
				case n == 0:
					lost++
				case n > 1:
					dup += n - 1
				}
			}
			if lost != 0 || dup != 0 {
				t.Errorf("%d messages sent while the pages were idle: %d lost, %d duplicated", len(sent), lost, dup)
			}
			logins := 0
			for _, u := range users {
				n := rig.e.XMPP.AuthSuccesses(u.Name)
				if n < 1 || n > 2 {
					t.Errorf("%s logged in %d times at Prosody", u.Name, n)
				}
				logins += n
			}
			t.Logf("%s of 1 of 3 nodes, pages idle (%d of %d users orphaned, lease TTL %v): all resumed by the survivors %v after the fault; %d messages sent meanwhile, %d lost, %d duplicated; %d pages with recovered:false; %d logins at Prosody for %d users; the desktop contact saw %d unavailable",
				tc.name, moved, len(users), ttl, took.Round(time.Millisecond), len(sent), lost, dup, notRecovered, logins, len(users), flaps)
		})
	}
}

// TestClusterSIGTERMCutsRelayedPolls: a node relays to another owner a
// long poll that came on a connection its parker holds (a pooled client
// connection whose previous poll, of a user of this node, parked and was
// answered: repoll.go serves the next request on the parker's goroutine).
// Its SIGTERM ends that relay at once, instead of holding the node's
// parker, and with it the hand-over of its own users, for the poll's
// whole wait: the poll is answered with what the owner has at once (asked
// again without waiting), as a poll held on a stopping node is, so the
// page neither loses its wait nor has to retry.
func TestClusterSIGTERMCutsRelayedPolls(t *testing.T) {
	rig := startClusterRig(t, 2, 3*time.Second)
	lb := newBalancer(rig.api)
	users := rig.loginUsers(t, lb, "relay", 2)
	home, away := users[0], users[1]
	for i, u := range users {
		var r connectResp
		rig.Nodes[i].client(u.SID).mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
		u.cursor = r.Cursor
	}
	// One connection to node0 for both users, as a pooled client has.
	pooled := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1}}
	homeC := &apiClient{base: rig.Nodes[0].URL, sid: home.SID, token: rig.Nodes[0].Token, hc: pooled}
	awayC := &apiClient{base: rig.Nodes[0].URL, sid: away.SID, token: rig.Nodes[0].Token, hc: pooled}
	// home's poll parks on node0 once nothing is left to read.
	for deadline := time.Now().Add(20 * time.Second); ; {
		start := time.Now()
		page, err := homeC.events(t.Context(), home.cursor, time.Second, 100)
		if err != nil {
			t.Fatal(err)
		}
		home.cursor = page.Cursor
		if len(page.Events) == 0 && time.Since(start) >= 900*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("home's poll never waited on node0")
		}
	}
	for { // away's events so far, read where it is served
		page, err := rig.Nodes[1].client(away.SID).events(t.Context(), away.cursor, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		away.cursor = page.Cursor
		if len(page.Events) == 0 {
			break
		}
	}
	type answer struct {
		status int
		err    error
		at     time.Time
	}
	got := make(chan answer, 1)
	go func() {
		q := "/v1/events?wait=20&cursor=" + url.QueryEscape(away.cursor)
		st, err := awayC.call(t.Context(), "GET", q, nil, nil)
		got <- answer{st, err, time.Now()}
	}()
	time.Sleep(500 * time.Millisecond) // relayed to node1, waiting there
	select {
	case a := <-got:
		t.Fatalf("the relayed poll was answered before the SIGTERM: %d %v", a.status, a.err)
	default:
	}
	code, took := rig.Nodes[0].Signal(t, syscall.SIGTERM, 30*time.Second)
	if code != 0 {
		t.Errorf("node0 exited %d", code)
	}
	var a answer
	select {
	case a = <-got:
	case <-time.After(30 * time.Second):
		t.Fatal("the relayed poll was not answered")
	}
	if took > 5*time.Second {
		t.Errorf("node0 took %v to stop, holding a relayed poll of 20 s", took.Round(time.Millisecond))
	}
	if a.status != http.StatusOK || a.err != nil {
		t.Errorf("the relayed poll cut by the SIGTERM: %d %v, want 200 with what the owner had", a.status, a.err)
	}
	t.Logf("node0 stopped in %v; the poll it relayed was answered %d %s", took.Round(time.Millisecond), a.status, errCode(a.err))
}

// TestClusterWarmHostile: the make-before-break routes of the peer
// listener (clusterwarm.go) serve only the cluster's nodes and cannot be
// used to grow a node or move a session: without the secret or with a
// wrong one nothing is prepared; a session the PHP store does not know
// costs no login; asking again for a session prepared already prepares
// nothing more; a take naming a lease the session does not have claims
// nothing, and the stream prepared for it is dropped.
func TestClusterWarmHostile(t *testing.T) {
	rig := startClusterRig(t, 2, 3*time.Second)
	lb := newBalancer(rig.api[:1]) // everything through node0
	u := rig.loginUsers(t, lb, "warmh", 1)[0]
	u.C.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	peer1 := rig.peers[1]
	post := func(sid, secret, path string) (int, error) {
		c := &apiClient{base: "http://" + peer1, sid: sid, token: secret, hc: &http.Client{Timeout: 20 * time.Second}}
		return c.call(t.Context(), "POST", path, nil, nil)
	}
	metric := func(result string) float64 {
		return rig.clusterMetric(t, `imsidecar_cluster_warm_total{result="`+result+`"}`, rig.Nodes[1])
	}
	for _, tc := range []struct {
		name, sid, secret, path string
		status                  int
		code                    string
	}{
		{"warm without the secret", u.SID, "", "/peer/warm", http.StatusUnauthorized, "peer_unauthorized"},
		{"warm with a wrong secret", u.SID, rig.Secret + "x", "/peer/warm", http.StatusUnauthorized, "peer_unauthorized"},
		{"take with a wrong secret", u.SID, rig.Secret + "x", "/peer/take?lease=x", http.StatusUnauthorized, "peer_unauthorized"},
		{"warm of an unknown session", "not-a-php-session-0123456789abcdef", rig.Secret, "/peer/warm", http.StatusUnauthorized, "session_not_found"},
		{"warm naming no session", "", rig.Secret, "/peer/warm", http.StatusUnauthorized, "session_missing"},
	} {
		if st, err := post(tc.sid, tc.secret, tc.path); st != tc.status || errCode(err) != tc.code {
			t.Errorf("%s: %d %v, want %d %s", tc.name, st, err, tc.status, tc.code)
		}
	}
	// A flood of preparations for sessions nobody has: refused after one
	// look at the PHP store each, no login.
	for i := range 50 {
		if st, _ := post(fmt.Sprintf("flood-%d-0123456789abcdefghijkl", i), rig.Secret, "/peer/warm"); st != http.StatusUnauthorized {
			t.Fatalf("preparation %d of an unknown session: %d", i, st)
		}
	}
	if got := metric("prepared"); got != 0 {
		t.Errorf("%v streams prepared for sessions nobody has", got)
	}
	// The real session, asked twice: one login ahead, one warm stream.
	for range 2 {
		if st, err := post(u.SID, rig.Secret, "/peer/warm"); st != http.StatusNoContent {
			t.Fatalf("warm of a real session: %d %v", st, err)
		}
	}
	if got := metric("prepared"); got != 1 {
		t.Errorf("%v streams prepared for one session asked twice, want 1", got)
	}
	if n := rig.e.XMPP.AuthSuccesses(u.Name); n != 2 {
		t.Errorf("%d logins at Prosody, want 2 (the stream, and the one prepared)", n)
	}
	// A take naming a lease the session does not have: node0 keeps it.
	for _, lease := range []string{"not-a-lease", "1|node9|abcdef|127.0.0.1:1"} {
		st, err := post(u.SID, rig.Secret, "/peer/take?lease="+url.QueryEscape(lease))
		if st == http.StatusNoContent {
			t.Errorf("take with lease %q succeeded", lease)
		} else if code := errCode(err); code != "bad_request" && code != "not_owner" {
			t.Errorf("take with lease %q: %d %v", lease, st, err)
		}
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_leases", rig.Nodes[0]); got != 1 {
		t.Errorf("node0 holds %v leases after the forged takes, want 1", got)
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_leases", rig.Nodes[1]); got != 0 {
		t.Errorf("node1 holds %v leases after the forged takes", got)
	}
	if got := metric("dropped"); got != 1 {
		t.Errorf("%v warm streams dropped after the refused takes, want 1", got)
	}
	if got := rig.clusterMetric(t, "imsidecar_cluster_take_seconds_count", rig.Nodes[1]); got != 0 {
		t.Errorf("%v takes timed on node1 after the forged takes, want 0", got)
	}
	// The user is still served by node0, through node1 too.
	if _, err := rig.Nodes[1].client(u.SID).roster(t.Context()); err != nil {
		t.Errorf("roster through node1 after the forged takes: %v", err)
	}
}

// TestClusterTakeAfterLogout: the take of a session handed over uses the
// PHP session its successor read when it prepared the stream, not the
// store again (one look fewer on each user's wait). A user who logged out
// in between is taken over all the same, and the successor's janitor ends
// the session at its next pass (--recheck-interval), as for any logout:
// the user is marked offline.
func TestClusterTakeAfterLogout(t *testing.T) {
	rig := startClusterRig(t, 2, 3*time.Second)
	lb := newBalancer(rig.api[:1]) // everything through node0
	u := rig.loginUsers(t, lb, "takelo", 1)[0]
	u.C.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	post := func(path string) (int, error) {
		c := &apiClient{base: "http://" + rig.peers[1], sid: u.SID, token: rig.Secret, hc: &http.Client{Timeout: 20 * time.Second}}
		return c.call(t.Context(), "POST", path, nil, nil)
	}
	if st, err := post("/peer/warm"); st != http.StatusNoContent {
		t.Fatalf("warm: %d %v", st, err)
	}
	// node0 stands still, as a node handing over does not end its
	// sessions (its janitor would close this one at once otherwise).
	if err := rig.Nodes[0].cmdSignal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer rig.Nodes[0].cmdSignal(syscall.SIGCONT)
	runPHP(t, rig.e.Store, destroySessionPHP, "E2E_SESSION_ID="+u.SID)
	rdb := rig.leasesClient(t)
	defer rdb.Close()
	base := sessionKeyBase(u.SID)
	l, err := rdb.Get(t.Context(), base+":lease").Result()
	if err != nil {
		t.Fatal(err)
	}
	if st, err := post("/peer/take?lease=" + url.QueryEscape(l)); st != http.StatusNoContent {
		t.Fatalf("take after the logout: %d %v", st, err)
	}
	if got := rig.clusterMetric(t, `imsidecar_cluster_warm_total{result="used"}`, rig.Nodes[1]); got != 1 {
		t.Errorf("%v sessions resumed on the prepared stream, want 1", got)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		on, err := rdb.HGet(t.Context(), base+":m", "on").Result()
		if err == nil && on == "0" && strings.Contains(rig.Nodes[1].Log(), "reason=logged_out") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the session taken after its user logged out is still on (on=%q %v):\n%s", on, err, rig.Nodes[1].LogTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
