package xmppconntest

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// TestEjabberdPortTaken: a port of ejabberd's bound by someone else when
// ejabberd starts (c2s, the BOSH listener, the Erlang distribution) is an
// error, not a node that looks ready while its clients reach whatever
// holds the port (ejabberd exits, or logs eaddrinuse and stops).
// StartEjabberd then starts it again on other ports.
func TestEjabberdPortTaken(t *testing.T) {
	e := StartEjabberd(t, EjabberdOptions{HTTP: true})
	for _, tc := range []struct {
		name string
		addr func() string
	}{
		{"c2s", func() string { return e.Addr }},
		{"http", func() string { return e.httpAddr }},
		{"distribution", func() string { return e.distAddr }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.Kill(t)
			squatter, err := net.Listen("tcp", tc.addr())
			if err != nil {
				t.Fatal(err)
			}
			err = e.start()
			squatter.Close()
			if !errors.Is(err, errPortTaken) {
				t.Fatalf("start with the %s port taken: %v, want errPortTaken", tc.name, err)
			}
			if e.Running() {
				t.Fatalf("ejabberd left running without its %s port", tc.name)
			}
			e.Start(t) // the port is free again
		})
	}
	// Ready includes the BOSH listener, and it is this node's.
	resp, err := http.Get(e.BOSHURL)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ejabberd mod_bosh") {
		t.Fatalf("GET %s: %d %v, want ejabberd's mod_bosh page", e.BOSHURL, resp.StatusCode, err)
	}
}
