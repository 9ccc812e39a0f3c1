package phpsessiontest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
)

// Case is one session store for RunStoreTests: where real PHP writes its
// sessions, how phpsession opens the same store, and how to take it down.
type Case struct {
	PHP Store
	// Config names the store for phpsession.NewStore (Store, SavePath,
	// KeyPrefix); RunStoreTests fills in the Expresso profile around it.
	Config phpsession.Config
	// Stop makes the store unreachable (servers killed); nil when it
	// cannot be (files).
	Stop func()
}

// ExpressoINI are the session settings of Expresso's .htaccess (CE 2.5.x):
// serialize_handler php, gc_maxlifetime 14400, default_charset iso-8859-1.
var ExpressoINI = []string{"session.gc_maxlifetime=14400", "default_charset=iso-8859-1"}

// FilesCase is PHP's files handler in a fresh directory under /dev/shm,
// where Expresso's .htaccess keeps sessions (a temporary directory if the
// machine has no /dev/shm).
func FilesCase(t *testing.T) Case {
	dir, err := os.MkdirTemp("/dev/shm", "phpsessiontest-")
	if err != nil {
		dir = t.TempDir()
	} else {
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return Case{PHP: Store{Handler: "files", SavePath: dir, INI: ExpressoINI},
		Config: phpsession.Config{Store: "files", SavePath: dir}}
}

// RedisCase is phpredis on a private redis-server.
func RedisCase(t *testing.T) Case {
	srv := StartRedis(t)
	return Case{PHP: Store{Handler: "redis", SavePath: srv.Spec(), INI: ExpressoINI},
		Config: phpsession.Config{Store: "redis", SavePath: srv.Spec()}, Stop: srv.Stop}
}

// MemcachedCase is PHP's memcached extension spreading sessions over three
// memcached servers, with a site's own memcached.sess_prefix.
func MemcachedCase(t *testing.T) Case {
	servers := StartMemcachedServers(t, 3)
	var addrs []string
	for _, m := range servers {
		addrs = append(addrs, m.Addr)
	}
	const prefix = "expresso.sess."
	path := strings.Join(addrs, ",")
	return Case{PHP: Store{Handler: "memcached", SavePath: path, INI: append([]string{"memcached.sess_prefix=" + prefix}, ExpressoINI...)},
		Config: phpsession.Config{Store: "memcached", SavePath: path, KeyPrefix: prefix},
		Stop: func() {
			for _, m := range servers {
				m.Stop()
			}
		}}
}

// MemcacheCase is PHP's older memcache extension over three memcached
// servers, with save_path entries shaped as in Expresso's .htaccess.
func MemcacheCase(t *testing.T) Case {
	servers := StartMemcachedServers(t, 3)
	var urls []string
	for _, m := range servers {
		urls = append(urls, "tcp://"+m.Addr+"?persistent=1&weight=1&timeout=1&retry_interval=15")
	}
	path := strings.Join(urls, ", ")
	return Case{PHP: Store{Handler: "memcache", SavePath: path, INI: ExpressoINI},
		Config: phpsession.Config{Store: "memcache", SavePath: path},
		Stop: func() {
			for _, m := range servers {
				m.Stop()
			}
		}}
}

// Cases are the builders for every store phpsession reads, by name.
var Cases = map[string]func(*testing.T) Case{
	"files": FilesCase, "redis": RedisCase, "memcached": MemcachedCase, "memcache": MemcacheCase,
}

// expressoReader opens a Reader on c configured as the daemon's expresso
// profile defaults.
func expressoReader(t *testing.T, c Case) *phpsession.Reader {
	t.Helper()
	cfg := c.Config
	cfg.Serializer = phpsession.SerializerPHP
	cfg.Charset = phpsession.ExpressoCharset
	cfg.Profile = phpsession.ExpressoProfile(0)
	cfg.MaxLifetime = phpsession.ExpressoSessionTimeout
	cfg.Owner = -1
	r, err := phpsession.Open(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// The Expresso user the suite logs in: a uid with "@" (Expresso allows
// it), an ISO-8859-1 name with accents and a password with the bytes that
// break naive session parsers.
const (
	suiteUser     = "maria@setor"
	suitePassword = "sênha|;\"}:é"
	suiteFullName = "Maria Conceição Araújo"
)

// RunStoreTests is the conformance suite every session store passes: real
// PHP 8.2 writes Expresso-shaped sessions through the store's own save
// handler, with Expresso's settings, and the Reader must find exactly what
// Expresso would, never a stale, torn or guessed answer. open builds a
// fresh store for each subtest.
func RunStoreTests(t *testing.T, open func(*testing.T) Case) {
	t.Run("expresso session", func(t *testing.T) {
		c := open(t)
		id := NewID(t)
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: suiteUser, Password: suitePassword, FullName: suiteFullName, Pad: 30000})
		s, err := expressoReader(t, c).Lookup(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		want := phpsession.Identity{User: suiteUser, Password: suitePassword, FullName: suiteFullName, Email: suiteUser + "@example.test"}
		got := s.Identity
		got.LastActivity = time.Time{}
		if got != want {
			t.Fatalf("identity = %+v\nwant       %+v", got, want)
		}
		if s.Identity.LastActivity.IsZero() || time.Since(s.Identity.LastActivity) > time.Minute {
			t.Errorf("last activity %v, want session_dla (now)", s.Identity.LastActivity)
		}
	})

	t.Run("login and password fallbacks", func(t *testing.T) {
		c := open(t)
		r := expressoReader(t, c)
		for _, tc := range []struct {
			in, user, wantUser string
		}{
			{"lid", suiteUser, suiteUser}, // session_lid "maria@setor@example.test", split at the last "@"
			{"wallet", suiteUser, suiteUser},
			{"jabberit", "maria.araujo", "maria.araujo"},
		} {
			id := NewID(t)
			WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: tc.user, Password: suitePassword, UserIn: tc.in})
			s, err := r.Lookup(t.Context(), id)
			if err != nil {
				t.Fatalf("%s: %v", tc.in, err)
			}
			if s.Identity.User != tc.wantUser || s.Identity.Password != suitePassword {
				t.Errorf("%s: user %q password ok %v, want %q", tc.in, s.Identity.User, s.Identity.Password == suitePassword, tc.wantUser)
			}
		}
	})

	t.Run("mcrypt password refused", func(t *testing.T) {
		c := open(t)
		id := NewID(t)
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: suiteUser, Password: suitePassword, Mcrypt: true})
		_, err := expressoReader(t, c).Lookup(t.Context(), id)
		var pe *phpsession.PasswordUnavailableError
		if !errors.Is(err, phpsession.ErrPasswordUnavailable) || !errors.As(err, &pe) {
			t.Fatalf("Lookup = %v, want ErrPasswordUnavailable", err)
		}
		if pe.User != suiteUser || pe.Key != "phpgw_session.phpgw_app_sessions.phpgwapi.password.content" ||
			!strings.Contains(pe.Enable, "phpgw_info.expressomail.user.passwd") {
			t.Errorf("error = %+v", pe)
		}
		if strings.Contains(err.Error(), suitePassword) {
			t.Errorf("error carries the password: %v", err)
		}
	})

	t.Run("inactive past sessions_timeout", func(t *testing.T) {
		c := open(t)
		id := NewID(t)
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: "ana", Password: "pw", DLA: time.Now().Add(-5 * time.Hour)})
		if _, err := expressoReader(t, c).Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrExpired) {
			t.Fatalf("Lookup = %v, want ErrExpired", err)
		}
	})

	t.Run("missing, rewritten, destroyed", func(t *testing.T) {
		c := open(t)
		r := expressoReader(t, c)
		id := NewID(t)
		if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrNotFound) {
			t.Fatalf("before PHP wrote it: %v, want ErrNotFound", err)
		}
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: "ana", Password: "one"})
		if s, err := r.Lookup(t.Context(), id); err != nil || s.Identity.User != "ana" {
			t.Fatalf("written: %v", err)
		}
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: "bia", Password: "two"})
		if s, err := r.Lookup(t.Context(), id); err != nil || s.Identity.User != "bia" || s.Identity.Password != "two" {
			t.Fatalf("rewritten: %+v %v", s, err)
		}
		DestroySession(t, c.PHP, id)
		if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrNotFound) {
			t.Fatalf("destroyed: %v, want ErrNotFound", err)
		}
	})

	t.Run("hostile ids", func(t *testing.T) {
		c := open(t)
		st, err := phpsession.NewStore(c.Config)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		for _, id := range []string{"", "../../../../etc/passwd", "abc def ghi jkl mno pqr stu", "abc\r\nget x\r\n0123456789ab",
			"abcdefghij\x00klmnopqrstuvwxyz", strings.Repeat("a", 300)} {
			if _, err := st.Load(t.Context(), id); !errors.Is(err, phpsession.ErrInvalidID) {
				t.Errorf("Load(%q) = %v, want ErrInvalidID", id, err)
			}
		}
	})

	t.Run("read while PHP holds the lock", func(t *testing.T) {
		c := open(t)
		id := NewID(t)
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: "ana", Password: "pw"})
		HoldSession(t, c.PHP, id, 3*time.Second)
		start := time.Now()
		s, err := expressoReader(t, c).Lookup(t.Context(), id)
		if err != nil || s.Identity.User != "ana" {
			t.Fatalf("Lookup while PHP holds the session: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Lookup waited %v on PHP's lock", d)
		}
	})

	t.Run("read while PHP rewrites", func(t *testing.T) {
		c := open(t)
		id := NewID(t)
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: "ana", Password: suitePassword, Pad: 20000})
		r := expressoReader(t, c)
		const rewrites = 150
		counts := RaceRewrites(t, c.PHP, id, rewrites, func() string {
			return Verdict(r, t.Context(), id, "ana", suitePassword)
		})
		t.Logf("%d rewrites: %v", rewrites, counts)
		CheckRaceCounts(t, counts, 20)
	})

	t.Run("store down", func(t *testing.T) {
		c := open(t)
		if c.Stop == nil {
			t.Log("this store cannot be taken down")
			return
		}
		id := NewID(t)
		WriteExpressoSession(t, c.PHP, id, ExpressoUser{User: "ana", Password: "pw"})
		r := expressoReader(t, c)
		if err := r.Ready(t.Context()); err != nil {
			t.Fatalf("Ready: %v", err)
		}
		c.Stop()
		if _, err := r.Lookup(t.Context(), id); !errors.Is(err, phpsession.ErrUnavailable) {
			t.Fatalf("Lookup with the store down = %v, want ErrUnavailable", err)
		}
		if err := r.Ready(t.Context()); !errors.Is(err, phpsession.ErrUnavailable) {
			t.Fatalf("Ready with the store down = %v, want ErrUnavailable", err)
		}
	})
}

