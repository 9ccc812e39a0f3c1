package sidecar

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"expressolivre.org/imsidecar/phpsession"
)

// TestPasswordUnavailable: a session that keeps the password only
// mcrypt-encrypted is answered 403 password_unavailable on every call,
// nothing is dialled, no authentication failure is counted (so the
// --auth-failure-limit budget is untouched), and one log line per user
// names the session key to enable; never the password or the session id.
func TestPasswordUnavailable(t *testing.T) {
	h := newHarness(t, "")
	const id = "mcryptsession0123456789abcdefghi"
	h.reader.errs[id] = &phpsession.PasswordUnavailableError{User: "maria@setor",
		Key: "phpgw_session.phpgw_app_sessions.phpgwapi.password.content", Reason: "mcrypt", Enable: "phpgw_info.expressomail.user.passwd"}
	for _, path := range []string{"/v1/connect", "/v1/connect", "/v1/presence"} {
		rec := h.do("POST", path, `{"show":"away"}`, "X-Session-Id", id)
		if rec.Code != 403 || h.code(rec) != "password_unavailable" {
			t.Fatalf("%s = %d %s", path, rec.Code, rec.Body)
		}
	}
	if h.dials != 0 {
		t.Fatalf("dialled %d times", h.dials)
	}
	var m dto.Metric
	if err := h.api.metrics.authFailures.Write(&m); err != nil || m.GetCounter().GetValue() != 0 {
		t.Fatalf("%v authentication failures counted (%v)", m.GetCounter().GetValue(), err)
	}
	h.logMu.Lock()
	logs := h.logs.String()
	h.logMu.Unlock()
	if n := strings.Count(logs, "password unavailable"); n != 1 {
		t.Fatalf("%d log lines, want 1:\n%s", n, logs)
	}
	if !strings.Contains(logs, "phpgw_info.expressomail.user.passwd") || !strings.Contains(logs, "maria@setor") || strings.Contains(logs, id) {
		t.Fatalf("log line:\n%s", logs)
	}
	// The user with a usable session is unaffected.
	if rec := h.do("POST", "/v1/connect", "", "X-Session-Id", goodID); rec.Code != 200 {
		t.Fatalf("good session: %d %s", rec.Code, rec.Body)
	}
}

