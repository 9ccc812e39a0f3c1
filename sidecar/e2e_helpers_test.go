package sidecar_test

// Helpers for the end-to-end tests: they build the real imsidecar binary,
// run it as a subprocess against a real Prosody and real PHP sessions (files
// or Redis), and drive its HTTP API with net/http. The bench and fault tests
// reuse them: startE2E for the whole rig, (*e2e).login for a PHP session,
// (*apiClient) for calls, (*poller).waitFor for events with a cursor.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"expressolivre.org/imsidecar/xmppconn"
	"expressolivre.org/imsidecar/xmppconn/xmppconntest"
)

// TestMain removes the daemon binary built by daemonBinary. The binary is
// built lazily, so `go test -run TestSomeUnit` does not pay for it.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// daemonBinary builds ./cmd/imsidecar once per test run and returns its path.
func daemonBinary(tb testing.TB) string {
	tb.Helper()
	skipShort(tb, "imsidecar daemon")
	binOnce.Do(func() {
		// go test puts its own GOROOT/bin first in PATH.
		goBin, err := exec.LookPath("go")
		if err != nil {
			binErr = fmt.Errorf("go toolchain not found: %w", err)
			return
		}
		binDir, binErr = os.MkdirTemp("", "imsidecar-e2e-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "imsidecar")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		// The test runs in sidecar/; build from the module root.
		cmd := exec.CommandContext(ctx, goBin, "build", "-o", binPath, "./sidecar/cmd/imsidecar")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./sidecar/cmd/imsidecar: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		tb.Fatalf("building the daemon: %v", binErr)
	}
	return binPath
}

// skipShort skips an integration test under -short (make test-short), and
// only then: without -short a missing binary fails it (requireBinary).
func skipShort(tb testing.TB, what string) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("integration test, skipped under -short: it runs a real %s", what)
	}
}

// requireBinary fails the test loudly when a tool the e2e tests need is
// missing; under -short it skips the test instead (the starters' rule,
// xmppconntest.NeedBinary).
func requireBinary(tb testing.TB, name, pkg string) string {
	tb.Helper()
	return xmppconntest.NeedBinary(tb, name, pkg)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// randomID returns a PHP-style session id: 26 characters of [a-z0-9].
func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 26)
	rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// Redis

// ---------------------------------------------------------------------------
// PHP sessions

// phpStore says where PHP keeps its sessions: the files handler in a
// directory, or phpredis on a Redis server.
type phpStore struct {
	Kind     string // "files", "redis" or "rediscluster"
	SavePath string // files: the directory; redis: "tcp://host:port"; rediscluster: "seed[]=host:port&seed[]=…"
}

// phpArgs are the ini settings PHP runs with, like Expresso's .htaccess.
func (s phpStore) phpArgs() []string {
	handler, savePath := "files", s.SavePath
	switch s.Kind {
	case "redis":
		handler = "redis"
	case "rediscluster":
		handler, savePath = "rediscluster", `"`+s.SavePath+`"`
	}
	return []string{
		"-d", "session.save_handler=" + handler,
		"-d", "session.save_path=" + savePath,
		"-d", "session.serialize_handler=php",
		"-d", "session.use_cookies=0",
		"-d", "session.use_only_cookies=0",
		"-d", "session.use_strict_mode=0",
		"-d", "session.cache_limiter=",
		"-d", "session.gc_probability=0",
		"-d", "session.gc_maxlifetime=14400",
		"-d", "default_charset=iso-8859-1",
		"-d", "display_errors=stderr",
		"-d", "error_reporting=-1",
	}
}

