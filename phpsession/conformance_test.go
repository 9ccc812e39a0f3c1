package phpsession_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// TestStoreConformance runs the store suite against every store NewStore
// opens: a store without a phpsessiontest case fails here.
func TestStoreConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: real PHP, redis-server and memcached")
	}
	for _, name := range phpsession.StoreNames() {
		open, ok := phpsessiontest.Cases[name]
		if !ok {
			t.Errorf("store %q has no phpsessiontest case", name)
			continue
		}
		t.Run(name, func(t *testing.T) { phpsessiontest.RunStoreTests(t, open) })
	}
}

// TestMemcacheKeyPlacement: real PHP spreads sessions over three memcached
// servers with each extension; every session is on exactly the servers
// MemcacheStore reads, under the key it reads, and on no other. This is
// how the placement rules in MemcacheStore's documentation were found.
func TestMemcacheKeyPlacement(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: real PHP and memcached")
	}
	joinW := func(a []string, sep string, w ...string) string {
		var out []string
		for i, x := range a {
			out = append(out, x+w[i])
		}
		return strings.Join(out, sep)
	}
	for _, tc := range []struct {
		handler string
		prefix  string
		ini     []string
		path    func(addrs []string) string
		copies  int
		hash    string
	}{
		{"memcached", "memc.sess.key.", nil, func(a []string) string { return strings.Join(a, ",") }, 1, ""},
		{"memcached", "site.", []string{"memcached.sess_prefix=site."}, func(a []string) string { return strings.Join(a, ", ") }, 1, ""},
		// Port 11211 is named differently on libmemcached's continuum;
		// it cannot be had in a test, so it is covered by the unit test.
		{"memcache", "", nil, func(a []string) string {
			var u []string
			for _, x := range a {
				u = append(u, "tcp://"+x+"?persistent=1&weight=1&timeout=1&retry_interval=15")
			}
			return strings.Join(u, ",")
		}, 2, ""},
		{"memcache", "", nil, func(a []string) string {
			return "tcp://" + a[0] + "?weight=2, tcp://" + a[1] + "?weight=1, tcp://" + a[2] + "?weight=3"
		}, 2, ""},
		{"memcache", "site_", []string{"memcache.session_prefix_static_key=site_"}, func(a []string) string {
			return a[0] + " " + a[1] + " " + a[2] // bare host:port entries, separated by spaces
		}, 2, ""},
		// The extensions' other distribution settings.
		{"memcached", "memc.sess.key.", []string{"memcached.sess_consistent_hash=Off"},
			func(a []string) string { return strings.Join(a, ",") }, 1, "modula"},
		{"memcached", "memc.sess.key.", []string{"memcached.sess_consistent_hash_type=ketama_weighted"},
			func(a []string) string { return joinW(a, ",", ":1", ":3", ":2") }, 1, "ketama_weighted"},
		{"memcache", "", []string{"memcache.hash_function=fnv"},
			func(a []string) string { return "tcp://" + joinW(a, ",tcp://", "", "", "") }, 2, "fnv"},
		{"memcache", "", []string{"memcache.hash_strategy=standard"},
			func(a []string) string { return "tcp://" + joinW(a, ",tcp://", "?weight=2", "", "") }, 2, "standard"},
		{"memcache", "", []string{"memcache.hash_strategy=standard", "memcache.hash_function=fnv"},
			func(a []string) string { return "tcp://" + joinW(a, ",tcp://", "", "?weight=3", "") }, 2, "standard,fnv"},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s", tc.handler, tc.hash, tc.path([]string{"a", "b", "c"})), func(t *testing.T) {
			servers := phpsessiontest.StartMemcachedServers(t, 3)
			var addrs []string
			for _, m := range servers {
				addrs = append(addrs, m.Addr)
			}
			path := tc.path(addrs)
			const n = 120
			base := phpsessiontest.NewID(t)[:28]
			php := phpsessiontest.Store{Handler: tc.handler, SavePath: path, INI: tc.ini}
			out, err := exec.Command(phpsessiontest.PHP(t), append(php.Args(), "-r", `
				ob_start();
				for ($i = 0; $i < (int)$argv[2]; $i++) {
					session_id(sprintf('%s%04d', $argv[1], $i)); session_start(); $_SESSION['i'] = $i; session_write_close();
				}`, base, fmt.Sprint(n))...).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Fatalf("php: %v %s", err, out)
			}
			cfg := phpsession.Config{Store: tc.handler, SavePath: path, Hash: tc.hash}
			if len(tc.ini) > 0 {
				cfg.KeyPrefix = tc.prefix
			}
			st, err := phpsession.NewStore(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			ms := st.(*phpsession.MemcacheStore)
			used := map[string]int{}
			for i := range n {
				id := fmt.Sprintf("%s%04d", base, i)
				key := tc.prefix + id
				if ms.Key(id) != key {
					t.Fatalf("key %q, want %q", ms.Key(id), key)
				}
				want := ms.Servers(id)
				var have []string
				for _, m := range servers {
					if m.Has(t, key) {
						have = append(have, m.Addr)
					}
				}
				if len(have) != tc.copies || !slices.Contains(have, want[0]) || len(want) != tc.copies {
					t.Fatalf("%s is on %v; the store reads %v", id, have, want)
				}
				for _, w := range want {
					if !slices.Contains(have, w) {
						t.Fatalf("%s is on %v; the store reads %v", id, have, want)
					}
				}
				used[want[0]]++
				if _, err := st.Load(t.Context(), id); err != nil {
					t.Fatalf("Load(%s): %v", id, err)
				}
			}
			if len(used) != 3 {
				t.Errorf("%d sessions went to %d servers only: %v", n, len(used), used)
			}
		})
	}
}

