package xmppconntest

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
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

	"golang.org/x/sys/unix"
)

// Paths of the Debian binaries.
const (
	ProsodyBin    = "/usr/bin/prosody"
	ProsodyctlBin = "/usr/bin/prosodyctl"
)

// DefaultDomain is the XMPP domain used when Options.Domain is empty.
const DefaultDomain = "example.test"

// readyMarker is written to the audit file once Prosody has started.
const readyMarker = "xmppconntest: server ready"

// Options configures StartProsody. The zero value gives a STARTTLS-only
// server with SCRAM-SHA-1 and PLAIN, XEP-0198, carbons, MAM and offline
// storage, without rate limits.
type Options struct {
	// Domain is the VirtualHost; default DefaultDomain.
	Domain string
	// Modules are enabled in addition to the default set.
	Modules []string
	// MUC adds a group chat component (XEP-0045) at Server.MUCDomain,
	// "conference." + Domain, where every user may create rooms.
	MUC bool
	// MUCConfig is appended verbatim to the MUC component's section
	// (e.g. "muc_room_default_public = true").
	MUCConfig string
	// DisableModules removes modules from the default set (e.g. "smacks").
	DisableModules []string
	// PlainOnly uses authentication = "internal_plain" and disables every
	// SCRAM mechanism, so the server offers only PLAIN, as an LDAP-backed
	// site does.
	PlainOnly bool
	// PasswordHash is "SHA-1" (default) or "SHA-256" for internal_hashed:
	// it selects the one SCRAM mechanism the server offers.
	PasswordHash string
	// NoTLS builds a server without mod_tls (no STARTTLS offered) that
	// allows PLAIN in the clear.
	NoTLS bool
	// DirectTLS also opens a XEP-0368 direct TLS port (Server.DirectTLSAddr).
	DirectTLS bool
	// HTTP enables mod_bosh and mod_websocket on a plain loopback HTTP port
	// (Server.HTTPAddr), considered secure.
	HTTP bool
	// SmacksHibernation is smacks_hibernation_time; default 600s as Prosody.
	SmacksHibernation time.Duration
	// StanzaSizeLimit is c2s_stanza_size_limit in bytes; 0 = Prosody's 256 KiB.
	StanzaSizeLimit int
	// LogLevel is the minimum level written to the log file; default "debug".
	LogLevel string
	// ExtraConfig is appended verbatim to the global section of the config.
	ExtraConfig string
	// StartTimeout bounds each start; default 30s.
	StartTimeout time.Duration
	// MaxOpenFiles raises the server's RLIMIT_NOFILE (soft and hard) right
	// after it starts, with prlimit(2): Prosody holds one descriptor per
	// client, and a CI machine's soft limit is often 1024. 0 keeps the
	// inherited limit.
	MaxOpenFiles uint64
}