// writeSessionPHP creates an Expresso-shaped session the way Expresso's login
// does, through PHP's own session handler. Strings are ISO-8859-1.
const writeSessionPHP = `<?php
$in = json_decode(getenv('E2E_SESSION'), true, 16, JSON_THROW_ON_ERROR);
$latin1 = fn (string $s): string => mb_convert_encoding($s, 'ISO-8859-1', 'UTF-8');
session_id($in['id']);
if (!session_start()) { fwrite(STDERR, "session_start failed\n"); exit(1); }
$now = time();
$_SESSION['phpgw_session'] = [
    'session_id' => $in['id'],
    'session_lid' => $in['user'] . '@default',
    'session_ip' => '127.0.0.1',
    'session_logintime' => $now,
    'session_dla' => $now,
    'session_action' => '/expressoMail/index.php',
    'session_flags' => 'N',
    'account_id' => 1000 + strlen($in['user']),
    'expires_account' => -1,
    'phpgw_app_sessions' => ['phpgwapi' => ['password' => ['content' => base64_encode($in['password'])]]],
];
$user = [
    'account_id' => 1000 + strlen($in['user']),
    'account_lid' => $in['user'],
    'userid' => $in['user'],
    'passwd' => $in['password'],
    'fullname' => $latin1($in['fullname']),
    'firstname' => $latin1(explode(' ', $in['fullname'])[0]),
    'email' => $in['user'] . '@example.test',
    'account_dn' => 'uid=' . $in['user'] . ',ou=people,dc=example,dc=test',
    'preferences' => ['common' => ['lang' => 'pt-br', 'template_set' => 'default'], 'expressoMail' => ['max_email_per_page' => 50]],
    'apps' => ['expressoMail' => ['title' => 'E-mail', 'enabled' => true], 'calendar' => ['title' => 'Agenda', 'enabled' => true]],
];
$_SESSION['phpgw_info']['expressomail']['user'] = $user;
$_SESSION['phpgw_info']['expressomail']['server'] = ['db_pass' => 'not-the-user-password', 'sessions_timeout' => 14400];
$_SESSION['phpgw_info']['expressomail']['email_server'] = ['imapServer' => '127.0.0.1', 'organisationName' => $latin1('Órgão')];
$_SESSION['connection_db_info'] = ['user_auth' => $in['id'] . '127.0.0.1Mozilla/5.0'];
session_write_close();
`

// destroySessionPHP is Expresso's logout: session_destroy() of the session.
const destroySessionPHP = `<?php
session_id(getenv('E2E_SESSION_ID'));
if (!session_start()) { fwrite(STDERR, "session_start failed\n"); exit(1); }
if (!session_destroy()) { fwrite(STDERR, "session_destroy failed\n"); exit(1); }
`

// runPHP runs a PHP script with the store's settings and extra environment.
func runPHP(tb testing.TB, store phpStore, script string, env ...string) {
	tb.Helper()
	bin := requireBinary(tb, "php", "php-cli php-redis")
	f := filepath.Join(tb.TempDir(), "script.php")
	if err := os.WriteFile(f, []byte(script), 0o600); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(store.phpArgs(), f)...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("php %s: %v\n%s", store.Kind, err, out)
	}
}

// ---------------------------------------------------------------------------
// The daemon

// daemonOptions tunes one daemon run.
type daemonOptions struct {
	Store           phpStore
	XMPP            *xmppconntest.Server
	Token           bool          // with --api-token-file
	UnixSocket      bool          // API on unix:<dir>/api.sock instead of TCP
	RecheckInterval time.Duration // default 1s
	Inactivity      time.Duration // default: the daemon's
	ShutdownTimeout time.Duration // default 10s
	Extra           []string      // more flags
	// Listeners, if set, returns more flags naming listen addresses on
	// ports it picks; it is called again, for other ports, when a start
	// fails on a port taken meanwhile.
	Listeners func() []string
	// Prosody configures the server startE2E starts (e.g. MUC: true).
	Prosody xmppconntest.Options
}

// daemon is a running imsidecar subprocess.
type daemon struct {
	URL       string // http://127.0.0.1:PORT, or unix:/path/api.sock
	Socket    string // the unix socket path, "" on TCP
	OpsURL    string
	Token     string // "" without --api-token-file
	TokenFile string
	Args      []string

	cmd     *exec.Cmd
	done    chan struct{}
	logFile string
	mu      sync.Mutex
	stopped bool
}