// TestMemcacheFailover: with memcache's session_redundancy (2), a session
// whose first server is down is read from its second, as PHP reads it;
// with both of its servers down the answer is ErrUnavailable, not "not
// found".
func TestMemcacheFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: real PHP and memcached")
	}
	servers := phpsessiontest.StartMemcachedServers(t, 3)
	var urls []string
	for _, m := range servers {
		urls = append(urls, "tcp://"+m.Addr)
	}
	path := strings.Join(urls, ",")
	php := phpsessiontest.Store{Handler: "memcache", SavePath: path}
	id := phpsessiontest.NewID(t)
	phpsessiontest.WriteExpressoSession(t, php, id, phpsessiontest.ExpressoUser{User: "ana", Password: "pw"})
	st, err := phpsession.NewStore(phpsession.Config{Store: "memcache", SavePath: path})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	order := st.(*phpsession.MemcacheStore).Servers(id)
	byAddr := map[string]*phpsessiontest.Memcached{}
	for _, m := range servers {
		byAddr[m.Addr] = m
	}
	byAddr[order[0]].Stop()
	if rec, err := st.Load(t.Context(), id); err != nil || len(rec.Data) == 0 {
		t.Fatalf("first server down: %v", err)
	}
	byAddr[order[1]].Stop()
	if _, err := st.Load(t.Context(), id); !errors.Is(err, phpsession.ErrUnavailable) {
		t.Fatalf("both servers down: %v, want ErrUnavailable", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := st.Load(ctx, id); !errors.Is(err, phpsession.ErrUnavailable) {
		t.Fatalf("cancelled: %v", err)
	}
}

// TestMemcacheLockKeys: while a PHP request holds a session, each
// extension's lock key is where MemcacheStore's documentation says, and
// the store still reads the session at once (it never takes the lock).
func TestMemcacheLockKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("integration: real PHP and memcached")
	}
	for _, tc := range []struct {
		handler string
		lock    func(id string) string
	}{
		{"memcached", func(id string) string { return "memc.sess.key.lock." + id }},
		{"memcache", func(id string) string { return id + ".lock" }},
	} {
		t.Run(tc.handler, func(t *testing.T) {
			servers := phpsessiontest.StartMemcachedServers(t, 3)
			var addrs []string
			for _, m := range servers {
				addrs = append(addrs, m.Addr)
			}
			path := strings.Join(addrs, ",")
			php := phpsessiontest.Store{Handler: tc.handler, SavePath: path}
			id := phpsessiontest.NewID(t)
			phpsessiontest.WriteExpressoSession(t, php, id, phpsessiontest.ExpressoUser{User: "ana", Password: "pw"})
			phpsessiontest.HoldSession(t, php, id, 2*time.Second)
			var holders []string
			for _, m := range servers {
				if m.Has(t, tc.lock(id)) {
					holders = append(holders, m.Addr)
				}
			}
			if len(holders) == 0 {
				t.Fatalf("no server holds the lock key %q while PHP holds the session", tc.lock(id))
			}
			st, err := phpsession.NewStore(phpsession.Config{Store: tc.handler, SavePath: path})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if rec, err := st.Load(t.Context(), id); err != nil || len(rec.Data) == 0 {
				t.Fatalf("Load while PHP holds the lock: %v", err)
			}
			t.Logf("lock %q on %v", tc.lock(id), holders)
		})
	}
}