// Server is a running (or stopped) private Prosody.
type Server struct {
	Domain        string // XMPP domain (VirtualHost)
	Addr          string // c2s host:port (STARTTLS, or plaintext with NoTLS)
	DirectTLSAddr string // direct TLS host:port, "" unless Options.DirectTLS
	HTTPAddr      string // HTTP host:port for BOSH and WebSocket, "" unless Options.HTTP
	BOSHURL       string // http://HTTPAddr/http-bind, "" unless Options.HTTP
	WebSocketURL  string // ws://HTTPAddr/xmpp-websocket, "" unless Options.HTTP
	MUCDomain     string // the group chat service, "" unless Options.MUC
	Dir           string // root of the server's files
	ConfigFile    string
	LogFile       string
	AuditFile     string // SASL outcomes and readiness, one line each
	DataDir       string
	CAFile        string         // PEM of the CA that signed the server certificate
	CAPool        *x509.CertPool // pool with that CA only
	Certs         *CertBundle

	opts Options

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartProsody starts a private Prosody for the test and registers its
// shutdown (SIGKILL) with tb.Cleanup. A missing binary fails the test;
// under -short (unit tests only) the test is skipped instead.
func StartProsody(tb testing.TB, opts Options) *Server {
	tb.Helper()
	skipShort(tb, "Prosody")
	for _, bin := range []string{ProsodyBin, ProsodyctlBin, "timeout"} {
		NeedBinary(tb, bin, "prosody coreutils")
	}
	if opts.Domain == "" {
		opts.Domain = DefaultDomain
	}
	if opts.PasswordHash == "" {
		opts.PasswordHash = "SHA-1"
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	dir := tb.TempDir()
	s := &Server{
		Domain:     opts.Domain,
		Dir:        dir,
		ConfigFile: filepath.Join(dir, "prosody.cfg.lua"),
		LogFile:    filepath.Join(dir, "prosody.log"),
		AuditFile:  filepath.Join(dir, "audit.log"),
		DataDir:    filepath.Join(dir, "data"),
		opts:       opts,
	}
	if opts.MUC {
		s.MUCDomain = "conference." + opts.Domain
	}
	for _, d := range []string{s.DataDir, filepath.Join(dir, "plugins"), filepath.Join(dir, "certs")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			tb.Fatalf("xmppconntest: %v", err)
		}
	}
	certs, err := NewCertBundle(filepath.Join(dir, "certs"), opts.Domain, "localhost")
	if err != nil {
		tb.Fatal(err)
	}
	s.Certs, s.CAFile, s.CAPool = certs, certs.CAFile, certs.CAPool

	if err := os.WriteFile(filepath.Join(dir, "plugins", "mod_xmppconntest.lua"), []byte(auditModule), 0o644); err != nil {
		tb.Fatalf("xmppconntest: %v", err)
	}
	// The data is thrown away: no need for a graceful shutdown.
	tb.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.killLocked()
	})
	// The ports were free a moment before Prosody binds them, not held:
	// another process (CI runs several test binaries at once) may bind
	// one in between. Prosody then logs the failure and runs on without
	// that port, and the test would talk to whatever holds it; it is
	// started again on other ports instead, twice at most.
	startOnFreePorts(tb, "prosody", func(ports []int) error {
		s.usePorts(tb, ports)
		return s.start(tb)
	})
	return s
}

// startOnFreePorts calls start with three ports that were free a moment
// ago, and again with others when start's error wraps errPortTaken: the
// ports are not held until the server binds them, and another process
// may bind one in between. After three attempts the test fails.
func startOnFreePorts(tb testing.TB, server string, start func(ports []int) error) {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		err := start(FreePorts(tb, 3))
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			tb.Fatal(err)
		}
		tb.Logf("xmppconntest: %s start %d: a port picked free was bound by someone else first; starting again on other ports", server, attempt)
	}
}

// usePorts sets the server's addresses to ports (c2s, direct TLS, HTTP)
// and writes its configuration.
func (s *Server) usePorts(tb testing.TB, ports []int) {
	tb.Helper()
	opts := s.opts
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	if opts.DirectTLS {
		s.DirectTLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
	}
	if opts.HTTP {
		s.HTTPAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2]))
		s.BOSHURL = "http://" + s.HTTPAddr + "/http-bind"
		s.WebSocketURL = "ws://" + s.HTTPAddr + "/xmpp-websocket"
	}
	if err := os.WriteFile(s.ConfigFile, []byte(s.config(ports)), 0o644); err != nil {
		tb.Fatalf("xmppconntest: %v", err)
	}
}

// errPortTaken: the server could not bind a port of its configuration.
var errPortTaken = errors.New("xmppconntest: a port of the server was in use")

// portFailure is what Prosody's portmanager logs when it cannot bind a
// port; Prosody runs on without it.
const portFailure = "Failed to open server port"

