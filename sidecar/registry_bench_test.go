package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/xmppconn"
)

// heapInuse is the heap in use after full GCs.
func heapInuse() float64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse)
}

// BenchmarkSessionMemory measures the sidecar's own memory per online
// session — registry entries, the session, its event log (connecting and
// online), its logger — without the XMPP stream (one fake shared by all)
// and without HTTP, for memSessions sessions; then the presence table per
// online contact (memContacts contacts each), against the map of maps it
// replaced, filled with the same presences in the same run
// (presence-x-mapofmaps). Run with -benchtime=1x:
//
//	go test ./sidecar -run '^$' -bench SessionMemory -benchtime=1x
//
// It measures once, whatever b.N (make bench runs ./sidecar at 2000x).
//
// SIDECAR_BENCH_HEAPPROFILE=file (with -memprofilerate 1) writes the live
// heap with the sessions online, before the contacts.
func BenchmarkSessionMemory(b *testing.B) {
	const memSessions, memContacts = 1000, 20
	h := newHarness(b, "")
	h.reg.logger = slog.New(slog.DiscardHandler)
	shared := &fakeConn{jid: "shared@example.test/r", done: make(chan struct{})}
	h.reg.dial = func(context.Context, xmppconn.Config) (xmppSession, error) { return shared, nil }
	from := func(c int) string {
		// A fresh string per stanza, as the XML parser makes them.
		return strings.Clone(fmt.Sprintf("contact%02d@example.test/expresso-web", c))
	}

	var perSession, perContact, oldPerContact float64
	{
		m0 := heapInuse()
		list := make([]*session, 0, memSessions)
		for i := range memSessions {
			ps := &phpsession.Session{Identity: phpsession.Identity{User: fmt.Sprintf("user%04d", i), Password: "pw"}}
			id := fmt.Sprintf("benchsession%020d", i)
			s, _, err := h.reg.connect(b.Context(), id, ps, nil)
			if err != nil {
				b.Fatal(err)
			}
			h.reg.remember(s, id)
			h.reg.handle(s, &xmppconn.StateChange{State: xmppconn.StateOnline})
			list = append(list, s)
		}
		time.Sleep(100 * time.Millisecond) // let the avatar goroutines end
		m1 := heapInuse()
		if name := os.Getenv("SIDECAR_BENCH_HEAPPROFILE"); name != "" {
			// The sessions without contacts, every allocation sampled
			// (-memprofilerate 1): go tool pprof -sample_index=inuse_space <file>
			f, err := os.Create(name)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.WriteHeapProfile(f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		for _, s := range list {
			for c := range memContacts {
				s.trackPresence(&xmppconn.Presence{From: from(c), Show: "away", Status: "Em reunião", Priority: 5})
			}
		}
		m2 := heapInuse()
		old := make([]map[string]map[string]presenceInfo, memSessions)
		for i := range old {
			old[i] = map[string]map[string]presenceInfo{}
			for c := range memContacts {
				bare, res, _ := strings.Cut(from(c), "/")
				old[i][bare] = map[string]presenceInfo{res: {Resource: res, Show: "away", Status: "Em reunião", Priority: 5}}
			}
		}
		m3 := heapInuse()
		runtime.KeepAlive(old)
		runtime.KeepAlive(list)

		perSession = (m1 - m0) / memSessions
		perContact = (m2 - m1) / (memSessions * memContacts)
		oldPerContact = (m3 - m2) / (memSessions * memContacts)
	}
	for b.Loop() {
	}
	b.ReportMetric(perSession, "B/session")
	b.ReportMetric(perContact, "presenceB/contact")
	b.ReportMetric(oldPerContact, "mapofmapsB/contact")
	b.ReportMetric(perContact/oldPerContact, "presence-x-mapofmaps")
	b.Logf("%d sessions: %.0f B/session; presence %.0f B/contact, the map of maps %.0f B/contact", memSessions, perSession, perContact, oldPerContact)
}
