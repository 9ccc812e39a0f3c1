package xmppconntest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EjabberdctlBin is the Debian ejabberdctl script.
const EjabberdctlBin = "/usr/sbin/ejabberdctl"

// EjabberdOptions configures StartEjabberd.
type EjabberdOptions struct {
	// Domain is the served host; default DefaultDomain.
	Domain string
	// StartTimeout bounds each start; default 60s.
	StartTimeout time.Duration
	// HTTP enables mod_bosh on a plain loopback HTTP port (BOSHURL).
	HTTP bool
}

// Ejabberd is a private ejabberd 23.01 node (Debian package) with its own
// configuration, Mnesia spool, logs, Erlang cookie and distribution port, so
// it needs no epmd and never touches a system ejabberd. It offers STARTTLS
// (required), SCRAM-SHA-1 and PLAIN, XEP-0198 (mod_stream_mgmt), carbons and
// offline storage, and keeps mod_fail2ban as Debian does.
type Ejabberd struct {
	Domain  string
	Addr    string // c2s host:port (STARTTLS required)
	BOSHURL string // http://127.0.0.1:port/http-bind, "" unless EjabberdOptions.HTTP
	Dir     string
	LogFile string
	CAFile  string
	CAPool  *x509.CertPool
	Certs   *CertBundle

	opts     EjabberdOptions
	node     string
	pemFile  string
	httpAddr string // the BOSH listener's host:port, "" without HTTP
	distAddr string // the Erlang distribution's host:port
	ctlArgs  []string
	env      []string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	logStart int64
}

// StartEjabberd starts a private ejabberd for the test and registers its
// shutdown with tb.Cleanup. A missing ejabberd fails the test; under
// -short (unit tests only) the test is skipped instead.
func StartEjabberd(tb testing.TB, opts EjabberdOptions) *Ejabberd {
	tb.Helper()
	skipShort(tb, "ejabberd")
	for _, bin := range []string{EjabberdctlBin, "/usr/bin/erl", "timeout"} {
		NeedBinary(tb, bin, "ejabberd")
	}
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 60 * time.Second
	}
	dir := tb.TempDir()
	e := &Ejabberd{Domain: opts.Domain, Dir: dir, opts: opts}
	for _, d := range []string{"logs", "spool", "home", "certs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			tb.Fatalf("xmppconntest: %v", err)
		}
	}
	certs, err := NewCertBundle(filepath.Join(dir, "certs"), opts.Domain, "localhost")
	if err != nil {
		tb.Fatal(err)
	}
	e.Certs, e.CAFile, e.CAPool = certs, certs.CAFile, certs.CAPool
	caPEM, err := os.ReadFile(certs.CAFile)
	if err != nil {
		tb.Fatal(err)
	}
	pemFile := filepath.Join(dir, "certs", "ejabberd.pem")
	bundle := append(append(append([]byte{}, certs.CertPEM...), caPEM...), certs.KeyPEM...)
	if err := os.WriteFile(pemFile, bundle, 0o600); err != nil {
		tb.Fatalf("xmppconntest: %v", err)
	}

	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		tb.Fatal(err)
	}
	e.node = "xmppconntest" + hex.EncodeToString(suffix) + "@localhost"
	e.LogFile = filepath.Join(dir, "logs", "ejabberd.log")
	e.pemFile = pemFile
	// The Debian inetrc resolves "localhost" without DNS.
	inetrc, err := os.ReadFile("/etc/ejabberd/inetrc")
	if err != nil {
		inetrc = []byte("{lookup,[file,native]}.\n{host,{127,0,0,1}, [\"localhost\"]}.\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "inetrc"), inetrc, 0o600); err != nil {
		tb.Fatalf("xmppconntest: %v", err)
	}
	e.ctlArgs = []string{
		"--config-dir", dir,
		"--config", filepath.Join(dir, "ejabberd.yml"),
		"--ctl-config", filepath.Join(dir, "ejabberdctl.cfg"),
		"--logs", filepath.Join(dir, "logs"),
		"--spool", filepath.Join(dir, "spool"),
	}
	e.env = append(os.Environ(), "HOME="+filepath.Join(dir, "home"))
	// The data is thrown away: SIGTERM to the VM (init:stop, about 1s)
	// is quicker than "ejabberdctl stop" and, unlike SIGKILL, lets the VM
	// reap its erl_child_setup helper.
	tb.Cleanup(func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.signalLocked(syscall.SIGTERM, 5*time.Second)
	})
	// The ports were free a moment before ejabberd binds them, not held:
	// another process (CI runs several test binaries at once) may bind
	// one in between. ejabberd then stops (a listener's eaddrinuse) or the
	// VM exits (the distribution's); it is started again on other ports.
	startOnFreePorts(tb, "ejabberd", func(ports []int) error {
		e.usePorts(tb, ports)
		return e.start()
	})
	return e
}

