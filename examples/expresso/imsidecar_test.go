package expresso_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// sidecar is the imsidecar binary of this tree, serving a Prosody and the
// PHP sessions of dir.
type sidecar struct {
	API string // http://127.0.0.1:port
}

func startSidecar(t *testing.T, srv *xmppconntest.Server, sessions string) *sidecar {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "imsidecar")
	if out, err := exec.Command("go", "build", "-o", bin, "../../sidecar/cmd/imsidecar").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ports := xmppconntest.FreePorts(t, 2)
	api, ops := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	var log bytes.Buffer
	var logMu sync.Mutex
	cmd := exec.Command(bin, "serve", "--listen="+api, "--ops-listen="+ops,
		"--xmpp-addr="+srv.Addr, "--xmpp-domain="+srv.Domain, "--xmpp-ca-file="+srv.CAFile,
		"--session-store=files", "--session-save-path="+sessions, "--session-owner="+strconv.Itoa(os.Getuid()),
		"--recheck-interval=1s", "--log-level=debug", "--bosh-url=/im/http-bind", "--offline-grace="+standinGrace.String())
	cmd.Stdout = writerFunc(func(p []byte) (int, error) { logMu.Lock(); defer logMu.Unlock(); return log.Write(p) })
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			logMu.Lock()
			t.Logf("imsidecar log:\n%s", log.String())
			logMu.Unlock()
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + ops + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("imsidecar never answered /healthz")
		}
	}
	return &sidecar{API: "http://" + api}
}

// standinGrace is the sidecar's --offline-grace here: long enough for the
// stand-in's page to log in again after a reload on a loaded machine.
const standinGrace = 5 * time.Second

// v1Contact is a user of imsidecar's /v1 API, as Expresso's PHP would be:
// its events (long poll) feed a recorder.
type v1Contact struct {
	api, session string
}

func (c v1Contact) call(t *testing.T, method, path string, body any) []byte {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, c.api+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Session-Id", c.session)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		t.Fatalf("%s %s: %s %s", method, path, resp.Status, data)
	}
	return data
}

func (c v1Contact) send(t *testing.T, to, body string) {
	t.Helper()
	c.call(t, "POST", "/v1/messages", map[string]any{"to": to, "type": "chat", "body": body})
}

func (c v1Contact) setPresence(t *testing.T, show, status string) {
	t.Helper()
	c.call(t, "POST", "/v1/presence", map[string]any{"show": show, "status": status})
}

// poll feeds rec with the contact's events until the test ends.
func (c v1Contact) poll(t *testing.T, rec *recorder) {
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	ctx := t.Context()
	go func() {
		defer close(done)
		cursor := ""
		for ctx.Err() == nil {
			req, err := http.NewRequestWithContext(ctx, "GET", c.api+"/v1/events?wait=20&cursor="+cursor, nil)
			if err != nil {
				return
			}
			req.Header.Set("X-Session-Id", c.session)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				continue
			}
			var page struct {
				Cursor string `json:"cursor"`
				Events []struct {
					Event, From, To, Type, Show, Status, Body, State string
				} `json:"events"`
			}
			err = json.NewDecoder(resp.Body).Decode(&page)
			resp.Body.Close()
			if err != nil {
				continue
			}
			cursor = page.Cursor
			for _, e := range page.Events {
				switch e.Event {
				case "presence":
					rec.HandleEvent(&xmppconn.Presence{From: e.From, To: e.To, Type: e.Type, Show: xmppconn.Show(e.Show), Status: e.Status})
				case "message":
					rec.HandleEvent(&xmppconn.Message{From: e.From, To: e.To, Type: xmppconn.MessageType(e.Type), Body: e.Body})
				case "chatstate":
					rec.HandleEvent(&xmppconn.ChatState{From: e.From, To: e.To, State: xmppconn.ChatStateKind(e.State)})
				}
			}
		}
	}()
}

