package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// TestServeNotifiesSystemd: under Type=notify (the packaged unit) systemd
// considers the service started only on READY=1. The daemon sends it once
// the API answers, and STOPPING=1 when it begins its shutdown.
func TestServeNotifiesSystemd(t *testing.T) {
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", notify.LocalAddr().String())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg, _, err := parseConfig([]string{"--listen=" + addr, "--ops-listen=", "--xmpp-addr=127.0.0.1:5222",
		"--xmpp-domain=example.test", "--session-save-path=" + t.TempDir(), "--shutdown-timeout=2s"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	reader := &fakeReader{sessions: map[string]*phpsession.Session{}, errs: map[string]error{}}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, cfg, slog.New(slog.DiscardHandler), &deps{reader: reader, dial: func(context.Context, xmppconn.Config) (xmppSession, error) {
			return &fakeConn{done: make(chan struct{})}, nil
		}})
	}()
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 256)
		notify.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := notify.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("notify socket: %q %v, want %q", buf[:n], err, want)
		}
	}
	read("READY=1")
	// Ready means listening: the API answers at once (401: no session).
	resp, err := http.Get("http://" + addr + "/v1/me")
	if err != nil {
		t.Fatalf("API after READY=1: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/me without a session: %d", resp.StatusCode)
	}
	cancel()
	read("STOPPING=1")
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// TestSDNotifyAbstractSocket: systemd may name an abstract socket
// ("@..."); sdNotify reaches it.
func TestSDNotifyAbstractSocket(t *testing.T) {
	name := "@imsidecar-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	sdNotify("READY=1")
	buf := make([]byte, 64)
	notify.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := notify.Read(buf); err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("abstract notify socket: %q %v", buf[:n], err)
	}
}
