package sidecar

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestLimitListener: connections over the cap are answered 503
// too_many_connections and closed without reaching the server; closing an
// accepted one frees its slot.
func TestLimitListener(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var rejected atomic.Int64
	ln := newLimitListener(raw, 2, func() { rejected.Add(1) })
	defer ln.Close()
	accepted := make(chan net.Conn)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	var held []net.Conn
	for range 2 {
		dial()
		select {
		case c := <-accepted:
			held = append(held, c)
		case <-time.After(5 * time.Second):
			t.Fatal("a connection under the cap was not accepted")
		}
	}

	over := dial()
	over.Write([]byte("GET /v1/me HTTP/1.1\r\nHost: x\r\n\r\n"))
	over.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(over), nil)
	if err != nil {
		t.Fatalf("reading the answer over the cap: %v", err)
	}
	var body errorBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusServiceUnavailable ||
		body.Error.Code != "too_many_connections" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over the cap: %d %+v %v", resp.StatusCode, body, err)
	}
	select {
	case c := <-accepted:
		t.Fatalf("a connection over the cap reached the server: %v", c.RemoteAddr())
	case <-time.After(100 * time.Millisecond):
	}
	if n := rejected.Load(); n != 1 {
		t.Errorf("onReject called %d times, want 1", n)
	}

	held[0].Close()
	held[0].Close() // twice: the slot is given back once
	dial()
	select {
	case c := <-accepted:
		defer c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("a freed slot was not reused")
	}
	dial()
	select {
	case c := <-accepted:
		t.Fatalf("double Close freed two slots: %v accepted", c.RemoteAddr())
	case <-time.After(200 * time.Millisecond):
	}
	held[1].Close()
}
