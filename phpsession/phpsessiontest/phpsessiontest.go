package phpsessiontest

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

//go:embed php/write.php
var writeScript []byte

//go:embed php/expresso.php
var expressoScript []byte

// Store says where and how PHP saves sessions.
type Store struct {
	Handler    string // "files" or "redis"
	SavePath   string // session.save_path: a directory ("N;/dir" allowed) or a phpredis spec
	Serializer string // session.serialize_handler; "" = php
	// INI holds more php.ini settings, "name=value" (e.g.
	// "memcached.sess_prefix=site.", "session.gc_maxlifetime=14400").
	INI []string
}

// ExpressoUser is the user an Expresso-shaped session logs in.
type ExpressoUser struct {
	User, Password, FullName, Email, Domain string
	// Pad grows the session with preferences to about this many bytes
	// (Expresso's real sessions are tens of KB).
	Pad int
	// UserIn says where the session names the user: "" (ExpressoMail's
	// copy and session_lid), "lid" (session_lid only), "wallet"
	// (wallet.user, as 2.5.x's login writes it), "jabberit"
	// (jabberit_messenger.user_jabber only).
	UserIn string
	// Mcrypt writes the app-session password as Expresso does with
	// mcrypt_enabled (hex of 3DES ciphertext) and no plaintext copy.
	Mcrypt bool
	// DLA is session_dla (zero: now).
	DLA time.Time
}

// PHP returns the path of the PHP CLI or fails the test; under -short it
// skips the test.
func PHP(tb testing.TB) string {
	tb.Helper()
	skipShort(tb, "PHP")
	p, err := exec.LookPath("php")
	if err != nil {
		tb.Fatal("phpsessiontest: php not found: apt-get install php-cli php-redis php-mbstring php-memcached php-memcache")
	}
	return p
}

func script(tb testing.TB, name string, body []byte) string {
	tb.Helper()
	dir := tb.TempDir()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, body, 0o644); err != nil {
		tb.Fatal(err)
	}
	return p
}

// Args are the php command-line settings that make PHP save sessions in st.
func (st Store) Args() []string {
	ser := st.Serializer
	if ser == "" {
		ser = "php"
	}
	handler := st.Handler
	if handler == "" {
		handler = "files"
	}
	args := []string{"-d", "session.save_handler=" + handler, "-d", "session.save_path=\"" + st.SavePath + "\"",
		"-d", "session.serialize_handler=" + ser, "-d", "session.use_strict_mode=0",
		"-d", "session.gc_probability=0", "-d", "error_reporting=E_ALL", "-d", "display_errors=stderr"}
	for _, ini := range st.INI {
		args = append(args, "-d", ini)
	}
	return args
}

func run(tb testing.TB, st Store, env []string, scriptPath string) {
	tb.Helper()
	args := append(st.Args(), scriptPath)
	cmd := exec.Command(PHP(tb), args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || strings.Contains(out.String(), "Warning") || strings.Contains(out.String(), "Fatal") {
		tb.Fatalf("phpsessiontest: php: %v\n%s", err, out.String())
	}
}

// WriteSession runs code (PHP statements filling $_SESSION) inside a real
// session_start()/session_write_close() for id.
func WriteSession(tb testing.TB, st Store, id, code string) {
	tb.Helper()
	run(tb, st, []string{"SESS_ID=" + id, "SESS_CODE=" + code}, script(tb, "write.php", writeScript))
}

// WriteExpressoSession writes an Expresso-shaped logged-in session for u.
func WriteExpressoSession(tb testing.TB, st Store, id string, u ExpressoUser) {
	tb.Helper()
	if u.Domain == "" {
		u.Domain = "example.test"
	}
	if u.Email == "" {
		u.Email = u.User + "@" + u.Domain
	}
	if u.FullName == "" {
		u.FullName = u.User
	}
	ex := script(tb, "expresso.php", expressoScript)
	code := "require " + strconv.Quote(ex) + ";"
	env := []string{"SESS_ID=" + id, "SESS_CODE=" + code, "EX_USER=" + u.User, "EX_PASSWORD=" + u.Password,
		"EX_FULLNAME=" + u.FullName, "EX_EMAIL=" + u.Email, "EX_DOMAIN=" + u.Domain, "EX_PAD=" + strconv.Itoa(u.Pad),
		"EX_USER_IN=" + u.UserIn}
	if u.Mcrypt {
		env = append(env, "EX_MCRYPT=1")
	}
	if !u.DLA.IsZero() {
		env = append(env, "EX_DLA="+strconv.FormatInt(u.DLA.Unix(), 10))
	}
	run(tb, st, env, script(tb, "write.php", writeScript))
}

// DestroySession calls session_destroy() for id, as Expresso's logout does.
func DestroySession(tb testing.TB, st Store, id string) {
	tb.Helper()
	run(tb, st, []string{"SESS_ID=" + id, "SESS_DESTROY=1"}, script(tb, "write.php", writeScript))
}

// NewID returns a fresh valid session id (32 characters, PHP's default).
func NewID(tb testing.TB) string {
	tb.Helper()
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 32)
	seed := time.Now().UnixNano()
	for i := range b {
		seed = seed*6364136223846793005 + 1442695040888963407
		b[i] = alphabet[uint64(seed>>33)%uint64(len(alphabet))]
	}
	return string(b)
}