// FreePorts returns n distinct loopback TCP ports that were free a moment
// ago. It holds every listener until it has them all: ports taken one
// after the other may come back equal once the first is closed.
func FreePorts(tb testing.TB, n int) []int {
	tb.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("xmppconntest: reserving a port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

func luaString(s string) string { return strconv.Quote(s) }

func luaList(items []string) string {
	q := make([]string, len(items))
	for i, it := range items {
		q[i] = luaString(it)
	}
	return "{ " + strings.Join(q, ", ") + " }"
}

// config renders prosody.cfg.lua.
func (s *Server) config(ports []int) string {
	o := s.opts
	mods := []string{
		"roster", "saslauth", "disco", "carbons", "mam", "ping",
		"smacks", "blocklist", "vcard_legacy", "private", "pep", "version",
		"time", "uptime", "xmppconntest",
	}
	if !o.NoTLS {
		mods = append(mods, "tls")
	}
	if o.HTTP {
		mods = append(mods, "bosh", "websocket")
	}
	mods = append(mods, o.Modules...)
	var enabled []string
	for _, m := range mods {
		drop := false
		for _, d := range o.DisableModules {
			drop = drop || d == m
		}
		if !drop {
			enabled = append(enabled, m)
		}
	}
	disabled := []string{"s2s", "s2s_auth_certs", "dialback", "register", "limits"}
	disabled = append(disabled, o.DisableModules...)

	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("-- generated by xmppconntest")
	p("run_as_root = true")
	p("pidfile = %s", luaString(filepath.Join(s.Dir, "prosody.pid")))
	p("data_path = %s", luaString(s.DataDir))
	p("plugin_paths = { %s }", luaString(filepath.Join(s.Dir, "plugins")))
	p("interfaces = { \"127.0.0.1\" }")
	p("local_interfaces = { \"127.0.0.1\" }")
	p("c2s_ports = { %d }", ports[0])
	if o.DirectTLS {
		p("c2s_direct_tls_ports = { %d }", ports[1])
	}
	p("s2s_ports = { }")
	p("component_ports = { }")
	p("https_ports = { }")
	if o.HTTP {
		p("http_ports = { %d }", ports[2])
		p("http_interfaces = { \"127.0.0.1\" }")
		p("http_default_host = %s", luaString(o.Domain))
		p("consider_bosh_secure = true")
		p("consider_websocket_secure = true")
		p("http_default_cors_enabled = true")
	} else {
		p("http_ports = { }")
	}
	p("modules_enabled = %s", luaList(enabled))
	p("modules_disabled = %s", luaList(disabled))
	p("log = { { levels = { min = %s }, to = \"file\", filename = %s, timestamps = true } }",
		luaString(o.LogLevel), luaString(s.LogFile))
	p("xmppconntest_audit_file = %s", luaString(s.AuditFile))
	p("storage = \"internal\"")
	if o.PlainOnly {
		p("authentication = \"internal_plain\"")
		p("disable_sasl_mechanisms = %s", luaList([]string{
			"DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS",
		}))
	} else {
		p("authentication = \"internal_hashed\"")
		p("password_hash = %s", luaString(o.PasswordHash))
		p("default_iteration_count = %d", iterations)
	}
	if o.NoTLS {
		p("c2s_require_encryption = false")
		p("allow_unencrypted_plain_auth = true")
	} else {
		p("c2s_require_encryption = true")
		p("ssl = { certificate = %s, key = %s }", luaString(s.Certs.CertFile), luaString(s.Certs.KeyFile))
	}
	p("archive_expires_after = \"1d\"")
	p("default_archive_policy = true")
	if o.SmacksHibernation > 0 {
		p("smacks_hibernation_time = %d", int(o.SmacksHibernation.Seconds()))
	}
	if o.StanzaSizeLimit > 0 {
		p("c2s_stanza_size_limit = %d", o.StanzaSizeLimit)
	}
	if o.ExtraConfig != "" {
		p("%s", o.ExtraConfig)
	}
	p("VirtualHost %s", luaString(o.Domain))
	if !o.NoTLS {
		p("  ssl = { certificate = %s, key = %s }", luaString(s.Certs.CertFile), luaString(s.Certs.KeyFile))
	}
	if o.MUC {
		p("Component %s \"muc\"", luaString(s.MUCDomain))
		p("  restrict_room_creation = false")
		if o.MUCConfig != "" {
			p("%s", o.MUCConfig)
		}
	}
	return b.String()
}

// iterations is the PBKDF2 iteration count of accounts created by this
// package: low, to keep tests fast; real deployments use 10000 or more.
const iterations = 4096

// auditModule appends SASL outcomes, resource binds (a new session: a
// XEP-0198 resumption binds none) and a readiness line to the file named
// by xmppconntest_audit_file, independently of the log level.
const auditModule = `-- xmppconntest helper: records SASL outcomes and readiness.
local audit_file = module:get_option_string("xmppconntest_audit_file");
local function audit(fmt, ...)
	local line = string.format(fmt, ...);
	module:log("info", "%s", line);
	local f = audit_file and io.open(audit_file, "a");
	if f then f:write(line, "\n"); f:close(); end
end
module:hook("authentication-failure", function(event)
	local session = event.session;
	local user = session.sasl_handler and session.sasl_handler.username or "?";
	audit("xmppconntest: auth-failure user=%s condition=%s", tostring(user), tostring(event.condition));
end);
module:hook("authentication-success", function(event)
	local session = event.session;
	local mech = session.sasl_handler and session.sasl_handler.selected or "?";
	audit("xmppconntest: auth-success user=%s mechanism=%s", tostring(session.username), tostring(mech));
end);
module:hook("resource-bind", function(event)
	local session = event.session;
	audit("xmppconntest: bind user=%s resource=%s", tostring(session.username), tostring(session.resource));
end);
module:hook_global("server-started", function() audit("` + readyMarker + `"); end);
`

// Start starts the (stopped) server and waits until it accepts clients.
func (s *Server) Start(tb testing.TB) {
	tb.Helper()
	if err := s.start(tb); err != nil {
		tb.Fatal(err)
	}
}

// start is Start, returning a startup failure; one on a port in use wraps
// errPortTaken.
func (s *Server) start(tb testing.TB) error {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("xmppconntest: prosody already running")
	}
	before, logBefore := fileSize(s.AuditFile), fileSize(s.LogFile)
	out, err := os.OpenFile(filepath.Join(s.Dir, "prosody.stdout"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("xmppconntest: %w", err)
	}
	defer out.Close()
	cmd := exec.Command(ProsodyBin, "-F", "--config", s.ConfigFile)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("xmppconntest: starting prosody: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
	if n := s.opts.MaxOpenFiles; n > 0 {
		if err := raiseNoFile(cmd.Process.Pid, n); err != nil {
			s.killLocked()
			return fmt.Errorf("xmppconntest: %w", err)
		}
	}

	deadline := time.Now().Add(s.opts.StartTimeout)
	for {
		select {
		case <-done:
			s.cmd, s.done = nil, nil
			return fmt.Errorf("xmppconntest: prosody exited during startup (%v)\n%s\n%s", cmd.ProcessState,
				readTail(filepath.Join(s.Dir, "prosody.stdout"), 4096), s.LogTail(40))
		default:
		}
		if containsSince(s.LogFile, logBefore, portFailure) {
			s.killLocked()
			return fmt.Errorf("%w\n%s", errPortTaken, s.LogTail(40))
		}
		if containsSince(s.AuditFile, before, readyMarker) && s.accepting() {
			return nil
		}
		if time.Now().After(deadline) {
			s.killLocked()
			return fmt.Errorf("xmppconntest: prosody not ready after %v\n%s", s.opts.StartTimeout, s.LogTail(40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// raiseNoFile sets pid's RLIMIT_NOFILE to n. Without the privilege to raise
// the hard limit it raises the soft limit to the hard one, and fails when
// that is still below n.
func raiseNoFile(pid int, n uint64) error {
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		return fmt.Errorf("reading prosody's open files limit: %w", err)
	}
	if old.Cur >= n {
		return nil
	}
	lim := unix.Rlimit{Cur: n, Max: max(n, old.Max)}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err == nil {
		return nil
	}
	if old.Max < n {
		return fmt.Errorf("prosody needs %d open files but the hard limit is %d (raise it with ulimit -Hn or run as root)", n, old.Max)
	}
	lim = unix.Rlimit{Cur: n, Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		return fmt.Errorf("raising prosody's open files limit to %d: %w", n, err)
	}
	return nil
}

// containsSince reports whether marker was written to name after offset.
func containsSince(name string, offset int64, marker string) bool {
	f, err := os.Open(name)
	if err != nil {
		return false
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return false
	}
	data, err := readAllLimit(f, 64<<20)
	if err != nil {
		return false
	}
	return bytes.Contains(data, []byte(marker))
}

func (s *Server) accepting() bool {
	addrs := []string{s.Addr, s.DirectTLSAddr, s.HTTPAddr}
	for _, a := range addrs {
		if a == "" {
			continue
		}
		c, err := net.DialTimeout("tcp", a, time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

// Stop shuts the server down gracefully (SIGTERM; SIGKILL after 10s).
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if err := s.stop(10 * time.Second); err != nil {
		tb.Fatal(err)
	}
}

func (s *Server) stop(grace time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		s.cmd, s.done = nil, nil
		return nil
	case <-time.After(grace):
	}
	s.killLocked()
	return fmt.Errorf("xmppconntest: prosody ignored SIGTERM for %v, killed", grace)
}

// Kill stops the server with SIGKILL: no stream is closed, nothing is flushed.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		tb.Fatalf("xmppconntest: Kill: prosody not running")
	}
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd, s.done = nil, nil
}

// Restart stops the server gracefully and starts it again on the same ports
// with the same data. XEP-0198 sessions do not survive it.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Stop(tb)
	s.Start(tb)
}

// Running reports whether the Prosody process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil
}

// TLSConfig returns a client TLS configuration trusting only the test CA,
// with ServerName set to the domain.
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.CAPool, ServerName: s.Domain, MinVersion: tls.VersionTLS12}
}

// JID returns user@domain.
func (s *Server) JID(user string) string { return user + "@" + s.Domain }

// Prosodyctl runs prosodyctl with the server's config under a timeout and
// returns its combined output.
func (s *Server) Prosodyctl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	full := append([]string{"-k", "2", "50", ProsodyctlBin, "--config", s.ConfigFile}, args...)
	cmd := exec.CommandContext(ctx, "timeout", full...)
	cmd.Dir = s.Dir
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("xmppconntest: prosodyctl %s: %w: %s", args[0], err, out)
	}
	return string(out), nil
}

