package sidecar_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/sidecar"
)

// TestSessionShow: `imsidecar session show` prints the session PHP wrote,
// decoded, with the identity but never the password; errors name the reason.
func TestSessionShow(t *testing.T) {
	dir := t.TempDir()
	id := phpsessiontest.NewID(t)
	st := phpsessiontest.Store{Handler: "files", SavePath: dir}
	phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: "hunter2-secret", FullName: "Alice Araújo"})
	env := func(k string) string {
		if k == "IMSIDECAR_SESSION_SAVE_PATH" {
			return dir
		}
		return ""
	}
	var out, errOut bytes.Buffer
	if err := sidecar.Run(t.Context(), []string{"session", "show", id}, env, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "hunter2-secret") {
		t.Fatal("session show printed the password")
	}
	var got struct {
		ID       string
		Data     map[string]any
		Identity map[string]any
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got.ID != id || got.Identity["user"] != "alice" || got.Identity["password_present"] != true || got.Identity["fullname"] != "Alice Araújo" {
		t.Fatalf("identity = %v", got.Identity)
	}
	if _, ok := got.Data["phpgw_info"]; !ok {
		t.Fatalf("data lacks phpgw_info: %v", got.Data)
	}

	bad := phpsessiontest.NewID(t) + "x"
	if err := os.WriteFile(filepath.Join(dir, "sess_"+bad), []byte(`a|i:1;b|s:99:"x";`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id   string
		want error
		text string
	}{
		{bad, phpsession.ErrMalformed, "at byte 14"},
		{phpsessiontest.NewID(t) + "y", phpsession.ErrNotFound, "not found"},
		{"../../etc/passwd", phpsession.ErrInvalidID, "invalid session id"},
	} {
		err := sidecar.Run(t.Context(), []string{"session", "show", tt.id}, env, &out, &errOut)
		if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.text) {
			t.Errorf("session show %q = %v, want %v mentioning %q", tt.id, err, tt.want, tt.text)
		}
	}
}

func TestCheckConfigAndVersion(t *testing.T) {
	var out bytes.Buffer
	noenv := func(string) string { return "" }
	if err := sidecar.Run(t.Context(), []string{"--version"}, noenv, &out, &out); err != nil || !strings.HasPrefix(out.String(), "imsidecar ") {
		t.Fatalf("--version: %v %q", err, out.String())
	}
	err := sidecar.Run(t.Context(), []string{"check-config", "--listen=0.0.0.0:1"}, noenv, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "--listen:") || !strings.Contains(err.Error(), "--xmpp-addr:") {
		t.Fatalf("check-config: %v", err)
	}
	out.Reset()
	if err := sidecar.Run(t.Context(), []string{"check-config", "--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.test", "--session-save-path=" + t.TempDir()}, noenv, &out, &out); err != nil {
		t.Fatalf("valid check-config: %v", err)
	}
}

