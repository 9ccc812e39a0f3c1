package sidecar_test

// The fault-injection matrix (issue 7 §1): every scenario runs live chat
// traffic between several web users through the real imsidecar binary,
// breaks one real part (Prosody, Redis, the daemon, the PHP side), and
// counts every message accepted by POST /v1/messages against every message
// the recipient's page received through GET /v1/events, keyed by message id.
// Each scenario asserts 0 lost, 0 delivered twice, and the user-visible state.
//
// `go test ./sidecar` runs the reduced form (shorter outages, fewer
// repetitions); IMSIDECAR_FAULTS=full (`make faults`) runs the full one.
// The table is logged at the end (go test -v) and, with
// IMSIDECAR_FAULTS_TABLE=path, written there as Markdown.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// faultScale is how hard each scenario pushes.
type faultScale struct {
	Full        bool
	Users       int           // web users chatting with each other
	Interval    time.Duration // between two messages of one sender
	Before      time.Duration // traffic before the fault
	After       time.Duration // traffic after the fault is healed
	Down        time.Duration // Prosody / Redis outage
	Stall       time.Duration // Prosody stopped (SIGSTOP)
	Aborts      int           // long-polls cut mid-response
	BadSessions int           // sessions with a wrong password
}

func faultScaleFromEnv() faultScale {
	if os.Getenv("IMSIDECAR_FAULTS") == "full" {
		return faultScale{Full: true, Users: 4, Interval: 100 * time.Millisecond, Before: 3 * time.Second,
			After: 3 * time.Second, Down: 30 * time.Second, Stall: 20 * time.Second, Aborts: 2000, BadSessions: 100}
	}
	return faultScale{Users: 3, Interval: 200 * time.Millisecond, Before: time.Second,
		After: time.Second, Down: 5 * time.Second, Stall: 3 * time.Second, Aborts: 200, BadSessions: 100}
}

// faultRow is one line of the table.
type faultRow struct {
	Scenario                  string
	Sent, Received, Lost, Dup int
	Recover                   time.Duration // < 0: not applicable
	Note                      string
}

func (r faultRow) recoverText() string {
	if r.Recover < 0 {
		return "—"
	}
	return r.Recover.Round(10 * time.Millisecond).String()
}

