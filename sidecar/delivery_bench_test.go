package sidecar

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"expressolivre.org/imsidecar/xmppconn"
)

// BenchmarkMessageRoundTrip is the daemon's work for one delivered message
// as the load test drives it (issue 17), over real loopback TCP through
// the daemon's listener stack and parker: alice's POST /v1/messages on a
// kept-alive connection, then the message arriving on bob's stream (the
// handler the XMPP reader calls), which answers bob's parked long poll,
// and bob's next poll, which parks again on the same connection. The
// XMPP stream is the tests' fake: xmppconn's encode and parse are
// BenchmarkStanzaEncode and BenchmarkStanzaDecode.
//
// The baseline, timed in the same run, is a bare net/http server doing
// the least the same exchange needs: decode the POST's JSON and answer
// 202, and answer a GET with the same events page at once.
// api/baseline is the daemon's time over that's, cpu/baseline its CPU;
// cpu-us/op counts the process's CPU (client and server) per message,
// and allocs/op the allocations of both.
func BenchmarkMessageRoundTrip(b *testing.B) {
	const post = `{"to":"bob@example.test","body":"Olá Bob, a reunião foi para as 15h","type":"chat"}`
	page := `{"events":[{"kind":"message","cursor":"x","from":"alice@example.test/web","body":"Olá Bob, a reunião foi para as 15h"}],"cursor":"x","recovered":true}` + "\n"
	baseline, baselineCPU := func() (float64, float64) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				var m messageBody
				if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
					http.Error(w, "bad", http.StatusBadRequest)
					return
				}
				writeJSON(w, http.StatusAccepted, map[string]string{"id": "m1"})
				return
			}
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, page)
		})}
		go srv.Serve(ln)
		defer srv.Close()
		send, poll := dialRaw(b, ln.Addr().String()), dialRaw(b, ln.Addr().String())
		defer send.Close()
		defer poll.Close()
		round := func() {
			poll.write(b, "GET /v1/events?cursor=x&wait=25 HTTP/1.1\r\nHost: s\r\nX-Session-Id: x\r\n\r\n")
			send.do(b, "POST /v1/messages HTTP/1.1\r\nHost: s\r\nX-Session-Id: x\r\nContent-Type: application/json\r\nContent-Length: "+strconv.Itoa(len(post))+"\r\n\r\n"+post, 202)
			poll.read(b, http.StatusOK)
		}
		cpu := processCPU()
		ns := baselineNs(round)
		return ns, float64((processCPU() - cpu).Microseconds()) / 5001
	}()

	ps := startParkServer(b, true, 16)
	ps.h.api.cfg.RateLimit = 1e12
	ps.h.api.logger = slog.New(slog.DiscardHandler) // production runs at warn: no access log
	ps.connect(b, goodID, "alice")
	alice := ps.h.conn
	cur := ps.connect(b, otherID, "bob")
	bob := ps.h.handler
	send, poll := dialRaw(b, ps.addr), dialRaw(b, ps.addr)
	defer send.Close()
	defer poll.Close()
	sendReq := "POST /v1/messages HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: " + goodID + "\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(len(post)) + "\r\n\r\n" + post
	pollReq := func(c string) string {
		return "GET /v1/events?cursor=" + c + "&wait=25 HTTP/1.1\r\nHost: sidecar\r\nX-Session-Id: " + otherID + "\r\n\r\n"
	}
	msg := &xmppconn.Message{From: "alice@example.test/web", To: "bob@example.test", Type: "chat", Body: "Olá Bob, a reunião foi para as 15h"}
	ids := make([]string, 4096)
	for i := range ids {
		ids[i] = "m" + strconv.Itoa(i)
	}
	c := cur.String()
	parked := 0
	cpu0 := processCPU()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// Bob's poll goes first and has alice's whole request to park in,
		// as under load, where the next poll follows an answer at once.
		poll.write(b, pollReq(c))
		send.do(b, sendReq, http.StatusAccepted)
		if ps.h.api.parked.parkedCount() > 0 {
			parked++
		}
		msg.ID = ids[i%len(ids)] // the log drops a re-delivery of a message it still holds
		bob.HandleEvent(msg)
		c = lastCursor(b, string(poll.read(b, http.StatusOK)))
		if i%1024 == 0 {
			alice.mu.Lock()
			alice.sent = alice.sent[:0]
			alice.mu.Unlock()
		}
	}
	n := float64(b.N)
	cpu := float64((processCPU() - cpu0).Microseconds()) / n
	b.ReportMetric(cpu, "cpu-us/op")
	b.ReportMetric(cpu/baselineCPU, "cpu/baseline")
	b.ReportMetric(float64(parked)/n, "parked/op")
	reportRatio(b, baseline)
}

// rawConn is a minimal HTTP/1.1 client on one kept-alive connection, so
// that the benchmark's own side costs little next to the server's.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRaw(b *testing.B, addr string) *rawConn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	return &rawConn{c, bufio.NewReaderSize(c, 8192)}
}

func (c *rawConn) write(b *testing.B, req string) {
	if _, err := io.WriteString(c.Conn, req); err != nil {
		b.Fatal(err)
	}
}

// read reads one response with a Content-Length and returns its body.
func (c *rawConn) read(b *testing.B, status int) []byte {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		b.Fatal(err)
	}
	if !bytes.HasPrefix(line, []byte("HTTP/1.1 "+strconv.Itoa(status)+" ")) {
		b.Fatalf("status line %q", line)
	}
	n := -1
	for {
		line, err = c.r.ReadSlice('\n')
		if err != nil {
			b.Fatal(err)
		}
		if len(line) <= 2 {
			break
		}
		if v, ok := bytes.CutPrefix(line, []byte("Content-Length: ")); ok {
			n, _ = strconv.Atoi(strings.TrimSpace(string(v)))
		}
	}
	if n < 0 {
		b.Fatal("no Content-Length")
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		b.Fatal(err)
	}
	return body
}

func (c *rawConn) do(b *testing.B, req string, status int) []byte {
	c.write(b, req)
	return c.read(b, status)
}

// processCPU is the user and system CPU time of the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
