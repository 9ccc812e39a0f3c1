package debian

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/sidecar"
)

// TestDebianPackage builds the package as `make deb` does (build.sh) for
// amd64 and arm64, runs lintian on both (no error, no warning), checks
// their contents, then installs the host's with dpkg -i on this machine,
// checks the user, modes, token and the unit's enablement, runs
// `imsidecar check-config` as the service would (user imsidecar, the
// shipped /etc/default/imsidecar), proves the user can read a session file
// PHP wrote as www-data, upgrades it keeping the edited conffile and the
// token, removes and purges it, and requires that nothing of it is left.
//
// It needs root and changes the machine (a package, a system user), so it
// is an integration test: skipped only under -short. A machine-wide lock
// keeps two runs from installing at once.
func TestDebianPackage(t *testing.T) {
	if testing.Short() {
		t.Skip("installs a package on this machine: integration test")
	}
	if os.Geteuid() != 0 {
		t.Fatal("TestDebianPackage installs the package with dpkg -i: run it as root (make test does)")
	}
	host := runtime.GOARCH
	if host != "amd64" && host != "arm64" {
		t.Fatalf("the package is built for amd64 and arm64, not %s", host)
	}
	for _, tool := range []string{"dpkg-deb", "dpkg", "lintian", "php", "git", "gzip", "man", "apache2", "a2enconf"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (make deps installs it): %v", tool, err)
		}
	}
	lockMachine(t)
	if st := dpkgStatus(t); st != "" && st != "not-installed" {
		t.Fatalf("imsidecar is already on this machine (%s); the test installs and purges it: dpkg --purge imsidecar first", st)
	}
	if _, err := user.Lookup("imsidecar"); err == nil {
		t.Fatal("a user imsidecar already exists; the test creates and removes it")
	}
	before := leftovers(t)
	t.Cleanup(func() {
		if st := dpkgStatus(t); st != "" && st != "not-installed" {
			dpkg(t, "--purge", "imsidecar")
		}
	})

	// Build, lint, inspect.
	out := t.TempDir()
	debs := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		debs[arch] = buildDeb(t, arch, out, "")
		lint(t, debs[arch])
		checkContents(t, debs[arch], arch)
	}
	deb := debs[host]
	version := must(t, "dpkg-deb", "-f", deb, "Version")
	upstream := version[:strings.LastIndex(version, "-")]

	// Install.
	dpkg(t, "-i", deb)
	if st := dpkgStatus(t); st != "installed" {
		t.Fatalf("after dpkg -i: status %q", st)
	}
	for path, want := range map[string]string{
		"/usr/bin/imsidecar":                               "-rwxr-xr-x root root",
		"/lib/systemd/system/imsidecar.service":            "-rw-r--r-- root root",
		"/etc/default/imsidecar":                           "-rw-r--r-- root root",
		"/etc/apache2/conf-available/imsidecar.conf":       "-rw-r--r-- root root",
		"/usr/share/man/man8/imsidecar.8.gz":               "-rw-r--r-- root root",
		"/usr/share/imsidecar/php/src/Client.php":          "-rw-r--r-- root root",
		"/usr/share/imsidecar/expresso/auth_messenger.php": "-rw-r--r-- root root",
		"/usr/share/doc/imsidecar/copyright":               "-rw-r--r-- root root",
		"/etc/imsidecar":                                   "drwxr-x--- root www-data",
		"/etc/imsidecar/api-token":                         "-rw-r----- root www-data",
	} {
		if got := modeOwner(t, path); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	token := readFile(t, "/etc/imsidecar/api-token")
	if !regexp.MustCompile(`^[0-9a-f]{64}\n$`).MatchString(token) {
		t.Errorf("api token %d bytes, want 32 random bytes in hex and a newline", len(token))
	}
	u, err := user.Lookup("imsidecar")
	if err != nil {
		t.Fatalf("no user imsidecar after install: %v", err)
	}
	if uid, _ := strconv.Atoi(u.Uid); uid == 0 || uid >= 1000 {
		t.Errorf("imsidecar has uid %s, want a system uid", u.Uid)
	}
	pw := must(t, "getent", "passwd", "imsidecar")
	if !strings.HasSuffix(pw, ":/nonexistent:/usr/sbin/nologin") {
		t.Errorf("passwd entry %q: want home /nonexistent and shell nologin", pw)
	}
	if groups := strings.Fields(must(t, "id", "-nG", "imsidecar")); !slices.Contains(groups, "www-data") || !slices.Contains(groups, "imsidecar") {
		t.Errorf("imsidecar's groups %q, want imsidecar and www-data", groups)
	}
	if target, err := os.Readlink("/etc/systemd/system/multi-user.target.wants/imsidecar.service"); err != nil || target != "/lib/systemd/system/imsidecar.service" {
		t.Errorf("the unit is not enabled: %q %v", target, err)
	}
	if got := must(t, "/usr/bin/imsidecar", "version"); got != "imsidecar "+upstream {
		t.Errorf("imsidecar version: %q, want %q", got, "imsidecar "+upstream)
	}
	var want bytes.Buffer
	if err := DefaultFile(&want, sidecar.Flags()); err != nil {
		t.Fatal(err)
	}
	if readFile(t, "/etc/default/imsidecar") != want.String() {
		t.Error("the installed /etc/default/imsidecar is not the flag set's rendering")
	}
	// The installed page renders, warning-free, and documents the settings.
	manOut, err := exec.Command("man", "--warnings", "-l", "-Tutf8", "/usr/share/man/man8/imsidecar.8.gz").CombinedOutput()
	manText := regexp.MustCompile(".\x08").ReplaceAll(manOut, nil) // overstrike bold and underline
	if err != nil || !bytes.Contains(manText, []byte("IMSIDECAR_XMPP_ADDR")) || bytes.Contains(manText, []byte("warning")) {
		t.Errorf("man imsidecar: %v\n%.600s", err, manText)
	}

	// check-config as the service runs it: user imsidecar with its groups,
	// the environment of the shipped file. Not configured: it names the two
	// required settings and nothing else.
	shipped := envFile(t, "/etc/default/imsidecar")
	stdout, stderr, err := asUser(t, "imsidecar", shipped, "/usr/bin/imsidecar", "check-config")
	if err == nil {
		t.Fatalf("check-config accepted the unconfigured file: %s", stdout)
	}
	named := regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+):`).FindAllStringSubmatch(stderr, -1)
	var names []string
	for _, m := range named {
		names = append(names, m[1])
	}
	if !slices.Equal(names, []string{"xmpp-addr", "xmpp-domain"}) {
		t.Errorf("check-config on the shipped file named %q, want exactly xmpp-addr and xmpp-domain:\n%s", names, stderr)
	}
	configured := append(slices.Clone(shipped), "IMSIDECAR_XMPP_ADDR=127.0.0.1:5222", "IMSIDECAR_XMPP_DOMAIN=example.org")
	if stdout, stderr, err := asUser(t, "imsidecar", configured, "/usr/bin/imsidecar", "check-config"); err != nil || !strings.Contains(stdout, "configuration OK") {
		t.Errorf("check-config with the required settings, as imsidecar (reads the token through www-data): %v\n%s%s", err, stdout, stderr)
	}
	checkSessionAccess(t, shipped)
	checkApache(t)

	// Upgrade: the edited conffile and the token are kept, the user too.
	f, err := os.OpenFile("/etc/default/imsidecar", os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\nIMSIDECAR_XMPP_ADDR=127.0.0.1:5222\nIMSIDECAR_XMPP_DOMAIN=example.org\n")
	f.Close()
	edited := readFile(t, "/etc/default/imsidecar")
	next := buildDeb(t, host, t.TempDir(), upstream+"+next-1")
	if _, err := exec.Command("dpkg", "--compare-versions", upstream+"+next-1", "gt", version).CombinedOutput(); err != nil {
		t.Fatalf("%s+next-1 does not upgrade %s", upstream, version)
	}
	dpkg(t, "-i", next)
	if got := must(t, "dpkg-query", "-W", "-f=${Version}", "imsidecar"); got != upstream+"+next-1" {
		t.Errorf("after the upgrade: version %q", got)
	}
	if readFile(t, "/etc/default/imsidecar") != edited {
		t.Error("the upgrade changed the edited /etc/default/imsidecar")
	}
	if readFile(t, "/etc/imsidecar/api-token") != token {
		t.Error("the upgrade replaced the API token (PHP still has the old one)")
	}
	if stdout, stderr, err := asUser(t, "imsidecar", envFile(t, "/etc/default/imsidecar"), "/usr/bin/imsidecar", "check-config"); err != nil {
		t.Errorf("check-config after the upgrade with the edited file: %v\n%s%s", err, stdout, stderr)
	}

	// Remove: the program goes, the configuration stays, the unit is
	// masked (its enablement is kept for a reinstall, as debhelper does,
	// and purged with the package).
	dpkg(t, "-r", "imsidecar")
	if st := dpkgStatus(t); st != "config-files" {
		t.Errorf("after dpkg -r: status %q, want config-files", st)
	}
	if target, err := os.Readlink("/etc/systemd/system/imsidecar.service"); err != nil || target != "/dev/null" {
		t.Errorf("after dpkg -r the unit is not masked: %q %v", target, err)
	}
	for _, p := range []string{"/usr/bin/imsidecar", "/lib/systemd/system/imsidecar.service", "/etc/apache2/conf-enabled/imsidecar.conf"} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after dpkg -r %s is still there (%v)", p, err)
		}
	}
	for _, p := range []string{"/etc/default/imsidecar", "/etc/imsidecar/api-token"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dpkg -r removed %s: %v", p, err)
		}
	}

	// Purge: nothing is left.
	dpkg(t, "--purge", "imsidecar")
	if st := dpkgStatus(t); st != "" && st != "not-installed" {
		t.Errorf("after dpkg --purge: status %q", st)
	}
	if _, err := user.Lookup("imsidecar"); err == nil {
		t.Error("the user imsidecar is still there after purge")
	}
	if _, err := user.LookupGroup("imsidecar"); err == nil {
		t.Error("the group imsidecar is still there after purge")
	}
	if members := must(t, "getent", "group", "www-data"); strings.Contains(members, "imsidecar") {
		t.Errorf("www-data still lists imsidecar: %q", members)
	}
	if after := leftovers(t); !slices.Equal(after, before) {
		t.Errorf("left after purge:\n  before %q\n  after  %q", before, after)
	}
}

// lockMachine keeps two test runs (two worktrees) from installing the
// package at the same time.
func lockMachine(t *testing.T) {
	f, err := os.OpenFile("/run/lock/imsidecar-deb-test.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
}

func buildDeb(t *testing.T, arch, out, version string) string {
	t.Helper()
	cmd := exec.Command("examples/debian/build.sh", arch, out)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "DEB_VERSION="+version)
	b, err := cmd.Output()
	if err != nil {
		t.Fatalf("build.sh %s: %v\n%s", arch, err, stderrOf(err))
	}
	deb := strings.TrimSpace(string(b))
	if !regexp.MustCompile(`/imsidecar_[0-9][^_/]*-[0-9]+_` + arch + `\.deb$`).MatchString(deb) {
		t.Fatalf("build.sh wrote %q, want imsidecar_<version>_%s.deb", deb, arch)
	}
	return deb
}

// lint fails on any lintian error or warning (overrides are listed, each
// with its reason, in lintian-overrides).
func lint(t *testing.T, deb string) {
	t.Helper()
	out, err := exec.Command("lintian", "--display-level", ">=pedantic", "--show-overrides", deb).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "E: "), strings.HasPrefix(line, "W: "):
			t.Errorf("lintian %s: %s", filepath.Base(deb), line)
		case line != "":
			t.Logf("lintian %s: %s", filepath.Base(deb), line)
		}
	}
	if err != nil {
		t.Errorf("lintian %s: %v", filepath.Base(deb), err)
	}
}

// checkContents checks every file's mode and owner in the .deb, the
// conffiles and the binary's architecture.
func checkContents(t *testing.T, deb, arch string) {
	t.Helper()
	want := map[string]string{
		"./usr/bin/imsidecar":                                      "-rwxr-xr-x",
		"./lib/systemd/system/imsidecar.service":                   "-rw-r--r--",
		"./etc/default/imsidecar":                                  "-rw-r--r--",
		"./etc/apache2/conf-available/imsidecar.conf":              "-rw-r--r--",
		"./usr/share/man/man8/imsidecar.8.gz":                      "-rw-r--r--",
		"./usr/share/doc/imsidecar/copyright":                      "-rw-r--r--",
		"./usr/share/doc/imsidecar/changelog.Debian.gz":            "-rw-r--r--",
		"./usr/share/doc/imsidecar/README.Debian.gz":               "-rw-r--r--",
		"./usr/share/imsidecar/php/src/Client.php":                 "-rw-r--r--",
		"./usr/share/imsidecar/php/composer.json":                  "-rw-r--r--",
		"./usr/share/imsidecar/expresso/auth_messenger.php":        "-rw-r--r--",
		"./usr/share/lintian/overrides/imsidecar":                  "-rw-r--r--",
		"./usr/share/imsidecar/php/src/Exception/ApiException.php": "-rw-r--r--",
	}
	sc := bufio.NewScanner(strings.NewReader(must(t, "dpkg-deb", "-c", deb)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		mode, owner, path := f[0], f[1], f[len(f)-1]
		if owner != "root/root" {
			t.Errorf("%s: %s owned by %s", filepath.Base(deb), path, owner)
		}
		if strings.HasPrefix(mode, "d") && mode != "drwxr-xr-x" {
			t.Errorf("%s: directory %s is %s", filepath.Base(deb), path, mode)
		}
		if w, ok := want[path]; ok {
			if mode != w {
				t.Errorf("%s: %s is %s, want %s", filepath.Base(deb), path, mode, w)
			}
			delete(want, path)
		}
	}
	for path := range want {
		t.Errorf("%s lacks %s", filepath.Base(deb), path)
	}
	if got := must(t, "dpkg-deb", "-I", deb, "conffiles"); got != "/etc/default/imsidecar\n/etc/apache2/conf-available/imsidecar.conf" {
		t.Errorf("%s: conffiles %q", filepath.Base(deb), got)
	}
	if got := must(t, "dpkg-deb", "-f", deb, "Architecture"); got != arch {
		t.Errorf("%s: Architecture %q", filepath.Base(deb), got)
	}
	dir := t.TempDir()
	must(t, "dpkg-deb", "-x", deb, dir)
	bin, err := elf.Open(filepath.Join(dir, "usr/bin/imsidecar"))
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if bin.Machine != machine {
		t.Errorf("%s: the binary is for %v, want %v", filepath.Base(deb), bin.Machine, machine)
	}
	if libs, _ := bin.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s: the binary needs shared libraries %q (want CGO_ENABLED=0)", filepath.Base(deb), libs)
	}
}

// checkSessionAccess: with PHP's save_path "0;0640;DIR" (README.Debian),
// a session PHP wrote as www-data is readable by the service's user with
// the shipped settings; with PHP's default mode 0600 it is not.
func checkSessionAccess(t *testing.T, env []string) {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	os.Chmod(dir, 0o1733) // as Debian's /var/lib/php/sessions
	write := func(id, savePath string) {
		t.Helper()
		// Quoted as in php.ini: unquoted, ";" would start a comment.
		// No session garbage collection, as Debian's php.ini (a cron job
		// cleans the directory): without php.ini it ran at 1 start in
		// 100, and www-data may not list a directory of mode 1733.
		cmd := exec.Command("php", "-n", "-d", `session.save_path="`+savePath+`"`, "-d", "session.use_cookies=0", "-d", "session.gc_probability=0",
			"-r", `session_id($argv[1]); session_start(); $_SESSION["probe"] = "ok"; session_write_close();`, id)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 33, Gid: 33}}
		// PHP exits 0 when it cannot write the session, only warning:
		// any output is a failure, with its reason.
		if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
			t.Fatalf("php as www-data: %v\n%s", err, out)
		}
	}
	const readable, private = "debiantestreadable0123456789", "debiantestprivate01234567890"
	write(readable, "0;0640;"+dir)
	write(private, dir)
	env = append(slices.Clone(env), "IMSIDECAR_SESSION_SAVE_PATH="+dir)
	stdout, stderr, err := asUser(t, "imsidecar", env, "/usr/bin/imsidecar", "session", "show", readable)
	if err != nil || !strings.Contains(stdout, `"probe"`) {
		file := filepath.Join(dir, "sess_"+readable)
		var was string
		if fi, serr := os.Stat(file); serr == nil {
			was = fmt.Sprintf("%v, %d bytes", fi.Mode(), fi.Size())
		} else {
			was = serr.Error()
		}
		t.Errorf("imsidecar cannot read a 0640 session of www-data (the file: %s): %v\n%s%s", was, err, stdout, stderr)
	}
	if _, _, err := asUser(t, "imsidecar", env, "/usr/bin/imsidecar", "session", "show", private); err == nil {
		t.Error("imsidecar read a 0600 session of www-data: the php.ini advice in README.Debian would be needless")
	}
}

// checkApache: the shipped snippet parses with the modules it names, and
// an a2enconf'd snippet is disabled when the package is removed (else
// Apache would not start). Apache is not started.
func checkApache(t *testing.T) {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "apache2.conf")
	mods := "/usr/lib/apache2/modules/"
	os.WriteFile(conf, []byte("ServerRoot /etc/apache2\nServerName localhost\nErrorLog /dev/null\n"+
		"LoadModule mpm_event_module "+mods+"mod_mpm_event.so\nLoadModule authz_core_module "+mods+"mod_authz_core.so\n"+
		"LoadModule proxy_module "+mods+"mod_proxy.so\nLoadModule proxy_http_module "+mods+"mod_proxy_http.so\n"+
		"LoadModule headers_module "+mods+"mod_headers.so\nLoadModule env_module "+mods+"mod_env.so\n"+
		"<VirtualHost 127.0.0.1:80>\nInclude /etc/apache2/conf-available/imsidecar.conf\n</VirtualHost>\n"), 0o644)
	if out, err := exec.Command("apache2", "-t", "-f", conf).CombinedOutput(); err != nil {
		t.Errorf("apache2 -t with the shipped snippet: %v\n%s", err, out)
	}
	must(t, "a2enconf", "-q", "imsidecar")
	if _, err := os.Stat("/etc/apache2/conf-enabled/imsidecar.conf"); err != nil {
		t.Errorf("a2enconf imsidecar: %v", err)
	}
}

func dpkg(t *testing.T, args ...string) {
	t.Helper()
	// Another apt or dpkg on this shared machine holds the lock: wait.
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(2 * time.Second) {
		out, err := exec.Command("dpkg", args...).CombinedOutput()
		if err == nil {
			t.Logf("dpkg %s:\n%s", strings.Join(args, " "), out)
			return
		}
		if !bytes.Contains(out, []byte("lock")) || time.Now().After(deadline) {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// dpkgStatus is the package's dpkg status ("installed", "config-files",
// ...), "" when dpkg does not know it.
func dpkgStatus(t *testing.T) string {
	out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Status}", "imsidecar").Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// leftovers lists every path naming imsidecar where a package can leave
// something, and the account databases' lines naming it.
func leftovers(t *testing.T) []string {
	var found []string
	for _, root := range []string{"/etc", "/usr", "/var/lib", "/var/log", "/run"} {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), "imsidecar") {
				if path != "/run/lock/imsidecar-deb-test.lock" {
					found = append(found, path)
				}
			}
			return nil
		})
	}
	for _, p := range []string{"/lib/systemd/system/imsidecar.service", "/lib/systemd/system/multi-user.target.wants/imsidecar.service"} {
		if _, err := os.Lstat(p); err == nil {
			found = append(found, p)
		}
	}
	for _, db := range []string{"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"} {
		for i, line := range strings.Split(readFile(t, db), "\n") {
			if strings.Contains(line, "imsidecar") {
				found = append(found, db+":"+strconv.Itoa(i+1)+": "+line)
			}
		}
	}
	slices.Sort(found)
	return found
}

// envFile reads KEY=VALUE lines as systemd's EnvironmentFile does for
// this file (no quoting in it).
func envFile(t *testing.T, path string) []string {
	var env []string
	for _, line := range strings.Split(readFile(t, path), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") && strings.Contains(line, "=") {
			env = append(env, line)
		}
	}
	return env
}

// asUser runs a command as name with its supplementary groups, as systemd
// runs the unit's User=.
func asUser(t *testing.T, name string, env []string, prog string, args ...string) (string, string, error) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	gids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	cred := &syscall.Credential{}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cred.Uid, cred.Gid = uint32(uid), uint32(gid)
	for _, g := range gids {
		n, _ := strconv.Atoi(g)
		cred.Groups = append(cred.Groups, uint32(n))
	}
	cmd := exec.Command(prog, args...)
	cmd.Dir = "/"
	cmd.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	return stdout.String(), stderr.String(), err
}

func modeOwner(t *testing.T, path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return err.Error()
	}
	sys := st.Sys().(*syscall.Stat_t)
	owner, group := strconv.Itoa(int(sys.Uid)), strconv.Itoa(int(sys.Gid))
	if u, err := user.LookupId(owner); err == nil {
		owner = u.Username
	}
	if g, err := user.LookupGroupId(group); err == nil {
		group = g.Name
	}
	return st.Mode().String() + " " + owner + " " + group
}

func must(t *testing.T, prog string, args ...string) string {
	t.Helper()
	out, err := exec.Command(prog, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", prog, strings.Join(args, " "), err, stderrOf(err))
	}
	return strings.TrimRight(string(out), "\n")
}

func stderrOf(err error) []byte {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.Stderr
	}
	return nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
