package xmppconn_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// idleConns is the number of connections measured; fixed so the figures do
// not depend on b.N.
const idleConns = 200

// memSample is the heap and stack in use after a full GC.
type memSample struct{ heap, stack uint64 }

func sampleMem() memSample {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return memSample{heap: ms.HeapInuse, stack: ms.StackInuse}
}

// perConn returns (after-before)/n for heap and stack, in bytes.
func perConn(before, after memSample, n int) (heap, stack float64) {
	return (float64(after.heap) - float64(before.heap)) / float64(n),
		(float64(after.stack) - float64(before.stack)) / float64(n)
}

// countingHandler counts messages without keeping them.
type countingHandler struct {
	msgs atomic.Int64
	done chan struct{}
	want int64
	once sync.Once
}

func (h *countingHandler) HandleEvent(ev xmppconn.Event) {
	if _, ok := ev.(*xmppconn.Message); ok && h.msgs.Add(1) == h.want {
		h.once.Do(func() { close(h.done) })
	}
}

// BenchmarkIdleConnMemory measures the client-side memory of idleConns idle,
// logged-in connections to a real Prosody (XEP-0198 and carbons enabled),
// then again after each received one 20 KB stanza. Two variants: "tls"
// (direct TLS, as in production) against a baseline of idleConns bare TLS
// connections, and "plain" (no TLS, as the load generator runs the daemon)
// against bare TCP connections; each baseline (one reader goroutine per
// connection, no XMPP) is measured in the same run. Run with -benchtime=1x:
//
//	go test ./xmppconn -run '^$' -bench IdleConnMemory -benchtime=1x
//
// XMPPCONN_BENCH_HEAPPROFILE=file writes the live heap (sampling every
// allocation) with every connection idle after its large stanza.
func BenchmarkIdleConnMemory(b *testing.B) {
	if os.Getenv("XMPPCONN_BENCH_HEAPPROFILE") != "" {
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	for _, tc := range []struct {
		name string
		tls  bool
	}{{"tls", true}, {"plain", false}} {
		b.Run(tc.name, func(b *testing.B) { benchIdleConnMemory(b, tc.tls) })
	}
}

func benchIdleConnMemory(b *testing.B, useTLS bool) {
	srv := xmppconntest.StartProsody(b, xmppconntest.Options{DirectTLS: useTLS, NoTLS: !useTLS, LogLevel: "warn"})
	users := srv.RegisterN(b, "u", idleConns, "pw")
	srv.RegisterMany(b, map[string]string{"sender": "pw"})
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	mode, tlsConf := xmppconn.TLSNone, (*tls.Config)(nil)
	if useTLS {
		mode, tlsConf = xmppconn.TLSStartTLS, srv.TLSConfig()
	}
	dialBare := func() (net.Conn, error) {
		if !useTLS {
			return net.Dial("tcp", srv.Addr)
		}
		c, err := tls.Dial("tcp", srv.DirectTLSAddr, srv.TLSConfig())
		if err != nil {
			return nil, err
		}
		return c, c.Handshake()
	}

	for b.Loop() {
		// Baseline: bare connections, one blocked reader each.
		base0 := sampleMem()
		var raw []net.Conn
		var rwg sync.WaitGroup
		for range idleConns {
			c, err := dialBare()
			if err != nil {
				b.Fatal(err)
			}
			raw = append(raw, c)
			rwg.Add(1)
			go func() {
				defer rwg.Done()
				buf := make([]byte, 512)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
		base1 := sampleMem()
		baseHeap, baseStack := perConn(base0, base1, idleConns)
		for _, c := range raw {
			c.Close()
		}
		rwg.Wait()
		raw = nil

		// XMPP: idle logged-in connections.
		h := &countingHandler{done: make(chan struct{}), want: idleConns}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		m0 := sampleMem()
		g0 := runtime.NumGoroutine()
		conns := make([]*xmppconn.Conn, 0, idleConns)
		start := time.Now()
		for _, u := range users {
			c, err := xmppconn.Dial(ctx, xmppconn.Config{
				Addr: srv.Addr, Domain: srv.Domain, TLS: mode, TLSConfig: tlsConf,
				User: u, Password: "pw", Resource: "expresso-web",
				Handler: h, Logger: discard, Carbons: true, Reconnect: true,
			})
			if err != nil {
				b.Fatalf("Dial %s: %v\n%s", u, err, srv.LogTail(20))
			}
			conns = append(conns, c)
		}
		loginTime := time.Since(start)
		time.Sleep(time.Second) // let post-login traffic (acks, presence) settle
		m1 := sampleMem()
		heap, stack := perConn(m0, m1, idleConns)
		goroutines := float64(runtime.NumGoroutine()-g0) / idleConns

		// One 20 KB stanza to each connection.
		sender, err := xmppconn.Dial(ctx, xmppconn.Config{
			Addr: srv.Addr, Domain: srv.Domain, TLS: mode, TLSConfig: tlsConf,
			User: "sender", Password: "pw", Resource: "bench", Handler: xmppconn.HandlerFunc(func(xmppconn.Event) {}),
			Logger: discard,
		})
		if err != nil {
			b.Fatal(err)
		}
		big := strings.Repeat("0123456789abcdefghij", 1024) // 20 KiB
		for _, u := range users {
			if _, err := sender.Send(ctx, xmppconn.Message{To: srv.JID(u) + "/expresso-web", Type: "chat", Body: big}); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-h.done:
		case <-time.After(2 * time.Minute):
			b.Fatalf("only %d of %d large messages arrived", h.msgs.Load(), idleConns)
		}
		sender.Close(ctx)
		time.Sleep(time.Second)
		m2 := sampleMem()
		heap2, stack2 := perConn(m0, m2, idleConns)
		if name := os.Getenv("XMPPCONN_BENCH_HEAPPROFILE"); name != "" {
			// go tool pprof -sample_index=inuse_space <file>
			writeHeapProfile(b, name+"."+b.Name()[strings.LastIndexByte(b.Name(), '/')+1:])
		}

		b.ReportMetric(heap, "heapB/conn")
		b.ReportMetric(stack, "stackB/conn")
		b.ReportMetric(heap+stack, "B/conn")
		b.ReportMetric(heap2, "heapB/conn-after20KB")
		b.ReportMetric(stack2, "stackB/conn-after20KB")
		b.ReportMetric(heap2+stack2, "B/conn-after20KB")
		b.ReportMetric(baseHeap+baseStack, "baseline-B/conn")
		b.ReportMetric((heap+stack)/(baseHeap+baseStack), "x-baseline")
		b.ReportMetric(float64(loginTime.Milliseconds())/idleConns, "login-ms/conn")
		b.ReportMetric(goroutines, "goroutines/conn")
		b.Logf("%d conns: idle %.1f KB/conn (heap %.1f, stack %.1f); after one 20 KB stanza %.1f KB/conn (heap %.1f, stack %.1f); bare baseline %.1f KB/conn (heap %.1f, stack %.1f); logins %v",
			idleConns, (heap+stack)/1024, heap/1024, stack/1024, (heap2+stack2)/1024, heap2/1024, stack2/1024,
			(baseHeap+baseStack)/1024, baseHeap/1024, baseStack/1024, loginTime)

		var wg sync.WaitGroup
		for _, c := range conns {
			wg.Add(1)
			go func() { defer wg.Done(); c.Close(ctx) }()
		}
		wg.Wait()
		cancel()
	}
}

func writeHeapProfile(b *testing.B, name string) {
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}
