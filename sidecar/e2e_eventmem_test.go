package sidecar_test

import (
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// Caps of TestEventMemoryFlood: the per-session default, and a daemon-wide
// cap below two flooded sessions' worth so that both evictions happen.
const (
	floodSessionMB = 4
	floodDaemonMB  = 6
	// floodOverheadMB is what the daemon may grow by besides the caps:
	// the stanza being read, parsed and encoded (a few copies of 200 KB),
	// a poll response of up to a session's log, and the Go heap's
	// headroom over live memory (--gc-percent 50) and its unreturned
	// pages.
	floodOverheadMB = 16
)

// daemonRSS returns the daemon's resident set size in bytes, 0 if the
// daemon is gone.
func daemonRSS(d *daemon) int64 {
	d.mu.Lock()
	pid := d.cmd.Process.Pid
	d.mu.Unlock()
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		return 0
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb << 10
}

// TestEventMemoryFlood: a desktop contact floods a web user with 300
// messages of 200 KB (the attack) and a second one with 100,
// while neither page polls. The daemon's resident memory grows by less
// than the daemon-wide cap plus a stated overhead (before the caps, the
// first user's log alone held 1,000 events: all 60 MB); the flooded pages
// are told recovered=false and counted in imsidecar_events_dropped_total,
// and still get the newest messages; two other web users chatting
// meanwhile lose nothing.
func TestEventMemoryFlood(t *testing.T) {
	// The flooded pages do not poll on purpose; under a loaded CI the
	// flood can outlast the default --inactivity (2 min), which would
	// take them offline mid-test.
	e := startE2E(t, "files", daemonOptions{Inactivity: 15 * time.Minute, Extra: []string{
		"--event-buffer-mb=" + strconv.Itoa(floodSessionMB),
		"--event-memory-mb=" + strconv.Itoa(floodDaemonMB),
		"--rate-limit=1000",
	}})
	e.register(t, "flooder", "victim", "victim2", "alice", "bob")
	victim, victim2, alice, bob := e.login(t, "victim"), e.login(t, "victim2"), e.login(t, "alice"), e.login(t, "bob")
	pv, pv2 := victim.connect(t), victim2.connect(t)
	alice.connect(t)
	pb := bob.connect(t)
	flooder := dialDesktop(t, e.XMPP, "flooder")
	for range 3 { // let the logins' garbage settle
		time.Sleep(300 * time.Millisecond)
		metricsText(t, e.D)
	}
	base := daemonRSS(e.D)
	if base == 0 {
		t.Fatal("no VmRSS for the daemon")
	}

	// Sample the daemon's memory all along.
	var peak atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			peak.Store(max(peak.Load(), daemonRSS(e.D)))
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})

	// alice writes to bob all along; bob polls.
	var sent []string
	chatDone := make(chan struct{})
	wg.Go(func() {
		defer close(chatDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			sent = append(sent, alice.C.send(t, bob.Bare, fmt.Sprintf("durante a enxurrada %d", i), false))
		}
	})

	body := strings.Repeat("a", 200_000)
	flood := func(to string, n int) {
		for i := range n {
			if _, err := flooder.Conn.Send(t.Context(), xmppconn.Message{To: to, Type: "chat", ID: fmt.Sprintf("flood-%s-%d", to, i), Body: body + strconv.Itoa(i)}); err != nil {
				t.Errorf("flood %d: %v", i, err)
				return
			}
		}
	}
	var fw sync.WaitGroup
	fw.Go(func() { flood(victim.Bare, 300) })
	fw.Go(func() { flood(victim2.Bare, 100) })
	fw.Wait()

	// Wait until the newest flood message is each page's newest event,
	// reading only that event (POST /v1/connect on a live stream answers
	// the newest cursor), so the wait itself costs the daemon nothing.
	arrived := func(u *user, to string, n int) {
		want := fmt.Sprintf("flood-%s-%d", to, n-1)
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			var r struct{ Cursor string }
			u.C.mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
			epoch, off, _ := strings.Cut(r.Cursor, ":")
			k, _ := strconv.ParseUint(off, 10, 64)
			page, err := u.C.events(t.Context(), fmt.Sprintf("%s:%d", epoch, k-1), 0, 1)
			if err != nil {
				t.Fatalf("%s: poll: %v", u.Name, err)
			}
			if len(page.Events) == 1 && page.Events[0].ID == want {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Fatalf("%s: %s never arrived", u.Name, want)
	}
	arrived(victim, victim.Bare, 300)
	arrived(victim2, victim2.Bare, 100)
	close(stop)
	<-chatDone

	// The pages that polled last before the flood are told they missed
	// events, and get what is kept: the newest.
	kept := func(p *poller) (recovered bool, n int) {
		page, err := p.c.events(t.Context(), p.cursor, 0, 1000)
		if err != nil {
			t.Fatalf("%s: poll: %v", p.name, err)
		}
		return page.Recovered, len(page.Events)
	}
	rec1, kept1 := kept(pv)
	rec2, kept2 := kept(pv2)

	// bob got every message of alice's, each page recovered.
	got := map[string]bool{}
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < len(sent) && time.Now().Before(deadline) {
		page, err := pb.c.events(t.Context(), pb.cursor, 2*time.Second, 0)
		if err != nil {
			t.Fatalf("bob: poll: %v", err)
		}
		if !page.Recovered {
			t.Errorf("bob's page at %q not recovered: he lost events to the flood", pb.cursor)
		}
		pb.cursor = page.Cursor
		for _, ev := range page.Events {
			if ev.Event == "message" && bareJID(ev.From) == alice.Bare {
				got[ev.ID] = true
			}
		}
	}
	wg.Wait()
	for _, id := range sent {
		if !got[id] {
			t.Errorf("bob never got alice's message %s", id)
		}
	}

	growth := peak.Load() - base
	logBytes := metricValue(t, e.D, "imsidecar_event_log_bytes")
	dropped := metricValue(t, e.D, "imsidecar_events_dropped_total")
	t.Logf("flood of 300 + 100 × 200 KB: daemon RSS %.1f MiB before, peak growth %.1f MiB (bound %d + %d MiB); event logs hold %.1f MiB; %v events dropped; victim keeps %d events (recovered %v), victim2 %d (recovered %v); bob got %d/%d of alice's messages",
		float64(base)/(1<<20), float64(growth)/(1<<20), floodDaemonMB, floodOverheadMB, logBytes/(1<<20), dropped, kept1, rec1, kept2, rec2, len(got), len(sent))
	if growth > (floodDaemonMB+floodOverheadMB)<<20 {
		t.Errorf("the daemon grew by %.1f MiB under the flood, bound %d MiB (cap) + %d MiB (overhead)", float64(growth)/(1<<20), floodDaemonMB, floodOverheadMB)
	}
	if logBytes > float64(floodDaemonMB<<20)+4*210_000 {
		t.Errorf("the event logs hold %.1f MiB, cap %d MiB (plus one event per session)", logBytes/(1<<20), floodDaemonMB)
	}
	if rec1 || rec2 {
		t.Errorf("flooded pages from before the flood told recovered=%v, %v; want false", rec1, rec2)
	}
	// The waits above acknowledged what the pages had then, which may go
	// later without counting as dropped: most of the flood did count.
	if dropped < 300 {
		t.Errorf("imsidecar_events_dropped_total %v, want most of the 400 flood messages", dropped)
	}
	if len(sent) < 5 {
		t.Errorf("only %d chat messages during the flood: the test proves little", len(sent))
	}
}
