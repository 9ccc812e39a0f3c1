package sidecar_test

// The soak test: many users held online with steady traffic for a while,
// failing on memory, goroutine or descriptor growth of the daemon, or on any
// lost or duplicated message. `make soak` runs it with 2,000 users for 10
// minutes; `go test` runs a small form (SOAK_USERS, SOAK_DURATION,
// SOAK_RATE and SOAK_WARMUP_RATE change it).

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// soakEventBuffer is the daemon's --event-buffer during the soak. Every
// session's log keeps that many events by design; a small buffer is filled
// during the warm-up, so the growth measured afterwards is leaks, not the
// buffer filling up.
const soakEventBuffer = 10

// minSoakJudged is the shortest steady phase whose RSS growth is judged:
// in a shorter one the heap is still climbing to its working size.
const minSoakJudged = time.Minute

// soakConfig is read from the environment.
type soakConfig struct {
	Users      int
	Duration   time.Duration
	Rate       float64 // messages per second, all users together
	WarmupRate float64
}

func soakFromEnv(tb testing.TB) soakConfig {
	tb.Helper()
	c := soakConfig{Users: 50, Duration: 15 * time.Second}
	if v := os.Getenv("SOAK_USERS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 || n%2 != 0 {
			tb.Fatalf("SOAK_USERS=%q: want an even number ≥ 2", v)
		}
		c.Users = n
	}
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			tb.Fatalf("SOAK_DURATION=%q: want a positive duration such as 10m", v)
		}
		c.Duration = d
	}
	// Each user sends a message every 30 s by default (at least 5 a
	// second in all); the warm-up runs at twice that.
	c.Rate = max(float64(c.Users)/30, 5)
	c.WarmupRate = max(c.Rate*2, 100)
	for name, p := range map[string]*float64{"SOAK_RATE": &c.Rate, "SOAK_WARMUP_RATE": &c.WarmupRate} {
		if v := os.Getenv(name); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 {
				tb.Fatalf("%s=%q: want messages per second > 0", name, v)
			}
			*p = f
		}
	}
	return c
}

// procFigures are the daemon's resource figures at one moment.
type procFigures struct {
	RSS        int64 // bytes
	FDs        int
	Goroutines int
	GCs        int // completed GC cycles (go_gc_duration_seconds_count)
}

func (p procFigures) String() string {
	return fmt.Sprintf("RSS %.1f MiB, %d fds, %d goroutines", float64(p.RSS)/(1<<20), p.FDs, p.Goroutines)
}

// measure reads the daemon's RSS and open descriptors from /proc and its
// goroutine count from go_goroutines on the ops /metrics. Descriptors and
// goroutines are the least of five readings 100 ms apart: a janitor pass
// has a session file open for a moment, and transients only add.
func (d *daemon) measure() (procFigures, error) {
	var best procFigures
	for i := range 5 {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		f, err := d.measureOnce()
		if err != nil {
			return f, err
		}
		if i == 0 {
			best = f
			continue
		}
		best.RSS, best.GCs = f.RSS, f.GCs
		best.FDs, best.Goroutines = min(best.FDs, f.FDs), min(best.Goroutines, f.Goroutines)
	}
	return best, nil
}

// metricsClient opens a connection per request, so measuring leaves no
// connection (descriptor, goroutine) behind in the daemon.
var metricsClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func (d *daemon) measureOnce() (procFigures, error) {
	pid := d.cmd.Process.Pid
	var f procFigures
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return f, fmt.Errorf("reading the daemon's /proc status: %w", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return f, fmt.Errorf("VmRSS %q: %w", v, err)
			}
			f.RSS = kb << 10
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return f, fmt.Errorf("reading the daemon's /proc fd: %w", err)
	}
	f.FDs = len(fds)
	resp, err := metricsClient.Get(d.OpsURL + "/metrics")
	if err != nil {
		return f, fmt.Errorf("GET /metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for name, p := range map[string]*int{"go_goroutines ": &f.Goroutines, "go_gc_duration_seconds_count ": &f.GCs} {
			if v, ok := strings.CutPrefix(sc.Text(), name); ok {
				n, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return f, fmt.Errorf("%s%q: %w", name, v, err)
				}
				*p = int(n)
			}
		}
	}
	if f.Goroutines == 0 || f.RSS == 0 {
		return f, fmt.Errorf("incomplete figures from the daemon: %+v", f)
	}
	return f, nil
}

