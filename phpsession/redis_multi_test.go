package phpsession_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// randomID returns a valid 32-character session id whose first bytes vary.
func randomID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,-"
	b := make([]byte, 32)
	for i := range b {
		b[i] = alphabet[rand.N(len(alphabet))]
	}
	return string(b)
}

// keyCount is how many keys with prefix the server itself holds.
func keyCount(t *testing.T, r *phpsessiontest.Redis, prefix string) int {
	t.Helper()
	out, err := r.CLI("--raw", "KEYS", prefix+"*")
	if err != nil {
		t.Fatalf("redis-cli KEYS on %s: %v %s", r.Addr, err, out)
	}
	return len(strings.Fields(out))
}

// TestRedisMultiHostPHP: real phpredis with a weighted multi-host
// save_path (separated by a comma and by a space, both of which phpredis
// accepts) stores each session on the host it picks from the id; the Go
// store must read each one from that same host.
//
// phpredis (redis_pool_get_sock) reads the id's first 4 bytes as a native
// (little-endian) uint32, takes it modulo the total weight, and walks the
// hosts from the last one configured, each covering weight positions: with
// weights 1, 2, 3 positions 0-2 are host 3, 3-4 host 2, 5 host 1. One id
// per position checks every boundary.
func TestRedisMultiHostPHP(t *testing.T) {
	hosts := []*phpsessiontest.Redis{phpsessiontest.StartRedis(t), phpsessiontest.StartRedis(t), phpsessiontest.StartRedis(t)}
	spec := fmt.Sprintf("tcp://%s?weight=1, tcp://%s?weight=2 tcp://%s?weight=3", hosts[0].Addr, hosts[1].Addr, hosts[2].Addr)
	owner := []int{2, 2, 2, 1, 1, 0} // position -> host
	st := phpsessiontest.Store{Handler: "redis", SavePath: spec}
	r := openReader(t, phpsession.Config{Store: "redis", SavePath: spec})
	want := make([]int, len(hosts))
	for pos := range owner {
		id := randomID()
		for binary.LittleEndian.Uint32([]byte(id[:4]))%6 != uint32(pos) {
			id = randomID()
		}
		user := fmt.Sprintf("user%d", pos)
		phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: user, Password: testPassword})
		want[owner[pos]]++
		for h, srv := range hosts {
			out, err := srv.CLI("EXISTS", "PHPREDIS_SESSION:"+id)
			if got := strings.TrimSpace(out); err != nil || got != map[bool]string{true: "1", false: "0"}[h == owner[pos]] {
				t.Fatalf("position %d: EXISTS on host %d = %q (%v); phpredis should have used host %d", pos, h+1, got, err, owner[pos]+1)
			}
		}
		s, err := r.Lookup(t.Context(), id)
		if err != nil || s.Identity.User != user || s.Identity.Password != testPassword {
			t.Fatalf("position %d: Lookup = %+v, %v", pos, s, err)
		}
	}
	for h, srv := range hosts {
		if n := keyCount(t, srv, "PHPREDIS_SESSION:"); n != want[h] {
			t.Errorf("host %d holds %d sessions, want %d", h+1, n, want[h])
		}
	}
}

// crc16 is Redis Cluster's key hash (CRC-16/XMODEM); the test uses it to
// pick ids whose keys land on each master.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// TestRedisClusterPHP: a real 3-master Redis Cluster; real phpredis writes
// sessions through session.save_handler=rediscluster with its seed[]
// save_path, one on each master, and the Go store, given the very same
// save_path, reads each back (and sees a destroyed one gone).
func TestRedisClusterPHP(t *testing.T) {
	cl := phpsessiontest.StartRedisCluster(t, 3)
	spec := cl.Spec() + "&timeout=2&read_timeout=2"
	st := phpsessiontest.Store{Handler: "rediscluster", SavePath: spec}
	r := openReader(t, phpsession.Config{Store: "redis", SavePath: spec})
	const prefix = "PHPREDIS_CLUSTER_SESSION:"
	var ids []string
	// redis-cli --cluster create gives the three masters a third of the
	// 16384 slots each, in order; aim at the middle of each third.
	for _, center := range []int{2730, 8191, 13653} {
		id := randomID()
		for d := int(crc16(prefix+id)%16384) - center; d < -500 || d > 500; d = int(crc16(prefix+id)%16384) - center {
			id = randomID()
		}
		ids = append(ids, id)
		phpsessiontest.WriteExpressoSession(t, st, id, phpsessiontest.ExpressoUser{User: "alice", Password: testPassword})
	}
	for i, node := range cl.Nodes {
		if n := keyCount(t, node, prefix); n != 1 {
			t.Errorf("master %d holds %d sessions, want 1 (the test meant to spread them)", i+1, n)
		}
	}
	for _, id := range ids {
		s, err := r.Lookup(t.Context(), id)
		if err != nil || s.Identity.User != "alice" || s.Identity.Password != testPassword {
			t.Fatalf("Lookup = %+v, %v", s, err)
		}
	}
	phpsessiontest.DestroySession(t, st, ids[1])
	if _, err := r.Lookup(t.Context(), ids[1]); !errors.Is(err, phpsession.ErrNotFound) {
		t.Fatalf("after destroy: %v, want ErrNotFound", err)
	}
	if err := r.Ready(t.Context()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
}