// TestProfileDefaults: --profile=expresso implies Expresso's own settings
// (save path, gc_maxlifetime, charset, cookie) unless a flag or the
// environment says otherwise; generic keeps PHP's.
func TestProfileDefaults(t *testing.T) {
	noenv := func(string) string { return "" }
	e, _, err := parseConfig(nil, noenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if e.SessionSavePath != "/dev/shm" || e.SessionMaxLifetime != 4*time.Hour || e.SessionTimeout != 4*time.Hour ||
		e.SessionCharset != "ISO-8859-1" || e.SessionCookie != "sessionid" {
		t.Fatalf("expresso: %+v", e)
	}
	if len(e.fromProfile) != 5 {
		t.Errorf("fromProfile = %q", e.fromProfile)
	}
	g, _, _ := parseConfig([]string{"--profile=generic"}, noenv, io.Discard)
	if g.SessionSavePath != "/var/lib/php/sessions" || g.SessionMaxLifetime != 24*time.Minute || len(g.fromProfile) != 0 {
		t.Fatalf("generic: %q %v %q", g.SessionSavePath, g.SessionMaxLifetime, g.fromProfile)
	}
	env := map[string]string{"IMSIDECAR_SESSION_SAVE_PATH": "/var/lib/php5", "IMSIDECAR_SESSION_MAX_LIFETIME": "1h"}
	o, _, _ := parseConfig(nil, func(k string) string { return env[k] }, io.Discard)
	if o.SessionSavePath != "/var/lib/php5" || o.SessionMaxLifetime != time.Hour {
		t.Fatalf("environment lost to the profile: %q %v", o.SessionSavePath, o.SessionMaxLifetime)
	}
	for _, line := range o.fromProfile {
		if strings.Contains(line, "session-save-path") || strings.Contains(line, "session-max-lifetime") {
			t.Errorf("check-config would credit the profile with %q", line)
		}
	}
	m, _, _ := parseConfig([]string{"--session-store=memcached"}, noenv, io.Discard)
	if m.SessionSavePath != "" {
		t.Fatalf("memcached store got the files default %q", m.SessionSavePath)
	}
	r, _, _ := parseConfig([]string{"--session-store=redis", "--session-redis=tcp://127.0.0.1:6379"}, noenv, io.Discard)
	if r.SessionSavePath != "tcp://127.0.0.1:6379" {
		t.Fatalf("redis save path %q", r.SessionSavePath)
	}
}

// TestStoreFlagsValidated: every store's save path is checked by the one
// factory, and errors name the flag the operator gave.
func TestStoreFlagsValidated(t *testing.T) {
	base := []string{"--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.test"}
	for _, tc := range []struct {
		args []string
		want string // "" = valid
	}{
		{[]string{"--session-store=memcached", "--session-save-path=127.0.0.1:11211,127.0.0.1:11212"}, ""},
		{[]string{"--session-store=memcached", "--session-save-path=10.0.0.1:11211", "--session-key-prefix=site."}, ""},
		{[]string{"--session-store=memcache", "--session-save-path=tcp://localhost:11211?persistent=1&weight=1&timeout=1&retry_interval=15"}, ""},
		{[]string{"--session-store=redis", "--session-redis=tcp://127.0.0.1:6379"}, ""},
		{[]string{"--session-store=redis", "--session-save-path=tcp://127.0.0.1:6379"}, ""},
		{[]string{"--session-store=memcached"}, "--session-save-path: required"},
		{[]string{"--session-store=memcached", "--session-save-path=a:1 b:2"}, "--session-save-path:"},
		{[]string{"--session-store=memcache", "--session-save-path=udp://a:1"}, "--session-save-path:"},
		{[]string{"--session-store=redis"}, "--session-save-path: required"},
		{[]string{"--session-store=redis", "--session-redis=ftp://x"}, "--session-redis:"},
		{[]string{"--session-store=redis", "--session-redis=tcp://a:1", "--session-save-path=tcp://b:1"}, "--session-redis: differs"},
		{[]string{"--session-store=files", "--session-save-path=relative"}, "--session-save-path:"},
		{[]string{"--session-key-prefix=x."}, "--session-key-prefix:"},
		{[]string{"--session-store=memcache", "--session-save-path=tcp://a:1", "--session-key-prefix=x."}, "--session-key-prefix: phpsession"},
		{[]string{"--session-store=memcached", "--session-save-path=a:1", "--session-hash=ketama_weighted"}, ""},
		{[]string{"--session-store=memcache", "--session-save-path=tcp://a:1", "--session-hash=standard,fnv"}, ""},
		{[]string{"--session-store=memcached", "--session-save-path=a:1", "--session-hash=standard"}, "--session-hash:"},
		{[]string{"--session-store=files", "--session-hash=modula"}, "--session-hash: only"},
	} {
		cfg, _, err := parseConfig(append(base, tc.args...), func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		err = cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q rejected: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%q = %v, want %q", tc.args, err, tc.want)
		}
	}
}

// TestCheckConfigReport: check-config says which settings the expresso
// profile chose, and warns when the session directory holds no session.
func TestCheckConfigReport(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) string {
		var out bytes.Buffer
		if err := Run(t.Context(), append([]string{"check-config", "--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.test"}, args...),
			func(string) string { return "" }, &out, &out); err != nil {
			t.Fatalf("check-config %q: %v", args, err)
		}
		return out.String()
	}
	out := run("--session-save-path=" + dir)
	for _, want := range []string{"configuration OK", "--session-max-lifetime=4h0m0s (Expresso sets session.gc_maxlifetime",
		"--session-charset=ISO-8859-1", "warning: --session-save-path: " + dir + " holds no sess_* file", "PrivateDevices="} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "from --profile=expresso: --session-save-path") {
		t.Errorf("a save path given on the command line is credited to the profile:\n%s", out)
	}
	if err := os.WriteFile(filepath.Join(dir, "sess_abc"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := run("--session-save-path=" + dir); strings.Contains(out, "warning") {
		t.Errorf("warning with a session present:\n%s", out)
	}
	nested := t.TempDir()
	if err := os.MkdirAll(filepath.Join(nested, "a", "b"), 0o700); err != nil {
		t.Fatal(err)
	}
	if out := run("--session-save-path=2;" + nested); !strings.Contains(out, "holds no sess_* file") {
		t.Errorf("no warning for an empty nested directory:\n%s", out)
	}
	if err := os.WriteFile(filepath.Join(nested, "a", "b", "sess_abxyz"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := run("--session-save-path=2;" + nested); strings.Contains(out, "warning") {
		t.Errorf("warning with a nested session present:\n%s", out)
	}
	if out := run("--profile=generic", "--generic-user-path=u", "--generic-password-path=p", "--session-save-path="+dir); strings.Contains(out, "from --profile") {
		t.Errorf("generic profile credited:\n%s", out)
	}
	var out2 bytes.Buffer
	err := Run(t.Context(), []string{"check-config", "--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.test", "--session-store=memcached"},
		func(string) string { return "" }, &out2, &out2)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "--session-save-path: required with --session-store=memcached") {
		t.Fatalf("memcached without servers: %v", err)
	}
}
