package debian

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"expressolivre.org/imsidecar/sidecar"
)

var assignment = regexp.MustCompile(`^(#?)(IMSIDECAR_[A-Z0-9_]+)=(.*)$`)

// TestDefaultFileMatchesFlagSet keeps /etc/default/imsidecar equal to the
// flag set: every flag's twin exactly once, after a comment naming the flag
// and its meaning; commented out with the flag's default, except the
// settings the package sets, which are active with the package's value.
func TestDefaultFileMatchesFlagSet(t *testing.T) {
	flags := sidecar.Flags()
	var b bytes.Buffer
	if err := DefaultFile(&b, flags); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	seen := map[string]int{}
	for i, line := range lines {
		m := assignment.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		commented, env, value := m[1] == "#", m[2], m[3]
		seen[env]++
		fi := slices.IndexFunc(flags, func(f sidecar.Flag) bool { return f.Env == env })
		if fi < 0 {
			t.Errorf("line %d: %s is not the twin of any flag", i+1, env)
			continue
		}
		f := flags[fi]
		want, active := packagedValue(f.Name), true
		if want == "" {
			want, active = f.Default, false
		}
		if value != want || commented == active {
			t.Errorf("%s: line %q, want value %q active=%v", f.Name, line, want, active)
		}
		// The entry's comment block names the flag and its whole usage.
		start := i
		for start > 0 && strings.HasPrefix(lines[start-1], "# ") {
			start--
		}
		text := strings.Join(strings.Fields(strings.ReplaceAll(strings.Join(lines[start:i], " "), "# ", " ")), " ")
		if !strings.Contains(text, "--"+f.Name+": "+strings.Join(strings.Fields(f.Usage), " ")) {
			t.Errorf("%s: the comment above %s does not carry its usage: %q", f.Name, env, text)
		}
	}
	for _, f := range flags {
		if seen[f.Env] != 1 {
			t.Errorf("%s appears %d times in the default file, want once", f.Env, seen[f.Env])
		}
	}
	// The file means to a shell (and to systemd's EnvironmentFile) exactly
	// the packaged settings.
	path := filepath.Join(t.TempDir(), "imsidecar")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("/bin/sh", "-c", `env -i /bin/sh -c 'set -a; . "$0"; env' "$0"`, path).Output()
	if err != nil {
		t.Fatalf("sourcing the default file: %v", err)
	}
	var got []string
	for _, kv := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(kv, "IMSIDECAR_") {
			got = append(got, kv)
		}
	}
	var want []string
	for _, p := range Packaged {
		want = append(want, "IMSIDECAR_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_"))+"="+p.Value)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the default file sets %q, want exactly the packaged settings %q", got, want)
	}
}

var manOption = regexp.MustCompile(`(?m)^\.TP\n\\fB\\-\\-(.+?)\\fR(?:=\\fI(.+?)\\fR)?\n(.*)\n\.br\nEnvironment: \\fB(.+?)\\fR; default: (.+)\.\n`)

// TestManPageMatchesFlagSet keeps imsidecar(8) equal to the flag set: one
// entry per flag, in order, with its type, usage, environment twin and
// default; and groff renders the page without a warning.
func TestManPageMatchesFlagSet(t *testing.T) {
	flags := sidecar.Flags()
	var b bytes.Buffer
	if err := ManPage(&b, flags, "1.2.3", "2026-12-02"); err != nil {
		t.Fatal(err)
	}
	entries := manOption.FindAllStringSubmatch(b.String(), -1)
	if len(entries) != len(flags) {
		t.Fatalf("the man page has %d option entries, the flag set %d flags", len(entries), len(flags))
	}
	for i, f := range flags {
		e := entries[i]
		def := "none"
		if f.Default != "" {
			def = `\fB` + roff(f.Default) + `\fR`
		}
		if e[1] != roff(f.Name) || e[2] != roff(f.Type) || e[3] != roffLine(f.Usage) || e[4] != roff(f.Env) || e[5] != def {
			t.Errorf("entry %d %q does not match --%s %+v", i, e[0], f.Name, f)
		}
	}
	if !strings.HasPrefix(b.String(), `.TH IMSIDECAR 8 "2026-12-02" "imsidecar 1.2.3"`) {
		t.Errorf("title line: %q", strings.SplitN(b.String(), "\n", 2)[0])
	}
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = &b
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff -ww: %v\n%s", err, out)
	}
}

