package sidecar

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// checkAccounting verifies the byte accounting of m and its logs: each
// log's bytes are what its events cost, the total is the sum over the
// logs, a log is over its own cap only with a single event, and the total
// is over the daemon's cap only when no log has an event to spare.
func checkAccounting(t testing.TB, m *eventMemory) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	var sum int64
	spare := false
	for l := range m.logs {
		l.mu.Lock()
		var b int64
		for i := range l.n {
			ev := l.buf[(l.start+i)%len(l.buf)]
			b += eventCost(&ev)
		}
		if b != l.bytes.Load() {
			t.Fatalf("log bytes %d, its events cost %d", l.bytes.Load(), b)
		}
		if l.maxBytes > 0 && b > l.maxBytes && l.n > 1 {
			t.Fatalf("log holds %d bytes in %d events, cap %d", b, l.n, l.maxBytes)
		}
		spare = spare || l.n > 1
		sum += b
		l.mu.Unlock()
	}
	if total := m.total.Load(); total != sum {
		t.Fatalf("total %d, the logs hold %d", total, sum)
	}
	if m.limit > 0 && sum > m.limit && spare {
		t.Fatalf("total %d over the cap %d while a log has events to spare", sum, m.limit)
	}
}

func payload(n int) []byte { return bytes.Repeat([]byte("a"), n) }

// TestEventLogByteCap: past its byte cap a log lets its oldest events go;
// an unacknowledged one counts as dropped and the poller behind it is told
// recovered=false; a single event over the cap is kept.
func TestEventLogByteCap(t *testing.T) {
	m := newEventMemory(0)
	drops := 0
	const size = 1000
	l := m.newLog(1000, 10*(size+eventOverhead), func() { drops++ })
	for i := range 5 {
		l.append("message", payload(size))
		_ = i
	}
	// The page acknowledges the first 5.
	if p := l.read(cursor{l.epoch, 5}, true, 100); !p.recovered || len(p.events) != 0 {
		t.Fatalf("ack: %+v", p)
	}
	for range 10 {
		l.append("message", payload(size))
	}
	checkAccounting(t, m)
	if l.n != 10 || drops != 0 {
		t.Fatalf("%d events kept, %d dropped; want 10 and 0 (the acknowledged 5 went first)", l.n, drops)
	}
	for range 3 {
		l.append("message", payload(size))
	}
	if l.n != 10 || drops != 3 {
		t.Fatalf("%d events kept, %d dropped; want 10 and 3", l.n, drops)
	}
	if p := l.read(cursor{l.epoch, 5}, true, 100); p.recovered || len(p.events) != 10 || p.events[0].offset != 9 {
		t.Fatalf("poll behind the dropped events: recovered %v, %d events", p.recovered, len(p.events))
	}
	l.append("message", payload(100*size)) // one event over the cap: kept alone
	checkAccounting(t, m)
	if l.n != 1 {
		t.Fatalf("%d events kept with one over the cap, want 1", l.n)
	}
	m.release(l)
	if m.total.Load() != 0 || l.appendOnce("message", "", payload(1)) {
		t.Fatal("a released log still counts or keeps events")
	}
}

// TestEventMemoryEvictionOrder: past the daemon-wide cap, acknowledged
// events go first (largest log first), then the oldest unacknowledged
// events of the largest log; a user chatting normally loses nothing.
func TestEventMemoryEvictionOrder(t *testing.T) {
	const size = 1000
	cost := int64(size + eventOverhead)
	m := newEventMemory(30 * cost)
	var drops [3]int
	flooded := m.newLog(1000, 0, func() { drops[0]++ })
	acked := m.newLog(1000, 0, func() { drops[1]++ })
	chatty := m.newLog(1000, 0, func() { drops[2]++ })
	for range 8 {
		acked.append("message", payload(size))
	}
	acked.read(cursor{acked.epoch, 8}, true, 100) // all acknowledged
	for range 5 {
		chatty.append("message", payload(size))
	}
	for range 17 {
		flooded.append("message", payload(size))
	}
	checkAccounting(t, m)
	if m.total.Load() != 30*cost || drops != [3]int{} {
		t.Fatalf("at the cap: total %d, drops %v", m.total.Load(), drops)
	}
	// The flood goes on: the acknowledged log gives back all but its
	// newest event first.
	for range 7 {
		flooded.append("message", payload(size))
	}
	checkAccounting(t, m)
	if acked.n != 1 || drops != [3]int{} || flooded.n != 24 {
		t.Fatalf("acked log %d events, flooded %d, drops %v; want 1, 24, none", acked.n, flooded.n, drops)
	}
	// Then the flooded log loses its own oldest; the chatty one nothing.
	for range 10 {
		flooded.append("message", payload(size))
	}
	checkAccounting(t, m)
	if chatty.n != 5 || drops[2] != 0 || drops[0] != 10 || flooded.n != 24 {
		t.Fatalf("chatty %d events, drops %v, flooded %d; want 5, [10 0 0], 24", chatty.n, drops, flooded.n)
	}
	if p := flooded.read(cursor{flooded.epoch, 0}, true, 1000); p.recovered {
		t.Fatal("the flooded log's poller from the start must be told recovered=false")
	}
	if p := chatty.read(cursor{chatty.epoch, 0}, true, 1000); !p.recovered || len(p.events) != 5 {
		t.Fatalf("chatty: recovered %v, %d events", p.recovered, len(p.events))
	}
}

