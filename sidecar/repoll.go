package sidecar

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Once a parked poll or held BOSH request is answered, the client asks
// again at once on the same connection (PHP's next long poll, a browser's
// next BOSH request), and that request, finding nothing, parks again.
// Handed back to net/http, it cost a whole new connection state — a
// goroutine, 8 KB of buffers that the next hijack takes away again, two
// contexts, a background read — per delivered message (and a BOSH message
// takes three requests). So the parker serves it itself, on the goroutine
// that read it, through the very same handler (routing, Origin, the sid's
// or the session's authentication, the per-stream rate and body limits,
// metrics, parking), when it is the plain case: a complete GET of
// /v1/events, or POST of /http-bind with its whole body (Content-Length,
// within the one read), HTTP/1.1, kept alive, no upgrade, no Expect, not
// an event stream, nothing pipelined after it, and headers net/http would
// accept as they are. Anything else goes to net/http as before, with the
// bytes read. A request served here is judged exactly as on a fresh
// connection: nothing of the request before it (its sid, its session)
// carries over, as nothing does in net/http.

// serveRepoll serves raw, the next request read from c, when it is a
// plain long poll: served reports that it did (false: c and raw are
// untouched), again that it answered the request itself and c stays open
// for the next (false: the poll parked, or c was closed).
func (pk *parker) serveRepoll(c net.Conn, raw []byte) (served, again bool) {
	if pk.repoll == nil {
		return false, false
	}
	req := parseRepoll(raw)
	if req == nil {
		return false, false
	}
	req = req.WithContext(pk.repollBase)
	req.RemoteAddr = c.RemoteAddr().String()
	w := &repollWriter{conn: c}
	pk.repoll.ServeHTTP(w, req)
	if w.hijacked {
		return true, false // parked again: the parker owns c
	}
	keep := w.header.Get("Connection") != "close"
	c.SetWriteDeadline(time.Now().Add(parkWriteTimeout))
	_, err := c.Write(w.response(time.Now()))
	c.SetWriteDeadline(time.Time{})
	if err != nil || !keep {
		c.Close()
		return true, false
	}
	return true, true
}

// parseRepoll parses raw when it is exactly one plain GET /v1/events or
// POST /http-bind request (see above), and returns nil for anything else.
func parseRepoll(raw []byte) *http.Request {
	end := bytes.Index(raw, []byte("\r\n\r\n"))
	if end < 0 {
		return nil
	}
	// net/http also ends a line at a bare LF, so "\n\r\n" would end the
	// headers before end and the body would not be raw[end+4:]: only
	// CRLF lines here.
	if bytes.Count(raw[:end], []byte("\n")) != bytes.Count(raw[:end], []byte("\r\n")) {
		return nil
	}
	bosh := bytes.HasPrefix(raw, []byte("POST /http-bind"))
	if !bosh && !bytes.HasPrefix(raw, []byte("GET /v1/events")) {
		return nil
	}
	req, err := http.ReadRequest(bufio.NewReaderSize(bytes.NewReader(raw), len(raw)))
	if err != nil || req.ProtoMajor != 1 || req.ProtoMinor != 1 || req.Close || len(req.TransferEncoding) > 0 {
		return nil
	}
	// The whole body, and nothing after it: a BOSH body, or none.
	if n := req.ContentLength; n < 0 || (!bosh && n != 0) || int64(end+4)+n != int64(len(raw)) {
		return nil
	}
	// As net/http's server checks them (its 400s stay its own);
	// ReadRequest refused a second Host and took the one out of Header.
	if req.Host == "" || !plainHeader(req.Host) || strings.ContainsAny(req.Host, " \t") {
		return nil
	}
	for k, vv := range req.Header {
		if !plainHeader(k) || strings.ContainsAny(k, " \t") {
			return nil
		}
		for _, v := range vv {
			if !plainHeader(v) {
				return nil
			}
		}
	}
	h := req.Header
	// "Connection: keep-alive" (browsers send it) changes nothing in
	// HTTP/1.1; any other token (close, upgrade) is net/http's.
	conn := h.Values("Connection")
	if h.Get("Expect") != "" || h.Get("Upgrade") != "" || len(conn) > 1 || (len(conn) == 1 && !strings.EqualFold(conn[0], "keep-alive")) ||
		strings.Contains(h.Get("Accept"), "text/event-stream") {
		return nil
	}
	return req
}

// plainHeader reports whether s holds printable ASCII, spaces and tabs
// only: a header any HTTP/1.1 server takes as it is.
func plainHeader(s string) bool {
	for i := range len(s) {
		if c := s[i]; (c < 0x20 && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// repollWriter is the ResponseWriter of a request serveRepoll serves: it
// can be hijacked, as the events handler does to park the poll, or it
// keeps the (small: an events page or an error) answer for response.
type repollWriter struct {
	conn     net.Conn
	header   http.Header
	status   int
	body     bytes.Buffer
	hijacked bool
}

func (w *repollWriter) Header() http.Header {
	if w.header == nil {
		w.header = http.Header{}
	}
	return w.header
}

func (w *repollWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *repollWriter) Write(b []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// Hijack hands the connection to the parker; nothing was read past the
// request, so the reader holds nothing.
func (w *repollWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	return w.conn, bufio.NewReadWriter(bufio.NewReaderSize(w.conn, 16), nil), nil
}

// response is what net/http writes for the same answer: the status line,
// the handler's headers (sorted; with its Content-Length, as writeBOSH
// sets it), Date, Content-Length unless the handler set it, and the body,
// in one write.
func (w *repollWriter) response(now time.Time) []byte {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	h := w.Header()
	own := h.Get("Content-Length") != ""
	if own {
		h.Set("Content-Length", strconv.Itoa(w.body.Len()))
	}
	if w.body.Len() > 0 && h.Get("Content-Type") == "" {
		h.Set("Content-Type", http.DetectContentType(w.body.Bytes()))
	}
	b := bytes.NewBuffer(make([]byte, 0, 256+w.body.Len()))
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(status))
	b.WriteString("\r\n")
	h.Write(b)
	b.WriteString("Date: ")
	b.Write(now.UTC().AppendFormat(b.AvailableBuffer(), http.TimeFormat))
	if !own {
		b.WriteString("\r\nContent-Length: ")
		b.WriteString(strconv.Itoa(w.body.Len()))
	}
	b.WriteString("\r\n\r\n")
	b.Write(w.body.Bytes())
	return b.Bytes()
}
