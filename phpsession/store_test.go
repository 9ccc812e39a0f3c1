package phpsession_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

const testPassword = "s3cr|et;\"}é"

func openReader(t *testing.T, cfg phpsession.Config) *phpsession.Reader {
	t.Helper()
	if cfg.Serializer == "" {
		cfg.Serializer = phpsession.SerializerPHP
	}
	if cfg.Charset == "" {
		cfg.Charset = "ISO-8859-1"
	}
	if cfg.Profile.Name() == "expresso" {
		cfg.Profile = phpsession.ExpressoProfile(0)
	}
	if cfg.Owner == 0 {
		cfg.Owner = -1
	}
	r, err := phpsession.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestReaderFilesAllSerializers: sessions written by real PHP through the
// files handler, flat and nested, with each serialize handler.
func TestReaderFilesAllSerializers(t *testing.T) {
	for _, ser := range []string{"php", "php_serialize", "php_binary"} {
		for _, nested := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/nested=%v", ser, nested), func(t *testing.T) {
				dir := t.TempDir()
				save := dir
				id := phpsessiontest.NewID(t)
				if nested {
					save = "2;0600;" + dir
					// PHP does not create the levels; a site's cron does.
					if err := os.MkdirAll(filepath.Join(dir, id[:1], id[1:2]), 0o700); err != nil {
						t.Fatal(err)
					}
				}
				st := phpsessiontest.Store{Handler: "files", SavePath: save, Serializer: ser}
				phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{
					User: "alice", Password: testPassword, FullName: "Alice Araújo", Pad: 20000})
				r := openReader(t, phpsession.Config{Store: "files", SavePath: save, Serializer: phpsession.Serializer(ser)})
				s, err := r.Lookup(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				if s.Identity.User != "alice" || s.Identity.Password != testPassword || s.Identity.FullName != "Alice Araújo" || s.Identity.Email != "alice@example.test" {
					t.Fatalf("identity = %+v", s.Identity)
				}
			})
		}
	}
}

func TestReaderErrors(t *testing.T) {
	dir := t.TempDir()
	st := phpsessiontest.Store{Handler: "files", SavePath: dir}
	now := time.Now()
	r := openReader(t, phpsession.Config{Store: "files", SavePath: dir, MaxLifetime: time.Hour, Now: func() time.Time { return now }})
	good := phpsessiontest.NewID(t) + "a"
	phpsessiontest.WriteExpressoSession(t, st, good, phpsessiontest.ExpressoUser{User: "bob", Password: "pw"})
	loggedOut := phpsessiontest.NewID(t) + "b"
	phpsessiontest.WriteSession(t, st, loggedOut, `$_SESSION['phpgw_info'] = ['x' => 1];`)
	empty := phpsessiontest.NewID(t) + "c"
	phpsessiontest.WriteSession(t, st, empty, ``)
	stale := phpsessiontest.NewID(t) + "d"
	phpsessiontest.WriteExpressoSession(t, st, stale, phpsessiontest.ExpressoUser{User: "bob", Password: "pw"})
	old := now.Add(-2 * time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "sess_"+stale), old, old); err != nil {
		t.Fatal(err)
	}
	malformed := phpsessiontest.NewID(t) + "e"
	if err := os.WriteFile(filepath.Join(dir, "sess_"+malformed), []byte(`phpgw_session|a:1:{s:10:"session_id";s:99:"x";}`), 0o600); err != nil {
		t.Fatal(err)
	}
	symlink := phpsessiontest.NewID(t) + "f"
	if err := os.Symlink(filepath.Join(dir, "sess_"+good), filepath.Join(dir, "sess_"+symlink)); err != nil {
		t.Fatal(err)
	}
	foreign := phpsessiontest.NewID(t) + "g"
	phpsessiontest.WriteExpressoSession(t, st, foreign, phpsessiontest.ExpressoUser{User: "eve", Password: "pw"})
	if err := os.Chown(filepath.Join(dir, "sess_"+foreign), 65534, 65534); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		id   string
		want error
	}{
		{"good", good, nil},
		{"missing", phpsessiontest.NewID(t) + "z", phpsession.ErrNotFound},
		{"not logged in", loggedOut, phpsession.ErrNotLoggedIn},
		{"empty", empty, phpsession.ErrNotLoggedIn},
		{"expired by mtime", stale, phpsession.ErrExpired},
		{"malformed", malformed, phpsession.ErrMalformed},
		{"symlink", symlink, phpsession.ErrNotFound},
		{"foreign owner", foreign, phpsession.ErrNotFound},
		{"traversal", "../../../../etc/passwd", phpsession.ErrInvalidID},
		{"encoded traversal", "%2e%2e%2f%2e%2e%2fetc%2fpasswdxxxxxxxx", phpsession.ErrInvalidID},
		{"nul", "abcdefghijklmnopqrstuvwxyz\x00123456", phpsession.ErrInvalidID},
		{"overlong", strings.Repeat("a", 300), phpsession.ErrInvalidID},
		{"short", "abc", phpsession.ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Lookup(t.Context(), tt.id)
			if !errors.Is(err, tt.want) && !(tt.want == nil && err == nil) {
				t.Fatalf("Lookup = %v, want %v", err, tt.want)
			}
		})
	}
}