func TestRoff(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"--xmpp-addr", `\-\-xmpp\-addr`},
		{`a\b`, `a\eb`},
		{"seed[]=host:port&seed[]=…", `seed[]=host:port&seed[]=\[u2026]`},
		{"RFC 9113 §3.3", `RFC 9113 \[u00A7]3.3`},
		{"Olá", `Ol\[u00E1]`},
	} {
		if got := roff(c.in); got != c.want {
			t.Errorf("roff(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{".starts with a dot", `\&.starts with a dot`},
		{"'quote", `\&'quote`},
		{"plain", "plain"},
	} {
		if got := roffLine(c.in); got != c.want {
			t.Errorf("roffLine(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestRequired: the "configured" rule (the unit's ExecCondition and the
// postinst) names exactly the flags the daemon cannot run without.
func TestRequired(t *testing.T) {
	var names []string
	for _, f := range Required(sidecar.Flags()) {
		names = append(names, f.Env)
	}
	if want := []string{"IMSIDECAR_XMPP_ADDR", "IMSIDECAR_XMPP_DOMAIN"}; !slices.Equal(names, want) {
		t.Fatalf("required flags %q, want %q (update the unit's ExecCondition and the postinst's configured())", names, want)
	}
	for _, file := range []string{"../systemd/imsidecar.service", "postinst"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range names {
			if !bytes.Contains(b, []byte(n)) {
				t.Errorf("%s does not test %s", file, n)
			}
		}
	}
}

// TestConfiguredRule runs the two places that decide whether the service
// is configured, the postinst's configured() and the unit's ExecCondition
// (with systemd's "$$" unescaped), against the generated default file: not
// configured as shipped, nor with one required setting, configured with
// both.
func TestConfiguredRule(t *testing.T) {
	postinst, err := os.ReadFile("postinst")
	if err != nil {
		t.Fatal(err)
	}
	fn := regexp.MustCompile(`(?ms)^configured\(\) \{\n.*?^\}\n`).Find(postinst)
	unit, err := os.ReadFile("../systemd/imsidecar.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^ExecCondition=/bin/sh -c '([^']*)'$`).FindSubmatch(unit)
	if fn == nil || m == nil {
		t.Fatal("no configured() in postinst or no ExecCondition=/bin/sh -c '...' in the unit")
	}
	condition := strings.ReplaceAll(string(m[1]), "$$", "$")
	var def bytes.Buffer
	if err := DefaultFile(&def, sidecar.Flags()); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		extra string
		want  bool
	}{
		{"", false},
		{"IMSIDECAR_XMPP_ADDR=127.0.0.1:5222\n", false},
		{"IMSIDECAR_XMPP_DOMAIN=example.org\n", false},
		{"IMSIDECAR_XMPP_ADDR=127.0.0.1:5222\nIMSIDECAR_XMPP_DOMAIN=example.org\n", true},
	} {
		path := filepath.Join(t.TempDir(), "imsidecar")
		if err := os.WriteFile(path, []byte(def.String()+"\n"+c.extra), 0o644); err != nil {
			t.Fatal(err)
		}
		script := strings.ReplaceAll(string(fn), "/etc/default/imsidecar", path) + "configured\n"
		got := exec.Command("/bin/sh", "-ec", script).Run() == nil
		if got != c.want {
			t.Errorf("postinst configured() with %q: %v, want %v", c.extra, got, c.want)
		}
		var env []string
		for _, line := range strings.Split(def.String()+"\n"+c.extra, "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				env = append(env, line)
			}
		}
		cmd := exec.Command("/bin/sh", "-c", condition)
		cmd.Env = env
		if got := cmd.Run() == nil; got != c.want {
			t.Errorf("unit ExecCondition with %q: %v, want %v", c.extra, got, c.want)
		}
	}
}
