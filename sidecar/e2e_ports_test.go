package sidecar_test

import (
	"net"
	"net/http"
	"strconv"
	"testing"
)

// TestStartDaemonPortTaken: the harness picks a port free a moment ago and
// the daemon binds it a moment later; a port some other process bound in
// between (CI runs several test binaries at once) makes the daemon exit
// at startup. startDaemon then starts it again on other ports instead of
// failing the test, and the daemon it returns serves on the new ones.
func TestStartDaemonPortTaken(t *testing.T) {
	e := startE2E(t, "files", daemonOptions{})
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var listens []string
	d := startDaemon(t, daemonOptions{Store: e.Store, XMPP: e.XMPP, Listeners: func() []string {
		addr := taken.Addr().String()
		if len(listens) > 0 {
			addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
		}
		listens = append(listens, addr)
		return []string{"--listen=" + addr}
	}})
	if len(listens) != 2 {
		t.Fatalf("the daemon was started on %q, want the taken port then another", listens)
	}
	d.URL = "http://" + listens[1]
	e.register(t, "alice")
	u := e.login(t, "alice")
	var r connectResp
	d.client(u.SID).mustCall(t, "POST", "/v1/connect", nil, &r, http.StatusOK)
}
