package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// boshWait is the wait attribute of the BOSH session: how long Prosody
// holds an empty poll.
const boshWait = 60

// boshClient is a minimal XEP-0124/XEP-0206 client: one session, hold=1,
// so one poll is always pending on the server and a send is a second
// request that releases it.
type boshClient struct {
	hc     *http.Client
	url    string
	header http.Header // on every request (the sidecar's: the session cookie)
	sid    string
	onMsg  func(body string)

	mu  sync.Mutex
	rid uint64
	// sendMu keeps one send request in flight, as browser clients do
	// (Strophe queues stanzas for the next request): with the pending
	// poll that makes two, mod_bosh's limit for hold=1.
	sendMu sync.Mutex

	closed atomic.Bool
	done   chan struct{} // closed when the poll loop has returned
}

const boshNS = `xmlns="http://jabber.org/protocol/httpbind"`

// dialBOSH creates a BOSH session, logs user in and starts the poll loop,
// which delivers every message body to onMsg until Close or ctx ends.
func dialBOSH(ctx, life context.Context, hc *http.Client, url string, header http.Header, user, pass, resource string, onMsg func(string)) (*boshClient, error) {
	c := &boshClient{hc: hc, url: url, header: header, onMsg: onMsg, rid: 1_000_000 + uint64(time.Now().UnixNano()%1_000_000), done: make(chan struct{})}
	create := fmt.Sprintf(`<body %s content="text/xml; charset=utf-8" hold="1" rid="%d" to="%s" ver="1.6" wait="%d" xml:lang="en" xmpp:version="1.0" xmlns:xmpp="urn:xmpp:xbosh"/>`,
		boshNS, c.rid, Domain, boshWait)
	body, err := c.post(ctx, []byte(create))
	if err != nil {
		close(c.done)
		return nil, err
	}
	if body.attr("type") == "terminate" || body.attr("sid") == "" {
		close(c.done)
		return nil, fmt.Errorf("loadtest: BOSH session refused: condition=%q", body.attr("condition"))
	}
	c.sid = body.attr("sid")
	f := boshFramer{c}
	first := body.Children
	err = await(ctx, prefetched{f, first}, "", false, "stream features", named("features"))
	if err == nil {
		err = xmppLogin(ctx, f, user, pass, resource)
	}
	if err != nil {
		close(c.done)
		return nil, err
	}
	go c.pollLoop(life)
	return c, nil
}

// prefetched is a framer whose first send returns elements already read.
type prefetched struct {
	framer
	first []element
}

func (p prefetched) send(context.Context, string, bool) ([]element, error) { return p.first, nil }

type boshFramer struct{ c *boshClient }

func (f boshFramer) send(ctx context.Context, payload string, restart bool) ([]element, error) {
	b, err := f.c.request(ctx, payload, restart)
	if err != nil {
		return nil, err
	}
	return b.Children, nil
}

func (f boshFramer) recv(ctx context.Context) ([]element, error) { return f.send(ctx, "", false) }

// request sends one <body/> with the next rid, carrying payload.
func (c *boshClient) request(ctx context.Context, payload string, restart bool) (*element, error) {
	c.mu.Lock()
	c.rid++
	rid := c.rid
	c.mu.Unlock()
	var b bytes.Buffer
	fmt.Fprintf(&b, `<body %s rid="%d" sid="%s"`, boshNS, rid, c.sid)
	if restart {
		fmt.Fprintf(&b, ` to="%s" xml:lang="en" xmpp:restart="true" xmlns:xmpp="urn:xmpp:xbosh"`, Domain)
	}
	if payload == "" {
		b.WriteString("/>")
	} else {
		b.WriteString(">" + payload + "</body>")
	}
	body, err := c.post(ctx, b.Bytes())
	if err != nil {
		return nil, err
	}
	if body.attr("type") == "terminate" {
		return nil, fmt.Errorf("loadtest: BOSH session terminated: condition=%q", body.attr("condition"))
	}
	return body, nil
}

func (c *boshClient) post(ctx context.Context, data []byte) (*element, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("loadtest: BOSH: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxElement+1))
	if err != nil {
		return nil, fmt.Errorf("loadtest: BOSH: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("loadtest: BOSH: HTTP %d: %.200s", resp.StatusCode, raw)
	}
	return parseElement(raw)
}

func (c *boshClient) deliver(els []element) {
	for i := range els {
		if b := bodyOf(&els[i]); b != "" {
			c.onMsg(b)
		}
	}
}

// pollLoop keeps one request pending until Close or ctx ends.
func (c *boshClient) pollLoop(ctx context.Context) {
	defer close(c.done)
	for ctx.Err() == nil && !c.closed.Load() {
		b, err := c.request(ctx, "", false)
		if err != nil {
			if ctx.Err() == nil && !c.closed.Load() {
				time.Sleep(100 * time.Millisecond) // a broken poll: retry, bounded by ctx
			}
			continue
		}
		c.deliver(b.Children)
	}
}

// Send posts one chat message; what the response carries is delivered too.
func (c *boshClient) Send(ctx context.Context, to, body string) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	b, err := c.request(ctx, chat(to, body), false)
	if err != nil {
		return err
	}
	c.deliver(b.Children)
	return nil
}

// Close terminates the session and waits for the poll loop.
func (c *boshClient) Close(ctx context.Context) error {
	if c.closed.Swap(true) {
		return nil
	}
	c.mu.Lock()
	c.rid++
	rid := c.rid
	c.mu.Unlock()
	term := `<body ` + boshNS + ` rid="` + strconv.FormatUint(rid, 10) + `" sid="` + c.sid + `" type="terminate"><presence xmlns="jabber:client" type="unavailable"/></body>`
	_, err := c.post(ctx, []byte(term))
	select {
	case <-c.done:
	case <-ctx.Done():
	}
	return err
}
