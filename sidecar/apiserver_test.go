package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// TestRunShutdownH2CPolls runs the whole daemon over fakes on a unix
// socket with long polls pending over HTTP/2 (55 s waits): cancelling it
// answers every poll at once, Run returns well within --shutdown-timeout
// and no goroutine is left behind. With --http2=false the same client is
// refused and HTTP/1.1 still works.
func TestRunShutdownH2CPolls(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(map[bool]string{true: "http2", false: "http2=false"}[on], func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			sock := filepath.Join(t.TempDir(), "api.sock")
			args := []string{"--listen=unix:" + sock, "--ops-listen=", "--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.test",
				"--session-save-path=" + t.TempDir(), "--shutdown-timeout=5s"}
			if !on {
				args = append(args, "--http2=false")
			}
			cfg, _, err := parseConfig(args, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			reader := &fakeReader{sessions: map[string]*phpsession.Session{}, errs: map[string]error{}}
			reader.set(goodID, "alice", secretPW)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() {
				done <- serve(ctx, cfg, slog.New(slog.DiscardHandler), &deps{reader: reader, dial: func(context.Context, xmppconn.Config) (xmppSession, error) {
					return &fakeConn{done: make(chan struct{})}, nil
				}})
			}()
			dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}
			h2 := &http.Transport{DialContext: dial, Protocols: new(http.Protocols)}
			h2.Protocols.SetUnencryptedHTTP2(true)
			h1 := &http.Transport{DialContext: dial}
			defer h2.CloseIdleConnections()
			defer h1.CloseIdleConnections()
			call := func(tr *http.Transport, method, path string) (*http.Response, error) {
				req, _ := http.NewRequest(method, "http://imsidecar"+path, nil)
				req.Header.Set("X-Session-Id", goodID)
				return (&http.Client{Transport: tr, Timeout: 70 * time.Second}).Do(req)
			}
			var resp *http.Response
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if resp, err = call(h1, "POST", "/v1/connect"); err == nil || time.Now().After(deadline) {
					break
				}
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("connect over HTTP/1.1: %v %v", resp, err)
			}
			resp.Body.Close()
			if !on {
				if resp, err := call(h2, "GET", "/v1/me"); err == nil {
					resp.Body.Close()
					t.Fatalf("--http2=false answered an HTTP/2 client: %s %d", resp.Proto, resp.StatusCode)
				}
				cancel()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				return
			}
			polls := make(chan string, 5)
			for range cap(polls) {
				go func() {
					resp, err := call(h2, "GET", "/v1/events?wait=55")
					if err != nil {
						polls <- err.Error()
						return
					}
					defer resp.Body.Close()
					b, _ := io.ReadAll(resp.Body)
					polls <- resp.Proto + " " + resp.Status + " " + string(b)
				}()
			}
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(4 * time.Second):
				t.Fatal("serve did not return: the pending HTTP/2 polls hold the shutdown")
			}
			for range cap(polls) {
				if got := <-polls; !strings.HasPrefix(got, "HTTP/2.0 200 OK") || !strings.Contains(got, `"cursor"`) {
					t.Errorf("pending poll at shutdown: %s", got)
				}
			}
			t.Logf("serve returned %v after cancel with 5 HTTP/2 polls pending", time.Since(start).Round(time.Millisecond))
		})
	}
}
