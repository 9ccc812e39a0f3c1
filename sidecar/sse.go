package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// GET /v1/events as Server-Sent Events.

// sseWriteTimeout bounds each write (and flush) of an SSE stream: a
// reader that stops reading ends its stream, and gives back its goroutine
// and connection, this long after the socket's buffers fill up.
const sseWriteTimeout = 10 * time.Second

// stream serves the events as Server-Sent Events: each event's id is its
// cursor, so EventSource resumes with Last-Event-ID; a comment line every
// 15 s keeps proxies from timing out; the response ends after 10 minutes
// and the browser reconnects where it was.
func (a *api) stream(w http.ResponseWriter, r *http.Request, s *session, cur cursor, given bool) error {
	if _, ok := w.(http.Flusher); !ok {
		return fmt.Errorf("%w: streaming unsupported", ErrBadRequest)
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	// Every write and flush has a deadline: a reader that stops reading
	// (the socket's buffers full) ends the stream instead of holding this
	// goroutine and its connection for the stream's 10 minutes.
	rc := http.NewResponseController(w)
	timeout := a.sseWrite
	if timeout <= 0 {
		timeout = sseWriteTimeout
	}
	send := func(b string) error {
		rc.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(w, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	// A stream that ended on a failed write keeps its passed deadline, so
	// net/http's last flush fails at once too; one that ended normally is
	// freed for the connection's next request.
	failed := false
	defer func() {
		if !failed {
			rc.SetWriteDeadline(time.Time{})
		}
	}()
	w.WriteHeader(http.StatusOK)
	if failed = send("retry: 2000\n\n") != nil; failed {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Minute)
	defer cancel()
	first := true
	for ctx.Err() == nil && !a.draining.Load() && (s.durable == nil || !s.log.stopped()) {
		res := s.log.poll(ctx, cur, given, 15*time.Second, 100)
		s.lastPoll.Store(time.Now().UnixNano())
		var b strings.Builder
		if first && !res.recovered {
			fmt.Fprintf(&b, "id: %s\nevent: reset\ndata: {\"recovered\":false,\"cursor\":\"%s\"}\n\n", res.cursor, res.cursor)
		}
		first = false
		for _, ev := range res.events {
			var data strings.Builder
			encodeEvent(&data, res.cursor.epoch, ev)
			fmt.Fprintf(&b, "id: %s\nevent: %s\ndata: %s\n\n", cursor{res.cursor.epoch, ev.offset}, ev.kind, data.String())
		}
		if len(res.events) == 0 {
			b.WriteString(": ping\n\n")
		}
		if err := send(b.String()); err != nil {
			a.logger.Debug("SSE stream ended: the client does not read", "user", s.user, "err", err)
			failed = true
			return nil
		}
		cur, given = res.cursor, true
	}
	return nil
}