// startDaemon runs the imsidecar binary and waits until /readyz answers 200.
//
// Its ports were free a moment before the daemon binds them, not held:
// another process on the machine may bind one in between (a loaded CI box
// runs several test binaries, each starting servers on random ports). A
// daemon that exits at startup on "address already in use" is started
// again on other ports, twice at most; any other startup failure fails the
// test at once.
func startDaemon(tb testing.TB, opts daemonOptions) *daemon {
	tb.Helper()
	if opts.RecheckInterval == 0 {
		opts.RecheckInterval = time.Second
	}
	if opts.ShutdownTimeout == 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	for attempt := 1; ; attempt++ {
		d := newDaemon(tb, opts)
		err := d.start(tb, opts.ShutdownTimeout+5*time.Second)
		if err == nil {
			return d
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			tb.Fatal(err)
		}
		tb.Logf("imsidecar start %d: a port picked free was bound by someone else first; starting again on other ports", attempt)
	}
}

// newDaemon prepares one start of the binary: fresh ports, flags, token.
func newDaemon(tb testing.TB, opts daemonOptions) *daemon {
	tb.Helper()
	dir := tb.TempDir()
	d := &daemon{
		logFile: filepath.Join(dir, "imsidecar.log"),
		done:    make(chan struct{}),
	}
	api, ops := freePort(tb), freePort(tb)
	for ops == api {
		ops = freePort(tb)
	}
	d.URL = "http://127.0.0.1:" + strconv.Itoa(api)
	listen := "127.0.0.1:" + strconv.Itoa(api)
	if opts.UnixSocket {
		d.Socket = filepath.Join(dir, "api.sock")
		d.URL = "unix:" + d.Socket
		listen = d.URL
	}
	d.OpsURL = "http://127.0.0.1:" + strconv.Itoa(ops)
	args := []string{
		"serve",
		"--listen=" + listen,
		"--ops-listen=127.0.0.1:" + strconv.Itoa(ops),
		"--xmpp-addr=" + opts.XMPP.Addr,
		"--xmpp-domain=" + opts.XMPP.Domain,
		"--xmpp-tls=starttls",
		"--xmpp-ca-file=" + opts.XMPP.CAFile,
		"--session-store=" + strings.TrimSuffix(opts.Store.Kind, "cluster"),
		"--session-serializer=php",
		"--session-charset=ISO-8859-1",
		"--session-max-lifetime=4h",
		"--profile=expresso",
		"--recheck-interval=" + opts.RecheckInterval.String(),
		"--shutdown-timeout=" + opts.ShutdownTimeout.String(),
	}
	switch opts.Store.Kind {
	case "redis", "rediscluster":
		args = append(args, "--session-redis="+opts.Store.SavePath)
	default: // the save path of any other store
		args = append(args, "--session-save-path="+opts.Store.SavePath)
	}
	if opts.Inactivity > 0 {
		args = append(args, "--inactivity="+opts.Inactivity.String())
	}
	if opts.Token {
		d.Token = "tok-" + randomID()
		d.TokenFile = filepath.Join(dir, "token")
		if err := os.WriteFile(d.TokenFile, []byte(d.Token+"\n"), 0o600); err != nil {
			tb.Fatal(err)
		}
		args = append(args, "--api-token-file="+d.TokenFile)
	}
	args = append(args, opts.Extra...)
	if opts.Listeners != nil {
		args = append(args, opts.Listeners()...)
	}
	d.Args = args
	return d
}

// errPortTaken: the daemon exited at startup because an address it was to
// listen on was bound already.
var errPortTaken = errors.New("a listen address was in use")

// run starts the binary with d.Args, logging to d.logFile, and waits until
// /readyz answers 200. At the end of the test the daemon gets SIGTERM and
// grace to exit, then SIGKILL. faults_test.go's respawn runs a daemon
// again with the same flags through it.
func (d *daemon) run(tb testing.TB, grace time.Duration) {
	tb.Helper()
	if err := d.start(tb, grace); err != nil {
		tb.Fatal(err)
	}
}