// Redis is a private redis-server on a random loopback port.
type Redis struct {
	Addr  string
	dir   string
	extra []string // more redis-server arguments
	cmd   *exec.Cmd
	done  chan struct{} // closed when cmd has exited
	tb    testing.TB
}

// skipShort skips a test that runs PHP or Redis under -short, and only then.
func skipShort(tb testing.TB, what string) {
	tb.Helper()
	if testing.Short() {
		tb.Skipf("integration test, skipped under -short: it runs a real %s", what)
	}
}

// StartRedis starts redis-server without persistence; it is stopped when
// the test ends.
func StartRedis(tb testing.TB) *Redis {
	tb.Helper()
	return startRedis(tb, false)
}

// StartPersistentRedis starts redis-server with an append-only file synced
// on every write, as a production Redis keeps PHP sessions: a Stop (kill -9)
// and Start on the same port loses nothing that was acknowledged.
func StartPersistentRedis(tb testing.TB) *Redis {
	tb.Helper()
	return startRedis(tb, false, "--appendonly", "yes", "--appendfsync", "always")
}

// startRedis starts redis-server on a free port (with its cluster bus
// port free too if bus). The port was free a moment before redis-server
// binds it, not held: another process (CI runs several test binaries at
// once) may bind it in between. redis-server then exits, and were the
// port another Redis's, that one would answer the PING; it is started
// again on another port instead, twice at most.
func startRedis(tb testing.TB, bus bool, extra ...string) *Redis {
	tb.Helper()
	skipShort(tb, "redis-server")
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatal("phpsessiontest: redis-server not found: apt-get install redis-server")
	}
	r := &Redis{dir: tb.TempDir(), extra: extra, tb: tb}
	tb.Cleanup(r.Stop)
	startOnFreePort(tb, "redis-server", func() error {
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, bus)))
		return r.start()
	})
	return r
}

// errPortTaken: a server could not bind its port.
var errPortTaken = errors.New("phpsessiontest: the port of the server was in use")

// startOnFreePort runs start, which picks a port and starts a server on
// it, again when it fails with errPortTaken, three times at most; any
// other failure fails the test at once.
func startOnFreePort(tb testing.TB, what string, start func() error) {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		err := start()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			tb.Fatal(err)
		}
		tb.Logf("phpsessiontest: %s start %d: its port was bound by someone else first; starting again on another port", what, attempt)
	}
}

// freePort picks a free loopback port; for a cluster node also its bus
// port (port+10000) must exist and be free.
func freePort(tb testing.TB, bus bool) int {
	tb.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if !bus {
			l.Close()
			return port
		}
		if port+10000 <= 65535 {
			if lb, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+10000))); err == nil {
				lb.Close()
				l.Close()
				return port
			}
		}
		l.Close()
	}
	tb.Fatal("phpsessiontest: no free port")
	return 0
}

// RedisCluster is a Redis Cluster of masters without replicas on random
// loopback ports, joined by redis-cli --cluster create, which splits the
// 16384 slots evenly in the order of Nodes.
type RedisCluster struct {
	Nodes []*Redis
}

// StartRedisCluster starts n (at least 3) cluster-enabled redis-servers,
// creates the cluster and waits until every node reports cluster_state:ok.
// extra are more redis-server arguments for every node (e.g. an
// append-only file, so that a node restarted keeps its data).
func StartRedisCluster(tb testing.TB, n int, extra ...string) *RedisCluster {
	tb.Helper()
	skipShort(tb, "Redis Cluster")
	if _, err := exec.LookPath("redis-cli"); err != nil {
		tb.Fatal("phpsessiontest: redis-cli not found: apt-get install redis-tools")
	}
	c := &RedisCluster{}
	args := []string{"--cluster", "create"}
	for range n {
		dir := tb.TempDir()
		r := startRedis(tb, true, append([]string{"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"), "--cluster-node-timeout", "5000"}, extra...)...)
		c.Nodes = append(c.Nodes, r)
		args = append(args, r.Addr)
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("phpsessiontest: redis-cli --cluster create: %v\n%s", err, out)
	}
	c.WaitReady(30 * time.Second)
	return c
}

