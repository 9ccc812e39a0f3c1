package sidecar

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigPrecedence(t *testing.T) {
	env := map[string]string{"IMSIDECAR_XMPP_DOMAIN": "env.test", "IMSIDECAR_XMPP_ADDR": "127.0.0.1:5222", "IMSIDECAR_INACTIVITY": "30s"}
	cfg, _, err := parseConfig([]string{"--xmpp-domain=flag.test"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.XMPPDomain != "flag.test" || cfg.XMPPAddr != "127.0.0.1:5222" || cfg.Inactivity.String() != "30s" || cfg.Listen != "127.0.0.1:8765" {
		t.Fatalf("precedence wrong: %+v", cfg)
	}
	if cfg.SessionCookie != "sessionid" || cfg.SessionCharset != "ISO-8859-1" {
		t.Fatalf("expresso defaults: cookie %q charset %q", cfg.SessionCookie, cfg.SessionCharset)
	}
	g, _, _ := parseConfig([]string{"--profile=generic"}, func(string) string { return "" }, io.Discard)
	if g.SessionCookie != "PHPSESSID" || g.SessionCharset != "UTF-8" {
		t.Fatalf("generic defaults: %q %q", g.SessionCookie, g.SessionCharset)
	}
	if _, _, err := parseConfig(nil, func(k string) string {
		if k == "IMSIDECAR_INACTIVITY" {
			return "soon"
		}
		return ""
	}, io.Discard); err == nil || !strings.Contains(err.Error(), "IMSIDECAR_INACTIVITY") {
		t.Fatalf("bad env value: %v", err)
	}
}

func TestConfigValidateNamesEveryFlag(t *testing.T) {
	cfg, _, err := parseConfig([]string{"--listen=0.0.0.0:8765", "--ops-listen=10.0.0.1:1", "--xmpp-tls=maybe",
		"--session-store=couchbase", "--session-serializer=json", "--profile=ldap", "--inactivity=0s", "--event-buffer=1",
		"--log-format=xml", "--gc-percent=5", "--http2-max-streams=0",
		"--xmpp-max-stanza-size=1000", "--xmpp-max-send-size=100", "--offline-grace=-1s", "--xmpp-connect-limit=-1"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	err = cfg.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, f := range []string{"--listen", "--ops-listen", "--xmpp-addr", "--xmpp-domain", "--xmpp-tls", "--session-store",
		"--session-serializer", "--profile", "--inactivity", "--event-buffer", "--log-format", "--gc-percent", "--http2-max-streams",
		"--xmpp-max-stanza-size", "--xmpp-max-send-size", "--offline-grace", "--xmpp-connect-limit"} {
		if !strings.Contains(err.Error(), f+":") {
			t.Errorf("error does not name %s:\n%v", f, err)
		}
	}
	ok, _, _ := parseConfig([]string{"--listen=0.0.0.0:8765", "--unsafe-listen", "--xmpp-addr=jabber.example.org:5222",
		"--xmpp-domain=example.org", "--session-save-path=" + t.TempDir(), "--listen=unix:/run/imsidecar/api.sock"}, func(string) string { return "" }, io.Discard)
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	none, _, _ := parseConfig([]string{"--xmpp-addr=10.1.1.1:5222", "--xmpp-domain=example.org", "--xmpp-tls=none", "--session-save-path=/tmp"}, func(string) string { return "" }, io.Discard)
	if err := none.Validate(); err == nil || !strings.Contains(err.Error(), "--xmpp-tls:") {
		t.Fatalf("plaintext to a remote server accepted: %v", err)
	}
}

// TestConfigDoc keeps docs/CONFIG.md equal to the flag set; run with
// IMSIDECAR_UPDATE_DOCS=1 to rewrite it.
func TestConfigDoc(t *testing.T) {
	var b strings.Builder
	b.WriteString("# Configuration\n\nEvery flag has an environment twin; a flag on the command line wins over the environment, which wins over the default. `imsidecar check-config` validates everything and names each wrong flag. This file is generated from the flag set by `TestConfigDoc` (`IMSIDECAR_UPDATE_DOCS=1 go test ./sidecar -run TestConfigDoc`).\n\n")
	b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
	var c Config
	fs := c.flagSet(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def == "" {
			def = "—"
		} else {
			def = "`" + def + "`"
		}
		b.WriteString("| `--" + f.Name + "` | `" + envName(f.Name) + "` | " + def + " | " + strings.ReplaceAll(f.Usage, "|", "\\|") + " |\n")
	})
	path := filepath.Join("..", "docs", "CONFIG.md")
	if os.Getenv("IMSIDECAR_UPDATE_DOCS") == "1" {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != b.String() {
		t.Fatalf("docs/CONFIG.md is out of date (IMSIDECAR_UPDATE_DOCS=1 go test ./sidecar -run TestConfigDoc): %v", err)
	}

	// The README carries the same table, row for row.
	rows := b.String()[strings.Index(b.String(), "| `--"):]
	readme := filepath.Join("..", "README.md")
	rb, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(rb), "\n| `--")
	if start < 0 {
		t.Fatal("README.md has no configuration table")
	}
	start++
	end := start
	for end < len(rb) && strings.HasPrefix(string(rb[end:]), "| `--") {
		end += strings.IndexByte(string(rb[end:]), '\n') + 1
	}
	if os.Getenv("IMSIDECAR_UPDATE_DOCS") == "1" {
		rb = []byte(string(rb[:start]) + rows + string(rb[end:]))
		if err := os.WriteFile(readme, rb, 0o644); err != nil {
			t.Fatal(err)
		}
		end = start + len(rows)
	}
	if string(rb[start:end]) != rows {
		t.Fatal("README.md's configuration table differs from the flag set (IMSIDECAR_UPDATE_DOCS=1 go test ./sidecar -run TestConfigDoc)")
	}
}