// TestFaults runs the whole matrix and prints the table.
func TestFaults(t *testing.T) {
	sc := faultScaleFromEnv()
	var (
		mu   sync.Mutex
		rows []faultRow
	)
	add := func(r faultRow) {
		mu.Lock()
		rows = append(rows, r)
		mu.Unlock()
	}
	scenarios := []struct {
		name string
		run  func(t *testing.T, sc faultScale) faultRow
	}{
		{"prosody-restart", faultProsodyRestart},
		{"prosody-kill", faultProsodyKill},
		{"prosody-down", faultProsodyDown},
		{"prosody-stall", faultProsodyStall},
		{"sidecar-kill", faultSidecarKill},
		{"redis-restart", faultRedisRestart},
		{"redis-down", faultRedisDown},
		{"poll-abort", faultPollAbort},
		{"session-lifecycle", faultSessionLifecycle},
		{"wrong-password", faultWrongPassword},
		{"buffer-overflow", faultBufferOverflow},
		{"duplicate-delivery", faultDuplicateDelivery},
		{"graceful-shutdown", faultGracefulShutdown},
	}
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			row := s.run(t, sc)
			row.Scenario = s.name
			if t.Failed() {
				row.Note = "FAILED " + row.Note
			}
			add(row)
		})
	}
	form := "reduced"
	if sc.Full {
		form = "full"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| scenario | sent | received | lost | duplicated | time to recover | notes |\n|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s | %s |\n", r.Scenario, r.Sent, r.Received, r.Lost, r.Dup, r.recoverText(), r.Note)
	}
	t.Logf("fault matrix (%s form):\n%s", form, b.String())
	if out := os.Getenv("IMSIDECAR_FAULTS_TABLE"); out != "" {
		if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
			t.Errorf("writing %s: %v", out, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Traffic

// sentMsg is one message accepted by the API.
type sentMsg struct {
	to string // recipient's localpart
	at time.Time
}

// fuser is one web user under traffic: a sender and a poller goroutine.
type fuser struct {
	*user
	cursor      string    // the poller's cursor, owned by the poller goroutine
	autoConnect bool      // reconnect (POST /v1/connect) when the API says not_connected
	pause       chan bool // unbuffered: true hands the cursor to the sender, false gives it back
}

// traffic drives messages between users and counts them.
type traffic struct {
	tb       testing.TB
	tag      string
	users    []*fuser
	interval time.Duration

	ctx      context.Context
	cancel   context.CancelFunc
	stopSend chan struct{}
	halted   sync.Once
	senders  sync.WaitGroup
	pollers  sync.WaitGroup

	mu           sync.Mutex
	sent         map[string]sentMsg   // id → message
	got          map[string]int       // id → deliveries to its recipient
	gotAt        map[string]time.Time // id → first delivery
	wrongTo      int                  // delivered to someone else
	refused      int                  // sends refused (retried)
	notRecovered map[string]int       // user → pages with recovered=false
	reconnects   map[string]int       // user → POST /v1/connect after not_connected
	delayed      int                  // deliveries with a delay stamp (offline storage)
	states       map[string][]string  // user → state events "state/reason"
	pollErrs     int                  // polls that failed (retried)
	userErrs     map[string]int       // user → sends refused and polls failed
	// servedAt is each user's first successful call (a poll answered or a
	// send accepted) at or after servedFrom (the fault, unless reset).
	servedAt   map[string]time.Time
	servedFrom time.Time
	lastOK     map[string]time.Time     // user → last successful call
	maxGap     map[string]time.Duration // user → longest wait between two successful calls
	// failedSince is each user's calls that failed since their last
	// successful one; worstCalls, those of their longest wait.
	failedSince map[string][]callRec
	failedAll   map[string][]callRec // every failed call of each user
	worstCalls  map[string][]callRec
	worstEnd    map[string]time.Time
	faultAt     time.Time
	healedAt    time.Time
}

// newTraffic logs in and connects n users (registered in Prosody), makes
// them all mutual contacts, and returns the traffic, not yet started.
func newTraffic(t *testing.T, e *e2e, tag string, n int, interval time.Duration) *traffic {
	t.Helper()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%s%d", tag, i)
	}
	e.register(t, names...)
	var ps []*poller
	var users []*fuser
	for _, name := range names {
		u := e.login(t, name)
		ps = append(ps, u.connect(t))
		users = append(users, &fuser{user: u, autoConnect: true, pause: make(chan bool)})
	}
	for i := range users {
		for j := i + 1; j < len(users); j++ {
			befriend(t, users[i].user, users[j].user, ps[i], ps[j])
		}
	}
	for i, u := range users {
		u.cursor = ps[i].cursor
	}
	return trafficOf(t, tag, users, interval)
}

// trafficOf returns a new, not yet started, traffic between users.
func trafficOf(t *testing.T, tag string, users []*fuser, interval time.Duration) *traffic {
	return &traffic{tb: t, tag: tag, users: users, interval: interval, stopSend: make(chan struct{}),
		sent: map[string]sentMsg{}, got: map[string]int{}, gotAt: map[string]time.Time{},
		notRecovered: map[string]int{}, reconnects: map[string]int{}, states: map[string][]string{}, servedAt: map[string]time.Time{},
		lastOK: map[string]time.Time{}, maxGap: map[string]time.Duration{}, userErrs: map[string]int{},
		failedSince: map[string][]callRec{}, failedAll: map[string][]callRec{}, worstCalls: map[string][]callRec{}, worstEnd: map[string]time.Time{}}
}

// callRec is one call of a user that failed: what, when, how.
type callRec struct {
	what       string // "poll" or "send"
	start, end time.Time
	outcome    string // the status and error code
}

// failedLocked records a failed call of user name.
func (tr *traffic) failedLocked(name, what string, start time.Time, status int, err error) {
	out := strconv.Itoa(status)
	if c := errCode(err); c != "" {
		out += " " + c
	} else if err != nil && status == 0 {
		out += " " + err.Error()
	}
	c := callRec{what: what, start: start, end: time.Now(), outcome: out}
	tr.failedSince[name] = append(tr.failedSince[name], c)
	tr.failedAll[name] = append(tr.failedAll[name], c)
}

// worstWait describes the longest wait of any user, each failed call
// meanwhile at its offset from since.
func (tr *traffic) worstWait(since time.Time) string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	who, gap := "", time.Duration(0)
	for u, g := range tr.maxGap {
		if g > gap {
			who, gap = u, g
		}
	}
	if who == "" {
		return "none"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s waited %v, until %v after the fault; calls since:", who, gap.Round(time.Millisecond), tr.worstEnd[who].Sub(since).Round(time.Millisecond))
	for _, c := range tr.worstCalls[who] {
		fmt.Fprintf(&b, " %s %v..%v %s;", c.what, c.start.Sub(since).Round(time.Millisecond), c.end.Sub(since).Round(time.Millisecond), c.outcome)
	}
	return b.String()
}

// start runs one poller and one sender per user.
func (tr *traffic) start() {
	tr.ctx, tr.cancel = context.WithCancel(context.Background())
	// A test that fails before stop still ends its traffic, before its
	// daemons are stopped (a failed row went on loading the machine for
	// minutes).
	tr.tb.Cleanup(func() {
		tr.halt()
		tr.cancel()
		tr.senders.Wait()
		tr.pollers.Wait()
	})
	for i, u := range tr.users {
		tr.pollers.Add(1)
		go tr.poll(u)
		tr.senders.Add(1)
		go tr.send(u, i)
	}
}

// halt stops the senders (once).
func (tr *traffic) halt() { tr.halted.Do(func() { close(tr.stopSend) }) }

// fault marks the moment the fault is injected; healed when it is removed.
func (tr *traffic) fault() {
	tr.mu.Lock()
	tr.faultAt = time.Now()
	tr.servedFrom = tr.faultAt
	tr.mu.Unlock()
}

// serveClock restarts the served-again clock at now: servedAt then holds
// each user's first successful call from now on.
func (tr *traffic) serveClock() {
	tr.mu.Lock()
	tr.servedFrom = time.Now()
	clear(tr.servedAt)
	tr.mu.Unlock()
}

// servedLocked records a successful call of user name at now.
func (tr *traffic) servedLocked(name string, now time.Time, what string, start time.Time) {
	if _, ok := tr.servedAt[name]; !ok && !tr.servedFrom.IsZero() && !now.Before(tr.servedFrom) {
		tr.servedAt[name] = now
	}
	if last, ok := tr.lastOK[name]; ok && now.Sub(last) > tr.maxGap[name] {
		tr.maxGap[name] = now.Sub(last)
		tr.worstCalls[name] = append(tr.failedSince[name], callRec{what: what, start: start, end: now, outcome: "ok"})
		tr.worstEnd[name] = now
	}
	tr.failedSince[name] = nil
	tr.lastOK[name] = now
}
func (tr *traffic) healed() {
	tr.mu.Lock()
	tr.healedAt = time.Now()
	tr.mu.Unlock()
}

// sendFromDesktop adds a desktop client (a plain XMPP stream, not through
// the sidecar) that sends to every web user in turn.
func (tr *traffic) sendFromDesktop(d *desktop, name string) {
	tr.sendFromDesktopTo(d, name, tr.interval, tr.users)
}

// sendFromDesktopTo is sendFromDesktop to the users of to in turn, one
// message every interval.
func (tr *traffic) sendFromDesktopTo(d *desktop, name string, interval time.Duration, to []*fuser) {
	tr.senders.Add(1)
	go func() {
		defer tr.senders.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-tr.stopSend:
				return
			case <-t.C:
			}
			to := to[i%len(to)]
			id := fmt.Sprintf("%s-%s-%d", tr.tag, name, i)
			if _, err := d.Conn.Send(tr.ctx, xmppconn.Message{To: to.Bare, Type: "chat", ID: id, Body: "da mesa nº " + strconv.Itoa(i)}); err != nil {
				tr.tb.Errorf("desktop send: %v", err)
				return
			}
			tr.mu.Lock()
			tr.sent[id] = sentMsg{to: to.Name, at: time.Now()}
			tr.mu.Unlock()
		}
	}()
}