// start is run, returning a startup failure; one on a port in use wraps
// errPortTaken.
func (d *daemon) start(tb testing.TB, grace time.Duration) error {
	tb.Helper()
	logf, err := os.Create(d.logFile)
	if err != nil {
		return err
	}
	cmd := exec.Command(daemonBinary(tb), d.Args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Keep the environment from overriding flags through IMSIDECAR_* twins.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IMSIDECAR_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting imsidecar: %w", err)
	}
	d.cmd = cmd
	go func() { cmd.Wait(); logf.Close(); close(d.done) }()
	tb.Cleanup(func() {
		d.mu.Lock()
		stopped := d.stopped
		d.mu.Unlock()
		if !stopped {
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(grace):
				d.cmd.Process.Kill()
				<-d.done
			}
		}
		if tb.Failed() {
			tb.Logf("imsidecar log (last 60 lines):\n%s", d.LogTail(60))
		}
	})

	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-d.done:
			err := fmt.Errorf("imsidecar exited during startup (%v); args %q\n%s", cmd.ProcessState, d.Args, d.LogTail(60))
			if strings.Contains(d.Log(), "bind: address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		default:
		}
		resp, err := http.Get(d.OpsURL + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("imsidecar not ready after 20s (last: %v)\n%s", err, d.LogTail(60))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Log returns everything the daemon wrote so far.
func (d *daemon) Log() string {
	b, _ := os.ReadFile(d.logFile)
	return string(b)
}

// LogTail returns the last n lines of the daemon's output.
func (d *daemon) LogTail(n int) string {
	lines := strings.Split(strings.TrimRight(d.Log(), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stuckAt is, for a daemon that did not exit and was sent SIGQUIT, the
// last n lines it logged before the goroutine dump and the stack of its
// main goroutine (the shutdown step it waited in); else LogTail(n).
func (d *daemon) stuckAt(n int) string {
	log := d.Log()
	i := strings.Index(log, "SIGQUIT: quit")
	if i < 0 {
		return d.LogTail(n)
	}
	lines := strings.Split(strings.TrimRight(log[:i], "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	main := ""
	if j := strings.Index(log[i:], "\ngoroutine 1 "); j >= 0 {
		main = log[i+j+1:]
		if k := strings.Index(main, "\n\n"); k >= 0 {
			main = main[:k]
		}
	}
	return strings.Join(lines, "\n") + "\n\nits main goroutine:\n" + main
}

// Signal sends sig and waits up to timeout for the exit; it returns the exit
// code (-1 if the process was killed by a signal) and how long it took.
func (d *daemon) Signal(tb testing.TB, sig syscall.Signal, timeout time.Duration) (int, time.Duration) {
	tb.Helper()
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	start := time.Now()
	if err := d.cmd.Process.Signal(sig); err != nil {
		tb.Fatalf("signalling imsidecar: %v", err)
	}
	select {
	case <-d.done:
	case <-time.After(timeout):
		// Its goroutines, into its log: what it was waiting for.
		d.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-d.done:
		case <-time.After(5 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
		}
		tb.Fatalf("imsidecar did not exit within %v after %v\n%s", timeout, sig, d.stuckAt(40))
	}
	return d.cmd.ProcessState.ExitCode(), time.Since(start)
}

// client returns an API client speaking for PHP session sid.
func (d *daemon) client(sid string) *apiClient {
	if d.Socket == "" {
		return &apiClient{base: d.URL, sid: sid, token: d.Token, hc: &http.Client{Timeout: 70 * time.Second}}
	}
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", d.Socket)
	}}
	return &apiClient{base: "http://imsidecar", sid: sid, token: d.Token, hc: &http.Client{Timeout: 70 * time.Second, Transport: tr}}
}

// ---------------------------------------------------------------------------
// The whole rig

// e2e is Prosody + a PHP session store + the daemon.
type e2e struct {
	XMPP    *xmppconntest.Server
	Store   phpStore
	Redis   *phpsessiontest.Redis // nil for files
	D       *daemon
	secrets []string // passwords and session ids that must never be logged
}

// startE2E starts Prosody, the store ("files" or "redis") and the daemon.
// opts.Store and opts.XMPP are filled in.
func startE2E(tb testing.TB, store string, opts daemonOptions) *e2e {
	tb.Helper()
	return startE2EWith(tb, store, opts.Prosody, opts)
}

// startE2EWith is startE2E with a Prosody configured by xopts instead of
// opts.Prosody.
func startE2EWith(tb testing.TB, store string, xopts xmppconntest.Options, opts daemonOptions) *e2e {
	tb.Helper()
	requireBinary(tb, "php", "php-cli php-redis")
	e := &e2e{XMPP: xmppconntest.StartProsody(tb, xopts)}
	switch store {
	case "files":
		dir := filepath.Join(tb.TempDir(), "sessions")
		if err := os.Mkdir(dir, 0o700); err != nil {
			tb.Fatal(err)
		}
		e.Store = phpStore{Kind: "files", SavePath: dir}
	case "redis":
		e.Redis = phpsessiontest.StartRedis(tb)
		e.Store = phpStore{Kind: "redis", SavePath: "tcp://" + e.Redis.Addr}
	default:
		tb.Fatalf("unknown store %q", store)
	}
	opts.Store, opts.XMPP = e.Store, e.XMPP
	e.D = startDaemon(tb, opts)
	tb.Cleanup(func() { e.checkLogs(tb) })
	return e
}

// user is one Expresso user with a live PHP session.
type user struct {
	Name     string // localpart
	Password string
	SID      string
	Bare     string // name@domain
	C        *apiClient
}

// register creates the accounts in Prosody (password = name + "-pw").
func (e *e2e) register(tb testing.TB, names ...string) {
	tb.Helper()
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = n + "-pw"
	}
	e.XMPP.RegisterMany(tb, m)
}

// login writes an Expresso session for name with PHP and returns the user.
// The password in the session is name + "-pw" unless password is given.
func (e *e2e) login(tb testing.TB, name string, password ...string) *user {
	tb.Helper()
	pw := name + "-pw"
	if len(password) > 0 {
		pw = password[0]
	}
	u := &user{Name: name, Password: pw, SID: randomID(), Bare: e.XMPP.JID(name)}
	in, _ := json.Marshal(map[string]string{
		"id": u.SID, "user": name, "password": pw,
		"fullname": strings.ToUpper(name[:1]) + name[1:] + " da Conceição",
	})
	runPHP(tb, e.Store, writeSessionPHP, "E2E_SESSION="+string(in))
	u.C = e.D.client(u.SID)
	e.secrets = append(e.secrets, u.SID, pw)
	return u
}

// logout destroys the user's PHP session with session_destroy().
func (e *e2e) logout(tb testing.TB, u *user) {
	tb.Helper()
	runPHP(tb, e.Store, destroySessionPHP, "E2E_SESSION_ID="+u.SID)
}

// checkLogs fails the test if the daemon logged a password or a session id.
func (e *e2e) checkLogs(tb testing.TB) {
	log := e.D.Log()
	for _, s := range e.secrets {
		if len(s) >= 6 && strings.Contains(log, s) {
			tb.Errorf("the daemon log contains a secret (password or session id %q...)", s[:3])
		}
	}
}

// connect connects u and returns a poller positioned at the returned cursor.
func (u *user) connect(tb testing.TB) *poller {
	tb.Helper()
	var r connectResp
	if st, err := u.C.call(tb.Context(), "POST", "/v1/connect", nil, &r); err != nil || st != http.StatusOK {
		tb.Fatalf("%s: connect: %d %v", u.Name, st, err)
	}
	if r.State != "online" || !strings.HasPrefix(r.JID, u.Bare+"/") {
		tb.Fatalf("%s: connect answered %+v", u.Name, r)
	}
	return &poller{c: u.C, name: u.Name, cursor: r.Cursor}
}

// befriend makes a and b mutual contacts through the API.
func befriend(tb testing.TB, a, b *user, pa, pb *poller) {
	tb.Helper()
	ctx := tb.Context()
	a.C.mustCall(tb, "PUT", "/v1/roster/"+url.PathEscape(b.Bare), map[string]any{"name": b.Name, "groups": []string{"Equipe"}}, nil, http.StatusNoContent)
	a.C.mustCall(tb, "POST", "/v1/subscriptions/"+url.PathEscape(b.Bare), map[string]string{"action": "subscribe"}, nil, http.StatusNoContent)
	pb.waitFor(tb, 15*time.Second, "subscribe from "+a.Name, func(ev event) bool {
		return ev.Event == "subscription" && bareJID(ev.From) == a.Bare && ev.Type == "subscribe"
	})
	b.C.mustCall(tb, "POST", "/v1/subscriptions/"+url.PathEscape(a.Bare), map[string]string{"action": "approve"}, nil, http.StatusNoContent)
	b.C.mustCall(tb, "PUT", "/v1/roster/"+url.PathEscape(a.Bare), map[string]any{"name": a.Name, "groups": []string{"Equipe"}}, nil, http.StatusNoContent)
	b.C.mustCall(tb, "POST", "/v1/subscriptions/"+url.PathEscape(a.Bare), map[string]string{"action": "subscribe"}, nil, http.StatusNoContent)
	pa.waitFor(tb, 15*time.Second, "subscribe from "+b.Name, func(ev event) bool {
		return ev.Event == "subscription" && bareJID(ev.From) == b.Bare && ev.Type == "subscribe"
	})
	a.C.mustCall(tb, "POST", "/v1/subscriptions/"+url.PathEscape(b.Bare), map[string]string{"action": "approve"}, nil, http.StatusNoContent)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if a.C.rosterItem(ctx, b.Bare).Subscription == "both" && b.C.rosterItem(ctx, a.Bare).Subscription == "both" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s and %s are not mutual contacts after 15s", a.Name, b.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// The API

// apiClient calls the daemon's API for one PHP session.
type apiClient struct {
	base, sid, token string
	hc               *http.Client
}

// apiError is a non-2xx answer.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

type connectResp struct {
	JID    string `json:"jid"`
	State  string `json:"state"`
	Cursor string `json:"cursor"`
}

type meResp struct {
	User     string `json:"user"`
	JID      string `json:"jid"`
	FullName string `json:"fullname"`
	Email    string `json:"email"`
	State    string `json:"state"`
}

// event is one event of GET /v1/events, all kinds in one struct.
type event struct {
	Cursor   string          `json:"cursor"`
	Event    string          `json:"event"`
	From     string          `json:"from"`
	To       string          `json:"to"`
	ID       string          `json:"id"`
	Type     string          `json:"type"`
	Body     string          `json:"body"`
	Thread   string          `json:"thread"`
	Delay    *string         `json:"delay"`
	Carbon   *string         `json:"carbon"`
	Show     string          `json:"show"`
	Status   string          `json:"status"`
	Priority int             `json:"priority"`
	State    string          `json:"state"`
	Reason   string          `json:"reason"`
	Item     json.RawMessage `json:"item"`
	// Group chat: message and "room" event fields.
	Subject     string `json:"subject"`
	Room        string `json:"room"`
	Nick        string `json:"nick"`
	Own         bool   `json:"own"`
	JID         string `json:"jid"`
	Affiliation string `json:"affiliation"`
	Role        string `json:"role"`
	Self        bool   `json:"self"`
	NewNick     string `json:"new_nick"`
	Error       string `json:"error"`
	// Presence: the XEP-0153 avatar hash.
	Avatar *string `json:"avatar"`
	// dropped and send_failed: the stanza's kind and size.
	Stanza string `json:"stanza"`
	Bytes  int    `json:"bytes"`
}

type eventsPage struct {
	Events    []event `json:"events"`
	Cursor    string  `json:"cursor"`
	Recovered bool    `json:"recovered"`
}

type rosterItem struct {
	JID          string   `json:"jid"`
	Name         string   `json:"name"`
	Groups       []string `json:"groups"`
	Subscription string   `json:"subscription"`
	Ask          string   `json:"ask"`
	Presence     []struct {
		Resource string `json:"resource"`
		Show     string `json:"show"`
		Status   string `json:"status"`
		Priority int    `json:"priority"`
	} `json:"presence"`
}

// call performs one request. A non-2xx answer is returned as *apiError
// together with its status; out is decoded from a 2xx JSON body.
func (c *apiClient) call(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Session-Id", c.sid)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			return resp.StatusCode, fmt.Errorf("HTTP %d with a non-JSON error body %q", resp.StatusCode, raw)
		}
		return resp.StatusCode, &apiError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decoding %s %s answer %q: %w", method, path, raw, err)
		}
	}
	return resp.StatusCode, nil
}

// mustCall is call that fails the test unless the status is want.
func (c *apiClient) mustCall(tb testing.TB, method, path string, in, out any, want int) {
	tb.Helper()
	st, err := c.call(tb.Context(), method, path, in, out)
	if err != nil || st != want {
		tb.Fatalf("%s %s: got %d %v, want %d", method, path, st, err, want)
	}
}

// send posts a chat message and returns its id.
func (c *apiClient) send(tb testing.TB, to, body string, receipt bool) string {
	tb.Helper()
	var r struct {
		ID string `json:"id"`
	}
	in := map[string]any{"to": to, "body": body, "type": "chat"}
	if receipt {
		in["receipt"] = true
	}
	c.mustCall(tb, "POST", "/v1/messages", in, &r, http.StatusAccepted)
	if r.ID == "" {
		tb.Fatalf("POST /v1/messages returned no id")
	}
	return r.ID
}

// events performs one GET /v1/events.
func (c *apiClient) events(ctx context.Context, cursor string, wait time.Duration, limit int) (eventsPage, error) {
	q := url.Values{}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	q.Set("wait", strconv.Itoa(int(wait/time.Second)))
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var p eventsPage
	_, err := c.call(ctx, "GET", "/v1/events?"+q.Encode(), nil, &p)
	return p, err
}

// roster returns the user's roster.
func (c *apiClient) roster(ctx context.Context) ([]rosterItem, error) {
	var r struct {
		Items []rosterItem `json:"items"`
	}
	_, err := c.call(ctx, "GET", "/v1/roster", nil, &r)
	return r.Items, err
}

// rosterItem returns the roster item for jid (zero if absent or on error).
func (c *apiClient) rosterItem(ctx context.Context, jid string) rosterItem {
	items, _ := c.roster(ctx)
	for _, it := range items {
		if it.JID == jid {
			return it
		}
	}
	return rosterItem{}
}

// poller long-polls one session's event log, keeping the cursor and
// everything it has seen.
type poller struct {
	c      *apiClient
	name   string
	cursor string
	seen   []event
}

// poll reads one page of at most wait and advances the cursor.
func (p *poller) poll(tb testing.TB, wait time.Duration) []event {
	tb.Helper()
	page, err := p.c.events(tb.Context(), p.cursor, wait, 0)
	if err != nil {
		tb.Fatalf("%s: GET /v1/events: %v", p.name, err)
	}
	if !page.Recovered {
		tb.Logf("%s: events page with recovered=false at cursor %q", p.name, p.cursor)
	}
	p.cursor = page.Cursor
	p.seen = append(p.seen, page.Events...)
	return page.Events
}

// waitFor polls until an event matches, failing after timeout.
func (p *poller) waitFor(tb testing.TB, timeout time.Duration, what string, match func(event) bool) event {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			var kinds []string
			for _, ev := range p.seen {
				kinds = append(kinds, ev.Event+":"+ev.Type+ev.State)
			}
			tb.Fatalf("%s: timed out after %v waiting for %s; seen: %v", p.name, timeout, what, kinds)
		}
		wait := min(left, 5*time.Second)
		if wait < time.Second {
			wait = time.Second
		}
		for _, ev := range p.poll(tb, wait) {
			if match(ev) {
				return ev
			}
		}
	}
}

