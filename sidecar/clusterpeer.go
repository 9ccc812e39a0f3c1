package sidecar

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The peer listener (--cluster-peer-listen) serves the API to the other
// nodes of the cluster, for the sessions this node owns. It speaks the
// same routes and answers as --listen; only who may call differs: every
// request carries the cluster's shared secret (--cluster-secret-file) as
// its bearer token, in place of the API token, and the PHP session is
// read again from the store, so a peer can name no session it was not
// given by PHP.

// forwardedHeaders are the request headers a forwarded call keeps: who it
// speaks for (the PHP session), what it sends and what it accepts.
// The Host goes too, and X-Forwarded-Host, so that the owner checks a
// browser's Origin as the node it reached would.
var forwardedHeaders = []string{"X-Session-Id", "Cookie", "Content-Type", "Accept", "Last-Event-ID", "If-None-Match", "Origin", "X-Forwarded-Host"}

// answeredHeaders are the response headers copied back to the caller.
var answeredHeaders = []string{"Content-Type", "Cache-Control", "Retry-After", "ETag", "X-Content-Type-Options", "X-Accel-Buffering"}

// forwardOutcome is how a forward ended: err nil when the owner's answer
// was relayed; refused when nothing listens on the owner's peer port;
// notOwner when the owner answered that it no longer holds the session.
type forwardOutcome struct {
	refused, notOwner bool
	err               error
	leaseUntil        int64 // monoNow until which the owner's answer said its lease lasts (0: not said)
}

// forward relays the call to the owner's peer listener and its answer to
// w, streaming (an SSE stream is flushed event by event). Until the owner
// answers, the lease is looked at every half TTL: an owner that froze (its
// kernel still accepts connections) loses its lease, and the call is
// withdrawn and routed again instead of waiting for a frozen process.
func (cl *cluster) forward(w http.ResponseWriter, r *http.Request, sk string, body []byte, owner lease) forwardOutcome {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	var moved atomic.Bool
	answered := make(chan struct{})
	go func() {
		t := time.NewTicker(cl.ls.ttl / 2)
		defer t.Stop()
		for {
			select {
			case <-answered:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if l, found, err := cl.ls.owner(ctx, sk); err == nil && (!found || l != owner) {
					moved.Store(true)
					cancel()
					return
				}
			}
		}
	}()
	out := cl.relay(ctx, w, r, body, owner, answered)
	if out.err != nil && moved.Load() {
		return forwardOutcome{notOwner: true}
	}
	return out
}

// relay is one forwarded call; answered is closed once the owner's answer
// began (or the call failed).
func (cl *cluster) relay(ctx context.Context, w http.ResponseWriter, r *http.Request, body []byte, owner lease, answered chan<- struct{}) forwardOutcome {
	once := sync.OnceFunc(func() { close(answered) })
	defer once()
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+owner.peer+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return forwardOutcome{err: fmt.Errorf("%w: %w", ErrPeerUnavailable, err)}
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for _, h := range forwardedHeaders {
		for _, v := range r.Header.Values(h) {
			req.Header.Add(h, v)
		}
	}
	req.Host = r.Host
	if up := r.Header.Get("Upgrade"); up != "" {
		// A WebSocket: the owner accepts it, and splice joins the two.
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", up)
		for _, h := range upgradeHeaders {
			for _, v := range r.Header.Values(h) {
				req.Header.Add(h, v)
			}
		}
	}
	req.Header.Set("Authorization", "Bearer "+cl.secret)
	resp, err := cl.peer.Do(req)
	once()
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return forwardOutcome{refused: true}
		}
		if r.Context().Err() != nil {
			if errors.Is(context.Cause(r.Context()), ErrShuttingDown) {
				// This node stops (a long poll it relays is cut): the
				// poll is answered with what the owner has now, as a
				// poll held here is; failing that, the caller is told
				// so, to ask another node at once.
				if out, ok := cl.relayNow(w, r, owner); ok {
					return out
				}
				return forwardOutcome{err: fmt.Errorf("%w: the relayed call was cut", ErrShuttingDown)}
			}
			return forwardOutcome{} // the caller went away: nobody to answer
		}
		if ctx.Err() != nil {
			return forwardOutcome{err: fmt.Errorf("%w: node %s: %w", ErrPeerUnavailable, owner.node, ctx.Err())}
		}
		return forwardOutcome{err: fmt.Errorf("%w: node %s: %w", ErrPeerUnavailable, owner.node, err)}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return splice(r.Context(), w, resp)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusConflict {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		var e errorBody
		if json.Unmarshal(raw, &e) == nil && e.Error.Code == "not_owner" {
			return forwardOutcome{notOwner: true}
		}
		resp.Body = io.NopCloser(bytes.NewReader(raw))
	}
	for _, h := range answeredHeaders {
		if v := resp.Header.Values(h); len(v) > 0 {
			w.Header()[h] = v
		}
	}
	var until int64
	if left := cl.leaseLeftOf(resp.Header); left > 0 {
		until = monoNow() + int64(left)
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return forwardOutcome{leaseUntil: until} // the caller went away; the answer was started
			}
			rc.Flush()
		}
		if err != nil {
			return forwardOutcome{leaseUntil: until}
		}
	}
}

