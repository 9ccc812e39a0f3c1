package sidecar_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdUnit: the example unit forbids core dumps (a core would hold
// users' XMPP passwords) and still passes systemd-analyze verify, run on a
// copy whose binary and environment file point at this build.
func TestSystemdUnit(t *testing.T) {
	raw, err := os.ReadFile("../examples/systemd/imsidecar.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(raw)
	service, _, _ := strings.Cut(unit[strings.Index(unit, "[Service]"):], "\n[Install]")
	found := false
	for line := range strings.Lines(service) {
		if strings.TrimSpace(line) == "LimitCORE=0" {
			found = true
		}
	}
	if !found {
		t.Fatal("examples/systemd/imsidecar.service: [Service] lacks LimitCORE=0")
	}
	if testing.Short() {
		return
	}
	analyze := requireBinary(t, "systemd-analyze", "systemd")
	env, err := filepath.Abs("../examples/systemd/imsidecar.env")
	if err != nil {
		t.Fatal(err)
	}
	unit = strings.ReplaceAll(unit, "/usr/bin/imsidecar", daemonBinary(t))
	unit = strings.ReplaceAll(unit, "/etc/default/imsidecar", env)
	path := filepath.Join(t.TempDir(), "imsidecar.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
