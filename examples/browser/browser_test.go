// Package browser_test runs the demo app in a real Apache with mod_php,
// beside a real Prosody and the imsidecar binary, and drives it with
// headless Chromium through Playwright (browser.mjs).
package browser_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return
		}
	}
	t.Fatalf("%s never answered", url)
}

// sharedDir is a temp directory that Apache's www-data can enter (the
// test's own TempDir is private to root).
func sharedDir(t *testing.T, uid, gid int) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "imsidecar-browser-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sess := filepath.Join(dir, "sessions")
	if err := os.Mkdir(sess, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sess, uid, gid); err != nil {
		t.Fatal(err)
	}
	return dir
}

const apacheConf = `ServerName localhost
Listen 127.0.0.1:%[1]d
PidFile %[2]s/httpd.pid
Mutex file:%[2]s default
ErrorLog %[2]s/error.log
LogLevel warn
LoadModule mpm_prefork_module /usr/lib/apache2/modules/mod_mpm_prefork.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule mime_module /usr/lib/apache2/modules/mod_mime.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
LoadModule env_module /usr/lib/apache2/modules/mod_env.so
LoadModule headers_module /usr/lib/apache2/modules/mod_headers.so
LoadModule proxy_module /usr/lib/apache2/modules/mod_proxy.so
LoadModule proxy_http_module /usr/lib/apache2/modules/mod_proxy_http.so
LoadModule php_module /usr/lib/apache2/modules/libphp8.2.so
User %[3]s
Group %[4]s
StartServers 4
MaxRequestWorkers 30
TypesConfig /etc/mime.types
DocumentRoot "%[5]s"
DirectoryIndex index.php
<Directory "%[5]s">
  Require all granted
</Directory>
<FilesMatch "\.php$">
  SetHandler application/x-httpd-php
</FilesMatch>
php_admin_value session.save_path "%[2]s/sessions"
php_admin_value session.gc_probability 0
SetEnv IMSIDECAR_URL http://127.0.0.1:%[6]d
SetEnv DEMO_USERS_FILE %[2]s/users.txt
SetEnv DEMO_DOMAIN %[7]s
SetEnv IMSIDECAR_TOKEN_FILE %[2]s/token
# The SSE path of examples/apache/imsidecar.conf: the browser's
# EventSource reaches the sidecar through Apache with its session cookie,
# and Apache adds the API token (--api-token-file) the browser never sees.
Define IMSIDECAR_TOKEN %[8]s
<Location "/im/events">
  ProxyPass http://127.0.0.1:%[6]d/v1/events flushpackets=on timeout=120
  RequestHeader unset X-Session-Id
  RequestHeader set Authorization "Bearer ${IMSIDECAR_TOKEN}"
</Location>
# The browser XMPP clients' paths (examples/apache/imsidecar.conf), Apache
# adding the token there too, and the pinned npm copies of Strophe.js and
# converse.js the demo pages load.
<Location "/im/http-bind">
  ProxyPass http://127.0.0.1:%[6]d/http-bind timeout=70
  RequestHeader unset X-Session-Id
  RequestHeader set Authorization "Bearer ${IMSIDECAR_TOKEN}"
</Location>
<Location "/im/xmpp-websocket">
  ProxyPass http://127.0.0.1:%[6]d/xmpp-websocket upgrade=websocket timeout=120
  RequestHeader unset X-Session-Id
  RequestHeader set Authorization "Bearer ${IMSIDECAR_TOKEN}"
</Location>
LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so
Alias /vendor/ "%[9]s/"
<Directory "%[9]s">
  Require all granted
</Directory>
SetEnv DEMO_VENDOR_URL /vendor
SetEnv DEMO_BOSH_URL /im/http-bind
`

// site is the demo app in Apache with mod_php, the sidecar and Prosody.
type site struct {
	base     string // the web server's URL
	apiPort  int    // the sidecar's
	srv      *xmppconntest.Server
	chromium string
}

