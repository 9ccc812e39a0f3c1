package sidecar

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// benchHarness is the real API handler over a fake session reader and a
// fake stream, connected for goodID, without rate limiting.
func benchHarness(b *testing.B) *harness {
	h := newHarness(b, "")
	h.api.cfg.RateLimit = 1e12
	rec := h.do("POST", "/v1/connect", "", "X-Session-Id", goodID)
	if rec.Code != http.StatusOK {
		b.Fatalf("connect: %d %s", rec.Code, rec.Body)
	}
	return h
}

// benchServe runs one request through handler and checks the status.
func benchServe(b *testing.B, handler http.Handler, method, target, body string, want int) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("X-Session-Id", goodID)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	if rec.Code != want {
		b.Fatalf("%s %s: %d %s", method, target, rec.Code, rec.Body)
	}
	return rec
}

// BenchmarkAPIMessage is POST /v1/messages through the real handler
// (routing, session lookup, validation, rate limiter, JSON in and out)
// against a bare net/http handler that only decodes the same body and
// answers the same JSON, measured in the same run: api/baseline is the
// API's own overhead as a ratio.
func BenchmarkAPIMessage(b *testing.B) {
	const body = `{"to":"bob@example.test","body":"Olá Bob, a reunião foi para as 15h","type":"chat"}`
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m messageBody
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&m); err != nil || r.Header.Get("X-Session-Id") == "" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		writeJSON(w, http.StatusAccepted, map[string]string{"id": "m1"})
	})
	baseline := baselineNs(func() { benchServe(b, bare, "POST", "/v1/messages", body, http.StatusAccepted) })
	h := benchHarness(b)
	b.ReportAllocs()
	for b.Loop() {
		benchServe(b, h.srv, "POST", "/v1/messages", body, http.StatusAccepted)
	}
	reportRatio(b, baseline)
}

// BenchmarkAPIEvents is one inbound message end to end inside the daemon:
// the stream handler appends it to the event log, and GET /v1/events
// (wait=0) returns it as JSON; the baseline is a bare handler writing the
// same JSON bytes.
func BenchmarkAPIEvents(b *testing.B) {
	h := benchHarness(b)
	msg := &xmppconn.Message{From: "bob@example.test/web", To: "alice@example.test", ID: "m1", Type: "chat", Body: "Olá Alice"}
	h.handler.HandleEvent(msg)
	first := benchServe(b, h.srv, "GET", "/v1/events?wait=0", "", http.StatusOK).Body.String()
	bare := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Session-Id") == "" || r.URL.Query().Get("wait") == "" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, first)
	})
	baseline := baselineNs(func() { benchServe(b, bare, "GET", "/v1/events?wait=0&cursor=x", "", http.StatusOK) })
	cursor := lastCursor(b, first)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// A fresh id each time, as real messages have: the log drops a
		// message identical to one it still holds (a re-delivery).
		msg.ID = "loop" + strconv.Itoa(i)
		h.handler.HandleEvent(msg)
		out := benchServe(b, h.srv, "GET", "/v1/events?wait=0&cursor="+cursor, "", http.StatusOK).Body.String()
		if !strings.Contains(out, `"body":"Olá Alice"`) {
			b.Fatalf("events page %s", out)
		}
		cursor = lastCursor(b, out)
	}
	reportRatio(b, baseline)
}

func lastCursor(b *testing.B, page string) string {
	const key = `"cursor":"`
	i := strings.LastIndex(page, key)
	if i < 0 {
		b.Fatalf("no cursor in %s", page)
	}
	rest := page[i+len(key):]
	return rest[:strings.IndexByte(rest, '"')]
}

func reportRatio(b *testing.B, baseline float64) {
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(baseline, "baseline-ns/op")
	b.ReportMetric(ns/baseline, "api/baseline")
}

// baselineNs times f over a fixed number of runs, before the benchmark's
// own loop (testing.Benchmark cannot nest inside a running benchmark).
func baselineNs(f func()) float64 {
	const runs = 5000
	f()
	start := time.Now()
	for range runs {
		f()
	}
	return float64(time.Since(start).Nanoseconds()) / runs
}
