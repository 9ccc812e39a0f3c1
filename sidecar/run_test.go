package sidecar_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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