// startSite starts Prosody (alice and bob registered, bob with an avatar),
// the sidecar and Apache serving the demo.
func startSite(t *testing.T) *site {
	xmppconntest.NeedBinary(t, "apache2", "apache2 libapache2-mod-php")
	xmppconntest.NeedBinary(t, "node", "nodejs")
	chromium := xmppconntest.NeedBinary(t, "chromium", "chromium")
	for _, pkg := range []string{"playwright-core", "strophe.js", "converse.js"} {
		if _, err := os.Stat("node_modules/" + pkg); err != nil {
			t.Fatalf("%s missing: run `npm ci` in examples/browser (make test does)", pkg)
		}
	}
	if _, err := os.Stat("/usr/lib/apache2/modules/libphp8.2.so"); err != nil {
		t.Fatal("mod_php missing: apt-get install libapache2-mod-php")
	}
	www, err := user.Lookup("www-data")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(www.Uid)
	gid, _ := strconv.Atoi(www.Gid)

	srv := xmppconntest.StartProsody(t, xmppconntest.Options{MUC: true})
	srv.Register(t, "alice", "alice-pw-1")
	srv.Register(t, "bob", "bob-pw-2")
	publishAvatar(t, srv, "bob", "bob-pw-2")
	dir := sharedDir(t, uid, gid)
	users := "alice:alice-pw-1:Alice Araújo\nbob:bob-pw-2:Bob Brandão\n"
	if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(users), 0o644); err != nil {
		t.Fatal(err)
	}

	// The token file is the PHP side's (www-data) and the sidecar's.
	token := "browser-test-token-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(tokenFile, uid, gid); err != nil {
		t.Fatal(err)
	}

	bin := filepath.Join(t.TempDir(), "imsidecar")
	if out, err := exec.Command("go", "build", "-o", bin, "../../sidecar/cmd/imsidecar").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ports := xmppconntest.FreePorts(t, 3)
	apiPort, opsPort, webPort := ports[0], ports[1], ports[2]
	var sidecarLog bytes.Buffer
	side := exec.Command(bin, "serve", "--listen=127.0.0.1:"+strconv.Itoa(apiPort), "--ops-listen=127.0.0.1:"+strconv.Itoa(opsPort),
		"--xmpp-addr="+srv.Addr, "--xmpp-domain="+srv.Domain, "--xmpp-ca-file="+srv.CAFile,
		"--session-store=files", "--session-save-path="+filepath.Join(dir, "sessions"), "--session-owner="+www.Uid,
		"--recheck-interval=1s", "--log-level=debug", "--api-token-file="+tokenFile, "--bosh-url=/im/http-bind")
	side.Stdout, side.Stderr = &sidecarLog, &sidecarLog
	if err := side.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		side.Process.Signal(os.Interrupt)
		side.Wait()
		if t.Failed() {
			t.Logf("imsidecar log:\n%s", sidecarLog.String())
		}
	})
	waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", opsPort))

	demo, err := filepath.Abs("../expresso-demo")
	if err != nil {
		t.Fatal(err)
	}
	vendor, err := filepath.Abs("node_modules")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "httpd.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, apacheConf, webPort, dir, www.Username, "www-data", demo, apiPort, srv.Domain, token, vendor), 0o644); err != nil {
		t.Fatal(err)
	}
	apache := exec.Command("apache2", "-f", conf, "-DFOREGROUND")
	apache.Env = append(os.Environ(), "APACHE_RUN_DIR="+dir, "APACHE_LOCK_DIR="+dir)
	// Apache signals its whole process group when it stops: give it its
	// own, or it would take the test binary (and make) down with it.
	apache.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var apacheOut bytes.Buffer
	apache.Stdout, apache.Stderr = &apacheOut, &apacheOut
	if err := apache.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		apache.Process.Signal(syscall.SIGTERM) // stops its children too
		done := make(chan struct{})
		go func() { apache.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-apache.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("apache:\n%s\n%s", apacheOut.String(), errLog)
		}
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", webPort)
	waitHTTP(t, base+"/login.php")
	return &site{base: base, apiPort: apiPort, srv: srv, chromium: chromium}
}

// runNode runs a Playwright script against the site.
func (s *site) runNode(t *testing.T, script string, env ...string) {
	t.Helper()
	out, _ := filepath.Abs("out")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", script)
	cmd.Env = append(append(os.Environ(), "BASE_URL="+s.base, "OUT_DIR="+out, "DOMAIN="+s.srv.Domain, "MUC_DOMAIN="+s.srv.MUCDomain,
		"ALICE_PASSWORD=alice-pw-1", "BOB_PASSWORD=bob-pw-2", "CHROMIUM="+s.chromium), env...)
	res, err := cmd.CombinedOutput()
	t.Logf("playwright:\n%s", res)
	if err != nil {
		t.Fatalf("browser test failed: %v (screenshots in %s)", err, out)
	}
}