func (tr *traffic) send(u *fuser, idx int) {
	defer tr.senders.Done()
	t := time.NewTicker(tr.interval)
	defer t.Stop()
	for i := 0; ; i++ {
		select {
		case <-tr.stopSend:
			return
		case <-t.C:
		}
		to := tr.users[(idx+1+i%(len(tr.users)-1))%len(tr.users)]
		id := fmt.Sprintf("%s-%s-%d", tr.tag, u.Name, i)
		body := fmt.Sprintf("%s → %s nº %d ✓", u.Name, to.Name, i)
		// Refused sends are retried with the same id, as a page would;
		// a send is counted once the API accepted it.
		for {
			var r struct {
				ID string `json:"id"`
			}
			ctx, cancel := context.WithTimeout(tr.ctx, 15*time.Second)
			start := time.Now()
			st, err := u.C.call(ctx, "POST", "/v1/messages", map[string]any{"to": to.Bare, "body": body, "type": "chat", "id": id}, &r)
			cancel()
			if st == http.StatusAccepted && r.ID == id {
				now := time.Now()
				tr.mu.Lock()
				tr.sent[id] = sentMsg{to: to.Name, at: now}
				tr.servedLocked(u.Name, now, "send", start)
				tr.mu.Unlock()
				break
			}
			tr.mu.Lock()
			tr.refused++
			tr.userErrs[u.Name]++
			tr.failedLocked(u.Name, "send", start, st, err)
			tr.mu.Unlock()
			select {
			case <-tr.ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

func (tr *traffic) poll(u *fuser) {
	defer tr.pollers.Done()
	paused := false
	for {
		select {
		case <-tr.ctx.Done():
			return
		case paused = <-u.pause:
		default:
		}
		if paused {
			select {
			case <-tr.ctx.Done():
				return
			case paused = <-u.pause:
			}
			continue
		}
		start := time.Now()
		page, err := u.C.events(tr.ctx, u.cursor, time.Second, 1000)
		if err != nil {
			if tr.ctx.Err() != nil {
				return
			}
			tr.mu.Lock()
			tr.pollErrs++
			tr.userErrs[u.Name]++
			tr.failedLocked(u.Name, "poll", start, 0, err)
			tr.mu.Unlock()
			if errCode(err) == "not_connected" && u.autoConnect {
				// The page reconnects and keeps its old cursor: the next
				// poll says whether anything may have been missed.
				var r connectResp
				if st, _ := u.C.call(tr.ctx, "POST", "/v1/connect", nil, &r); st == http.StatusOK {
					tr.mu.Lock()
					tr.reconnects[u.Name]++
					tr.mu.Unlock()
					continue
				}
			}
			select {
			case <-tr.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		now := time.Now()
		tr.mu.Lock()
		tr.servedLocked(u.Name, now, "poll", start)
		if !page.Recovered {
			tr.notRecovered[u.Name]++
		}
		for _, ev := range page.Events {
			switch ev.Event {
			case "message":
				if !strings.HasPrefix(ev.ID, tr.tag+"-") {
					continue
				}
				if bareJID(ev.To) != u.Bare {
					tr.wrongTo++
					continue
				}
				tr.got[ev.ID]++
				if _, ok := tr.gotAt[ev.ID]; !ok {
					tr.gotAt[ev.ID] = now
				}
				if ev.Delay != nil {
					tr.delayed++
				}
			case "state":
				tr.states[u.Name] = append(tr.states[u.Name], ev.State+"/"+ev.Reason)
			}
		}
		tr.mu.Unlock()
		u.cursor = page.Cursor
	}
}

// stop ends the traffic: senders stop, then pollers run until every
// accepted message arrived or drain passed.
func (tr *traffic) stop(drain time.Duration) {
	tr.halt()
	done := make(chan struct{})
	go func() { tr.senders.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		tr.cancel() // give up retrying refused sends
		<-done
	}
	deadline := time.Now().Add(drain)
	for time.Now().Before(deadline) {
		tr.mu.Lock()
		missing := 0
		for id := range tr.sent {
			if tr.got[id] == 0 {
				missing++
			}
		}
		tr.mu.Unlock()
		if missing == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // late duplicates show up here
	tr.cancel()
	tr.pollers.Wait()
}

// row tallies the traffic and asserts 0 lost and 0 duplicated.
func (tr *traffic) row(t *testing.T) faultRow {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	r := faultRow{Sent: len(tr.sent), Recover: -1}
	var lost, dups []string
	for id, m := range tr.sent {
		switch n := tr.got[id]; {
		case n == 0:
			lost = append(lost, id+"→"+m.to)
		default:
			r.Received++
			r.Dup += n - 1
			if n > 1 {
				// Which, to whom, and when the first copy came: enough to
				// find both in the daemons' logs.
				dups = append(dups, fmt.Sprintf("%s→%s ×%d (first %s)", id, m.to, n, tr.gotAt[id].UTC().Format("15:04:05.000")))
			}
		}
	}
	r.Lost = len(lost)
	for id, n := range tr.got {
		if _, ok := tr.sent[id]; !ok && n > 0 {
			// Delivered though the API never confirmed the send (the
			// daemon died mid-request): not lost, and counted apart.
			r.Received++
			r.Dup += n - 1
			r.Note += fmt.Sprintf("unconfirmed send %s delivered; ", id)
		}
	}
	if !tr.faultAt.IsZero() && !tr.healedAt.IsZero() {
		first := time.Time{}
		for id, at := range tr.gotAt {
			m, ok := tr.sent[id]
			if ok && !m.at.Before(tr.faultAt) && !at.Before(tr.healedAt) && (first.IsZero() || at.Before(first)) {
				first = at
			}
		}
		if !first.IsZero() {
			r.Recover = first.Sub(tr.healedAt)
		}
	}
	if r.Sent == 0 {
		t.Errorf("no message was sent")
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d accepted messages lost: %v", len(lost), r.Sent, first10(lost))
	}
	if r.Dup > 0 {
		t.Errorf("%d messages delivered twice to the page: %v", r.Dup, first10(dups))
	}
	if tr.wrongTo > 0 {
		t.Errorf("%d messages delivered to the wrong user", tr.wrongTo)
	}
	if tr.refused > 0 {
		r.Note += fmt.Sprintf("%d sends refused and retried; ", tr.refused)
	}
	if tr.delayed > 0 {
		r.Note += fmt.Sprintf("%d via offline storage; ", tr.delayed)
	}
	nr := 0
	for _, n := range tr.notRecovered {
		nr += n
	}
	if nr > 0 {
		r.Note += fmt.Sprintf("recovered:false seen %d×; ", nr)
	}
	t.Logf("sent %d, received %d, lost %d, dup %d, refused %d, offline %d, recovered:false %v, reconnects %v, states %v",
		r.Sent, r.Received, r.Lost, r.Dup, tr.refused, tr.delayed, tr.notRecovered, tr.reconnects, tr.states)
	return r
}

func first10(s []string) []string {
	if len(s) > 10 {
		return s[:10]
	}
	return s
}

// waitAllOnline waits until every user is online and sees every other one
// available in its roster: the user-visible state after a fault.
func waitAllOnline(t *testing.T, users []*fuser, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		bad := ""
		for _, u := range users {
			var me meResp
			if st, err := u.C.call(t.Context(), "GET", "/v1/me", nil, &me); err != nil || st != http.StatusOK || me.State != "online" {
				bad = fmt.Sprintf("%s is %q (%v)", u.Name, me.State, err)
				break
			}
			items, err := u.C.roster(t.Context())
			if err != nil {
				bad = fmt.Sprintf("%s roster: %v", u.Name, err)
				break
			}
			for _, it := range items {
				if len(it.Presence) == 0 {
					bad = fmt.Sprintf("%s sees %s offline", u.Name, it.JID)
				}
			}
			if len(items) != len(users)-1 {
				bad = fmt.Sprintf("%s has %d contacts, want %d", u.Name, len(items), len(users)-1)
			}
			if bad != "" {
				break
			}
		}
		if bad == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("user-visible state not restored after %v: %s", timeout, bad)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Prosody

func faultProsodyRestart(t *testing.T, sc faultScale) faultRow {
	return prosodyFault(t, sc, "pr", func(e *e2e) { e.XMPP.Stop(t) }, func(e *e2e) { e.XMPP.Start(t) })
}

func faultProsodyKill(t *testing.T, sc faultScale) faultRow {
	return prosodyFault(t, sc, "pk", func(e *e2e) { e.XMPP.Kill(t) }, func(e *e2e) { e.XMPP.Start(t) })
}

func faultProsodyDown(t *testing.T, sc faultScale) faultRow {
	row := prosodyFault(t, sc, "pd", func(e *e2e) {
		e.XMPP.Stop(t)
		time.Sleep(sc.Down)
	}, func(e *e2e) { e.XMPP.Start(t) })
	row.Note = fmt.Sprintf("down %v; ", sc.Down) + row.Note
	return row
}

// faultProsodyStall stops the Prosody process (SIGSTOP) so that every
// socket stays open and silent, then lets it run again.
func faultProsodyStall(t *testing.T, sc faultScale) faultRow {
	var pid int
	row := prosodyFault(t, sc, "ps", func(e *e2e) {
		pid = prosodyPID(t, e.XMPP)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
		time.Sleep(sc.Stall)
	}, func(e *e2e) {
		if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	})
	row.Note = fmt.Sprintf("stalled %v; ", sc.Stall) + row.Note
	return row
}

// prosodyPID reads the pidfile the test Prosody writes.
func prosodyPID(t *testing.T, s *xmppconntest.Server) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, "prosody.pid"))
	if err != nil {
		t.Fatalf("prosody pidfile: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("prosody pidfile %q", b)
	}
	return pid
}

func prosodyFault(t *testing.T, sc faultScale, tag string, inject, heal func(*e2e)) faultRow {
	e := startE2E(t, "files", daemonOptions{})
	tr := newTraffic(t, e, tag, sc.Users, sc.Interval)
	tr.start()
	time.Sleep(sc.Before)
	tr.fault()
	inject(e)
	heal(e)
	tr.healed()
	time.Sleep(sc.After)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	waitAllOnline(t, tr.users, 30*time.Second)
	return row
}

// ---------------------------------------------------------------------------
// imsidecar

// respawn starts the daemon binary again with the same flags (same ports),
// after d exited, and waits until it is ready.
func respawn(t *testing.T, d *daemon) *daemon {
	t.Helper()
	n := &daemon{URL: d.URL, Socket: d.Socket, OpsURL: d.OpsURL, Token: d.Token, TokenFile: d.TokenFile, Args: d.Args,
		logFile: filepath.Join(t.TempDir(), "imsidecar.log"), done: make(chan struct{})}
	n.run(t, 15*time.Second)
	return n
}

// faultSidecarKill: imsidecar dies with SIGKILL mid-traffic and is started
// again. Its event logs are gone; each page gets not_connected, reconnects,
// sees recovered:false, and the messages the dead streams had not handed
// over come back through Prosody's offline storage.
func faultSidecarKill(t *testing.T, sc faultScale) faultRow {
	e := startE2E(t, "files", daemonOptions{})
	tr := newTraffic(t, e, "sk", sc.Users, sc.Interval)
	e.register(t, "skdesk")
	desk := dialDesktop(t, e.XMPP, "skdesk")
	tr.start()
	tr.sendFromDesktop(desk, "skdesk")
	time.Sleep(sc.Before)
	tr.fault()
	e.D.Signal(t, syscall.SIGKILL, 5*time.Second)
	// While the daemon is dead, Prosody holds its streams in XEP-0198
	// hibernation and queues the desktop's messages on them.
	time.Sleep(sc.Down / 2)
	d := respawn(t, e.D)
	tr.healed()
	time.Sleep(sc.After)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	for _, u := range tr.users {
		if tr.notRecovered[u.Name] == 0 {
			t.Errorf("%s's page never saw recovered:false after the daemon restarted", u.Name)
		}
	}
	waitAllOnline(t, tr.users, 30*time.Second)
	for _, s := range e.secrets {
		if len(s) >= 6 && strings.Contains(d.Log(), s) {
			t.Errorf("the restarted daemon's log contains a secret (%q...)", s[:3])
		}
	}
	return row
}

// ---------------------------------------------------------------------------
// Redis

func startRedisRig(t *testing.T) (*e2e, *phpsessiontest.Redis) {
	t.Helper()
	requireBinary(t, "php", "php-cli php-redis")
	r := phpsessiontest.StartPersistentRedis(t)
	e := &e2e{XMPP: xmppconntest.StartProsody(t, xmppconntest.Options{}), Store: phpStore{Kind: "redis", SavePath: "tcp://" + r.Addr}}
	e.D = startDaemon(t, daemonOptions{Store: e.Store, XMPP: e.XMPP})
	t.Cleanup(func() { e.checkLogs(t) })
	return e, r
}

func faultRedisRestart(t *testing.T, sc faultScale) faultRow {
	e, r := startRedisRig(t)
	tr := newTraffic(t, e, "rr", sc.Users, sc.Interval)
	tr.start()
	time.Sleep(sc.Before)
	tr.fault()
	r.Stop()
	r.Start()
	tr.healed()
	time.Sleep(sc.After)
	// A new login after the restart connects.
	e.register(t, "rrnew")
	newcomer := e.login(t, "rrnew")
	newcomer.connect(t)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	waitAllOnline(t, tr.users, 30*time.Second)
	return row
}

// faultRedisDown: Redis is down for a while. Users already connected keep
// chatting; a session that was not connected yet gets 503
// store_unavailable; when Redis is back it connects, with no restart.
func faultRedisDown(t *testing.T, sc faultScale) faultRow {
	e, r := startRedisRig(t)
	tr := newTraffic(t, e, "rd", sc.Users, sc.Interval)
	e.register(t, "rdlate")
	late := e.login(t, "rdlate") // logged in, not connected yet
	tr.start()
	time.Sleep(sc.Before)
	tr.fault()
	r.Stop()
	time.Sleep(sc.Down / 2)
	st, err := late.C.call(t.Context(), "POST", "/v1/connect", nil, nil)
	if st != http.StatusServiceUnavailable || errCode(err) != "store_unavailable" {
		t.Errorf("connect while Redis is down: %d %v, want 503 store_unavailable", st, err)
	}
	time.Sleep(sc.Down / 2)
	r.Start()
	tr.healed()
	start := time.Now()
	var recov time.Duration
	for {
		if st, _ := late.C.call(t.Context(), "POST", "/v1/connect", nil, nil); st == http.StatusOK {
			recov = time.Since(start)
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Errorf("connect still failing 30s after Redis came back")
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(sc.After)
	tr.stop(60 * time.Second)
	row := tr.row(t)
	// During the outage the page's calls must have kept working.
	if tr.refused > 0 {
		t.Errorf("%d sends refused while Redis was down: connected users must keep chatting", tr.refused)
	}
	waitAllOnline(t, tr.users, 30*time.Second)
	row.Recover = recov
	row.Note = fmt.Sprintf("down %v; new connect got 503 store_unavailable; time to recover = first connect after Redis is back; ", sc.Down) + row.Note
	return row
}

// ---------------------------------------------------------------------------
// The PHP side

// faultPollAbort: one user's long-polls are cut mid-response again and
// again (the PHP request died) while messages keep coming; each is retried
// with the old cursor. Nothing may be lost or doubled, and the daemon must
// not keep goroutines for the dead requests.
func faultPollAbort(t *testing.T, sc faultScale) faultRow {
	e := startE2E(t, "files", daemonOptions{Token: true})
	tr := newTraffic(t, e, "pa", sc.Users, sc.Interval)
	victim := tr.users[0]
	baseGoroutines := daemonGauge(t, e.D, "go_goroutines")
	tr.start()
	victim.pause <- true // the harness's poller steps aside; we poll below
	u, _ := url.Parse(e.D.URL)
	cuts, full := 0, 0
	for i := 0; i < sc.Aborts; i++ {
		cut, err := abortedPoll(u.Host, victim.SID, e.D.Token, victim.cursor)
		if err != nil {
			t.Fatalf("aborted poll #%d: %v", i, err)
		}
		if cut {
			cuts++
		} else {
			full++
		}
		// Every tenth time the page survives and acknowledges.
		if i%10 == 9 {
			page, err := victim.C.events(t.Context(), victim.cursor, 0, 1000)
			if err != nil {
				t.Fatalf("poll after abort: %v", err)
			}
			if !page.Recovered {
				t.Errorf("poll with the old cursor after an abort: recovered=false")
			}
			tr.mu.Lock()
			for _, ev := range page.Events {
				if ev.Event == "message" && strings.HasPrefix(ev.ID, "pa-") {
					tr.got[ev.ID]++
					if _, ok := tr.gotAt[ev.ID]; !ok {
						tr.gotAt[ev.ID] = time.Now()
					}
				}
			}
			tr.mu.Unlock()
			victim.cursor = page.Cursor
		}
	}
	victim.pause <- false
	tr.stop(60 * time.Second)
	row := tr.row(t)
	// The aborted requests leave nothing behind in the daemon.
	deadline := time.Now().Add(10 * time.Second)
	for {
		g := daemonGauge(t, e.D, "go_goroutines")
		if g <= baseGoroutines+10 {
			row.Note = fmt.Sprintf("%d polls cut mid-body, %d before the body; goroutines %v → %v; ", cuts, full, baseGoroutines, g) + row.Note
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("daemon goroutines grew from %v to %v after %d aborted polls", baseGoroutines, g, sc.Aborts)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if cuts == 0 {
		t.Errorf("no poll was cut mid-body")
	}
	return row
}

// abortedPoll sends a raw long-poll and closes the connection after part of
// the answer: in the body when there is one (cut=true), else right after the
// request while the daemon is still waiting.
func abortedPoll(host, sid, token, cursor string) (cut bool, err error) {
	conn, err := net.DialTimeout("tcp", host, 5*time.Second)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/events?cursor=%s&wait=1&limit=1000 HTTP/1.1\r\nHost: %s\r\nX-Session-Id: %s\r\nAuthorization: Bearer %s\r\n\r\n",
		url.QueryEscape(cursor), host, sid, token)
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, nil // cut while the daemon was waiting
		}
		return false, err
	}
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	n := max(1, int(resp.ContentLength/2))
	buf := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return false, err
	}
	return true, nil
}

// daemonGauge reads one gauge from the daemon's /metrics.
func daemonGauge(t *testing.T, d *daemon, name string) float64 {
	t.Helper()
	resp, err := http.Get(d.OpsURL + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// faultSessionLifecycle: while others chat, one user's PHP session expires,
// is logged out, is reused by another user, and has its password changed.
// Each closes the stream (contacts see unavailable, the API refuses the
// session) or re-authenticates with the new password.
func faultSessionLifecycle(t *testing.T, sc faultScale) faultRow {
	e := startE2E(t, "files", daemonOptions{RecheckInterval: 500 * time.Millisecond})
	tr := newTraffic(t, e, "sl", sc.Users, sc.Interval)
	watcher := tr.users[0]
	e.register(t, "slx", "sly")
	tr.start()
	var worst time.Duration

	// subject logs in, befriends the watcher, and is seen available.
	subject := func(name string) (*user, *poller) {
		u := e.login(t, name)
		p := u.connect(t)
		u.C.mustCall(t, "POST", "/v1/subscriptions/"+url.PathEscape(watcher.Bare), map[string]string{"action": "subscribe"}, nil, http.StatusNoContent)
		u.C.mustCall(t, "POST", "/v1/subscriptions/"+url.PathEscape(watcher.Bare), map[string]string{"action": "approve"}, nil, http.StatusNoContent)
		watcher.C.mustCall(t, "POST", "/v1/subscriptions/"+url.PathEscape(u.Bare), map[string]string{"action": "approve"}, nil, http.StatusNoContent)
		watcher.C.mustCall(t, "POST", "/v1/subscriptions/"+url.PathEscape(u.Bare), map[string]string{"action": "subscribe"}, nil, http.StatusNoContent)
		waitPresence(t, watcher, u.Bare, true, 15*time.Second)
		return u, p
	}
	// closed waits until the watcher sees u unavailable.
	closed := func(what string, u *user, start time.Time) {
		waitPresence(t, watcher, u.Bare, false, 30*time.Second)
		el := time.Since(start)
		worst = max(worst, el)
		t.Logf("%s: the contact sees unavailable %v after the change", what, el.Round(time.Millisecond))
	}

	// Expiry: the session file is older than --session-max-lifetime.
	{
		u, _ := subject("slx")
		start := time.Now()
		old := time.Now().Add(-5 * time.Hour)
		if err := os.Chtimes(filepath.Join(e.Store.SavePath, "sess_"+u.SID), old, old); err != nil {
			t.Fatal(err)
		}
		closed("expiry", u, start)
		if st, err := u.C.call(t.Context(), "GET", "/v1/me", nil, nil); st != http.StatusUnauthorized {
			t.Errorf("GET /v1/me on an expired session: %d %v, want 401", st, err)
		}
	}
	// Logout: session_destroy().
	{
		u, _ := subject("slx")
		start := time.Now()
		e.logout(t, u)
		closed("logout", u, start)
		if st, err := u.C.call(t.Context(), "POST", "/v1/messages", map[string]string{"to": watcher.Bare, "body": "x"}, nil); st != http.StatusUnauthorized || errCode(err) != "session_not_found" {
			t.Errorf("send after logout: %d %v, want 401 session_not_found", st, err)
		}
	}
	// Reuse: the same session id now belongs to another user.
	{
		u, _ := subject("slx")
		start := time.Now()
		in := fmt.Sprintf(`{"id":%q,"user":"sly","password":"sly-pw","fullname":"Sly Outro"}`, u.SID)
		runPHP(t, e.Store, writeSessionPHP, "E2E_SESSION="+in)
		closed("session id reused", u, start)
		var me meResp
		u.C.mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
		if me.User != "sly" || me.State != "offline" {
			t.Errorf("after reuse, /v1/me says %+v: want sly, offline (slx's stream must not serve sly)", me)
		}
		if st, err := u.C.call(t.Context(), "POST", "/v1/messages", map[string]string{"to": watcher.Bare, "body": "x"}, nil); st != http.StatusConflict {
			t.Errorf("send as the new user before connecting: %d %v, want 409 not_connected", st, err)
		}
	}
	// Password changed: the user changes the password (server and PHP
	// session): the stream re-authenticates with the new one.
	{
		u, p := subject("slx")
		for len(p.poll(t, 0)) > 0 {
		}
		e.XMPP.RegisterMany(t, map[string]string{"slx": "slx-new-pw"})
		start := time.Now()
		in := fmt.Sprintf(`{"id":%q,"user":"slx","password":"slx-new-pw","fullname":"Slx"}`, u.SID)
		runPHP(t, e.Store, writeSessionPHP, "E2E_SESSION="+in)
		e.secrets = append(e.secrets, "slx-new-pw")
		p.waitFor(t, 30*time.Second, "offline/password_changed", func(ev event) bool {
			return ev.Event == "state" && ev.State == "offline" && ev.Reason == "password_changed"
		})
		p.waitFor(t, 30*time.Second, "online again after the password change", func(ev event) bool {
			return ev.Event == "state" && ev.State == "online"
		})
		el := time.Since(start)
		worst = max(worst, el)
		t.Logf("password change: online again with the new password %v after the change", el.Round(time.Millisecond))
		waitPresence(t, watcher, u.Bare, true, 15*time.Second)
		waitMessage(t, tr, tr.sendOne(t, u, watcher, "com a senha nova"))
		if n := e.XMPP.AuthFailures("slx"); n != 0 {
			t.Errorf("%d authentication failures for slx: the new password must be used", n)
		}
	}
	tr.stop(60 * time.Second)
	row := tr.row(t)
	row.Recover = worst
	row.Note = "expiry, logout, id reuse, password change; time = slowest to take effect; " + row.Note
	return row
}

// waitPresence waits until u's roster shows bare available (or not).
func waitPresence(t *testing.T, u *fuser, bare string, available bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		it := u.C.rosterItem(t.Context(), bare)
		if (len(it.Presence) > 0) == available && it.JID != "" {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s still sees %s available=%v after %v", u.Name, bare, !available, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sendOne sends one counted message from u (not a traffic user) to to.
func (tr *traffic) sendOne(t *testing.T, u *user, to *fuser, body string) string {
	t.Helper()
	id := fmt.Sprintf("%s-%s-one-%s", tr.tag, u.Name, randomID()[:6])
	u.C.mustCall(t, "POST", "/v1/messages", map[string]any{"to": to.Bare, "body": body, "type": "chat", "id": id}, nil, http.StatusAccepted)
	tr.mu.Lock()
	tr.sent[id] = sentMsg{to: to.Name, at: time.Now()}
	tr.mu.Unlock()
	return id
}

// waitMessage waits until the traffic poller of u saw message id.
func waitMessage(t *testing.T, tr *traffic, id string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		tr.mu.Lock()
		n := tr.got[id]
		tr.mu.Unlock()
		if n > 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("message %s not delivered", id)
}

// faultWrongPassword: sessions whose password the server refuses, each
// connected again and again, cost one authentication attempt per session,
// and never 20 per IP (an ejabberd mod_fail2ban limit) however many.
func faultWrongPassword(t *testing.T, sc faultScale) faultRow {
	e := startE2E(t, "files", daemonOptions{})
	tr := newTraffic(t, e, "wp", sc.Users, sc.Interval)
	names := e.XMPP.RegisterN(t, "wpbad", sc.BadSessions, "the-right-password")
	bad := loginMany(t, e, names, "a-stale-password")
	tr.start()
	tried, throttled := 0, 0
	for round := range 3 {
		for _, u := range bad {
			st, err := u.C.call(t.Context(), "POST", "/v1/connect", nil, nil)
			switch {
			case st == http.StatusBadGateway && errCode(err) == "xmpp_auth_failed":
				tried++
			case st == http.StatusServiceUnavailable && errCode(err) == "auth_throttled":
				throttled++
			default:
				t.Errorf("round %d: %s connect: %d %v, want 502 xmpp_auth_failed or 503 auth_throttled", round, u.Name, st, err)
			}
		}
	}
	// A user whose password works leaves and comes back past the limit;
	// what was sent meanwhile arrives from offline storage.
	comeback := tr.users[0]
	comeback.C.mustCall(t, "POST", "/v1/disconnect", nil, nil, http.StatusNoContent)
	time.Sleep(4 * sc.Interval)
	comeback.C.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	time.Sleep(4 * sc.Interval)
	tr.stop(30 * time.Second)
	row := tr.row(t)
	fails := e.XMPP.AuthFailures("")
	perUser := map[string]int{}
	for _, n := range names {
		perUser[n] = e.XMPP.AuthFailures(n)
		if perUser[n] > 1 {
			t.Errorf("%s: %d authentication attempts, want at most 1", n, perUser[n])
		}
	}
	if fails >= 20 {
		t.Errorf("%d bad sessions cost %d authentication failures from one IP: a mod_fail2ban limit of 20 would ban the web server", len(bad), fails)
	}
	row.Note = fmt.Sprintf("%d bad sessions × 3 connects: %d answered xmpp_auth_failed, %d auth_throttled; %d auth failures at the server; a known-good user reconnected; ", len(bad), tried, throttled, fails) + row.Note
	return row
}

// loginMany writes sessions for many users with one PHP process (the
// password is the same for all) and returns them.
func loginMany(t *testing.T, e *e2e, names []string, password string) []*user {
	t.Helper()
	var in []map[string]string
	var users []*user
	for _, n := range names {
		u := &user{Name: n, Password: password, SID: randomID(), Bare: e.XMPP.JID(n)}
		u.C = e.D.client(u.SID)
		users = append(users, u)
		in = append(in, map[string]string{"id": u.SID, "user": n, "password": password, "fullname": "Usuário " + n})
		e.secrets = append(e.secrets, u.SID)
	}
	e.secrets = append(e.secrets, password)
	raw, _ := json.Marshal(in)
	body := strings.TrimPrefix(writeSessionPHP, "<?php\n")
	script := "<?php\nforeach (json_decode(getenv('E2E_SESSIONS'), true) as $one) {\n  putenv('E2E_SESSION=' . json_encode($one));\n  (function () {\n" + body + "\n  })();\n}\n"
	runPHP(t, e.Store, script, "E2E_SESSIONS="+string(raw))
	return users
}

// faultBufferOverflow: a page that stops polling while messages keep coming
// loses the oldest events of its own log, and is told so; nobody else is
// affected.
func faultBufferOverflow(t *testing.T, sc faultScale) faultRow {
	const buffer = 20
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--event-buffer=" + strconv.Itoa(buffer), "--rate-limit=1000"}})
	tr := newTraffic(t, e, "bo", sc.Users, sc.Interval)
	e.register(t, "boslow")
	slow := e.login(t, "boslow")
	ps := slow.connect(t)
	for len(ps.poll(t, time.Second)) > 0 {
	}
	old := ps.cursor
	tr.start()
	// Messages to the slow page, more than its buffer holds.
	const extra = 3 * buffer
	sender := tr.users[0]
	var ids []string
	for i := range extra {
		ids = append(ids, sender.C.send(t, slow.Bare, fmt.Sprintf("para o lento %d", i), false))
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	page, err := slow.C.events(t.Context(), old, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if page.Recovered {
		t.Errorf("a poll after %d events with a buffer of %d said recovered=true", extra, buffer)
	}
	var got []string
	for _, ev := range page.Events {
		if ev.Event == "message" {
			got = append(got, ev.ID)
		}
	}
	if len(page.Events) != buffer {
		t.Errorf("the slow page got %d events, want the newest %d", len(page.Events), buffer)
	}
	// The newest messages are the ones kept, in order.
	if len(got) == 0 || got[len(got)-1] != ids[len(ids)-1] {
		t.Errorf("the newest message is not the last kept: got %v", got)
	}
	for i := range got {
		if want := ids[len(ids)-len(got)+i]; got[i] != want {
			t.Errorf("kept message %d is %s, want %s (oldest dropped first)", i, got[i], want)
			break
		}
	}
	tr.stop(30 * time.Second)
	row := tr.row(t)
	row.Note = fmt.Sprintf("slow page: %d sent, newest %d kept, recovered:false; others unaffected; ", extra, len(got)) + row.Note
	return row
}

// faultDuplicateDelivery: the same message reaching the daemon twice (what
// a sender's stream re-sending after a server crash, or offline storage
// re-delivering, produces) reaches the page once, while the traffic runs; a
// different message that reuses the id is not merged.
func faultDuplicateDelivery(t *testing.T, sc faultScale) faultRow {
	e := startE2E(t, "files", daemonOptions{})
	tr := newTraffic(t, e, "dd", sc.Users, sc.Interval)
	e.register(t, "dddesk")
	desk := dialDesktop(t, e.XMPP, "dddesk")
	tr.start()
	const n = 20
	for i := range n {
		to := tr.users[i%len(tr.users)]
		m := xmppconn.Message{To: to.Bare, Type: "chat", ID: fmt.Sprintf("dd-dddesk-%d", i), Body: fmt.Sprintf("em dobro %d", i)}
		for range 2 {
			if _, err := desk.Conn.Send(t.Context(), m); err != nil {
				t.Fatal(err)
			}
		}
		tr.mu.Lock()
		tr.sent[m.ID] = sentMsg{to: to.Name, at: time.Now()}
		tr.mu.Unlock()
		time.Sleep(sc.Interval / 2)
	}
	// The same id with another body is another message.
	reused := tr.users[0]
	if _, err := desk.Conn.Send(t.Context(), xmppconn.Message{To: reused.Bare, Type: "chat", ID: "dd-dddesk-0", Body: "outra coisa"}); err != nil {
		t.Fatal(err)
	}
	tr.stop(30 * time.Second)
	tr.mu.Lock()
	if got := tr.got["dd-dddesk-0"]; got != 2 {
		t.Errorf("a different message reusing an id was delivered %d times with the first, want 2 in all", got)
	}
	tr.got["dd-dddesk-0"]-- // the reuse is a distinct message, counted apart
	tr.mu.Unlock()
	row := tr.row(t)
	row.Note = fmt.Sprintf("%d messages each delivered twice by the server: the page saw each once; a reused id with another body kept; ", n) + row.Note
	return row
}

// faultGracefulShutdown: under load, every user disconnects and the
// daemon's goroutines and descriptors return to where they were before any
// user came; then, with everyone connected and chatting again, SIGTERM: every
// web user's desktop contact sees them unavailable (closed, not dropped),
// every message accepted before it arrived, and the process exits 0.
func faultGracefulShutdown(t *testing.T, sc faultScale) faultRow {
	e := startE2E(t, "files", daemonOptions{ShutdownTimeout: 10 * time.Second})
	pid := e.D.cmd.Process.Pid
	baseG := daemonGauge(t, e.D, "go_goroutines")
	baseFD := countFDs(t, pid)
	tr := newTraffic(t, e, "gs", sc.Users, sc.Interval)
	e.register(t, "gsdesk")
	desk := dialDesktop(t, e.XMPP, "gsdesk")
	for _, u := range tr.users {
		p := &poller{c: u.C, name: u.Name, cursor: u.cursor}
		befriendDesktop(t, u.user, p, desk)
		u.cursor = p.cursor
	}
	tr.start()
	time.Sleep(sc.Before)
	loadG, loadFD := daemonGauge(t, e.D, "go_goroutines"), countFDs(t, pid)
	tr.stop(30 * time.Second)
	row := tr.row(t)

	// Everyone leaves: nothing may stay behind.
	for _, u := range tr.users {
		u.C.mustCall(t, "POST", "/v1/disconnect", nil, nil, http.StatusNoContent)
		u.C.hc.CloseIdleConnections()
	}
	var g float64
	var fds int
	deadline := time.Now().Add(15 * time.Second)
	for {
		g, fds = daemonGauge(t, e.D, "go_goroutines"), countFDs(t, pid)
		if g <= baseG+3 && fds <= baseFD+1 { // slack: the /metrics scrape itself
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("after every user disconnected: goroutines %v (before any user %v), fds %d (before %d)", g, baseG, fds, baseFD)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Everyone back, chatting; then SIGTERM.
	for _, u := range tr.users {
		var r connectResp
		u.C.mustCall(t, "POST", "/v1/connect", map[string]any{"status": "sob carga"}, &r, http.StatusOK)
		u.cursor = r.Cursor
	}
	online := map[string]bool{}
	timeout := time.After(15 * time.Second)
	for len(online) < len(tr.users) {
		select {
		case ev := <-desk.events:
			if p, ok := ev.(*xmppconn.Presence); ok && p.Type == "available" && p.Status == "sob carga" {
				online[bareJID(p.From)] = true
			}
		case <-timeout:
			t.Fatalf("the desktop contact sees only %v back online", online)
		}
	}
	tr2 := trafficOf(t, "gt", tr.users, sc.Interval)
	for _, u := range tr.users {
		u.autoConnect = false
	}
	tr2.start()
	time.Sleep(sc.Before)
	start := time.Now()
	code, took := e.D.Signal(t, syscall.SIGTERM, 15*time.Second)
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	gone := desk.waitClosed(t, len(tr.users))
	row.Recover = time.Since(start)
	tr2.halt()
	tr2.cancel()
	tr2.senders.Wait()
	tr2.pollers.Wait()
	row.Note = fmt.Sprintf("goroutines %v idle → %v under load → %v after all left; fds %d → %d → %d; SIGTERM under load: exit %d in %v, all %d contacts saw unavailable; time = SIGTERM → last unavailable; ",
		baseG, loadG, g, baseFD, loadFD, fds, code, took.Round(time.Millisecond), len(gone)) + row.Note
	return row
}

// countFDs counts the open descriptors of a process.
func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("reading the daemon's fds: %v", err)
	}
	return len(ents)
}