// Register creates an account with "prosodyctl register", as an
// administrator would. It takes about a second; see RegisterMany.
func (s *Server) Register(tb testing.TB, user, pass string) {
	tb.Helper()
	ctx := context.Background()
	if c, ok := tb.(interface{ Context() context.Context }); ok {
		ctx = c.Context()
	}
	if _, err := s.Prosodyctl(ctx, "register", user, s.Domain, pass); err != nil {
		tb.Fatal(err)
	}
}

// RegisterMany creates accounts by writing Prosody's internal storage files
// directly (milliseconds per account). It works while the server runs:
// mod_storage_internal reads the file on every lookup.
func (s *Server) RegisterMany(tb testing.TB, users map[string]string) {
	tb.Helper()
	dir := filepath.Join(s.DataDir, escapeNode(s.Domain), "accounts")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		tb.Fatalf("xmppconntest: %v", err)
	}
	for user, pass := range users {
		if strings.ToLower(user) != user || user == "" {
			tb.Fatalf("xmppconntest: RegisterMany: user %q must be a non-empty lowercase localpart", user)
		}
		data, err := s.accountFile(pass)
		if err != nil {
			tb.Fatal(err)
		}
		name := filepath.Join(dir, escapeNode(user)+".dat")
		tmp := name + ".tmp"
		if err := os.WriteFile(tmp, data, 0o640); err != nil {
			tb.Fatalf("xmppconntest: %v", err)
		}
		if err := os.Rename(tmp, name); err != nil {
			tb.Fatalf("xmppconntest: %v", err)
		}
	}
}

