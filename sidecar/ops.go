package sidecar

import (
	"context"
	"crypto/subtle"
	"html/template"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"expressolivre.org/imsidecar/xmppconn"
)

// ops serves the operators' endpoints on their own listener.
type ops struct {
	cfg     *Config
	reg     *registry
	reader  sessionReader
	metrics *metrics
	api     *api
	// tokens open /status's per-user rows: the --ops-token-file token and
	// the API token, whichever are configured (none: counts only).
	tokens []string
	// readiness is /readyz's check, shared by the probes.
	readiness readiness
}

func (o *ops) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", o.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(o.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /status", o.status)
	return mux
}

// How /readyz checks. Every probe, from a load balancer (several, each
// on its own schedule) or a start-up script polling every 50 ms, costs
// the Jabber server a TCP connection and the session store a stat or a
// PING; at 2,000 users such probes joined a full accept queue and a node
// restarted into it was never ready. So the probes share the check:
// those that come while one runs wait for it, and its verdict, failed or
// not, answers every probe for readyReuse after it was found. Whatever
// the probes' number or rate, the Jabber server and the store see at
// most one check at a time, and at most one per readyReuse after the
// last ended (a failing server, whose check may take all of readyTimeout,
// is probed less, not more). A second is below the usual balancer's
// interval (HAProxy's default is 2 s, Kubernetes' 10 s, an AWS balancer's
// at least 5 s), so one balancer still sees a fresh check at each probe,
// and a change, a restarted node's Jabber server accepting again among
// them, reaches /readyz at most a second late. The shutdown reason costs
// nothing and is never reused. No flag: the window bounds a rate that is
// negligible either way, and nothing a site tunes depends on it.
const (
	readyReuse   = time.Second
	readyTimeout = 2 * time.Second // one check's bound, whoever waits for it
)

// readiness holds /readyz's shared check; the zero value is ready to use.
type readiness struct {
	now func() time.Time // nil: time.Now (tests move it)

	mu      sync.Mutex
	last    map[string]string // the last verdict's reasons, never changed once stored
	at      time.Time         // when the last verdict was found
	running *readyCheck       // the check in flight, nil when none runs
}

// readyCheck is one check; reasons is set before done closes.
type readyCheck struct {
	done    chan struct{}
	reasons map[string]string
}

// verdict returns the reasons the node is not ready (empty: ready): the
// last verdict while it is younger than readyReuse, otherwise the check
// in flight's, otherwise a new check's. The new check runs on the
// probe's own goroutine (the ops server's, which waits for it at
// shutdown) under a context of its own: a probe that hangs up does not
// cut the check the others wait for, and the check ends within
// readyTimeout however many probes left. A probe that hangs up while
// waiting for another's check gets ok false and answers nothing.
func (rd *readiness) verdict(ctx context.Context, check func(context.Context) map[string]string) (reasons map[string]string, ok bool) {
	now := time.Now
	if rd.now != nil {
		now = rd.now
	}
	rd.mu.Lock()
	if rd.last != nil && now().Sub(rd.at) < readyReuse {
		defer rd.mu.Unlock()
		return rd.last, true
	}
	if c := rd.running; c != nil {
		rd.mu.Unlock()
		select {
		case <-c.done:
			if c.reasons == nil { // the check panicked (net/http recovers its prober)
				return map[string]string{"readiness": "the check did not finish"}, true
			}
			return c.reasons, true
		case <-ctx.Done():
			return nil, false
		}
	}
	c := &readyCheck{done: make(chan struct{})}
	rd.running = c
	rd.mu.Unlock()
	defer func() {
		rd.mu.Lock()
		if c.reasons != nil {
			rd.last, rd.at = c.reasons, now()
		}
		rd.running = nil
		rd.mu.Unlock()
		close(c.done)
	}()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readyTimeout)
	defer cancel()
	c.reasons = check(cctx)
	return c.reasons, true
}