// usePorts sets the node's addresses to ports (c2s, Erlang distribution,
// HTTP) and writes its configuration.
func (e *Ejabberd) usePorts(tb testing.TB, ports []int) {
	tb.Helper()
	e.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	e.distAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	e.httpAddr, e.BOSHURL = "", ""
	if e.opts.HTTP {
		e.httpAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
		e.BOSHURL = "http://" + e.httpAddr + "/http-bind"
	}
	files := map[string]string{
		"ejabberd.yml":    e.config(ports[0], ports[2], e.pemFile),
		"ejabberdctl.cfg": e.ctlConfig(ports[1]),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(e.Dir, name), []byte(data), 0o600); err != nil {
			tb.Fatalf("xmppconntest: %v", err)
		}
	}
}

func (e *Ejabberd) config(c2sPort, httpPort int, pemFile string) string {
	httpListener, bosh := "", ""
	if e.opts.HTTP {
		httpListener = fmt.Sprintf(`  -
    port: %d
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /http-bind: mod_bosh
`, httpPort)
		bosh = "  mod_bosh: {}\n"
	}
	return fmt.Sprintf(`# generated by xmppconntest
hosts:
  - %q
loglevel: info
log_rotate_count: 0
certfiles:
  - %q
listen:
  -
    port: %d
    ip: "127.0.0.1"
    module: ejabberd_c2s
    max_stanza_size: 262144
    shaper: none
    access: c2s
    starttls_required: true
%sacl:
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: all
  c2s:
    allow: all
auth_method: internal
auth_password_format: scram
auth_scram_hash: sha
modules:
  mod_roster: {}
  mod_carboncopy: {}
  mod_offline: {}
  mod_ping: {}
  mod_disco: {}
  mod_version: {}
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_fail2ban: {}
  mod_admin_extra: {}
%s`, e.Domain, pemFile, c2sPort, httpListener, bosh)
}

// ctlConfig is sourced by ejabberdctl. EXEC_CMD keeps it from su-ing to
// the ejabberd user (whose rights don't reach the test's temp dir);
// ERL_DIST_PORT avoids epmd entirely. The distribution port is listened on
// loopback only: freePorts checked it free on 127.0.0.1, and a wildcard
// listen would also collide with any socket bound to that port on another
// loopback address (a load test's clients, say).
func (e *Ejabberd) ctlConfig(distPort int) string {
	return fmt.Sprintf("# generated by xmppconntest\nEXEC_CMD=as_current_user\nERLANG_NODE=%s\nERL_DIST_PORT=%d\nERL_OPTIONS='-kernel inet_dist_use_interface {127,0,0,1}'\n", e.node, distPort)
}

// ctl runs ejabberdctl with the node's configuration under a timeout.
func (e *Ejabberd) ctl(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	full := append([]string{"-k", "2", strconv.Itoa(int(timeout.Seconds())), EjabberdctlBin}, e.ctlArgs...)
	full = append(full, args...)
	cmd := exec.CommandContext(ctx, "timeout", full...)
	cmd.Dir = e.Dir
	cmd.Env = e.env
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	clean := stripInetrcNoise(string(out))
	if err != nil {
		return clean, fmt.Errorf("xmppconntest: ejabberdctl %s: %w: %s", args[0], err, clean)
	}
	return clean, nil
}