// TestEventMemoryLevels: several large logs are brought down to one level,
// smaller ones left alone.
func TestEventMemoryLevels(t *testing.T) {
	const size = 1000
	cost := int64(size + eventOverhead)
	m := newEventMemory(40 * cost)
	big1, big2 := m.newLog(1000, 0, nil), m.newLog(1000, 0, nil)
	small := m.newLog(1000, 0, nil)
	for range 4 {
		small.append("message", payload(size))
	}
	for range 18 {
		big1.append("message", payload(size))
		big2.append("message", payload(size))
	}
	big1.append("message", payload(size)) // 19+18+4 = 41 > 40
	checkAccounting(t, m)
	if small.n != 4 || big1.n+big2.n != 36 || big1.n < 17 || big2.n < 17 {
		t.Fatalf("small %d, big %d and %d; want 4 and the two large ones levelled", small.n, big1.n, big2.n)
	}
	for _, tt := range []struct {
		sizes  []int64
		excess int64
		want   int64
	}{
		{[]int64{100, 50, 10}, 30, 70},
		{[]int64{100, 50, 10}, 60, 45},
		{[]int64{100, 50, 10}, 200, 0},
		{[]int64{100}, 1, 99},
		{[]int64{50, 50}, 10, 45},
	} {
		if got := waterLevel(tt.sizes, tt.excess); got != tt.want {
			t.Errorf("waterLevel(%v, %d) = %d, want %d", tt.sizes, tt.excess, got, tt.want)
		}
	}
}

// FuzzEventMemoryAccounting drives logs with random appends,
// acknowledgements, trims and releases, and checks the byte accounting
// after every step.
func FuzzEventMemoryAccounting(f *testing.F) {
	f.Add([]byte{0, 10, 1, 20, 2, 30, 3, 0, 4, 1})
	f.Add(bytes.Repeat([]byte{0, 255}, 50))
	f.Fuzz(func(t *testing.T, ops []byte) {
		m := newEventMemory(20_000)
		logs := []*eventLog{m.newLog(16, 8_000, nil), m.newLog(16, 0, nil), m.newLog(1000, 4_000, nil)}
		for i := 0; i+1 < len(ops); i += 2 {
			op, arg := ops[i]%6, int(ops[i+1])
			l := logs[arg%len(logs)]
			switch op {
			case 0, 1:
				l.appendOnce("message", "", payload(arg*arg/8))
			case 2:
				l.appendOnce("message", fmt.Sprint(arg%7), payload(arg*10))
			case 3:
				h := l.head()
				l.read(cursor{h.epoch, h.offset - uint64(arg%3)}, true, 100)
			case 4:
				l.trim()
			case 5:
				if arg%4 == 0 {
					m.release(l)
					logs[arg%len(logs)] = m.newLog(1+arg%20, int64(arg*50), nil)
				}
			}
			checkAccounting(t, m)
		}
	})
}

// TestEventMemoryConcurrent: many logs appended to at once, each by its
// own goroutine as the streams' readers do, stay within the caps and keep
// exact accounting (run with -race).
func TestEventMemoryConcurrent(t *testing.T) {
	m := newEventMemory(200_000)
	var wg sync.WaitGroup
	for g := range 8 {
		l := m.newLog(500, 50_000, nil)
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 2000 {
				l.append("message", payload(rng.IntN(4000)))
				if i%50 == 0 {
					h := l.head()
					l.read(h, true, 10)
				}
			}
		})
	}
	wg.Wait()
	m.shrink() // an appender that found another evicting left the excess
	checkAccounting(t, m)
}