// seenOrWait returns the first matching event already seen, or waits for one.
func (p *poller) seenOrWait(tb testing.TB, timeout time.Duration, what string, match func(event) bool) event {
	tb.Helper()
	for _, ev := range p.seen {
		if match(ev) {
			return ev
		}
	}
	return p.waitFor(tb, timeout, what, match)
}

func bareJID(j string) string {
	if i := strings.IndexByte(j, '/'); i >= 0 {
		return j[:i]
	}
	return j
}

// ---------------------------------------------------------------------------
// A desktop client

// desktop is a plain xmppconn stream, as Pidgin or Gajim would hold.
type desktop struct {
	Conn   *xmppconn.Conn
	Bare   string
	events chan xmppconn.Event
}

// dialDesktop logs name in with resource "desktop".
func dialDesktop(tb testing.TB, srv *xmppconntest.Server, name string) *desktop {
	tb.Helper()
	d := &desktop{Bare: srv.JID(name), events: make(chan xmppconn.Event, 1024)}
	conn, err := xmppconn.Dial(tb.Context(), xmppconn.Config{
		Addr: srv.Addr, Domain: srv.Domain, TLSConfig: srv.TLSConfig(),
		User: name, Password: name + "-pw", Resource: "desktop",
		// A desktop client sends what its user types, up to the server's
		// own limit: only the daemon bounds what web users send.
		MaxSendSize: 1 << 20,
		Handler: xmppconn.HandlerFunc(func(ev xmppconn.Event) {
			select {
			case d.events <- ev:
			default: // the test stopped reading; drop
			}
		}),
	})
	if err != nil {
		tb.Fatalf("desktop %s: dial: %v", name, err)
	}
	d.Conn = conn
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(ctx)
	})
	return d
}

