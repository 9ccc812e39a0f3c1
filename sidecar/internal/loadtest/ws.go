package loadtest

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/coder/websocket"
)

// wsClient is a minimal RFC 7395 client: one WebSocket with the "xmpp"
// subprotocol, one element per text message.
type wsClient struct {
	ws    *websocket.Conn
	onMsg func(string)
	wmu   sync.Mutex
	done  chan struct{}
}

const wsOpen = `<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="` + Domain + `" version="1.0"/>`

// dialWS opens the WebSocket, logs user in and starts the read loop, which
// delivers every message body to onMsg until Close or life ends.
func dialWS(ctx, life context.Context, hc *http.Client, url string, header http.Header, user, pass, resource string, onMsg func(string)) (*wsClient, error) {
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: header, Subprotocols: []string{"xmpp"}})
	if err != nil {
		return nil, fmt.Errorf("loadtest: WebSocket: %w", err)
	}
	if ws.Subprotocol() != "xmpp" {
		ws.CloseNow()
		return nil, fmt.Errorf("loadtest: WebSocket: server chose subprotocol %q", ws.Subprotocol())
	}
	ws.SetReadLimit(maxElement)
	c := &wsClient{ws: ws, onMsg: onMsg, done: make(chan struct{})}
	f := wsFramer{c}
	err = await(ctx, f, wsOpen, false, "stream features", named("features"))
	if err == nil {
		err = xmppLogin(ctx, f, user, pass, resource)
	}
	if err != nil {
		ws.CloseNow()
		return nil, err
	}
	go c.readLoop(life)
	return c, nil
}

type wsFramer struct{ c *wsClient }

func (f wsFramer) send(ctx context.Context, payload string, restart bool) ([]element, error) {
	if restart {
		payload = wsOpen
	}
	if payload == "" {
		return nil, nil
	}
	return nil, f.c.write(ctx, payload)
}

func (f wsFramer) recv(ctx context.Context) ([]element, error) {
	e, err := f.c.read(ctx)
	if err != nil {
		return nil, err
	}
	return []element{*e}, nil
}

func (c *wsClient) write(ctx context.Context, s string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.Write(ctx, websocket.MessageText, []byte(s)); err != nil {
		return fmt.Errorf("loadtest: WebSocket write: %w", err)
	}
	return nil
}

func (c *wsClient) read(ctx context.Context) (*element, error) {
	typ, data, err := c.ws.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("loadtest: WebSocket read: %w", err)
	}
	if typ != websocket.MessageText {
		return nil, fmt.Errorf("loadtest: WebSocket: binary message")
	}
	return parseElement(data)
}

func (c *wsClient) readLoop(ctx context.Context) {
	defer close(c.done)
	for {
		e, err := c.read(ctx)
		if err != nil {
			return // closed, or life ended
		}
		if b := bodyOf(e); b != "" {
			c.onMsg(b)
		}
	}
}

// Send writes one chat message.
func (c *wsClient) Send(ctx context.Context, to, body string) error {
	return c.write(ctx, chat(to, body))
}

// Close sends </close> and closes the WebSocket.
func (c *wsClient) Close(ctx context.Context) error {
	_ = c.write(ctx, `<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>`)
	err := c.ws.Close(websocket.StatusNormalClosure, "")
	select {
	case <-c.done:
	case <-ctx.Done():
		c.ws.CloseNow()
	}
	return err
}
