package loadtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"
)

// The transports the sidecar path's HTTP API can run over.
const (
	TransportHTTP1 = "http1" // a keep-alive connection per request in flight: each pending poll holds one
	TransportH2C   = "h2c"   // HTTP/2 without TLS, prior knowledge: many requests share a connection
)

// apiClient speaks the sidecar's HTTP API for one PHP session, as the
// Expresso PHP code does on behalf of the page.
type apiClient struct {
	hc   *http.Client
	base string
	sid  string
	done chan struct{} // closed when the poll loop has returned
	// rr, when set, are several nodes' API bases: each call goes to the
	// one after the previous call's (round robin), base unused.
	rr   []string
	next atomic.Uint64
}

func (c *apiClient) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("loadtest: %w", err)
		}
		body = bytes.NewReader(b)
	}
	base := c.base
	if len(c.rr) > 0 {
		base = c.rr[(c.next.Add(1)-1)%uint64(len(c.rr))]
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	req.Header.Set("X-Session-Id", c.sid)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("loadtest: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("loadtest: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("loadtest: %s %s: HTTP %d: %.300s", method, path, resp.StatusCode, raw)
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("loadtest: %s %s: decoding %.100q: %w", method, path, raw, err)
		}
	}
	return nil
}

// dialSidecar is POST /v1/connect (the sidecar reads the PHP session and
// logs the user in) followed by a long-poll loop on GET /v1/events that
// delivers every message body to onMsg until Close or life ends.
func dialSidecar(ctx, life context.Context, hc *http.Client, base, sid string, onMsg func(string)) (*apiClient, error) {
	return (&apiClient{hc: hc, base: base, sid: sid, done: make(chan struct{})}).connect(ctx, life, onMsg)
}

// dialSidecarRR is dialSidecar through a round-robin balancer over the
// nodes of a cluster: user i's connect goes to node i mod len(bases), each
// later call to the next node.
func dialSidecarRR(ctx, life context.Context, hc *http.Client, bases []string, i int, sid string, onMsg func(string)) (*apiClient, error) {
	c := &apiClient{hc: hc, rr: bases, sid: sid, done: make(chan struct{})}
	c.next.Store(uint64(i))
	return c.connect(ctx, life, onMsg)
}

// connect is POST /v1/connect, then the poll loop.
func (c *apiClient) connect(ctx, life context.Context, onMsg func(string)) (*apiClient, error) {
	var r struct {
		State  string `json:"state"`
		Cursor string `json:"cursor"`
	}
	if err := c.call(ctx, http.MethodPost, "/v1/connect", struct{}{}, &r); err != nil {
		close(c.done)
		return nil, err
	}
	if r.State != "online" {
		close(c.done)
		return nil, fmt.Errorf("loadtest: connect answered state %q", r.State)
	}
	go c.pollLoop(life, r.Cursor, onMsg)
	return c, nil
}

func (c *apiClient) pollLoop(ctx context.Context, cursor string, onMsg func(string)) {
	defer close(c.done)
	for ctx.Err() == nil {
		var page struct {
			Events []struct {
				Event string `json:"event"`
				Body  string `json:"body"`
			} `json:"events"`
			Cursor string `json:"cursor"`
		}
		q := url.Values{"wait": {"25"}, "limit": {"1000"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		if err := c.call(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &page); err != nil {
			if ctx.Err() == nil {
				time.Sleep(100 * time.Millisecond) // retry with the same cursor: nothing is lost
			}
			continue
		}
		cursor = page.Cursor
		for _, ev := range page.Events {
			if ev.Event == "message" && ev.Body != "" {
				onMsg(ev.Body)
			}
		}
	}
}

// Send is POST /v1/messages.
func (c *apiClient) Send(ctx context.Context, to, body string) error {
	return c.call(ctx, http.MethodPost, "/v1/messages", map[string]string{"to": to, "body": body, "type": "chat"}, nil)
}

// Close is POST /v1/disconnect; the poll loop ends with the run's context.
func (c *apiClient) Close(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "/v1/disconnect", nil, nil)
}
