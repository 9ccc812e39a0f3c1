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
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// phpSite is auth_messenger.php installed in an Expresso-shaped tree (with
// testdata/header.inc.php standing in for Expresso's), served by PHP's own
// web server with the session store the sessions are written to.
type phpSite struct {
	URL      string // the root
	Sessions phpsessiontest.Store
}

// expressoFixture is what testdata/header.inc.php gives the page:
// Expresso's global configuration, the phpgwapi configuration and each
// user's groups.
type expressoFixture struct {
	Server   map[string]string   `json:"server"`
	PHPGWAPI map[string]string   `json:"phpgwapi"`
	Groups   map[string][]string `json:"groups"`
}

// messengerGroups renders groups_expresso_messenger as Expresso's admin
// screen stores it: a serialized array of "label;groupname".
func messengerGroups(t *testing.T, groups ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "a:%d:{", len(groups))
	for i, g := range groups {
		e := "Grupo " + g + ";" + g
		fmt.Fprintf(&b, "i:%d;s:%d:\"%s\";", i, len(e), e)
	}
	b.WriteString("}")
	return b.String()
}

func startPHPSite(t *testing.T, fx expressoFixture, env ...string) *phpSite {
	t.Helper()
	php := phpsessiontest.PHP(t)
	root := t.TempDir()
	copyFile(t, "testdata/header.inc.php", filepath.Join(root, "header.inc.php"))
	copyFile(t, "auth_messenger.php", filepath.Join(root, "prototype/plugins/messenger/auth_messenger.php"))
	sessions := filepath.Join(t.TempDir(), "sessions")
	if err := os.Mkdir(sessions, 0o700); err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(t.TempDir(), "fixture.json")
	data, err := json.Marshal(fx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fixture, data, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(php, "-S", addr, "-t", root,
		"-d", "session.save_path="+sessions, "-d", "session.use_strict_mode=0", "-d", "session.gc_probability=0",
		"-d", "error_reporting=E_ALL", "-d", "display_errors=0", "-d", "log_errors=1")
	cmd.Env = append(append(os.Environ(), "EXPRESSO_FIXTURE="+fixture), env...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		// PHP logs errors to the server's stderr: none may come from the
		// drop-in (the stand-in header's own session warnings may).
		for _, line := range strings.Split(log.String(), "\n") {
			if strings.Contains(line, "auth_messenger.php on line") {
				t.Errorf("PHP: %s", line)
			}
		}
		if t.Failed() {
			t.Logf("php -S log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("php -S never listened:\n%s", log.String())
		}
	}
	return &phpSite{URL: "http://" + addr, Sessions: phpsessiontest.Store{Handler: "files", SavePath: sessions}}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// login writes an Expresso-shaped logged-in session for user, with the
// keys auth_messenger.php reads (userid, the organisation), and returns
// its id.
func (s *phpSite) login(t *testing.T, user, password, org string) string {
	t.Helper()
	id := phpsessiontest.NewID(t)
	phpsessiontest.WriteExpressoSession(t, s.Sessions, id, phpsessiontest.ExpressoUser{User: user, Password: password, Domain: "example.test"})
	phpsessiontest.WriteSession(t, s.Sessions, id, fmt.Sprintf(
		"$_SESSION['phpgw_info']['expressomail']['user']['userid'] = %s; $_SESSION['phpgw_info']['expressomail']['email_server']['organisationName'] = base64_decode(%s);",
		strconv.Quote(user), strconv.Quote(base64.StdEncoding.EncodeToString([]byte(org)))))
	return id
}

// post calls auth_messenger.php as the client does: POST, no parameters,
// the session cookie.
func (s *phpSite) post(t *testing.T, sessionID string) (string, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "POST", s.URL+"/prototype/plugins/messenger/auth_messenger.php", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Requested-With", "XMLHttpRequest")
	if sessionID != "" {
		req.AddCookie(&http.Cookie{Name: "sessionid", Value: sessionID})
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("auth_messenger.php: %s\n%s", resp.Status, body)
	}
	return string(body), resp.Header
}

// TestAuthMessengerAnswer runs the drop-in auth_messenger.php for real
// (PHP 8.2's web server, sessions written by PHP) and checks the answer
// the 2.5 client reads: the same JSON keys, the sidecar's BOSH URL, a
// PLAIN blob that is strict base64 once the client appends "==" and holds
// a placeholder, and the password nowhere.
func TestAuthMessengerAnswer(t *testing.T) {
	fx := expressoFixture{
		Server:   map[string]string{"groups_expresso_messenger": messengerGroups(t, "im-users", "diretoria")},
		PHPGWAPI: map[string]string{"jabber_domain": "example.test", "jabber_url_1": "http://jabber.example.test:5280/http-bind"},
		Groups:   map[string][]string{"alice": {"todos", "im-users"}, "bob": {"todos"}, "c": {"diretoria"}, "dd": {"im-users"}, "eee": {"im-users"}},
	}
	site := startPHPSite(t, fx)
	const password = "S3gr3d0-da-Alice" // what 2.5's own file would have sent

	cases := []struct {
		name, user, org string
		want            map[string]string // nil: {"error":"Not Permission"}
	}{
		{"member", "alice", "Celepar", map[string]string{"dt__a": "JABBER_CELEPAR", "dt__b": "/im/http-bind", "dt__c": "example.test", "dt__d": "alice"}},
		{"not a member", "bob", "Celepar", nil},
		// ISO-8859-1 in the session: the resource is reduced to ASCII, the
		// JSON stays valid.
		{"latin1 organisation", "c", "Secretaria da Fazenda\xc7\xc3O", map[string]string{"dt__a": "JABBER_SECRETARIA_DA_FAZENDA__O", "dt__b": "/im/http-bind", "dt__c": "example.test", "dt__d": "c"}},
		// Two more lengths of user: every base64 padding class once.
		{"user length 2", "dd", "X", map[string]string{"dt__a": "JABBER_X", "dt__b": "/im/http-bind", "dt__c": "example.test", "dt__d": "dd"}},
		{"user length 3", "eee", "", map[string]string{"dt__a": "JABBER_", "dt__b": "/im/http-bind", "dt__c": "example.test", "dt__d": "eee"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := site.login(t, c.user, password, c.org)
			body, hdr := site.post(t, id)
			checkNoPassword(t, body, c.user, password)
			var got map[string]string
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatalf("answer %q: %v", body, err)
			}
			if c.want == nil {
				if len(got) != 1 || got["error"] != "Not Permission" {
					t.Fatalf("answer %s, want {\"error\":\"Not Permission\"}", body)
				}
				return
			}
			if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			if len(got) != 5 {
				t.Errorf("answer has keys %v, want dt__a..dt__e", got)
			}
			// The client sends dt__e + "==" as the PLAIN response.
			plain, err := base64.StdEncoding.Strict().DecodeString(got["dt__e"] + "==")
			if err != nil {
				t.Fatalf("dt__e+\"==\" = %q is not strict base64: %v", got["dt__e"]+"==", err)
			}
			parts := strings.Split(string(plain), "\x00")
			if len(parts) != 3 || parts[0] != c.user+"@example.test" || parts[1] != c.user || !strings.HasPrefix(parts[2], "imsidecar-session-cookie") {
				t.Errorf("PLAIN blob decodes to %q, want jid NUL user NUL placeholder", plain)
			}
		})
	}

	t.Run("no session", func(t *testing.T) {
		body, _ := site.post(t, "")
		if body != `{"error":"Not Permission"}` {
			t.Errorf("answer %q", body)
		}
	})
	t.Run("hostile cookie", func(t *testing.T) {
		for _, id := range []string{"../../../etc/passwd", strings.Repeat("a", 300), "..%2F..%2Fetc%2Fpasswd"} {
			if body, _ := site.post(t, id); body != `{"error":"Not Permission"}` {
				t.Errorf("cookie %q: answer %q", id, body)
			}
		}
	})
	t.Run("logged out", func(t *testing.T) {
		id := site.login(t, "alice", password, "Celepar")
		phpsessiontest.DestroySession(t, site.Sessions, id)
		body, _ := site.post(t, id)
		if body != `{"error":"Not Permission"}` {
			t.Errorf("answer %q", body)
		}
	})
	t.Run("hostile group setting", func(t *testing.T) {
		// An object in the serialized setting is not instantiated, and the
		// check fails closed.
		fx2 := fx
		fx2.Server = map[string]string{"groups_expresso_messenger": `O:8:"stdClass":1:{s:1:"a";s:9:"x;im-users";}`}
		site2 := startPHPSite(t, fx2)
		body, _ := site2.post(t, site2.login(t, "alice", password, "Celepar"))
		if body != `{"error":"Not Permission"}` {
			t.Errorf("answer %q", body)
		}
	})
	t.Run("no groups configured", func(t *testing.T) {
		fx2 := fx
		fx2.Server = map[string]string{}
		site2 := startPHPSite(t, fx2)
		body, _ := site2.post(t, site2.login(t, "alice", password, "Celepar"))
		if body != `{"error":"Not Permission"}` {
			t.Errorf("answer %q", body)
		}
	})
	t.Run("BOSH URL from the environment", func(t *testing.T) {
		site2 := startPHPSite(t, fx, "IMSIDECAR_BOSH_URL=/expresso/im/http-bind")
		body, _ := site2.post(t, site2.login(t, "alice", password, "Celepar"))
		var got map[string]string
		if err := json.Unmarshal([]byte(body), &got); err != nil || got["dt__b"] != "/expresso/im/http-bind" {
			t.Errorf("answer %q (%v), want dt__b /expresso/im/http-bind", body, err)
		}
	})
	t.Run("no jabber_domain", func(t *testing.T) {
		// The client shows "inform the administrator" when dt__b is empty.
		fx2 := fx
		fx2.PHPGWAPI = map[string]string{}
		site2 := startPHPSite(t, fx2)
		body, _ := site2.post(t, site2.login(t, "alice", password, "Celepar"))
		var got map[string]string
		if err := json.Unmarshal([]byte(body), &got); err != nil || got["dt__b"] != "" {
			t.Errorf("answer %q (%v), want an empty dt__b", body, err)
		}
		checkNoPassword(t, body, "alice", password)
	})
}

// checkNoPassword fails if the answer carries the password in any form
// 2.5's own auth_messenger.php would have used.
func checkNoPassword(t *testing.T, body, user, password string) {
	t.Helper()
	jid := user + "@example.test"
	for _, form := range []string{
		password,
		base64.StdEncoding.EncodeToString([]byte(password)),
		originalBlob(jid, user, password),
		strings.TrimRight(base64.StdEncoding.EncodeToString([]byte(jid+"\x00"+user+"\x00"+password)), "="),
	} {
		if strings.Contains(body, form) || strings.Contains(strings.ReplaceAll(body, `\/`, "/"), form) {
			t.Fatalf("the answer carries the password (as %q): %s", form, body)
		}
	}
}

type phpRun struct {
	Version string `json:"version"`
	Parsed  bool   `json:"parsed"`
	Lint    string `json:"lint"`
	Output  string `json:"output"`
}

// oldPHP parses file and runs runtime on every PHP.wasm version.
func oldPHP(t *testing.T, file, runtime string) []phpRun {
	t.Helper()
	node := xmppconntest.NeedBinary(t, "node", "nodejs")
	if _, err := os.Stat("standin/node_modules/@php-wasm/node"); err != nil {
		t.Fatal("@php-wasm/node missing: run `npm ci` in examples/expresso/standin (make test does)")
	}
	cmd := exec.CommandContext(t.Context(), node, "phplint.mjs", "../"+file, "../"+runtime)
	cmd.Dir = "standin"
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("phplint.mjs: %v\n%s", err, stderr.String())
	}
	var runs []phpRun
	if err := json.Unmarshal(out, &runs); err != nil {
		t.Fatalf("phplint.mjs answer %q: %v", out, err)
	}
	if len(runs) == 0 || runs[0].Version != "5.2" {
		t.Fatalf("phplint.mjs ran %+v, want PHP 5.2 first", runs)
	}
	return runs
}

// TestAuthMessengerOldPHP parses auth_messenger.php on PHP 5.2 (older than
// the 5.3 the oldest Expresso sites run), 7.4 and every 8.x, and runs its
// functions on each: the same answers everywhere, no warning, notice or
// deprecation. A control file with PHP 5.4 syntax proves the check fails
// when it should.
func TestAuthMessengerOldPHP(t *testing.T) {
	runs := oldPHP(t, "auth_messenger.php", "testdata/oldphp_runtime.php")
	want := runs[len(runs)-1].Output
	if !strings.HasPrefix(want, `[{"dt__a":"JABBER_FAZENDA__","dt__b":"\/im\/http-bind"`) || strings.Contains(want, "S3gr3d0") ||
		strings.ContainsAny(want, "\n<") {
		t.Fatalf("PHP %s printed %q", runs[len(runs)-1].Version, want)
	}
	for _, r := range runs {
		if !r.Parsed {
			t.Errorf("PHP %s cannot parse auth_messenger.php: %s", r.Version, r.Lint)
		}
		if r.Output != want {
			t.Errorf("PHP %s printed\n%s\nwant (as PHP %s)\n%s", r.Version, r.Output, runs[len(runs)-1].Version, want)
		}
	}

	control := oldPHP(t, "testdata/php54_syntax.php", "testdata/php54_syntax.php")
	for _, r := range control {
		if r.Parsed != (r.Version != "5.2") {
			t.Errorf("control: PHP %s parsed short array syntax = %v: the parse check does not check", r.Version, r.Parsed)
		}
	}
}
