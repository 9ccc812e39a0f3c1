package sidecar

import (
	"context"
	"html/template"
	"net"
	"net/http"
	"strings"
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

// ready: the session store answers and the Jabber server accepts TCP.
func (o *ops) ready(w http.ResponseWriter, r *http.Request) {
	reasons := map[string]string{}
	if o.api.draining.Load() {
		reasons["shutdown"] = "shutting down"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := o.reader.Ready(ctx); err != nil {
		reasons["session_store"] = err.Error()
	}
	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", o.cfg.XMPPAddr); err != nil {
		reasons["xmpp"] = err.Error()
	} else {
		c.Close()
	}
	if len(reasons) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "reasons": reasons})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

type statusRow struct {
	User     string `json:"user"`
	JID      string `json:"jid"`
	State    string `json:"state"`
	Reason   string `json:"reason,omitempty"`
	Since    string `json:"since"`
	LastPoll string `json:"last_poll"`
}

// status lists connected users by state, never session ids.
func (o *ops) status(w http.ResponseWriter, r *http.Request) {
	rows := []statusRow{}
	counts := map[string]int{}
	for _, s := range o.reg.snapshot() {
		s.mu.Lock()
		jid := s.fullJID
		s.mu.Unlock()
		reason, _ := s.reason.Load().(string)
		st := string(s.State())
		counts[st]++
		rows = append(rows, statusRow{User: s.user, JID: jid, State: st, Reason: reason,
			Since: s.since.UTC().Format(time.RFC3339), LastPoll: time.Unix(0, s.lastPoll.Load()).UTC().Format(time.RFC3339)})
	}
	if r.URL.Query().Get("format") == "json" || strings.Contains(r.Header.Get("Accept"), "application/json") {
		writeJSON(w, http.StatusOK, map[string]any{"version": version, "counts": counts, "sessions": rows})
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	statusPage.Execute(w, map[string]any{"Version": version, "Counts": counts, "Rows": rows, "Now": time.Now().UTC().Format(time.RFC3339)})
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imsidecar status</title>
<meta http-equiv="refresh" content="10">
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.online{color:#187a2f}.reconnecting,.connecting{color:#a66b00}.offline,.auth_failed{color:#a11}</style></head>
<body><h1>imsidecar {{.Version}}</h1><p>{{.Now}} ·
{{range $k, $v := .Counts}}<span class="{{$k}}">{{$k}}: {{$v}}</span> {{end}}</p>
<table><tr><th>user</th><th>JID</th><th>state</th><th>reason</th><th>since</th><th>last poll</th></tr>
{{range .Rows}}<tr><td>{{.User}}</td><td>{{.JID}}</td><td class="{{.State}}">{{.State}}</td><td>{{.Reason}}</td><td>{{.Since}}</td><td>{{.LastPoll}}</td></tr>
{{else}}<tr><td colspan="6">no sessions</td></tr>{{end}}</table></body></html>
`))

// stateCounts feeds the sessions gauge.
func (r *registry) stateCounts() map[xmppconn.State]int {
	out := map[xmppconn.State]int{}
	for _, s := range r.snapshot() {
		out[s.State()]++
	}
	return out
}