// loginMany writes one Expresso session per name with a single PHP process
// (the same script as login, included once per session).
func (e *e2e) loginMany(tb testing.TB, names []string, hc *http.Client) []*user {
	tb.Helper()
	dir := tb.TempDir()
	one := filepath.Join(dir, "one.php")
	if err := os.WriteFile(one, []byte(writeSessionPHP), 0o600); err != nil {
		tb.Fatal(err)
	}
	users := make([]*user, len(names))
	batch := make([]map[string]string, len(names))
	for i, n := range names {
		u := &user{Name: n, Password: n + "-pw", SID: randomID(), Bare: e.XMPP.JID(n)}
		u.C = &apiClient{base: e.D.URL, sid: u.SID, token: e.D.Token, hc: hc}
		users[i] = u
		batch[i] = map[string]string{"id": u.SID, "user": n, "password": u.Password, "fullname": "Soak " + n}
		e.secrets = append(e.secrets, u.SID, u.Password)
	}
	raw, _ := json.Marshal(batch)
	list := filepath.Join(dir, "batch.json")
	if err := os.WriteFile(list, raw, 0o600); err != nil {
		tb.Fatal(err)
	}
	runPHP(tb, e.Store, `<?php
foreach (json_decode(file_get_contents(getenv('E2E_BATCH')), true, 8, JSON_THROW_ON_ERROR) as $s) {
    putenv('E2E_SESSION=' . json_encode($s));
    include getenv('E2E_ONE');
}
`, "E2E_BATCH="+list, "E2E_ONE="+one)
	return users
}

// soakLedger counts every message sent and every delivery seen.
type soakLedger struct {
	mu        sync.Mutex
	sent      map[string]bool // body → sent
	received  map[string]int  // body → deliveries
	sendErrs  atomic.Int64
	unrecov   atomic.Int64 // pages with recovered=false after the first
	pollErrs  atomic.Int64
	delivered chan struct{} // signalled on each new delivery
}

func (l *soakLedger) counts() (sent, unique, dups int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for b, n := range l.received {
		if l.sent[b] {
			unique++
		}
		dups += n - 1
	}
	return len(l.sent), unique, dups
}

// soakIdleAnswerers is the sidecar's maxIdleAnswerers (boshpark.go).
const soakIdleAnswerers = 16