// TestStandinImsidecarBOSH runs the stand-in's scenario against imsidecar's
// /http-bind, the way a switched 2.5 site does: the page gets its
// connection data from the drop-in auth_messenger.php (placeholder blob,
// BOSH URL /im/http-bind on the page's origin), the browser holds only the
// PHP session cookie, and the contact is a /v1 user. What must differ from
// Prosody's own BOSH: the roster loads, and no page reload flaps, even past
// the grace period, while the menu's "offline" still takes alice offline.
func TestStandinImsidecarBOSH(t *testing.T) {
	d := startDriver(t)
	srv := xmppconntest.StartProsody(t, xmppconntest.Options{})
	const alicePW, bobPW = "alice-pw-1", "bob-pw-2"
	srv.Register(t, "alice", alicePW)
	srv.Register(t, "bob", bobPW)
	srv.Befriend(t, "alice", "bob")

	php := startPHPSite(t, expressoFixture{
		Server:   map[string]string{"groups_expresso_messenger": messengerGroups(t, "im-users")},
		PHPGWAPI: map[string]string{"jabber_domain": srv.Domain},
		Groups:   map[string][]string{"alice": {"im-users"}, "bob": {"im-users"}},
	})
	side := startSidecar(t, srv, php.Sessions.SavePath)
	aliceSession := php.login(t, "alice", alicePW, "Celepar")
	bobSession := php.login(t, "bob", bobPW, "Celepar")

	bob := newRecorder()
	bc := v1Contact{api: side.API, session: bobSession}
	bc.call(t, "POST", "/v1/connect", nil)
	bc.poll(t, bob)

	web := startSite(t)
	web.proxy("/im/http-bind", side.API+"/http-bind")
	web.proxy("/prototype/plugins/messenger/auth_messenger.php", php.URL+"/prototype/plugins/messenger/auth_messenger.php")
	cookie := []map[string]any{{"name": "sessionid", "value": aliceSession, "url": web.URL}}
	pageURL := web.URL + "/?auth=/prototype/plugins/messenger/auth_messenger.php&rid=9999999000"

	alice := v1Contact{api: side.API, session: aliceSession}
	// The status menu's "offline" is byte for byte the terminate the
	// expressoMail1_2 tree sends on every page unload: imsidecar tells them
	// apart by whether a page attaches within --offline-grace, so a reload
	// shows nothing and "offline" shows alice unavailable (docs/EXPRESSO.md).
	standinScenario(t, d, cookie, web, pageURL, "/im/http-bind", srv.JID("alice"), bob, bc, srv.JID("bob"),
		expect{roster: true, flap: false, unloadFlap: false, menuOffline: true, grace: standinGrace,
			aliceSays: func(t *testing.T, body string) { alice.send(t, srv.JID("bob"), body) }})

	// The password went nowhere near the browser: not in any request it
	// made, as the browser reports them and as the site received them (the
	// browser may not report those sent while a page unloads), nor in what
	// auth_messenger.php answered.
	var reqs []request
	d.must(map[string]any{"op": "requests"}, &reqs)
	if len(reqs) == 0 {
		t.Error("the browser reported no request: the check below would prove nothing")
	}
	for _, r := range append(reqs, web.requests()...) {
		for _, form := range []string{alicePW, base64.StdEncoding.EncodeToString([]byte(alicePW)), strings.TrimRight(base64.StdEncoding.EncodeToString([]byte("alice@"+srv.Domain+"\x00alice\x00"+alicePW)), "=")} {
			if strings.Contains(r.URL, form) || strings.Contains(r.Body, form) {
				t.Errorf("the browser sent the password (as %q) to %s", form, r.URL)
			}
		}
	}
	body, _ := php.post(t, aliceSession)
	checkNoPassword(t, body, "alice", alicePW)
	if !strings.Contains(body, fmt.Sprintf(`"dt__c":"%s"`, srv.Domain)) {
		t.Errorf("auth_messenger.php answered %s", body)
	}
	// A site that only pointed jabber_url_1 at imsidecar, keeping Expresso's
	// own auth_messenger.php: the blob carries the real password (ignored)
	// and arrives over-padded ("===") after the client's "==".
	web.mux.HandleFunc("POST /original_auth_messenger.php", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]string{"dt__a": "JABBER_CELEPAR", "dt__b": "/im/http-bind", "dt__c": srv.Domain,
			"dt__d": "alice", "dt__e": originalBlob(srv.JID("alice"), "alice", alicePW)})
	})
	if _, err := base64.StdEncoding.DecodeString(originalBlob(srv.JID("alice"), "alice", alicePW) + "=="); err == nil {
		t.Fatal("alice's original blob is strict base64: the case below would prove nothing")
	}
	d.must(map[string]any{"op": "open", "url": web.URL + "/?auth=/original_auth_messenger.php", "cookies": cookie}, nil)
	d.wait("standin.connected || standin.failed")
	var failed string
	d.eval("standin.failed || ''", &failed)
	if failed != "" {
		t.Errorf("with Expresso's own auth_messenger.php (over-padded blob): %s", failed)
	}

	// Logout: the page's stream is terminated, contacts see alice go, and
	// the 2.5 client, which ignores type='terminate', must be stopped by
	// an HTTP error rather than poll on.
	gone := bob.mark()
	d.must(map[string]any{"op": "open", "url": pageURL, "cookies": cookie}, nil)
	d.wait("standin.connected || standin.failed")
	phpsessiontest.DestroySession(t, php.Sessions, aliceSession)
	bob.waitFor(t, "alice's unavailable presence after logout", gone, func(e xmppconn.Event) bool {
		p, ok := e.(*xmppconn.Presence)
		return ok && strings.HasPrefix(p.From, srv.JID("alice")+"/") && p.Type == "unavailable"
	})
	d.wait("standin.stopped")
	var after int
	d.eval("standin.afterTerminate", &after)
	if after > 2 {
		t.Errorf("after logout the 2.5 client polled %d times with its dead sid (it stops only on an HTTP error)", after)
	}
}
