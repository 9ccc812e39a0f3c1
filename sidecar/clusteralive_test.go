package sidecar

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// TestPeerAliveHostile: GET /peer/alive on a node's peer listener (the
// real server and handler, leases in a real Redis) answers 401 before
// anything else without the cluster's secret or with a wrong one; with
// it, 204 only for this very incarnation and, with a session, exactly the
// lease this node holds for it: another incarnation, a forged or stale
// lease (another node's name, a newer or older fencing token), another
// session's key or a repeated parameter get 409 not_owner. A body sent
// along (8 MiB) is not read, an oversized query is net/http's 431, and
// the question never reaches the API behind the listener. The asking
// side (peerAlive) hears yes only for the exact lease.
func TestPeerAliveHostile(t *testing.T) {
	spec := "redis://" + phpsessiontest.StartRedis(t).Addr
	a, b := stateNode(t, spec, "a"), stateNode(t, spec, "b")
	const secret = "0123456789abcdef-cluster-secret"
	a.secret, b.secret = secret, secret
	b.peer = &http.Client{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	a.ls.self.peer = addr
	var inner atomic.Int64 // requests that reached the API behind
	srv := newHTTPServer(a.peerHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.Add(1)
		w.WriteHeader(http.StatusTeapot)
	})), slog.New(slog.DiscardHandler))
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	sk := sessionKey("peer-alive-aaaaaaaaaaaaaaaaa")
	other := sessionKey("peer-alive-bbbbbbbbbbbbbbbbb")
	_, la := ownedSession(t, a, sk, "alice")
	if la.peer != addr {
		t.Fatalf("the lease names %q, want the listener %q", la.peer, addr)
	}
	forged := func(f func(*lease)) string { l := la; f(&l); return l.String() }
	me := la.member()

	hc := &http.Client{Timeout: 10 * time.Second}
	ask := func(method, auth, query string, body io.Reader) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, "http://"+addr+peerAlivePath+"?"+query, body)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, query, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		return resp.StatusCode, string(raw)
	}
	q := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	bearer := "Bearer " + secret
	for _, tc := range []struct {
		name, method, auth, query string
		body                      io.Reader
		status                    int
		code                      string
	}{
		{"no secret", "GET", "", q("member", me), nil, 401, "peer_unauthorized"},
		{"wrong secret", "GET", "Bearer " + secret + "x", q("member", me), nil, 401, "peer_unauthorized"},
		{"the secret's prefix", "GET", "Bearer " + secret[:len(secret)-1], q("member", me), nil, 401, "peer_unauthorized"},
		{"the secret, not as a bearer token", "GET", "Basic " + secret, q("member", me), nil, 401, "peer_unauthorized"},
		{"no secret, a session held", "GET", "", q("member", me, "sk", sk, "lease", la.String()), nil, 401, "peer_unauthorized"},
		{"this incarnation", "GET", bearer, q("member", me), nil, 204, ""},
		{"an earlier incarnation", "GET", bearer, q("member", "a|i-old"), nil, 409, "not_owner"},
		{"another node", "GET", bearer, q("member", "b|i-b"), nil, 409, "not_owner"},
		{"no member", "GET", bearer, "", nil, 409, "not_owner"},
		{"a member given twice, the first another's", "GET", bearer, q("member", "b|i-b", "member", me), nil, 409, "not_owner"},
		{"the lease held", "GET", bearer, q("member", me, "sk", sk, "lease", la.String()), nil, 204, ""},
		{"a stale token", "GET", bearer, q("member", me, "sk", sk, "lease", forged(func(l *lease) { l.token-- })), nil, 409, "not_owner"},
		{"a newer token", "GET", bearer, q("member", me, "sk", sk, "lease", forged(func(l *lease) { l.token++ })), nil, 409, "not_owner"},
		{"another node's name", "GET", bearer, q("member", me, "sk", sk, "lease", forged(func(l *lease) { l.node, l.incarnation = "b", "i-b" })), nil, 409, "not_owner"},
		{"another peer address", "GET", bearer, q("member", me, "sk", sk, "lease", forged(func(l *lease) { l.peer = "127.0.0.1:1" })), nil, 409, "not_owner"},
		{"no lease", "GET", bearer, q("member", me, "sk", sk), nil, 409, "not_owner"},
		{"another session's key", "GET", bearer, q("member", me, "sk", other, "lease", la.String()), nil, 409, "not_owner"},
		{"a malformed key", "GET", bearer, q("member", me, "sk", strings.Repeat("\x00", 64), "lease", la.String()), nil, 409, "not_owner"},
		{"an 8 MiB body, not read", "POST", bearer, q("member", me), bytes.NewReader(make([]byte, 8<<20)), 204, ""},
		{"an 8 MiB body without the secret", "POST", "", q("member", me), bytes.NewReader(make([]byte, 8<<20)), 401, "peer_unauthorized"},
	} {
		st, body := ask(tc.method, tc.auth, tc.query, tc.body)
		if st != tc.status || (tc.code != "" && !strings.Contains(body, `"code":"`+tc.code+`"`)) || (tc.code == "" && body != "") {
			t.Errorf("%s: %d %q, want %d %s", tc.name, st, body, tc.status, tc.code)
		}
	}
	// A query over the header cap is refused by net/http itself.
	if st, _ := ask("GET", bearer, q("member", me, "sk", strings.Repeat("k", 64<<10)), nil); st != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 64 KiB query: %d, want 431", st)
	}
	var m dto.Metric
	if err := a.metrics.clusterPeerRefused.Write(&m); err != nil || m.GetCounter().GetValue() != 6 {
		t.Errorf("peer_refused_total = %v, want 6 (%v)", m.GetCounter().GetValue(), err)
	}
	if n := inner.Load(); n != 0 {
		t.Errorf("%d questions reached the API behind the peer listener", n)
	}
	// The listener still answers after all of it.
	if st, _ := ask("GET", bearer, q("member", me), nil); st != http.StatusNoContent {
		t.Errorf("after the hostile questions: %d", st)
	}

	// The asking side: yes only for the exact lease; a no leaves the
	// answering peer askable again (it answered).
	for _, tc := range []struct {
		name string
		l    lease
		sk   string
		want bool
	}{
		{"the lease held", la, sk, true},
		{"no session, this incarnation", la, "", true},
		{"a stale token", func() lease { l := la; l.token--; return l }(), sk, false},
		{"another session", la, other, false},
		{"another incarnation", func() lease { l := la; l.incarnation = "i-old"; return l }(), "", false},
	} {
		if got := b.peerAlive(t.Context(), tc.l, tc.sk); got != tc.want {
			t.Errorf("peerAlive, %s: %v, want %v", tc.name, got, tc.want)
		}
	}
	if b.silent.silent(addr) {
		t.Error("a peer that answered no is taken for silent")
	}
	for _, result := range []string{"alive", "gone"} {
		var m dto.Metric
		b.metrics.clusterPeerAsks.WithLabelValues(result).Write(&m)
		want := map[string]float64{"alive": 2, "gone": 3}[result]
		if got := m.GetCounter().GetValue(); got != want {
			t.Errorf("peer_asks_total{result=%q} = %v, want %v", result, got, want)
		}
	}
}
