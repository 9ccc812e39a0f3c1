package sidecar_test

import (
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// authFailureLimit is the daemon's default --auth-failure-limit, which
// these tests run with.
const authFailureLimit = 10

// connectAll calls POST /v1/connect for every user at once and returns
// the statuses and error codes.
func connectAll(t *testing.T, us []*user) (status []int, code []string) {
	t.Helper()
	status, code = make([]int, len(us)), make([]string, len(us))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, u := range us {
		wg.Go(func() {
			<-start
			st, err := u.C.call(t.Context(), "POST", "/v1/connect", nil, nil)
			status[i], code[i] = st, errCode(err)
		})
	}
	close(start)
	wg.Wait()
	return status, code
}

// onlineMany registers n users named prefix+N with password pw, logs them
// in to Expresso and connects them all at once; every one must get 200.
func onlineMany(t *testing.T, e *e2e, prefix string, n int, pw string) ([]string, []*user) {
	t.Helper()
	names := e.XMPP.RegisterN(t, prefix, n, pw)
	us := loginMany(t, e, names, pw)
	status, code := connectAll(t, us)
	for i := range status {
		if status[i] != http.StatusOK {
			t.Errorf("%s: correct password answered %d %s, want 200", names[i], status[i], code[i])
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return names, us
}

var authFailuresMetric = regexp.MustCompile(`(?m)^imsidecar_auth_failures_total (\d+)$`)

func authFailuresCounted(t *testing.T, d *daemon) int {
	t.Helper()
	m := authFailuresMetric.FindStringSubmatch(metricsText(t, d))
	if m == nil {
		t.Fatal("no imsidecar_auth_failures_total in /metrics")
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestAuthLimitLoginStorms: 30 correct first logins at once all succeed
// (they wait their turn, none is refused); then 30 first logins at once
// with stale passwords cost the server at most --auth-failure-limit
// failures, counted in Prosody's own authentication-failure events and in
// the daemon's metric; a user whose password works still logs in again
// afterwards (the budget's reserve). Before the one limiter, every one of
// the 30 reached the server: the limit was checked before dialling and
// counted after.
func TestAuthLimitLoginStorms(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--auth-failure-limit=" + strconv.Itoa(authFailureLimit)}})
	_, goodUsers := onlineMany(t, e, "storm", 30, "the-right-password")
	if n := e.XMPP.AuthFailures(""); n != 0 {
		t.Fatalf("%d authentication failures with correct passwords", n)
	}

	stale := e.XMPP.RegisterN(t, "stale", 30, "the-new-password")
	staleUsers := loginMany(t, e, stale, "an-old-password")
	status, code := connectAll(t, staleUsers)
	tried := 0
	for i := range status {
		switch {
		case status[i] == http.StatusBadGateway && code[i] == "xmpp_auth_failed":
			tried++
		case status[i] == http.StatusServiceUnavailable && code[i] == "auth_throttled":
		default:
			t.Errorf("%s: stale password answered %d %s, want 502 xmpp_auth_failed or 503 auth_throttled", stale[i], status[i], code[i])
		}
	}
	fails, counted := e.XMPP.AuthFailures(""), authFailuresCounted(t, e.D)
	t.Logf("30 stale passwords at once: %d tried, %d throttled; %d failures at the server, %d in the metric", tried, len(stale)-tried, fails, counted)
	if fails > authFailureLimit {
		t.Errorf("30 parallel stale logins cost %d failures at the server, limit %d", fails, authFailureLimit)
	}
	if counted != fails || tried != fails {
		t.Errorf("server saw %d failures, the metric counts %d, the API answered %d xmpp_auth_failed; want all equal", fails, counted, tried)
	}
	// The budget is spent on unproven logins: users whose password
	// works are still online, and log in again.
	for _, u := range goodUsers[:3] {
		var me struct{ State string }
		u.C.mustCall(t, "GET", "/v1/me", nil, &me, http.StatusOK)
		if me.State != "online" {
			t.Errorf("%s is %s after the storm, want online", u.Name, me.State)
		}
		u.C.mustCall(t, "POST", "/v1/disconnect", nil, nil, http.StatusNoContent)
		u.C.mustCall(t, "POST", "/v1/connect", nil, nil, http.StatusOK)
	}
	if n := e.XMPP.AuthFailures(""); n != fails {
		t.Errorf("known-good logins added %d failures", n-fails)
	}
}

// TestAuthLimitReconnectStorm: 25 users online, their passwords changed on
// the server, Prosody restarted. Every stream reconnects by itself, inside
// xmppconn; each reconnection asks the daemon's limiter, so the server sees
// at most --auth-failure-limit failures, not 25.
func TestAuthLimitReconnectStorm(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{Extra: []string{"--auth-failure-limit=" + strconv.Itoa(authFailureLimit)}})
	names, _ := onlineMany(t, e, "rc", 25, "the-first-password")
	changed := map[string]string{}
	for _, n := range names {
		changed[n] = "changed-on-the-server"
	}
	e.XMPP.RegisterMany(t, changed)
	e.XMPP.Restart(t)

	// Wait until every user's reconnection was decided: refused by the
	// server (its audit log), or not admitted by the limiter (the daemon's
	// log says so for that user).
	undecided := func() []string {
		log := e.D.Log()
		var out []string
		for _, n := range names {
			if e.XMPP.AuthFailures(n) > 0 {
				continue
			}
			if strings.Contains(log, "user="+n+" ") && notAdmitted(log, n) {
				continue
			}
			out = append(out, n)
		}
		return out
	}
	deadline := time.Now().Add(90 * time.Second)
	for u := undecided(); len(u) > 0; u = undecided() {
		if time.Now().After(deadline) {
			t.Fatalf("reconnections of %v not decided after 90 s\n%s", u, e.D.LogTail(40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	fails, counted := e.XMPP.AuthFailures(""), authFailuresCounted(t, e.D)
	t.Logf("25 reconnections with changed passwords: %d failures at the server, %d in the metric", fails, counted)
	if fails > authFailureLimit {
		t.Errorf("25 reconnections with changed passwords cost %d failures at the server, limit %d", fails, authFailureLimit)
	}
	if counted != fails {
		t.Errorf("server saw %d failures, the metric counts %d", fails, counted)
	}
	for _, n := range names {
		if k := e.XMPP.AuthFailures(n); k > 1 {
			t.Errorf("%s: %d failures, want at most 1 (never retried)", n, k)
		}
	}
}

// notAdmitted reports whether the daemon logged a reconnection of user
// that the limiter did not admit.
func notAdmitted(log, user string) bool {
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "user="+user+" ") && strings.Contains(line, "authentication not admitted") {
			return true
		}
	}
	return false
}
