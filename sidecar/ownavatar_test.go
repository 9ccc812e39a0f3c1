package sidecar

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

type discoAnswer struct {
	info  string
	err   error
	asked atomic.Int32
	gate  chan struct{} // nil: answer at once
}

func (d *discoAnswer) SendIQ(ctx context.Context, typ, to string, payload []byte) ([]byte, error) {
	d.asked.Add(1)
	if d.gate != nil {
		<-d.gate
	}
	return []byte(d.info), d.err
}

// TestServerAvatars: the server's answer decides, a failed question is
// asked again, a stream without SendIQ means "read the vCard", and
// streams logging in together ask once.
func TestServerAvatars(t *testing.T) {
	conv := `<query xmlns="http://jabber.org/protocol/disco#info"><feature var="` + nsVCardConversion + `"/></query>`
	for _, tc := range []struct {
		name    string
		answers []*discoAnswer
		want    []bool
	}{
		{"conversion", []*discoAnswer{{info: conv}, {info: ""}}, []bool{true, true}},
		{"single quotes", []*discoAnswer{{info: `<feature var='` + nsVCardConversion + `'/>`}}, []bool{true}},
		{"none", []*discoAnswer{{info: `<query xmlns="http://jabber.org/protocol/disco#info"><feature var="vcard-temp"/></query>`}, {info: conv}}, []bool{false, false}},
		{"error asked again", []*discoAnswer{{err: errors.New("timeout")}, {info: conv}, {info: ""}}, []bool{false, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a serverAvatars
			for i, d := range tc.answers {
				if got := a.serverInjects(t.Context(), d); got != tc.want[i] {
					t.Fatalf("answer %d: serverInjects = %v, want %v", i, got, tc.want[i])
				}
			}
			// Once known, nobody is asked again.
			for i, d := range tc.answers[1:] {
				if d.asked.Load() != 0 && (tc.answers[i].err == nil) {
					t.Errorf("stream %d asked after the answer was known", i+1)
				}
			}
		})
	}
	t.Run("no SendIQ", func(t *testing.T) {
		var a serverAvatars
		if a.serverInjects(t.Context(), struct{}{}) {
			t.Fatal("a stream that cannot ask: serverInjects = true")
		}
	})
	t.Run("asked once by a storm", func(t *testing.T) {
		var a serverAvatars
		first := &discoAnswer{info: conv, gate: make(chan struct{})}
		others := &discoAnswer{info: ""}
		got := make(chan bool, 1)
		go func() { got <- a.serverInjects(t.Context(), first) }()
		for first.asked.Load() == 0 {
			runtime.Gosched() // until the first stream is asking
		}
		var wg sync.WaitGroup
		var yes atomic.Int32
		for range 20 {
			wg.Go(func() {
				if a.serverInjects(t.Context(), others) {
					yes.Add(1)
				}
			})
		}
		close(first.gate)
		wg.Wait()
		if !<-got || yes.Load() != 20 || others.asked.Load() != 0 {
			t.Fatalf("first %v, waiters true %d/20, waiters asked %d times", true, yes.Load(), others.asked.Load())
		}
	})
	t.Run("waiter gives up with its context", func(t *testing.T) {
		var a serverAvatars
		first := &discoAnswer{info: conv, gate: make(chan struct{})}
		defer close(first.gate)
		go a.serverInjects(context.Background(), first)
		for first.asked.Load() == 0 {
			runtime.Gosched()
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if a.serverInjects(ctx, &discoAnswer{info: conv}) {
			t.Fatal("a waiter whose context ended: serverInjects = true")
		}
	})
}
