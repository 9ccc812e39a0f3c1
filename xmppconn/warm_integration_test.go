package xmppconn_test

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestWarmResume: a connection prepared while the session's Conn still
// serves it (Prepare) continues the session once that Conn detached, with
// no login on the critical path (Warmed), nothing lost or repeated and no
// unavailable at the contact. When the prepared connection cannot serve
// (its life ended, it was closed, the network or the server closed it
// meanwhile, or it is for another account), Warm.Resume logs in afresh
// on a new connection and still resumes the session.
func TestWarmResume(t *testing.T) {
	cases := []struct {
		name string
		// spoil makes the warm connection unusable, or nil.
		spoil func(t *testing.T, w *xmppconn.Warm, p *xmppconntest.Proxy)
		life  time.Duration
		// otherAccount: the Warm is for another user than the state.
		otherAccount bool
		wantWarmed   bool
	}{
		{name: "warm", wantWarmed: true},
		{name: "expired", life: 100 * time.Millisecond, spoil: func(t *testing.T, w *xmppconn.Warm, p *xmppconntest.Proxy) {
			time.Sleep(300 * time.Millisecond)
		}},
		{name: "closed", spoil: func(t *testing.T, w *xmppconn.Warm, p *xmppconntest.Proxy) {
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "cut-by-network", spoil: func(t *testing.T, w *xmppconn.Warm, p *xmppconntest.Proxy) {
			p.Cut() // the server's side is closed: the read after <resume/> fails
		}},
		{name: "other-account", otherAccount: true},
	}
	for _, server := range []string{"prosody", "ejabberd"} {
		t.Run(server, func(t *testing.T) {
			for i, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					var b *backend
					if server == "prosody" {
						b, _ = prosodyBackend(t, xmppconntest.Options{LogLevel: "info"})
					} else {
						b = ejabberdBackend(t)
					}
					rs := newResumeSetup(t, b)
					aliceBare, bobBare := b.jid("alice"), b.jid("bob")
					sendN(t, rs.bob, aliceBare, "in", 0, 5)
					waitCount(t, []*recorder{rs.alice.rec}, "in-", 5)

					// Prepared while alice's Conn still serves her.
					wp := xmppconntest.StartProxy(t, b.addr)
					wcfg := baseConfig(t, b, "alice", pw, "", nil)
					if tc.otherAccount {
						b.register(t, "carol", "carolpw")
						wcfg = baseConfig(t, b, "carol", "carolpw", "", nil)
					}
					wcfg.Addr = wp.Addr()
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					w, err := xmppconn.Prepare(ctx, wcfg, tc.life)
					cancel()
					if err != nil {
						t.Fatalf("Prepare: %v\n%s", err, b.logTail(30))
					}
					t.Cleanup(func() { w.Close() })
					sendN(t, rs.bob, aliceBare, "in", 5, 5)
					waitCount(t, []*recorder{rs.alice.rec}, "in-", 10)
					if tc.spoil != nil {
						tc.spoil(t, w, wp)
					}

					dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err = rs.alice.Detach(dctx)
					dcancel()
					if err != nil {
						t.Fatalf("Detach: %v", err)
					}
					st := rs.store.state(t)
					sendN(t, rs.bob, aliceBare, "in", 10, 5) // while nobody holds the session

					rec2 := newRecorder()
					cfg := baseConfig(t, b, "alice", pw, "", rec2)
					cfg.Addr = wp.Addr()
					cfg.ResumeStore = &memStore{}
					ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
					alice2, err := w.Resume(ctx, cfg, st)
					cancel()
					if err != nil {
						t.Fatalf("Warm.Resume: %v\n%s", err, b.logTail(30))
					}
					t.Cleanup(func() { closeConn(t, alice2) })
					if !alice2.Resumed() {
						t.Fatalf("Warm.Resume logged in afresh, want a resumed session\n%s", b.logTail(30))
					}
					if alice2.Warmed() != tc.wantWarmed {
						t.Errorf("Warmed() = %v, want %v", alice2.Warmed(), tc.wantWarmed)
					}
					a2 := &client{Conn: alice2, rec: rec2, user: "alice", name: "alice/warm"}
					sendN(t, rs.bob, aliceBare, "in", 15, 5)
					sendN(t, a2, bobBare, "out", 0, 3)
					recs := []*recorder{rs.alice.rec, rec2}
					waitCount(t, recs, "in-", 20)
					waitCount(t, []*recorder{rs.bob.rec}, "out-", 3)
					time.Sleep(300 * time.Millisecond) // let a duplicate show up
					wantOnce(t, recs, "in-", "inbound %s delivered %d times")
					if unavailableFrom(rs.bob.rec, rs.aliceJ) {
						t.Errorf("bob saw alice unavailable during the hand-over")
					}
					// Close on a spent Warm does nothing.
					if i == 0 {
						if err := w.Close(); err != nil {
							t.Errorf("Close after Resume: %v", err)
						}
					}
				})
			}
		})
	}
}

// TestPrepareFails: Prepare with a cancelled context, wrong credentials
// or a server that is not there fails as Dial does, and neither it nor an
// expired or closed Warm leaves a goroutine or a connection behind.
func TestPrepareFails(t *testing.T) {
	b, _ := prosodyBackend(t, xmppconntest.Options{LogLevel: "info"})
	b.register(t, "carol", "carolpw")
	before := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if w, err := xmppconn.Prepare(ctx, baseConfig(t, b, "carol", "carolpw", "", nil), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Prepare with a cancelled context = %v, %v; want context.Canceled", w, err)
	}
	if _, err := xmppconn.Prepare(ctxT(t), baseConfig(t, b, "carol", "wrong", "", nil), 0); !errors.Is(err, xmppconn.ErrAuth) {
		t.Errorf("Prepare with a wrong password = %v, want ErrAuth", err)
	}
	bad := baseConfig(t, b, "carol", "carolpw", "", nil)
	bad.Addr = "127.0.0.1:1"
	if _, err := xmppconn.Prepare(ctxT(t), bad, 0); err == nil {
		t.Errorf("Prepare to a closed port succeeded")
	}
	// One expires, one is closed, many are closed at once.
	w1, err := xmppconn.Prepare(ctxT(t), baseConfig(t, b, "carol", "carolpw", "", nil), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var ws []*xmppconn.Warm
	for range 5 {
		w, err := xmppconn.Prepare(ctxT(t), baseConfig(t, b, "carol", "carolpw", "", nil), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	for _, w := range ws {
		w.Close()
		w.Close() // idempotent
	}
	time.Sleep(200 * time.Millisecond)
	w1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Errorf("%d goroutines after, %d before\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
