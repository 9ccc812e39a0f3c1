package sidecar

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// newAPIServer is the HTTP server of the API listener. It speaks HTTP/1.1
// and, with --http2 (the default), HTTP/2 over cleartext with prior
// knowledge (RFC 9113 §3.3): the server tells the two apart by the client's
// first bytes, so an HTTP/1.1 client is unaffected. Over HTTP/2 one
// connection carries up to --http2-max-streams requests at once, so pending
// long polls no longer cost a descriptor each.
//
// The timeouts mean the same on both: ReadHeaderTimeout cuts a connection
// that has not sent a request (HTTP/1.1) or its preface (HTTP/2); ReadTimeout
// bounds reading a request body (per stream on HTTP/2); IdleTimeout closes a
// connection with no request in flight (an HTTP/2 connection with a pending
// poll is not idle); there is no server-wide write timeout, as long polls
// (up to 55 s) and SSE streams (10 min) are long by design: a parked poll's
// answer and each write of an SSE stream have their own deadline instead.
//
// Every request's context ends when Shutdown begins, or earlier when the
// returned function is called, so pending long polls and SSE streams
// answer at once (an empty page: the cursor stays valid) instead of
// holding the shutdown for --shutdown-timeout; over HTTP/2 the connection
// then gets GOAWAY and closes. The context's cause is ErrShuttingDown.
func newAPIServer(cfg *Config, h http.Handler, logger *slog.Logger) (*http.Server, func()) {
	srv, endRequests := newServerEnding(h, logger)
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(cfg.HTTP2)
	srv.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: cfg.HTTP2MaxStreams}
	return srv, endRequests
}

// newHTTPServer is what the API and the peer listener share: the timeouts
// and header cap above, and every request's context ended when Shutdown
// begins.
func newHTTPServer(h http.Handler, logger *slog.Logger) *http.Server {
	srv, _ := newServerEnding(h, logger)
	return srv
}

// newServerEnding is newHTTPServer and the function that ends every
// request's context before Shutdown does.
func newServerEnding(h http.Handler, logger *slog.Logger) (*http.Server, func()) {
	reqCtx, cancel := context.WithCancelCause(context.Background())
	endRequests := func() { cancel(ErrShuttingDown) }
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return reqCtx },
	}
	srv.RegisterOnShutdown(endRequests)
	return srv, endRequests
}