// waitFor reads the desktop's events until one matches.
func (d *desktop) waitFor(tb testing.TB, timeout time.Duration, what string, match func(xmppconn.Event) bool) xmppconn.Event {
	tb.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case ev := <-d.events:
			if match(ev) {
				return ev
			}
		case <-t.C:
			tb.Fatalf("desktop %s: timed out after %v waiting for %s", d.Bare, timeout, what)
		}
	}
}

// waitClosed waits until n web users sent unavailable to d, and fails on
// any that was dropped (the server's "Disconnected" status) instead of
// closed by the sidecar. It returns the bare JIDs seen go.
func (d *desktop) waitClosed(tb testing.TB, n int) map[string]bool {
	tb.Helper()
	gone := map[string]bool{}
	for len(gone) < n {
		ev := d.waitFor(tb, 15*time.Second, "unavailable from every web user", func(ev xmppconn.Event) bool {
			p, ok := ev.(*xmppconn.Presence)
			return ok && p.Type == "unavailable"
		})
		p := ev.(*xmppconn.Presence)
		if strings.HasPrefix(p.Status, "Disconnected") {
			tb.Errorf("%s was dropped, not closed: %q", p.From, p.Status)
		}
		gone[bareJID(p.From)] = true
	}
	return gone
}

// befriendDesktop makes web user u and desktop user d mutual contacts.
func befriendDesktop(tb testing.TB, u *user, pu *poller, d *desktop) {
	tb.Helper()
	ctx := tb.Context()
	u.C.mustCall(tb, "POST", "/v1/subscriptions/"+url.PathEscape(d.Bare), map[string]string{"action": "subscribe"}, nil, http.StatusNoContent)
	d.waitFor(tb, 15*time.Second, "subscribe from "+u.Name, func(ev xmppconn.Event) bool {
		s, ok := ev.(*xmppconn.Subscription)
		return ok && bareJID(s.From) == u.Bare && s.Type == "subscribe"
	})
	if err := d.Conn.Subscribe(ctx, u.Bare, "approve"); err != nil {
		tb.Fatal(err)
	}
	if err := d.Conn.Subscribe(ctx, u.Bare, "subscribe"); err != nil {
		tb.Fatal(err)
	}
	pu.waitFor(tb, 15*time.Second, "subscribe from desktop", func(ev event) bool {
		return ev.Event == "subscription" && bareJID(ev.From) == d.Bare && ev.Type == "subscribe"
	})
	u.C.mustCall(tb, "POST", "/v1/subscriptions/"+url.PathEscape(d.Bare), map[string]string{"action": "approve"}, nil, http.StatusNoContent)
	deadline := time.Now().Add(15 * time.Second)
	for u.C.rosterItem(ctx, d.Bare).Subscription != "both" {
		if time.Now().After(deadline) {
			tb.Fatalf("%s and desktop %s are not mutual contacts after 15s", u.Name, d.Bare)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// errCode returns the API error code of err, or "".
func errCode(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// metricValue reads one unlabelled series from the daemon's /metrics.
func metricValue(t *testing.T, d *daemon, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(metricsText(t, d))
	if m == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