// TestSoak holds the users online with steady traffic between pairs and
// checks that nothing is lost or duplicated, that the daemon's goroutines
// (beyond the idle answerers, which come and go) and descriptors do not
// grow between the end of the warm-up and the end of
// the run (both measured with the traffic paused and every poll parked, so
// in-flight requests do not blur them), and that its peak RSS grows by at
// most 5 % from the first third of the run to the last.
func TestSoak(t *testing.T) {
	cfg := soakFromEnv(t)
	// Per user one c2s descriptor in Prosody, plus room for its listeners
	// and storage: the small form fits in a 1024 soft limit untouched.
	// Without MAM: archiving every message to Prosody's file storage makes
	// the server, not the sidecar, the bottleneck on a small machine.
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{LogLevel: "warn", MaxOpenFiles: uint64(cfg.Users + 512),
		DisableModules: []string{"mam"}})
	dir := filepath.Join(t.TempDir(), "sessions")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e := &e2e{XMPP: srv, Store: phpStore{Kind: "files", SavePath: dir}}
	e.D = startDaemon(t, daemonOptions{Store: e.Store, XMPP: srv, RecheckInterval: 5 * time.Second,
		Extra: []string{"--event-buffer=" + strconv.Itoa(soakEventBuffer)}})
	t.Cleanup(func() { e.checkLogs(t) })

	start := time.Now()
	names := make([]string, cfg.Users)
	pw := map[string]string{}
	for i := range names {
		names[i] = "soak" + strconv.Itoa(i)
		pw[names[i]] = names[i] + "-pw"
	}
	srv.RegisterMany(t, pw)
	// Long polls hold one connection per user; the senders share a pool.
	pollHC := &http.Client{Timeout: 70 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: cfg.Users + 16, DialContext: (&net.Dialer{}).DialContext}}
	sendHC := &http.Client{Timeout: 70 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64, DialContext: (&net.Dialer{}).DialContext}}
	defer pollHC.CloseIdleConnections()
	defer sendHC.CloseIdleConnections()
	users := e.loginMany(t, names, sendHC)
	t.Logf("registered and logged in %d users in %v", cfg.Users, time.Since(start).Round(time.Millisecond))

	// Connect everyone, 32 at a time.
	start = time.Now()
	cursors := make([]string, len(users))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	var connErrs atomic.Int64
	for i, u := range users {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var r connectResp
			if st, err := u.C.call(t.Context(), "POST", "/v1/connect", nil, &r); err != nil || st != http.StatusOK || r.State != "online" {
				if connErrs.Add(1) <= 5 {
					t.Errorf("%s: connect: %d %v %+v", u.Name, st, err, r)
				}
				return
			}
			cursors[i] = r.Cursor
		})
	}
	wg.Wait()
	if connErrs.Load() > 0 {
		t.Fatalf("%d of %d connects failed", connErrs.Load(), len(users))
	}
	t.Logf("connected %d users in %v", len(users), time.Since(start).Round(time.Millisecond))

	// Every user long-polls until the end, recording the soak messages.
	ledger := &soakLedger{sent: map[string]bool{}, received: map[string]int{}, delivered: make(chan struct{}, 1)}
	pollCtx, stopPolls := context.WithCancel(context.Background())
	var polls sync.WaitGroup
	defer func() { stopPolls(); polls.Wait() }()
	for i, u := range users {
		pc := &apiClient{base: u.C.base, sid: u.SID, token: u.C.token, hc: pollHC}
		polls.Go(func() {
			cur, first := cursors[i], true
			for pollCtx.Err() == nil {
				page, err := pc.events(pollCtx, cur, 25*time.Second, 0)
				if err != nil {
					if pollCtx.Err() == nil {
						ledger.pollErrs.Add(1)
						time.Sleep(time.Second)
					}
					continue
				}
				if !page.Recovered && !first {
					ledger.unrecov.Add(1)
				}
				first = false
				cur = page.Cursor
				for _, ev := range page.Events {
					if ev.Event != "message" || !strings.HasPrefix(ev.Body, "soak ") {
						continue
					}
					ledger.mu.Lock()
					ledger.received[ev.Body]++
					ledger.mu.Unlock()
					select {
					case ledger.delivered <- struct{}{}:
					default:
					}
				}
			}
		})
	}

	// send runs n messages at rate per second, user i writing to its pair
	// i^1, round-robin, through 64 concurrent senders.
	var seq atomic.Int64
	send := func(n int, rate float64) {
		jobs := make(chan int)
		var senders sync.WaitGroup
		for range 64 {
			senders.Go(func() {
				for i := range jobs {
					body := fmt.Sprintf("soak %d", seq.Add(1))
					ledger.mu.Lock()
					ledger.sent[body] = true
					ledger.mu.Unlock()
					var r struct{ ID string }
					st, err := users[i].C.call(t.Context(), "POST", "/v1/messages",
						map[string]any{"to": users[i^1].Bare, "body": body, "type": "chat"}, &r)
					if err != nil || st != http.StatusAccepted {
						if ledger.sendErrs.Add(1) <= 5 {
							t.Errorf("%s: send: %d %v", users[i].Name, st, err)
						}
					}
				}
			})
		}
		// On a schedule rather than a ticker, which drops ticks when late.
		start, every := time.Now(), time.Duration(float64(time.Second)/rate)
		for k := range n {
			time.Sleep(time.Until(start.Add(time.Duration(k) * every)))
			jobs <- k % len(users)
		}
		close(jobs)
		senders.Wait()
	}
	// settle waits until every sent message was delivered, or until none
	// arrived for 30 s.
	settle := func() {
		idle := time.NewTimer(30 * time.Second)
		defer idle.Stop()
		for {
			sent, unique, _ := ledger.counts()
			if unique >= sent {
				return
			}
			select {
			case <-ledger.delivered:
				idle.Reset(30 * time.Second)
			case <-time.After(time.Second):
			case <-idle.C:
				return
			}
		}
	}
	// quiet measures once the traffic has drained and the polls are parked.
	quiet := func() procFigures {
		settle()
		// Only the parked polls keep connections: drop the senders' idle
		// ones, which the server would otherwise close at its IdleTimeout
		// at any moment.
		sendHC.CloseIdleConnections()
		time.Sleep(3 * time.Second)
		f, err := e.D.measure()
		if err != nil {
			t.Fatal(err)
		}
		return f
	}

	// Warm-up: enough messages to fill every session's event log.
	start = time.Now()
	warm := len(users) * (soakEventBuffer + 2)
	send(warm, cfg.WarmupRate)
	before := quiet()
	ws, wu, _ := ledger.counts()
	t.Logf("warm-up: %d messages at %.0f/s, %d of %d delivered %v after the start; daemon %v", warm, cfg.WarmupRate, wu, ws,
		time.Since(start).Round(time.Millisecond), before)

	// Steady traffic for the duration, sampling the daemon as it goes.
	start = time.Now()
	steady := int(cfg.Rate * cfg.Duration.Seconds())
	sampleCtx, stopSampling := context.WithCancel(t.Context())
	var samples []procFigures
	var sampling sync.WaitGroup
	sampling.Go(func() {
		tick := time.NewTicker(max(cfg.Duration/30, 500*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-sampleCtx.Done():
				return
			case <-tick.C:
				if f, err := e.D.measure(); err == nil {
					samples = append(samples, f)
				}
			}
		}
	})
	send(steady, cfg.Rate)
	stopSampling()
	sampling.Wait()
	after := quiet()
	took := time.Since(start)

	sent, unique, dups := ledger.counts()
	lost := sent - unique
	// RSS moves with every GC cycle: compare the peak of the first third
	// of the run with the peak of the last third. In a run shorter than
	// minSoakJudged (the small form in go test) RSS is still climbing to its
	// working size, so it is reported and not judged.
	if len(samples) < 6 {
		t.Fatalf("only %d RSS samples", len(samples))
	}
	var early, late int64
	for i, s := range samples {
		switch {
		case i < len(samples)/3:
			early = max(early, s.RSS)
		case i >= len(samples)-len(samples)/3:
			late = max(late, s.RSS)
		}
	}
	growth := float64(late-early) / float64(early) * 100
	gcs := samples[len(samples)-1].GCs - samples[0].GCs
	judgeRSS := cfg.Duration >= minSoakJudged
	var series []string
	for _, s := range samples {
		series = append(series, fmt.Sprintf("%.1f", float64(s.RSS)/(1<<20)))
	}
	t.Logf("soak: %d users, %v of steady traffic at %.1f msg/s (%d messages) after %d warm-up messages", len(users), took.Round(time.Second), cfg.Rate, steady, warm)
	t.Logf("soak: messages sent %d, delivered %d, lost %d, duplicated %d, send errors %d, poll errors %d, recovered:false %d",
		sent, unique, lost, dups, ledger.sendErrs.Load(), ledger.pollErrs.Load(), ledger.unrecov.Load())
	t.Logf("soak: daemon after warm-up: %v", before)
	t.Logf("soak: daemon at the end:    %v", after)
	t.Logf("soak: RSS peak %.1f MiB in the first third, %.1f MiB in the last: growth %+.2f %% over %d GC cycles; goroutines %+d, fds %+d; RSS MiB during the run: %s",
		float64(early)/(1<<20), float64(late)/(1<<20), growth, gcs, after.Goroutines-before.Goroutines, after.FDs-before.FDs, strings.Join(series, " "))

	if lost != 0 || dups != 0 {
		t.Errorf("%d messages lost and %d duplicated of %d", lost, dups, sent)
	}
	if n := ledger.sendErrs.Load(); n != 0 {
		t.Errorf("%d sends failed", n)
	}
	if n := ledger.unrecov.Load(); n != 0 {
		t.Errorf("%d event pages said recovered:false during the soak", n)
	}
	if !judgeRSS {
		t.Logf("soak: RSS growth not judged: the run is shorter than %v (SOAK_DURATION)", minSoakJudged)
	} else if growth > 5 {
		t.Errorf("the daemon's peak RSS grew by %.2f %% (limit 5 %%)", growth)
	}
	// Parked polls that time out are answered on answerer goroutines
	// (boshpark.go), which wait answererIdle for the next answer: up to
	// maxIdleAnswerers of them come and go with the polls' 25 s timeouts,
	// so a count taken at any moment may hold that many more than another
	// (soakIdleAnswerers is maxIdleAnswerers; this test package sees no
	// unexported name).
	// A leak per message, poll or connection grows past that at once.
	if after.Goroutines > before.Goroutines+soakIdleAnswerers {
		t.Errorf("the daemon's goroutines grew from %d to %d (more than the %d idle answerers)", before.Goroutines, after.Goroutines, soakIdleAnswerers)
	}
	if after.FDs > before.FDs {
		t.Errorf("the daemon's open descriptors grew from %d to %d", before.FDs, after.FDs)
	}
}
