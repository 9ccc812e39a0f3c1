package sidecar

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestClusterConfig: the cluster flags are checked at once, each error
// naming its flag; a half-made cluster configuration is refused, and
// without --cluster-redis nothing of the cluster is on.
func TestClusterConfig(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	short := filepath.Join(dir, "short")
	os.WriteFile(secret, []byte("0123456789abcdef0123\n"), 0o600)
	os.WriteFile(short, []byte("tiny\n"), 0o600)
	base := []string{"--xmpp-addr=127.0.0.1:5222", "--xmpp-domain=example.org", "--session-save-path=" + dir}
	for _, tc := range []struct {
		name  string
		args  []string
		flags []string // named in the error; none: valid
	}{
		{"single node", nil, nil},
		{"cluster", []string{"--cluster-redis=redis://127.0.0.1:6379/2", "--cluster-node-id=web1", "--cluster-peer-listen=127.0.0.11:8767", "--cluster-secret-file=" + secret}, nil},
		{"cluster, private peer address, redis cluster", []string{"--cluster-redis=redis-cluster://u:p@10.0.0.1:6379,10.0.0.2:6379", "--cluster-peer-listen=10.1.2.3:8767", "--cluster-secret-file=" + secret, "--cluster-lease-ttl=10s"}, nil},
		{"half a cluster", []string{"--cluster-node-id=web1", "--cluster-peer-listen=127.0.0.1:8767", "--cluster-secret-file=" + secret},
			[]string{"--cluster-node-id", "--cluster-peer-listen", "--cluster-secret-file"}},
		{"missing peer and secret", []string{"--cluster-redis=redis://127.0.0.1:6379"}, []string{"--cluster-peer-listen", "--cluster-secret-file"}},
		{"public peer address, short secret, bad ttl, bad node id, bad redis",
			[]string{"--cluster-redis=http://127.0.0.1:6379", "--cluster-node-id=web 1", "--cluster-peer-listen=8.8.8.8:8767", "--cluster-secret-file=" + short, "--cluster-lease-ttl=100ms"},
			[]string{"--cluster-redis", "--cluster-node-id", "--cluster-peer-listen", "--cluster-secret-file", "--cluster-lease-ttl"}},
		{"unspecified peer address, a name", []string{"--cluster-redis=redis://127.0.0.1:6379", "--cluster-peer-listen=0.0.0.0:8767", "--cluster-secret-file=" + secret}, []string{"--cluster-peer-listen"}},
		{"peer address as a host name", []string{"--cluster-redis=redis://127.0.0.1:6379", "--cluster-peer-listen=web1.internal:8767", "--cluster-secret-file=" + secret}, []string{"--cluster-peer-listen"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, _, err := parseConfig(append(append([]string{}, base...), tc.args...), func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			err = cfg.Validate()
			if len(tc.flags) == 0 {
				if err != nil {
					t.Fatalf("valid config refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("invalid config accepted")
			}
			for _, f := range tc.flags {
				if !strings.Contains(err.Error(), f+":") {
					t.Errorf("error does not name %s:\n%v", f, err)
				}
			}
			if strings.Contains(err.Error(), "u:p@") {
				t.Errorf("the error shows the Redis credentials: %v", err)
			}
		})
	}
}

func TestSIDSessionKey(t *testing.T) {
	sk := sessionKey("php-session-id")
	random := strings.Repeat("ab", 20)
	for _, tc := range []struct {
		name, sid, want string
		ok              bool
	}{
		{"a cluster sid", random + sk, sk, true},
		{"a single node's sid", random, "", false},
		{"too long", random + sk + "0", "", false},
		{"not hex", random + strings.Repeat("z", 64), "", false},
		{"empty", "", "", false},
	} {
		got, ok := sidSessionKey(tc.sid)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %q %v, want %q %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzSIDSessionKey: a sid from a browser never panics the router, and
// what it yields is the sid's last 64 hex digits.
func FuzzSIDSessionKey(f *testing.F) {
	f.Add(strings.Repeat("ab", 20) + sessionKey("x"))
	f.Add("")
	f.Add(strings.Repeat("é", 52))
	f.Fuzz(func(t *testing.T, sid string) {
		sk, ok := sidSessionKey(sid)
		if ok && (len(sk) != 64 || !strings.HasSuffix(sid, sk)) {
			t.Fatalf("%q gave %q", sid, sk)
		}
	})
}

// TestClusterRedisBuffers: every connection to --cluster-redis gets the
// small buffers of redisBufferSize, not go-redis's 32 KiB each way, and
// the pool is redisPoolSize, not go-redis's 10 per CPU (most of a node's
// fixed memory, docs/PERFORMANCE.md issue 20 item 9), and what the
// operator tuned in a redis:// URL is kept; the renewals' own client
// keeps beatPoolSize whatever the URL says. Nothing is dialed.
func TestClusterRedisBuffers(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		pool     int // clusterRedis's argument
		poolSize int
	}{
		{"redis://127.0.0.1:6379/2", 0, redisPoolSize()},
		{"redis://u:p@127.0.0.1:6379/2?pool_size=7", 0, 7},
		{"unix:///run/redis/redis.sock", 0, redisPoolSize()},
		{"redis-cluster://u:p@10.0.0.1:6379,10.0.0.2:6379", 0, redisPoolSize()},
		// The renewals' own client (leaseStore.beat).
		{"redis://127.0.0.1:6379/2", beatPoolSize, beatPoolSize},
		{"redis://u:p@127.0.0.1:6379/2?pool_size=7", beatPoolSize, beatPoolSize},
		{"redis-cluster://u:p@10.0.0.1:6379,10.0.0.2:6379", beatPoolSize, beatPoolSize},
	} {
		rdb, err := clusterRedis(tc.spec, tc.pool)
		if err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		var read, write, pool int
		switch c := rdb.(type) {
		case *redis.Client:
			o := c.Options()
			read, write, pool = o.ReadBufferSize, o.WriteBufferSize, o.PoolSize
		case *redis.ClusterClient:
			o := c.Options()
			read, write, pool = o.ReadBufferSize, o.WriteBufferSize, o.PoolSize
		default:
			t.Fatalf("%s: client %T", tc.spec, rdb)
		}
		rdb.Close()
		if read != redisBufferSize || write != redisBufferSize {
			t.Errorf("%s: buffers %d/%d bytes, want %d", tc.spec, read, write, redisBufferSize)
		}
		if pool != tc.poolSize {
			t.Errorf("%s: pool of %d, want %d", tc.spec, pool, tc.poolSize)
		}
	}
}