// ready: the session store answers and the Jabber server accepts TCP
// (the shared check, above), and the daemon is not shutting down.
func (o *ops) ready(w http.ResponseWriter, r *http.Request) {
	checked, ok := o.readiness.verdict(r.Context(), o.check)
	if !ok {
		return // the probe hung up; the check goes on for the others
	}
	reasons := make(map[string]string, len(checked)+1)
	maps.Copy(reasons, checked) // the verdict is shared: never written
	if o.api.draining.Load() {
		reasons["shutdown"] = "shutting down"
	}
	if len(reasons) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reasons": reasons})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// check asks the session store and dials the Jabber server once.
func (o *ops) check(ctx context.Context) map[string]string {
	reasons := map[string]string{}
	if err := o.reader.Ready(ctx); err != nil {
		reasons["session_store"] = err.Error()
	}
	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", o.cfg.XMPPAddr); err != nil {
		reasons["xmpp"] = err.Error()
	} else {
		c.Close()
	}
	return reasons
}

// status shows the sessions by state. Who is online, with their JIDs and
// last polls, is personal data: any local user can reach the ops
// listener, so the per-user rows need Authorization: Bearer with the ops
// token (--ops-token-file) or the API token; without one, counts only.
// Never session ids.
func (o *ops) status(w http.ResponseWriter, r *http.Request) {
	detail, err := o.authorized(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="imsidecar ops"`)
		writeJSON(w, http.StatusUnauthorized, map[string]any{"error": map[string]string{"code": "unauthorized",
			"message": "wrong token: /status wants Authorization: Bearer <--ops-token-file or --api-token-file token>"}})
		return
	}
	rows := []statusRow{}
	counts := map[string]int{}
	for _, s := range o.reg.snapshot() {
		st := string(s.State())
		counts[st]++
		if !detail {
			continue
		}
		s.mu.Lock()
		jid := s.fullJID
		s.mu.Unlock()
		reason, _ := s.reason.Load().(string)
		rows = append(rows, statusRow{User: s.user, JID: jid, State: st, Reason: reason,
			Since: s.since.UTC().Format(time.RFC3339), LastPoll: time.Unix(0, s.lastPoll.Load()).UTC().Format(time.RFC3339)})
	}
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		out := map[string]any{"version": version, "counts": counts}
		if detail {
			out["sessions"] = rows
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	statusPage.Execute(w, map[string]any{"Version": version, "Counts": counts, "Rows": rows, "Detail": detail,
		"Now": time.Now().UTC().Format(time.RFC3339)})
}

// authorized reports whether r carries a token that opens the per-user
// detail; a token that is given but wrong is an error, no token is not.
func (o *ops) authorized(r *http.Request) (bool, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return false, nil
	}
	got, ok := strings.CutPrefix(h, "Bearer ")
	if ok {
		for _, t := range o.tokens {
			if t != "" && subtle.ConstantTimeCompare([]byte(got), []byte(t)) == 1 {
				return true, nil
			}
		}
	}
	return false, ErrUnauthorized
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imsidecar status</title>
<meta http-equiv="refresh" content="10">
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.online{color:#187a2f}.reconnecting,.connecting{color:#a66b00}.offline,.auth_failed{color:#a11}</style></head>
<body><h1>imsidecar {{.Version}}</h1><p>{{.Now}} ·
{{range $k, $v := .Counts}}<span class="{{$k}}">{{$k}}: {{$v}}</span> {{end}}</p>
{{if .Detail}}<table><tr><th>user</th><th>JID</th><th>state</th><th>reason</th><th>since</th><th>last poll</th></tr>
{{range .Rows}}<tr><td>{{.User}}</td><td>{{.JID}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Reason}}</td><td>{{.Since}}</td><td>{{.LastPoll}}</td></tr>
{{else}}<tr><td colspan="6">no sessions</td></tr>{{end}}</table>
{{else}}<p>Per-user detail needs <code>Authorization: Bearer</code> with the ops token (<code>--ops-token-file</code>) or the API token.</p>{{end}}
</body></html>
`))

// stateCounts feeds the sessions gauge.
func (r *registry) stateCounts() map[xmppconn.State]int {
	out := map[xmppconn.State]int{}
	for _, s := range r.snapshot() {
		out[s.State()]++
	}
	return out
}