// checkApacheAddsToken: with --api-token-file, the session cookie alone
// reads nothing from the sidecar directly, while the same cookie through
// Apache's /im/events (which adds the token) gets the events.
func checkApacheAddsToken(t *testing.T, base string, apiPort int) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 20 * time.Second}
	resp, err := hc.PostForm(base+"/login.php", url.Values{"user": {"bob"}, "password": {"bob-pw-2"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	req, _ := http.NewRequestWithContext(t.Context(), "POST", base+"/api.php?action=connect", nil)
	req.Header.Set("X-Requested-With", "imsidecar-demo")
	if resp, err = hc.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("connect through the demo: %v %v", resp, err)
	}
	resp.Body.Close()
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := hc.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, body := get(base + "/im/events?wait=0"); st != http.StatusOK || !strings.Contains(body, `"cursor"`) {
		t.Fatalf("events through Apache with the cookie: %d %s", st, body)
	}
	// The sidecar itself, same cookie, no token: refused.
	direct := fmt.Sprintf("http://127.0.0.1:%d/v1/events?wait=0", apiPort)
	dreq, _ := http.NewRequestWithContext(t.Context(), "GET", direct, nil)
	for _, c := range jar.Cookies(&url.URL{Scheme: "http", Host: strings.TrimPrefix(base, "http://")}) {
		dreq.AddCookie(c)
	}
	dresp, err := http.DefaultClient.Do(dreq)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(dresp.Body)
	dresp.Body.Close()
	if dresp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(b), "session_invalid") {
		t.Fatalf("the cookie without the token, straight to the sidecar: %d %s", dresp.StatusCode, b)
	}
}

func TestBrowserChat(t *testing.T) {
	s := startSite(t)
	s.runNode(t, "browser.mjs")
	checkApacheAddsToken(t, s.base, s.apiPort)
}

// TestBrowserXMPPClients runs independently written web XMPP clients,
// unchanged, on the users' persistent streams through Apache: Strophe.js
// attached to a prebound BOSH session, converse.js with prebind over BOSH
// and over WebSocket; each chats both ways with a user of the demo (the
// /v1 API); converse.js also joins a room that user is in, shows its
// occupants, talks there both ways and keeps the room over a reload with
// no leave or join seen by the room; no page or request carries a
// password (clients.mjs).
func TestBrowserXMPPClients(t *testing.T) {
	s := startSite(t)
	befriendDirect(t, s.srv, "alice", "alice-pw-1", "bob", "bob-pw-2")
	s.runNode(t, "clients.mjs")
}

// befriendDirect makes two users mutual contacts with desktop-style
// connections of their own, before the browsers start.
func befriendDirect(t *testing.T, srv *xmppconntest.Server, a, apw, b, bpw string) {
	t.Helper()
	dial := func(user, pw string) *xmppconn.Conn {
		c, err := xmppconn.Dial(t.Context(), xmppconn.Config{Addr: srv.Addr, Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
			User: user, Password: pw, Resource: "setup", Handler: xmppconn.HandlerFunc(func(ev xmppconn.Event) {})})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca, cb := dial(a, apw), dial(b, bpw)
	defer ca.Close(t.Context())
	defer cb.Close(t.Context())
	ja, jb := srv.JID(a), srv.JID(b)
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(ca.SetRosterItem(ctx, xmppconn.RosterItem{JID: jb, Name: "Bob"}))
	must(cb.SetRosterItem(ctx, xmppconn.RosterItem{JID: ja, Name: "Alice"}))
	must(ca.Subscribe(ctx, jb, "subscribe"))
	must(cb.Subscribe(ctx, ja, "subscribe"))
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		// Pre-approval by the other side's own subscribe request.
		must(ca.Subscribe(ctx, jb, "approve"))
		must(cb.Subscribe(ctx, ja, "approve"))
		items, err := ca.Roster(ctx)
		must(err)
		if len(items) == 1 && items[0].Subscription == "both" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s and %s are not mutual contacts: %+v", a, b, items)
		}
	}
}

// publishAvatar stores a vCard with a photo for user, as a desktop client
// would, so the demo's contact list has an avatar to show.
func publishAvatar(t *testing.T, srv *xmppconntest.Server, user, pass string) {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 32, 32))
	for y := range 32 {
		for x := range 32 {
			img.Set(x, y, color.RGBA{uint8(40 + 6*x), uint8(90 + 4*y), 200, 255})
		}
	}
	var photo bytes.Buffer
	if err := png.Encode(&photo, img); err != nil {
		t.Fatal(err)
	}
	conn, err := xmppconn.Dial(t.Context(), xmppconn.Config{Addr: srv.Addr, Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
		User: user, Password: pass, Resource: "setup", Handler: xmppconn.HandlerFunc(func(xmppconn.Event) {})})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	vcard := `<vCard xmlns="vcard-temp"><FN>Bob Brandão</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>` +
		base64.StdEncoding.EncodeToString(photo.Bytes()) + `</BINVAL></PHOTO></vCard>`
	if _, err := conn.SendIQ(t.Context(), "set", "", []byte(vcard)); err != nil {
		t.Fatalf("publishing %s's vCard: %v", user, err)
	}
}