// RegisterN creates users prefix0..prefix(n-1), all with password pass, and
// returns their localparts.
func (s *Server) RegisterN(tb testing.TB, prefix string, n int, pass string) []string {
	tb.Helper()
	users := make(map[string]string, n)
	names := make([]string, n)
	for i := range n {
		names[i] = prefix + strconv.Itoa(i)
		users[names[i]] = pass
	}
	s.RegisterMany(tb, users)
	return names
}

// Befriend makes a and b (localparts) each other's contacts with
// subscription "both", by writing their rosters into Prosody's internal
// storage. Call it before either user logs in: a roster is read from
// storage when a session loads it.
func (s *Server) Befriend(tb testing.TB, a, b string) {
	tb.Helper()
	dir := filepath.Join(s.DataDir, escapeNode(s.Domain), "roster")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		tb.Fatalf("xmppconntest: %v", err)
	}
	for _, pair := range [][2]string{{a, b}, {b, a}} {
		name := filepath.Join(dir, escapeNode(pair[0])+".dat")
		roster := "return {\n\t[false] = { [\"version\"] = 1; [\"pending\"] = {}; };\n"
		if old, err := os.ReadFile(name); err == nil { // another contact is there already
			roster = strings.TrimSuffix(string(old), "};\n")
		}
		roster += fmt.Sprintf("\t[%s] = { [\"subscription\"] = \"both\"; [\"groups\"] = {}; [\"name\"] = %s; };\n};\n",
			luaString(s.JID(pair[1])), luaString(pair[1]))
		if err := os.WriteFile(name, []byte(roster), 0o640); err != nil {
			tb.Fatalf("xmppconntest: %v", err)
		}
	}
}

// escapeNode is datamanager's encode: every non-alphanumeric byte becomes %xx.
func escapeNode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02x", c)
		}
	}
	return b.String()
}