// TestSessionShowRedactsSecrets: a session written by real PHP holding the
// secrets Expresso keeps (the wallet password, the base64 app-session
// password, the server's DB and LDAP passwords, keys, tokens) prints none
// of them, only their lengths; the id can come on stdin (`session show`
// without an id, or `-`), out of /proc/*/cmdline.
func TestSessionShowRedactsSecrets(t *testing.T) {
	dir := t.TempDir()
	id := phpsessiontest.NewID(t)
	st := phpsessiontest.Store{Handler: "files", SavePath: dir}
	phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: "hunter2-secret", FullName: "Alice Araújo"})
	secrets := map[string]string{
		"wallet":     "wallet-pw-5Xq",
		"appsession": "YXBwLXB3LTlLZA==", // base64 of another password than the user's
		"db":         "db-pass-3Ww",
		"ldap":       "ldap-pw-7Hh",
		"encryptkey": "enc-key-1Aa",
		"token":      "tok-2Bb-9f8e7d",
		"oauth":      "sec-4Cc-aa11",
		"userpw":     "pw-6Dd-0000",
		"kp3":        "kp3-8Ee-5555",
		"sieve":      "sieve-pw-0Zz",
	}
	phpsessiontest.WriteSession(t, st, id, `
$_SESSION['wallet']['user']['password'] = '`+secrets["wallet"]+`';
$_SESSION['wallet']['Sieve']['password'] = '`+secrets["sieve"]+`';
$_SESSION['phpgw_session']['phpgw_app_sessions']['phpgwapi']['password']['content'] = '`+secrets["appsession"]+`';
$_SESSION['phpgw_session']['session_kp3'] = '`+secrets["kp3"]+`';
$_SESSION['phpgw_info']['expressomail']['server']['db_pass'] = '`+secrets["db"]+`';
$_SESSION['phpgw_info']['jabberit_messenger']['password_ldap_jabberit'] = '`+secrets["ldap"]+`';
$_SESSION['phpgw_info']['server']['encryptkey'] = '`+secrets["encryptkey"]+`';
$_SESSION['api_token'] = '`+secrets["token"]+`';
$_SESSION['oauthSecret'] = '`+secrets["oauth"]+`';
$_SESSION['userPw'] = '`+secrets["userpw"]+`';
$_SESSION['pin'] = 482913;
$_SESSION['theme'] = 'dark';
$_SESSION['keyboard'] = 'abnt2';
`)
	env := func(k string) string {
		if k == "IMSIDECAR_SESSION_SAVE_PATH" {
			return dir
		}
		return ""
	}
	check := func(how, out string) {
		t.Helper()
		for name, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("%s: the %s secret %q is printed", how, name, s)
			}
		}
		for _, s := range []string{"hunter2-secret", "aHVudGVyMi1zZWNyZXQ=", "482913"} {
			if strings.Contains(out, s) {
				t.Errorf("%s: %q is printed", how, s)
			}
		}
		// The id Expresso copies into phpgw_session.session_id is hidden
		// too: it is printed once, as "id".
		if n := strings.Count(out, id); n != 1 {
			t.Errorf("%s: the session id is printed %d times", how, n)
		}
		var got struct {
			ID       string
			Data     map[string]any
			Identity map[string]any
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: %v\n%s", how, err, out)
		}
		if got.ID != id || got.Identity["user"] != "alice" || got.Data["theme"] != "dark" || got.Data["keyboard"] != "abnt2" {
			t.Errorf("%s: id %q identity %v theme %v keyboard %v", how, got.ID, got.Identity, got.Data["theme"], got.Data["keyboard"])
		}
		wallet := got.Data["wallet"].(map[string]any)["user"].(map[string]any)
		if wallet["password"] != "[redacted: 13 bytes]" {
			t.Errorf("%s: wallet password rendered %v, want its length only", how, wallet["password"])
		}
		if got.Data["pin"] != "[redacted]" {
			t.Errorf("%s: pin rendered %v", how, got.Data["pin"])
		}
		if strings.Count(out, "[redacted") < len(secrets)+3 {
			t.Errorf("%s: only %d values redacted:\n%s", how, strings.Count(out, "[redacted"), out)
		}
	}
	for _, tt := range []struct {
		how   string
		args  []string
		stdin string
	}{
		{"argument", []string{"session", "show", id}, ""},
		{"stdin", []string{"session", "show"}, id + "\n"},
		{"dash", []string{"session", "show", "-"}, id},
	} {
		var out, errOut bytes.Buffer
		if err := sidecar.RunIO(t.Context(), tt.args, env, strings.NewReader(tt.stdin), &out, &errOut); err != nil {
			t.Fatalf("%s: %v", tt.how, err)
		}
		check(tt.how, out.String())
	}
	// The real binary, the id on its stdin: not in its command line.
	cmd := exec.CommandContext(t.Context(), daemonBinary(t), "session", "show", "--session-save-path="+dir)
	cmd.Stdin = strings.NewReader(id + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("imsidecar session show < id: %v", err)
	}
	if slices.Contains(cmd.Args, id) {
		t.Fatal("the id is in the command line")
	}
	check("binary", string(out))

	// Hostile or empty stdin: a clear error, nothing read past the limit.
	for _, in := range []string{"", "\n", strings.Repeat("a", 1<<20), "../../etc/passwd\n"} {
		var o, e bytes.Buffer
		err := sidecar.RunIO(t.Context(), []string{"session", "show", "-"}, env, strings.NewReader(in), &o, &e)
		if err == nil || o.Len() > 0 {
			t.Errorf("stdin %.20q: %v, printed %q", in, err, o.String())
		}
	}
	if err := sidecar.RunIO(t.Context(), []string{"session", "show", id, id}, env, strings.NewReader(""), io.Discard, io.Discard); !errors.Is(err, sidecar.ErrConfig) {
		t.Errorf("two ids: %v", err)
	}
}