// relayNowWait bounds the owner's answer to a poll relayed again, without
// waiting, when this node stops.
const relayNowWait = time.Second

// relayNow asks the owner again, once, for a long poll (not an SSE
// stream) whose relay this node's shutdown cut, with wait=0, and relays
// its answer: the page gets the events that came meanwhile, or none, with
// a valid cursor, instead of an error that costs it a retry and its whole
// wait (issue 20's 2 s at a rolling restart). ok is false when it is not
// such a poll.
func (cl *cluster) relayNow(w http.ResponseWriter, r *http.Request, owner lease) (forwardOutcome, bool) {
	if r.Method != http.MethodGet || r.URL.Path != "/v1/events" || r.Header.Get("Upgrade") != "" ||
		strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		return forwardOutcome{}, false
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), relayNowWait)
	defer cancel()
	u := *r.URL
	q := u.Query()
	q.Set("wait", "0")
	u.RawQuery = q.Encode()
	r2 := r.WithContext(ctx)
	r2.URL = &u
	ww := &wroteWriter{ResponseWriter: w}
	out := cl.relay(ctx, ww, r2, nil, owner, make(chan struct{}))
	return out, ww.wrote
}

// wroteWriter tells whether an answer was begun.
type wroteWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *wroteWriter) WriteHeader(code int) {
	w.wrote = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *wroteWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (Flush).
func (w *wroteWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// peerHandler admits only the cluster's nodes: the shared secret as the
// bearer token, compared in constant time. Anything else is answered 401
// peer_unauthorized before a byte of the session is read.
func (cl *cluster) peerHandler(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(cl.secret)) != 1 {
			cl.metrics.clusterPeerRefused.Inc()
			writeError(w, ErrPeerUnauthorized)
			return
		}
		r.Header.Del("Authorization")
		switch {
		case r.URL.Path == peerAlivePath:
			cl.serveAlive(w, r) // clusteralive.go
			return
		case r.URL.Path == peerWarmPath && r.Method == http.MethodPost:
			cl.serveWarm(w, r) // clusterwarm.go
			return
		case r.URL.Path == peerTakePath && r.Method == http.MethodPost:
			cl.serveTake(w, r)
			return
		}
		inner.ServeHTTP(w, r)
	})
}

// peerServer is the peer listener and the API instance behind it; its
// methods do nothing on a single node (nil).
type peerServer struct {
	api *api
	srv *http.Server
}

// startCluster, in cluster mode, joins the cluster: the peer listener is
// opened and served, the lease renewal runs until ctx ends, and a routes
// every call through the cluster. On a single node it returns nils.
func startCluster(ctx context.Context, cfg *Config, a *api, wg *sync.WaitGroup, errc chan<- error) (*cluster, *peerServer, error) {
	if cfg.ClusterRedis == "" {
		return nil, nil, nil
	}
	secret, err := readToken(cfg.ClusterSecretFile)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: --cluster-secret-file: %w", ErrConfig, err)
	}
	cl, err := newCluster(cfg, secret, a.logger, a.metrics)
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", cfg.ClusterPeerListen)
	if err != nil {
		cl.rdb.Close()
		return nil, nil, fmt.Errorf("sidecar: --cluster-peer-listen: %w", err)
	}
	cl.reg = a.reg
	a.reg.own = cl
	a.cluster = cl
	// The peer API shares everything with the API but parks no poll (its
	// connections are the peers', not net/http's listener's) and needs no
	// API token: the cluster secret stands for it.
	// It shares the BOSH sessions too: a sid minted on one listener is
	// served on the other.
	pa := &api{cfg: a.cfg, reg: a.reg, reader: a.reader, logger: a.logger, metrics: a.metrics, now: a.now,
		cluster: cl, peer: true, bosh: a.bosh}
	ps := &peerServer{api: pa, srv: newHTTPServer(cl.peerHandler(cl.handoffGate(pa.routes())), a.logger)}
	wg.Go(func() {
		if err := ps.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("sidecar: cluster peer listener: %w", err)
		}
	})
	wg.Go(func() { cl.run(ctx, nil) })
	wg.Go(func() { cl.orphans.watch(ctx) })
	a.logger.Info("cluster mode", "node", cfg.ClusterNodeID, "peer", cfg.ClusterPeerListen, "lease_ttl", cfg.ClusterLeaseTTL)
	return cl, ps, nil
}

// shutdown stops the peer listener as the API's: no new call, pending
// ones answered.
func (ps *peerServer) shutdown(ctx context.Context) {
	if ps == nil {
		return
	}
	ps.api.draining.Store(true)
	ctx, cancel := context.WithTimeout(ctx, peerDrain)
	defer cancel()
	if ps.srv.Shutdown(ctx) != nil {
		ps.srv.Close()
	}
}
