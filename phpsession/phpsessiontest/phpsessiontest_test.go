package phpsessiontest

import (
	"errors"
	"strings"
	"testing"
)

// TestRedisPortTaken: a redis-server started on a port another Redis holds
// fails to start with errPortTaken; the other Redis answering PING on that
// port is not taken for it (a test would then share a foreign server).
func TestRedisPortTaken(t *testing.T) {
	other := StartRedis(t)
	r := &Redis{Addr: other.Addr, dir: t.TempDir(), tb: t}
	t.Cleanup(r.Stop)
	if err := r.start(); !errors.Is(err, errPortTaken) {
		t.Fatalf("start on another Redis's port: %v, want errPortTaken", err)
	}
	if out, err := other.CLI("PING"); err != nil || strings.TrimSpace(out) != "PONG" {
		t.Fatalf("the other Redis after the failed start: %q %v", out, err)
	}
}

// TestMemcachedPortTaken: a memcached started on a port another memcached
// holds fails with errPortTaken instead of taking the other for itself.
func TestMemcachedPortTaken(t *testing.T) {
	other := StartMemcached(t)
	m := &Memcached{Addr: other.Addr, tb: t}
	t.Cleanup(m.Stop)
	if err := m.start(); !errors.Is(err, errPortTaken) {
		t.Fatalf("start on another memcached's port: %v, want errPortTaken", err)
	}
	if !strings.Contains(other.stats(), "STAT pid ") {
		t.Fatal("the other memcached no longer answers")
	}
}
