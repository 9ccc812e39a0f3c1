package sidecar

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"

	"expressolivre.org/imsidecar/phpsession"
)

// Browser streams in cluster mode (docs/CLUSTER.md, "Browser streams"): a
// BOSH request or a WebSocket that reaches a node not holding its PHP
// session is sent to the owner over the peer listener, as the /v1 calls
// are, so any node serves any browser and the balancer need not be
// sticky. The node the browser reached checks what it can before: the
// Origin (browserHandler), the body cap, and for a new stream the API
// token and the PHP session; the owner checks everything again, so the
// rules, limits and answers are those of a single node.

// sidSessionKey returns the session key a cluster-mode BOSH sid carries
// after its 160 random bits (mintSID).
func sidSessionKey(sid string) (string, bool) {
	if len(sid) != 40+64 {
		return "", false
	}
	sk := sid[40:]
	if _, err := hex.DecodeString(sk); err != nil {
		return "", false
	}
	return sk, true
}

// browserRoute sends a browser stream's request to the node owning its
// PHP session and relays the answer (true), or reports that this node is
// to serve it (false). A BOSH request naming a sid goes to the node its
// session key names as owner; if that node is gone, so is the BOSH
// session, and the request is answered here (item-not-found: the client
// opens a new one). A new stream (a BOSH session creation, a WebSocket)
// is authorised here first, so that no unauthenticated request claims a
// session; it claims the session here when nobody (alive) holds it.
func (a *api) browserRoute(w http.ResponseWriter, r *http.Request, route string) (bool, error) {
	var body []byte
	sk, claim := "", true
	if route == "bosh" {
		b, err := keepBody(r, boshMaxBody)
		if err != nil {
			return true, err
		}
		body = b
		parsed, err := parseBOSHBody(b)
		if err != nil {
			return false, nil // refused here, as on a single node
		}
		if sid := parsed.attrs["sid"]; sid != "" {
			k, ok := sidSessionKey(sid)
			if !ok {
				return false, nil // no such sid anywhere: item-not-found here
			}
			sk, claim = k, false
		}
	}
	if sk == "" {
		if !a.tokenOK(r) {
			return true, ErrUnauthorized
		}
		id, ok := a.cookieID(r)
		if !ok {
			return true, ErrSessionMissing
		}
		h := phpsession.Hash(id) // once: the session check and the key
		if _, err := a.reader.LookupHashed(r.Context(), h); err != nil {
			return true, err
		}
		sk = keyOf(h)
	}
	if own, err := a.cluster.mine(r.Context(), sk); err != nil || own {
		return err != nil, err
	}
	local, _, err := a.cluster.toOwner(w, r, sk, body, claim)
	return !local || err != nil, err
}

// upgradeHeaders are the request headers a forwarded WebSocket upgrade
// keeps besides forwardedHeaders.
var upgradeHeaders = []string{"Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"}

// splice joins the WebSocket the owner accepted (its 101 answer, resp) to
// the browser's connection, taken from net/http, and copies bytes both
// ways until either side closes or this node shuts down (ctx). Frames
// pass through unread: the owner applies the read limit, the frame rate
// and the stream's end, as for a WebSocket opened on it.
func splice(ctx context.Context, w http.ResponseWriter, resp *http.Response) forwardOutcome {
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return forwardOutcome{err: fmt.Errorf("%w: the owner's upgraded connection is not writable", ErrPeerUnavailable)}
	}
	defer up.Close()
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return forwardOutcome{err: fmt.Errorf("%w: taking the browser's connection: %w", ErrPeerUnavailable, err)}
	}
	defer conn.Close()
	if rec, ok := w.(*statusRecorder); ok {
		rec.status = http.StatusSwitchingProtocols
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	resp.Header.Write(brw)
	brw.WriteString("\r\n")
	if err := brw.Flush(); err != nil {
		return forwardOutcome{}
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, brw.Reader); done <- struct{}{} }()
	go func() { io.Copy(conn, up); done <- struct{}{} }()
	left := 2
	select {
	case <-done:
		left--
	case <-ctx.Done():
	}
	// Closing both ends whichever copy is still running.
	conn.Close()
	up.Close()
	for ; left > 0; left-- {
		<-done
	}
	return forwardOutcome{}
}
