package xmppconn

import (
	"net"
	"sync"
	"testing"
	"time"
)

// discardConn is a net.Conn that accepts every write.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }
func (discardConn) Close() error                     { return nil }

// memResumeStore applies the calls to a ResumeState under a mutex, the
// least a real store does.
type memResumeStore struct {
	mu sync.Mutex
	st ResumeState
}

func (m *memResumeStore) Save(st ResumeState) error {
	m.mu.Lock()
	m.st = st
	m.mu.Unlock()
	return nil
}

func (m *memResumeStore) Handled(h uint32) error {
	m.mu.Lock()
	m.st.Handled(h)
	m.mu.Unlock()
	return nil
}

func (m *memResumeStore) Sent(raw []byte) error {
	m.mu.Lock()
	m.st.Sent(raw)
	m.mu.Unlock()
	return nil
}

func (m *memResumeStore) Acked(h uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Ack(h)
}

// benchConn is a Conn with stream management on, writing to nowhere.
func benchConn(b *testing.B, store ResumeStore) *Conn {
	cfg, err := Config{Addr: "127.0.0.1:5222", Domain: "example.test", TLS: TLSNone, User: "alice", Password: "pw", ResumeStore: store}.normalize()
	if err != nil {
		b.Fatal(err)
	}
	c := newConn(cfg)
	c.s = &stream{nc: discardConn{}}
	c.sm.enabled = true
	c.sm.id = "sm1"
	return c
}

// noopStore takes every call and keeps nothing: the cost of the hooks
// alone.
type noopStore struct{}

func (noopStore) Save(ResumeState) error { return nil }
func (noopStore) Handled(uint32) error   { return nil }
func (noopStore) Sent([]byte) error      { return nil }
func (noopStore) Acked(uint32) error     { return nil }

// BenchmarkResumeStoreOverhead is what a ResumeStore adds to the Conn's
// own work per stanza each way (journal and write one outbound stanza, an
// ack every 8, count and report one inbound stanza): the hooks alone
// (noop) and a store keeping a ResumeState in memory (memory; a real
// store adds its own I/O on top), each against the same Conn without a
// store measured in the same run (ratio store/nostore).
func BenchmarkResumeStoreOverhead(b *testing.B) {
	for _, tt := range []struct {
		name  string
		store func() ResumeStore
	}{
		{"noop", func() ResumeStore { return noopStore{} }},
		{"memory", func() ResumeStore { return &memResumeStore{} }},
	} {
		b.Run(tt.name, func(b *testing.B) { benchStoreOverhead(b, tt.store()) })
	}
}

func benchStoreOverhead(b *testing.B, store ResumeStore) {
	raw := encodeMessage(Message{To: "bob@example.test", ID: "m-1234567", Type: "chat", Body: "Olá Bob", Receipt: true})
	run := func(c *Conn, n int) {
		for i := range n {
			c.wmu.Lock()
			c.writeLocked(c.s, raw, true)
			if i%8 == 7 {
				c.ackLocked(c.sm.acked + uint32(len(c.sm.unacked)))
			}
			c.wmu.Unlock()
			c.countInbound()
		}
	}
	// Blocks of 64 stanzas alternate between the two Conns, each timed,
	// so that both see the same machine, caches and garbage collector.
	const block = 64
	bare, c := benchConn(b, nil), benchConn(b, store)
	var bareNs, storeNs time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		run(bare, block)
		t1 := time.Now()
		run(c, block)
		bareNs += t1.Sub(t0)
		storeNs += time.Since(t1)
	}
	n := float64(b.N * block)
	b.ReportMetric(float64(bareNs.Nanoseconds())/n, "nostore-ns/stanza")
	b.ReportMetric(float64(storeNs.Nanoseconds())/n, "store-ns/stanza")
	b.ReportMetric(float64(storeNs)/float64(bareNs), "store/nostore")
}
