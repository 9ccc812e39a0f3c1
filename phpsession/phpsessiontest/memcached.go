package phpsessiontest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Memcached is a private memcached server on a random loopback port.
type Memcached struct {
	Addr string
	cmd  *exec.Cmd
	tb   testing.TB
}

// StartMemcached starts memcached (Debian's package); it is stopped when
// the test ends.
func StartMemcached(tb testing.TB) *Memcached {
	tb.Helper()
	if _, err := exec.LookPath("memcached"); err != nil {
		tb.Fatal("phpsessiontest: memcached not found: apt-get install memcached")
	}
	m := &Memcached{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, false))), tb: tb}
	m.Start()
	tb.Cleanup(m.Stop)
	return m
}

// StartMemcachedServers starts n servers.
func StartMemcachedServers(tb testing.TB, n int) []*Memcached {
	tb.Helper()
	var out []*Memcached
	for range n {
		out = append(out, StartMemcached(tb))
	}
	return out
}

// Start (re)starts the server on the same port, empty.
func (m *Memcached) Start() {
	m.tb.Helper()
	_, port, _ := net.SplitHostPort(m.Addr)
	args := []string{"-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "64"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	m.cmd = exec.Command("memcached", args...)
	if err := m.cmd.Start(); err != nil {
		m.tb.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", m.Addr); err == nil {
			c.Close()
			return
		}
	}
	m.tb.Fatalf("phpsessiontest: memcached did not listen on %s", m.Addr)
}

// Stop kills the server; its data is lost.
func (m *Memcached) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	m.cmd.Process.Kill()
	m.cmd.Wait()
	m.cmd = nil
}

// Has reports whether the server holds key, by a plain text-protocol get.
func (m *Memcached) Has(tb testing.TB, key string) bool {
	tb.Helper()
	c, err := net.DialTimeout("tcp", m.Addr, 2*time.Second)
	if err != nil {
		tb.Fatalf("phpsessiontest: memcached %s: %v", m.Addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "get %s\r\n", key)
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		tb.Fatalf("phpsessiontest: memcached %s: %v", m.Addr, err)
	}
	return strings.HasPrefix(line, "VALUE ")
}

// String describes the server for test logs.
func (m *Memcached) String() string { return "memcached at " + m.Addr }
