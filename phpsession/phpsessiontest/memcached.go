package phpsessiontest

import (
	"bufio"
	"bytes"
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
	done chan struct{} // closed when cmd has exited
	tb   testing.TB
}

// StartMemcached starts memcached (Debian's package); it is stopped when
// the test ends. Its port was free a moment before memcached binds it:
// another process may bind it in between, and memcached then exits; it is
// started again on another port, twice at most.
func StartMemcached(tb testing.TB) *Memcached {
	tb.Helper()
	skipShort(tb, "memcached")
	if _, err := exec.LookPath("memcached"); err != nil {
		tb.Fatal("phpsessiontest: memcached not found: apt-get install memcached")
	}
	m := &Memcached{tb: tb}
	tb.Cleanup(m.Stop)
	startOnFreePort(tb, "memcached", func() error {
		m.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(tb, false)))
		return m.start()
	})
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
	if err := m.start(); err != nil {
		m.tb.Fatal(err)
	}
}

// start is Start, returning a startup failure; one on a port in use wraps
// errPortTaken. Ready means this server's own process answering stats: a
// listener of another process on the port is not it.
func (m *Memcached) start() error {
	_, port, _ := net.SplitHostPort(m.Addr)
	args := []string{"-l", "127.0.0.1", "-p", port, "-U", "0", "-m", "64"}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root")
	}
	cmd := exec.Command("memcached", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("phpsessiontest: starting memcached: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	m.cmd, m.done = cmd, done
	ours := "STAT pid " + strconv.Itoa(cmd.Process.Pid) + "\r\n"
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-done:
			m.cmd, m.done = nil, nil
			err := fmt.Errorf("phpsessiontest: memcached exited at startup on %s (%v): %s", m.Addr, cmd.ProcessState, stderr.String())
			if strings.Contains(stderr.String(), "Address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		default:
		}
		if strings.Contains(m.stats(), ours) {
			return nil
		}
	}
	m.Stop()
	return fmt.Errorf("phpsessiontest: memcached did not listen on %s", m.Addr)
}

// stats is the server's answer to the stats command, "" on any error.
func (m *Memcached) stats() string {
	c, err := net.DialTimeout("tcp", m.Addr, time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		return ""
	}
	var b strings.Builder
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		b.WriteString(line)
		if err != nil || line == "END\r\n" {
			return b.String()
		}
	}
}

// Stop kills the server; its data is lost.
func (m *Memcached) Stop() {
	if m.cmd == nil || m.cmd.Process == nil {
		return
	}
	m.cmd.Process.Kill()
	<-m.done
	m.cmd, m.done = nil, nil
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
