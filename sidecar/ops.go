package sidecar

import (
	"context"
	"crypto/subtle"
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
	// tokens open /status's per-user rows: the --ops-token-file token and
	// the API token, whichever are configured (none: counts only).
	tokens []string
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