// WaitReady waits until every node reports cluster_state:ok (after a
// Start of its nodes, say), failing the test after timeout.
func (c *RedisCluster) WaitReady(timeout time.Duration) {
	for _, r := range c.Nodes {
		r.tb.Helper()
		for deadline := time.Now().Add(timeout); ; time.Sleep(50 * time.Millisecond) {
			out, _ := r.CLI("CLUSTER", "INFO")
			if strings.Contains(out, "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				r.tb.Fatalf("phpsessiontest: cluster node %s not ready:\n%s", r.Addr, out)
			}
		}
	}
}

// Spec is phpredis's rediscluster session.save_path for the cluster.
func (c *RedisCluster) Spec() string {
	var seeds []string
	for _, r := range c.Nodes {
		seeds = append(seeds, "seed[]="+r.Addr)
	}
	return strings.Join(seeds, "&")
}

// CLI runs one redis-cli command against this server (not following
// cluster redirections) and returns its output.
func (r *Redis) CLI(args ...string) (string, error) {
	host, port, _ := net.SplitHostPort(r.Addr)
	out, err := exec.Command("redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
	return string(out), err
}

// Spec is the phpredis session.save_path for this server.
func (r *Redis) Spec() string { return "tcp://" + r.Addr }

// Start (re)starts the server on the same port.
func (r *Redis) Start() {
	r.tb.Helper()
	if err := r.start(); err != nil {
		r.tb.Fatal(err)
	}
}

// start is Start, returning a startup failure; one on a port in use wraps
// errPortTaken.
func (r *Redis) start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	logFile := filepath.Join(r.dir, "redis.log")
	var logBefore int64
	if fi, err := os.Stat(logFile); err == nil {
		logBefore = fi.Size()
	}
	cmd := exec.Command("redis-server", append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", r.dir, "--logfile", logFile}, r.extra...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("phpsessiontest: starting redis-server: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	// Ready means this server answering PONG: while it loads its
	// append-only file, redis-server accepts connections but answers
	// -LOADING; and a PONG from another process on the port is not it.
	ours := "process_id:" + strconv.Itoa(cmd.Process.Pid)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-done:
			r.cmd, r.done = nil, nil
			log, _ := os.ReadFile(logFile)
			if int64(len(log)) > logBefore {
				log = log[logBefore:]
			}
			err := fmt.Errorf("phpsessiontest: redis-server exited at startup on %s (%v):\n%s", r.Addr, cmd.ProcessState, log)
			if bytes.Contains(log, []byte("Address already in use")) {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		default:
		}
		if out, err := r.CLI("PING"); err == nil && strings.TrimSpace(out) == "PONG" {
			if info, _ := r.CLI("INFO", "server"); strings.Contains(info, ours+"\r") || strings.Contains(info, ours+"\n") {
				return nil
			}
		}
	}
	r.Stop()
	return fmt.Errorf("phpsessiontest: redis-server did not answer PING on %s", r.Addr)
}

// Stop kills the server (kill -9). Without persistence its data is lost;
// a StartPersistentRedis server keeps every acknowledged write.
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Kill()
	<-r.done
	r.cmd, r.done = nil, nil
}

// Signal sends sig to the server: SIGSTOP stalls it as a Redis that
// accepts connections but answers nothing (a partition dropping packets,
// a master failing over), SIGCONT wakes it.
func (r *Redis) Signal(sig os.Signal) error {
	if r.cmd == nil || r.cmd.Process == nil {
		return errors.New("phpsessiontest: redis-server not running")
	}
	return r.cmd.Process.Signal(sig)
}

// Stall stops every server with SIGSTOP: each accepts connections and
// answers nothing, as a Redis restarting or loading its append-only file,
// a Redis Cluster failing over or a partition dropping packets. wake
// continues them (SIGCONT); the test's cleanup does too.
func Stall(tb testing.TB, servers ...*Redis) (wake func()) {
	tb.Helper()
	wake = func() {
		for _, r := range servers {
			r.Signal(syscall.SIGCONT)
		}
	}
	tb.Cleanup(wake)
	for _, r := range servers {
		if err := r.Signal(syscall.SIGSTOP); err != nil {
			tb.Fatal(err)
		}
	}
	return wake
}

// String describes the server for test logs.
func (r *Redis) String() string { return fmt.Sprintf("redis-server at %s", r.Addr) }