var inetrcNoise = regexp.MustCompile(`(?m)^=ERROR REPORT====.*\n(inet_config:.*\n)?\n?`)

func stripInetrcNoise(s string) string { return inetrcNoise.ReplaceAllString(s, "") }

// Start starts the (stopped) node and waits until it accepts clients.
func (e *Ejabberd) Start(tb testing.TB) {
	tb.Helper()
	if err := e.start(); err != nil {
		tb.Fatal(err)
	}
}

// start is Start, returning a startup failure; one on a port in use wraps
// errPortTaken. Ready means this node's own log says each of its
// listeners accepts (c2s, and HTTP when asked for) and c2s answers a dial:
// a listener ejabberd failed to start is never taken for whatever else
// holds its port.
func (e *Ejabberd) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		return errors.New("xmppconntest: ejabberd already running")
	}
	stdout := filepath.Join(e.Dir, "ejabberd.stdout")
	e.logStart = fileSize(e.LogFile)
	outStart := fileSize(stdout)
	out, err := os.OpenFile(stdout, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("xmppconntest: %w", err)
	}
	defer out.Close()
	args := append(append([]string{}, e.ctlArgs...), "foreground")
	cmd := exec.Command(EjabberdctlBin, args...)
	cmd.Dir = e.Dir
	cmd.Env = e.env
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("xmppconntest: starting ejabberd: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	e.cmd, e.done = cmd, done

	markers := []string{"Start accepting TCP connections at " + e.Addr + " "}
	if e.httpAddr != "" {
		markers = append(markers, "Start accepting TCP connections at "+e.httpAddr+" ")
	}
	deadline := time.Now().Add(e.opts.StartTimeout)
	for {
		select {
		case <-done:
			e.cmd, e.done = nil, nil
			err := fmt.Errorf("xmppconntest: ejabberd exited during startup (%v)\n%s\n%s", cmd.ProcessState,
				readTail(stdout, 4096), e.LogTail(40))
			if containsSince(stdout, outStart, ejPortFailure) || containsSince(e.LogFile, e.logStart, ejPortFailure) {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		default:
		}
		log := e.logSince(e.logStart)
		if strings.Contains(log, ejPortFailure) {
			e.killLocked()
			return fmt.Errorf("%w\n%s", errPortTaken, e.LogTail(40))
		}
		if allIn(log, markers) {
			if c, err := net.DialTimeout("tcp", e.Addr, time.Second); err == nil {
				c.Close()
				return nil
			}
		}
		if time.Now().After(deadline) {
			e.killLocked()
			return fmt.Errorf("xmppconntest: ejabberd not ready after %v\n%s", e.opts.StartTimeout, e.LogTail(40))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ejPortFailure is how ejabberd (a listener) and the Erlang VM (its
// distribution) say a port was in use.
const ejPortFailure = "eaddrinuse"

func allIn(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

func fileSize(name string) int64 {
	fi, err := os.Stat(name)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func (e *Ejabberd) logSince(offset int64) string {
	f, err := os.Open(e.LogFile)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return ""
	}
	data, _ := readAllLimit(f, 64<<20)
	return string(data)
}

// Stop stops the node gracefully: SIGTERM makes the VM run init:stop, as
// "ejabberdctl stop" does, without starting a second VM; every c2s stream
// is closed with system-shutdown. After 20s the node is killed and the
// test fails.
func (e *Ejabberd) Stop(tb testing.TB) {
	tb.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	start := time.Now()
	e.signalLocked(syscall.SIGTERM, 20*time.Second)
	if d := time.Since(start); d >= 20*time.Second {
		tb.Fatalf("xmppconntest: ejabberd ignored SIGTERM for %v, killed", d)
	}
}

// Kill stops the node with SIGKILL.
func (e *Ejabberd) Kill(tb testing.TB) {
	tb.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		tb.Fatalf("xmppconntest: Kill: ejabberd not running")
	}
	e.killLocked()
}

// killLocked SIGKILLs the Erlang VM. Its erl_child_setup helper, in a
// session of its own, is left a zombie of PID 1 in containers without a
// real init: one per Kill.
func (e *Ejabberd) killLocked() { e.signalLocked(syscall.SIGKILL, 5*time.Second) }

// signalLocked sends sig to the Erlang VM, not to the ejabberdctl shell
// (our child), which then reaps the VM and exits; after grace the whole
// process group is SIGKILLed.
func (e *Ejabberd) signalLocked(sig syscall.Signal, grace time.Duration) {
	if e.cmd == nil {
		return
	}
	pgid := e.cmd.Process.Pid
	for _, pid := range groupMembers(pgid) {
		if pid != pgid {
			_ = syscall.Kill(pid, sig)
		}
	}
	select {
	case <-e.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-e.done
	}
	e.cmd, e.done = nil, nil
}

// groupMembers lists the processes whose process group is pgid, from /proc.
func groupMembers(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + ent.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		i := bytes.LastIndexByte(data, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) > 2 && f[2] == strconv.Itoa(pgid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Running reports whether the node's process is running.
func (e *Ejabberd) Running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cmd != nil
}

// Restart stops the node gracefully and starts it again with the same data.
func (e *Ejabberd) Restart(tb testing.TB) {
	tb.Helper()
	e.Stop(tb)
	e.Start(tb)
}

// TLSConfig returns a client TLS configuration trusting only the test CA.
func (e *Ejabberd) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: e.CAPool, ServerName: e.Domain, MinVersion: tls.VersionTLS12}
}

// JID returns user@domain.
func (e *Ejabberd) JID(user string) string { return user + "@" + e.Domain }

// Register creates an account with "ejabberdctl register".
func (e *Ejabberd) Register(tb testing.TB, user, pass string) {
	tb.Helper()
	ctx := context.Background()
	if c, ok := tb.(interface{ Context() context.Context }); ok {
		ctx = c.Context()
	}
	if _, err := e.ctl(ctx, 30*time.Second, "register", user, e.Domain, pass); err != nil {
		tb.Fatal(err)
	}
}

// Befriend makes a and b mutual contacts (subscription both) with
// "ejabberdctl add_rosteritem" (mod_admin_extra), as Server.Befriend does
// for Prosody.
func (e *Ejabberd) Befriend(tb testing.TB, a, b string) {
	tb.Helper()
	ctx := context.Background()
	if c, ok := tb.(interface{ Context() context.Context }); ok {
		ctx = c.Context()
	}
	for _, pair := range [][2]string{{a, b}, {b, a}} {
		if _, err := e.ctl(ctx, 30*time.Second, "add_rosteritem", pair[0], e.Domain, pair[1], e.Domain, pair[1], "", "both"); err != nil {
			tb.Fatal(err)
		}
	}
}

// Log returns the whole ejabberd.log.
func (e *Ejabberd) Log() string { return e.logSince(0) }

// LogTail returns the last n lines of ejabberd.log.
func (e *Ejabberd) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(readTail(e.LogFile, 256<<10), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "--- ejabberd log tail (" + e.LogFile + ") ---\n" + strings.Join(lines, "\n")
}

var ejAuthFail = regexp.MustCompile(`Failed c2s \S+ authentication (?:for (\S+) )?from`)

// AuthFailures counts failed c2s SASL attempts for user ("" = any user).
func (e *Ejabberd) AuthFailures(user string) int {
	n := 0
	for _, m := range ejAuthFail.FindAllStringSubmatch(e.Log(), -1) {
		if user == "" || strings.HasPrefix(m[1], user+"@") {
			n++
		}
	}
	return n
}
