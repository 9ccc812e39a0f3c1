package sidecar_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestE2EBlocking (XEP-0191 through the API, issue 8 §3): a blocked
// contact's message never reaches the page; after unblocking it does.
func TestE2EBlocking(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	e.register(t, "alice", "bob")
	alice, bob := e.login(t, "alice"), e.login(t, "bob")
	pa, pb := alice.connect(t), bob.connect(t)
	befriend(t, alice, bob, pa, pb)

	path := "/v1/blocklist/" + url.PathEscape(bob.Bare)
	alice.C.mustCall(t, "PUT", path, nil, nil, http.StatusNoContent)
	var list struct{ Items []string }
	alice.C.mustCall(t, "GET", "/v1/blocklist", nil, &list, http.StatusOK)
	if len(list.Items) != 1 || list.Items[0] != bob.Bare {
		t.Fatalf("blocklist = %v", list.Items)
	}
	blocked := bob.C.send(t, alice.Bare, "you should never see this", false)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, ev := range pa.poll(t, time.Second) {
			if ev.Event == "message" && (ev.ID == blocked || strings.Contains(ev.Body, "never see")) {
				t.Fatalf("a blocked contact's message reached the page: %+v", ev)
			}
		}
	}

	alice.C.mustCall(t, "DELETE", path, nil, nil, http.StatusNoContent)
	alice.C.mustCall(t, "GET", "/v1/blocklist", nil, &list, http.StatusOK)
	if len(list.Items) != 0 {
		t.Fatalf("blocklist after unblock = %v", list.Items)
	}
	id := bob.C.send(t, alice.Bare, "unblocked now", false)
	pa.waitFor(t, 15*time.Second, "message after unblock", func(ev event) bool {
		return ev.Event == "message" && ev.ID == id
	})
}
