package xmppconntest_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestProxy: the proxy relays both ways, Hold drops what the client
// writes (the bytes are lost, not delayed), Cut ends the relayed connections and relays new ones, Refuse
// turns new ones away until Restore, and its goroutines end with the test
// (the echo server's too: the test waits for it).
func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { io.Copy(c, c); c.Close() })
		}
	})
	p := xmppconntest.StartProxy(t, ln.Addr().String())
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	echo := func(c net.Conn, r *bufio.Reader, line string) (string, error) {
		t.Helper()
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			return "", err
		}
		got, err := r.ReadString('\n')
		return got, err
	}

	c, r := dial()
	if got, err := echo(c, r, "um"); err != nil || got != "um\n" {
		t.Fatalf("relayed echo: %q, %v", got, err)
	}
	p.Hold(true)
	if _, err := io.WriteString(c, "perdido\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if got, err := r.ReadString('\n'); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("held: the echo read %q, %v; want nothing (what the client wrote is dropped)", got, err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	p.Hold(false)

	p.Cut()
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("a cut connection still reads %q", got)
	}
	c, r = dial()
	if got, err := echo(c, r, "três"); err != nil || got != "três\n" {
		t.Fatalf("a new connection after Cut: %q, %v", got, err)
	}

	p.Refuse()
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("a connection still reads %q after Refuse", got)
	}
	c, r = dial()
	if got, err := echo(c, r, "recusado"); err == nil {
		t.Fatalf("a new connection while refused was relayed: %q", got)
	}
	p.Restore()
	c, r = dial()
	if got, err := echo(c, r, "quatro"); err != nil || got != "quatro\n" {
		t.Fatalf("a new connection after Restore: %q, %v", got, err)
	}
}