// accountFile renders the Lua table mod_auth_internal_{plain,hashed} stores.
func (s *Server) accountFile(pass string) ([]byte, error) {
	if s.opts.PlainOnly {
		return []byte("return {\n\t[\"password\"] = " + luaString(pass) + ";\n};\n"), nil
	}
	var fn func() hash.Hash
	switch s.opts.PasswordHash {
	case "SHA-1":
		fn = sha1.New
	case "SHA-256":
		fn = sha256.New
	default:
		return nil, fmt.Errorf("xmppconntest: unsupported password_hash %q", s.opts.PasswordHash)
	}
	saltRaw := make([]byte, 16)
	if _, err := rand.Read(saltRaw); err != nil {
		return nil, fmt.Errorf("xmppconntest: %w", err)
	}
	salt := hex.EncodeToString(saltRaw)
	salted, err := pbkdf2.Key(fn, pass, []byte(salt), iterations, fn().Size())
	if err != nil {
		return nil, fmt.Errorf("xmppconntest: %w", err)
	}
	mac := func(msg string) []byte {
		h := hmac.New(fn, salted)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac("Client Key")
	h := fn()
	h.Write(clientKey)
	stored := h.Sum(nil)
	server := mac("Server Key")
	return fmt.Appendf(nil, "return {\n\t[\"iteration_count\"] = %d;\n\t[\"salt\"] = %s;\n\t[\"server_key\"] = %s;\n\t[\"stored_key\"] = %s;\n};\n",
		iterations, luaString(salt), luaString(hex.EncodeToString(server)), luaString(hex.EncodeToString(stored))), nil
}

// Log returns the whole log file.
func (s *Server) Log() string {
	data, _ := os.ReadFile(s.LogFile)
	return string(data)
}

func (s *Server) audit() string {
	data, _ := os.ReadFile(s.AuditFile)
	return string(data)
}

// LogTail returns the last n lines of the log, for failure messages.
func (s *Server) LogTail(n int) string {
	data := readTail(s.LogFile, 256<<10)
	lines := strings.Split(strings.TrimRight(data, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "--- prosody log tail (" + s.LogFile + ") ---\n" + strings.Join(lines, "\n")
}

var (
	authLine = regexp.MustCompile(`xmppconntest: auth-(failure|success) user=(\S+)`)
	mechLine = regexp.MustCompile(`xmppconntest: auth-success user=(\S+) mechanism=(\S+)`)
	bindLine = regexp.MustCompile(`xmppconntest: bind user=(\S+) resource=`)
)

// AuthMechanisms lists, in order, the SASL mechanisms of user's successful
// logins ("" = any user).
func (s *Server) AuthMechanisms(user string) []string {
	var mechs []string
	for _, m := range mechLine.FindAllStringSubmatch(s.audit(), -1) {
		if user == "" || m[1] == user {
			mechs = append(mechs, m[2])
		}
	}
	return mechs
}

// AuthFailures counts SASL failures logged for user ("" = any user).
func (s *Server) AuthFailures(user string) int { return s.countAuth("failure", user) }

// AuthSuccesses counts successful SASL logins of user ("" = any user).
func (s *Server) AuthSuccesses(user string) int { return s.countAuth("success", user) }

// Binds counts the resources bound by user ("" = any user): the sessions
// the server created for them. A XEP-0198 resumption binds none.
func (s *Server) Binds(user string) int {
	n := 0
	for _, m := range bindLine.FindAllStringSubmatch(s.audit(), -1) {
		if user == "" || m[1] == user {
			n++
		}
	}
	return n
}

func (s *Server) countAuth(kind, user string) int {
	n := 0
	for _, m := range authLine.FindAllStringSubmatch(s.audit(), -1) {
		if m[1] == kind && (user == "" || m[2] == user) {
			n++
		}
	}
	return n
}

func readTail(name string, max int64) string {
	f, err := os.Open(name)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size() > max {
		if _, err := f.Seek(fi.Size()-max, 0); err != nil {
			return ""
		}
	}
	data, _ := readAllLimit(f, max)
	return string(data)
}

func readAllLimit(f *os.File, max int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(f, max))
}

// skipShort skips a test that starts a real server under -short, and only
// then.
func skipShort(tb testing.TB, server string) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("integration test, skipped under -short: it runs a real %s", server)
	}
}

// NeedBinary returns the path of bin, a program an integration test runs
// (node, chromium, apache2...), under the starters' rule: under -short the
// test is skipped, and only then; without -short a missing bin fails it,
// naming pkg, the Debian package(s) to install.
func NeedBinary(tb testing.TB, bin, pkg string) string {
	tb.Helper()
	skipShort(tb, bin)
	p, err := exec.LookPath(bin)
	if err != nil {
		tb.Fatalf("xmppconntest: %s not found (%v): apt-get install %s (or make deps)", bin, err, pkg)
	}
	return p
}