// TestReaderCacheNeverStale: a rewritten, replaced or deleted session is
// never served from the cache.
func TestReaderCacheNeverStale(t *testing.T) {
	dir := t.TempDir()
	st := phpsessiontest.Store{Handler: "files", SavePath: dir}
	r := openReader(t, phpsession.Config{Store: "files", SavePath: dir})
	id := phpsessiontest.NewID(t)
	phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: "one"})
	s1, err := r.Lookup(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r.Lookup(t.Context(), id)
	if err != nil || s2 != s1 {
		t.Fatalf("second lookup not served from cache: %v", err)
	}
	phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "carol", Password: "two"})
	s3, err := r.Lookup(t.Context(), id)
	if err != nil || s3.Identity.User != "carol" || s3.Identity.Password != "two" {
		t.Fatalf("after rewrite: %+v, %v", s3, err)
	}
	phpsessiontest.DestroySession(t, st, id)
	if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
}

// TestFileTornReads: PHP rewrites a session in a loop with sizes that grow
// and shrink while Go reads it; every successful read is one of the
// versions PHP wrote, whole.
func TestFileTornReads(t *testing.T) {
	dir := t.TempDir()
	id := phpsessiontest.NewID(t)
	st := phpsessiontest.Store{Handler: "files", SavePath: dir}
	phpsessiontest.WriteSession(t, st, id, `$_SESSION['n'] = 0; $_SESSION['pad'] = '';`)
	fs, err := phpsession.NewFileStore(dir, phpsession.FileOptions{Owner: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cmd := exec.CommandContext(ctx, phpsessiontest.PHP(t), "-d", "session.save_path="+dir, "-d", "session.use_strict_mode=0", "-r", `
		ob_start();
		for ($i = 1; $i <= 300; $i++) {
			session_id($argv[1]); session_start();
			if ($i % 2) { usleep(3000); } // hold the lock like a request in progress
			$_SESSION['n'] = $i; $_SESSION['pad'] = str_repeat(chr(97 + $i % 26), ($i * 7919) % 20000);
			session_write_close();
		}`, id)
	// The goroutine reports through done, never through t, so a failing
	// read can end the test at once (the deferred cancel stops PHP).
	done := runPHP(cmd)
	reads, busy := 0, 0
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		default:
		}
		rec, err := fs.Load(t.Context(), id)
		if errors.Is(err, phpsession.ErrUnavailable) {
			busy++
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.Data) == 0 {
			// PHP never leaves this session empty: an empty read is the
			// gap between its truncate and its write, which reads as
			// "not logged in" and logs the user out.
			t.Fatalf("empty read after %d reads (rec %+v)", reads, rec)
		}
		vars, err := phpsession.Decode(rec.Data, phpsession.SerializerPHP, phpsession.DefaultLimits)
		if err != nil {
			t.Fatalf("torn read after %d reads: %v", reads, err)
		}
		n, _ := vars.Get("n")
		pad, _ := vars.Get("pad")
		i := n.Int()
		if want := int((i * 7919) % 20000); i > 0 && len(pad.Bytes()) != want {
			t.Fatalf("version %d has pad %d, want %d", i, len(pad.Bytes()), want)
		}
		reads++
	}
	t.Logf("%d consistent reads, %d busy", reads, busy)
	if reads < 50 { // a floor that proves reads raced the writes; 2 busy cores can halve them
		t.Fatalf("only %d reads", reads)
	}
}