// HoldSession runs PHP holding id's session (session_start without a
// close: a request in progress, with the store's lock) for d, and returns
// once PHP holds it. The test waits for PHP at its end.
func HoldSession(t *testing.T, st Store, id string, d time.Duration) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), PHP(t), append(st.Args(), "-r",
		`ob_start(); session_id($argv[1]); session_start(); fwrite(STDERR, "locked\n"); usleep((int)$argv[2]);`,
		id, strconv.FormatInt(d.Microseconds(), 10))...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Wait() })
	buf := make([]byte, 7)
	if _, err := io.ReadFull(stderr, buf); err != nil || string(buf) != "locked\n" {
		t.Fatalf("phpsessiontest: php did not take the session: %q %v", buf, err)
	}
}

// RaceRewrites runs PHP rewriting id's (Expresso) session rewrites times,
// as every Expresso request does (session_start, a fresh session_dla,
// sometimes work under the lock, session_write_close), and calls look in
// a loop until PHP is done. It returns how often look answered each
// string.
func RaceRewrites(t *testing.T, st Store, id string, rewrites int, look func() string) map[string]int {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), PHP(t), append(st.Args(), "-r", `
		ob_start();
		for ($i = 1; $i <= (int)$argv[2]; $i++) {
			session_id($argv[1]); session_start();
			if ($i % 4 === 0) { usleep(2000); } // a request working under the lock
			$_SESSION['phpgw_session']['session_dla'] = time();
			$_SESSION['phpgw_session']['session_action'] = str_repeat('/', $i % 37); // changed, so really written
			session_write_close();
		}`, id, strconv.Itoa(rewrites))...)
	// The goroutine reports through done, never through t.
	done := make(chan error, 1)
	go func() {
		out, err := cmd.CombinedOutput()
		if err != nil || len(out) > 0 {
			err = fmt.Errorf("php: %v %s", err, out)
		}
		done <- err
	}()
	counts := map[string]int{}
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return counts
		default:
		}
		counts[look()]++
	}
}

// Verdict looks id up and names the answer: "ok" when it is user with
// password, "unavailable" for a busy store, else what went wrong.
func Verdict(r *phpsession.Reader, ctx context.Context, id, user, password string) string {
	s, err := r.Lookup(ctx, id)
	switch {
	case err == nil && s.Identity.User == user && s.Identity.Password == password:
		return "ok"
	case errors.Is(err, phpsession.ErrUnavailable):
		return "unavailable"
	case err == nil:
		return "wrong identity"
	}
	return err.Error()
}

// CheckRaceCounts fails the test unless look answered "ok" at least min
// times and nothing but "ok" or "unavailable" (a busy store, retried
// later): any other answer about an always logged-in session logs its
// user out.
func CheckRaceCounts(t *testing.T, counts map[string]int, min int) {
	t.Helper()
	if counts["ok"] < min {
		t.Errorf("only %d good reads", counts["ok"])
	}
	for k, n := range counts {
		if k != "ok" && k != "unavailable" {
			t.Errorf("%d lookups of a logged-in session failed: %s", n, k)
		}
	}
}
