package phpsession

import (
	"bytes"
	"compress/zlib"
	"errors"
	"testing"

	"github.com/bradfitz/gomemcache/memcache"
)

// TestMemcacheSavePaths: the save_path forms each extension accepts, and
// the ones refused with ErrConfig.
func TestMemcacheSavePaths(t *testing.T) {
	if _, err := NewMemcacheStore("tcp://a:1", MemcacheOptions{Prefix: "site."}); !errors.Is(err, ErrConfig) {
		t.Errorf("memcache prefix with a dot: %v", err)
	}
	for _, cfg := range []Config{
		{Store: "memcached", SavePath: "a:1", Hash: "standard"},
		{Store: "memcache", SavePath: "tcp://a:1", Hash: "ketama"},
		{Store: "memcache", SavePath: "tcp://a:1", Hash: "standard,md5"},
		{Store: "files", SavePath: "/tmp", Hash: "fnv"},
		{Store: "couchbase", SavePath: "a:1"},
		{Store: "memcached"},
	} {
		if _, err := NewStore(cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("NewStore(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
	for _, tc := range []struct {
		handler, path string
		addrs         []string // nil: ErrConfig
	}{
		{"memcached", "127.0.0.1:11211", []string{"127.0.0.1:11211"}},
		{"memcached", "a:1,b:2, c", []string{"a:1", "b:2", "c:11211"}},
		{"memcached", "PERSISTENT=pool a:1,b:2:3", []string{"a:1", "b:2"}},
		{"memcached", "/run/memcached.sock", []string{"/run/memcached.sock"}},
		{"memcached", "a:1 b:2", nil}, // libmemcached would use a:1 only
		{"memcached", "a:0", nil},
		{"memcached", "a:x", nil},
		{"memcached", " , ", nil},
		{"memcache", "tcp://localhost:11211?persistent=1&weight=1&timeout=1&retry_interval=15", []string{"localhost:11211"}},
		{"memcache", "tcp://a:1?weight=2, tcp://b:2 b2:3", []string{"a:1", "b:2", "b2:3"}},
		{"memcache", "unix:///run/memcached.sock", []string{"/run/memcached.sock"}},
		{"memcache", "tcp://a:1?weight=0", nil},
		{"memcache", "tcp://a:1?timeout=-1", nil},
		{"memcache", "udp://a:1", nil},
		{"memcache", "", nil},
	} {
		var st *MemcacheStore
		var err error
		if tc.handler == "memcached" {
			st, err = NewMemcachedStore(tc.path, MemcachedOptions{})
		} else {
			st, err = NewMemcacheStore(tc.path, MemcacheOptions{})
		}
		if tc.addrs == nil {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("%s %q: %v, want ErrConfig", tc.handler, tc.path, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %q: %v", tc.handler, tc.path, err)
			continue
		}
		if len(st.addrs) != len(tc.addrs) {
			t.Errorf("%s %q: servers %v, want %v", tc.handler, tc.path, st.addrs, tc.addrs)
			continue
		}
		for i := range st.addrs {
			if st.addrs[i] != tc.addrs[i] {
				t.Errorf("%s %q: servers %v, want %v", tc.handler, tc.path, st.addrs, tc.addrs)
			}
		}
		st.Close()
	}
}

// FuzzMemcacheValue: whatever flags and bytes a memcached server returns,
// value neither panics nor returns more than MaxSize bytes.
func FuzzMemcacheValue(f *testing.F) {
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(bytes.Repeat([]byte("a|s:1:\"b\";"), 1000))
	w.Close()
	f.Add(uint32(0), []byte(`a|s:1:"b";`))
	f.Add(uint32(2), z.Bytes())
	f.Add(uint32(2), []byte("x\x9c garbage"))
	f.Add(uint32(0x100), []byte("1"))
	f.Fuzz(func(t *testing.T, flags uint32, data []byte) {
		s := &MemcacheStore{handler: "memcache", compress: true, maxSize: 4096}
		out, err := s.value(&memcache.Item{Flags: flags, Value: data})
		if err == nil && len(out) > s.maxSize {
			t.Fatalf("%d bytes past the %d limit", len(out), s.maxSize)
		}
		if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("unexpected error class: %v", err)
		}
	})
}