func TestReaderRedis(t *testing.T) {
	srv := phpsessiontest.StartRedis(t)
	st := phpsessiontest.Store{Handler: "redis", SavePath: srv.Spec() + "?database=2"}
	id := phpsessiontest.NewID(t)
	phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: testPassword})
	r := openReader(t, phpsession.Config{Store: "redis", SavePath: srv.Spec() + "?database=2"})
	s, err := r.Lookup(t.Context(), id)
	if err != nil || s.Identity.Password != testPassword {
		t.Fatalf("Lookup: %v", err)
	}
	if _, err := r.Lookup(t.Context(), phpsessiontest.NewID(t)+"x"); !errors.Is(err, phpsession.ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	phpsessiontest.DestroySession(t, st, id)
	if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
	srv.Stop()
	if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrUnavailable) {
		t.Fatalf("redis down: %v", err)
	}
	if err := r.Ready(t.Context()); !errors.Is(err, phpsession.ErrUnavailable) {
		t.Fatalf("Ready with redis down: %v", err)
	}
}

// TestRedisTTLAuthoritative: phpredis sets the key's TTL to gc_maxlifetime;
// when Redis expires the key, the session is gone.
func TestRedisTTLAuthoritative(t *testing.T) {
	srv := phpsessiontest.StartRedis(t)
	st := phpsessiontest.Store{Handler: "redis", SavePath: srv.Spec()}
	id := phpsessiontest.NewID(t)
	phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: "pw"})
	out, err := exec.Command("redis-cli", "-h", "127.0.0.1", "-p", strings.TrimPrefix(srv.Addr[strings.LastIndex(srv.Addr, ":"):], ":"),
		"PEXPIRE", "PHPREDIS_SESSION:"+id, "100").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("redis-cli: %v %s", err, out)
	}
	r := openReader(t, phpsession.Config{Store: "redis", SavePath: srv.Spec()})
	if _, err := r.Lookup(t.Context(), id); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrNotFound) {
		t.Fatalf("after the TTL: %v, want ErrNotFound", err)
	}
}

// TestLookupWhilePHPRewrites: PHP rewrites an always logged-in Expresso
// session the way the demo's api.php does on every request (session_start,
// a fresh session_dla, session_write_close: PHP's files handler truncates
// the file to 0 bytes, then writes it, holding its lock), while Go looks
// the session up in a loop as the sidecar's janitor does. A read may find
// the store busy (ErrUnavailable, retried later), but a session that is
// always logged in must never read as not logged in, malformed, expired
// or missing: each of those logs the user out. IMSIDECAR_RACE_REWRITES
// raises the number of rewrites (default 400).
func TestLookupWhilePHPRewrites(t *testing.T) {
	rewrites := 400
	if v, err := strconv.Atoi(os.Getenv("IMSIDECAR_RACE_REWRITES")); err == nil && v > 0 {
		rewrites = v
	}
	for _, pad := range []int{0, 30000} {
		t.Run(fmt.Sprintf("pad=%d", pad), func(t *testing.T) {
			dir := t.TempDir()
			id := phpsessiontest.NewID(t)
			st := phpsessiontest.Store{Handler: "files", SavePath: dir}
			phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: testPassword, Pad: pad})
			r := openReader(t, phpsession.Config{Store: "files", SavePath: dir})
			counts := phpsessiontest.RaceRewrites(t, st, id, rewrites, func() string {
				return phpsessiontest.Verdict(r, t.Context(), id, "alice", testPassword)
			})
			t.Logf("%d rewrites: %v", rewrites, counts)
			phpsessiontest.CheckRaceCounts(t, counts, 50)
		})
	}
}

// runPHP runs cmd in the background; the channel gets its error (with
// PHP's output) once it exits. The test reads it, so nothing reports
// through t after the test ended.
func runPHP(cmd *exec.Cmd) <-chan error {
	done := make(chan error, 1)
	go func() {
		out, err := cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("php: %w %s", err, out)
		}
		done <- err
	}()
	return done
}
