package sidecar

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"expressolivre.org/imsidecar/xmppconn"
)

// metrics are the daemon's Prometheus series, on a private registry.
type metrics struct {
	reg           *prometheus.Registry
	connects      prometheus.Counter
	reconnects    prometheus.Counter
	resumptions   prometheus.Counter
	authFailures  prometheus.Counter
	eventsQueued  prometheus.Counter
	eventsDropped prometheus.Counter
	connRejected  prometheus.Counter
	// stanzasDropped counts inbound stanzas over --xmpp-max-stanza-size;
	// sendsRefused the stanzas the server refused (policy-violation).
	stanzasDropped prometheus.Counter
	sendsRefused   prometheus.Counter
	// Browser XMPP clients (bridge.go).
	browserStreams  prometheus.Gauge
	browserRejected prometheus.Counter
	apiLatency      *prometheus.HistogramVec
	storeLatency    prometheus.Histogram
	// Cluster mode (cluster.go): leases held, claims by outcome, leases
	// found lost, calls forwarded to owners by outcome, peer calls refused.
	clusterLeases      prometheus.Gauge
	clusterClaims      *prometheus.CounterVec
	clusterLeasesLost  prometheus.Counter
	clusterForwards    *prometheus.CounterVec
	clusterPeerRefused prometheus.Counter
	clusterPeerAsks    *prometheus.CounterVec
	// clusterResumes counts takeovers of an online user by outcome:
	// resumed (the XMPP session continued) or fresh (a new login).
	clusterResumes *prometheus.CounterVec
	// Phase 3 (clusterhandoff.go, clusterorphan.go): sessions handed over
	// at shutdown, a dead node's orphans taken up, live nodes seen.
	clusterHandoffs  *prometheus.CounterVec
	clusterAdoptions *prometheus.CounterVec
	clusterWarm      *prometheus.CounterVec
	clusterTake      prometheus.Histogram
	clusterNodes     prometheus.Gauge
}

// newMetrics registers the series; sessions counts the sessions by state
// and eventBytes is what the event logs hold, both read at scrape time.
func newMetrics(sessions func() map[xmppconn.State]int, eventBytes func() int64) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg:            reg,
		connects:       prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_connects_total", Help: "XMPP streams opened."}),
		reconnects:     prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_reconnects_total", Help: "Streams replaced without resumption (continuity lost)."}),
		resumptions:    prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_resumptions_total", Help: "Streams resumed with XEP-0198."}),
		authFailures:   prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_auth_failures_total", Help: "XMPP authentication failures."}),
		eventsQueued:   prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_events_queued_total", Help: "Events appended to session logs."}),
		eventsDropped:  prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_events_dropped_total", Help: "Unacknowledged events pushed out of session logs full of events (--event-buffer) or bytes (--event-buffer-mb, --event-memory-mb); a poller that far behind is told recovered=false."}),
		connRejected:   prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_api_connections_rejected_total", Help: "API connections answered 503 too_many_connections (--max-connections)."}),
		stanzasDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_stanzas_dropped_total", Help: "Stanzas from the Jabber server over --xmpp-max-stanza-size, skipped without breaking the stream (the user gets a dropped event)."}),
		sendsRefused:   prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_sends_refused_total", Help: "Stanzas the Jabber server refused with a policy-violation stream error, taken out of the resend queue (the user gets a send_failed event)."}),
		browserStreams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "imsidecar_browser_streams",
			Help: "Browser XMPP clients (BOSH, WebSocket) attached to users' streams."}),
		browserRejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_browser_stanzas_rejected_total",
			Help: "Stanzas from browser clients refused (malformed, oversized, stream-level); each ended that client's stream."}),
		apiLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "imsidecar_api_request_duration_seconds",
			Help: "API latency by route and status (long polls included).", Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, 60}},
			[]string{"route", "status"}),
		storeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imsidecar_session_store_duration_seconds",
			Help: "PHP session lookups.", Buckets: []float64{.00001, .00005, .0001, .0005, .001, .005, .01, .05, .1, .5}}),
		clusterLeases: prometheus.NewGauge(prometheus.GaugeOpts{Name: "imsidecar_cluster_leases",
			Help: "Cluster mode: session leases this node holds."}),
		clusterClaims: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_claims_total",
			Help: "Cluster mode: session claims by outcome: won (a free session), takeover (from a dead or departed owner), lost (another node holds it)."}, []string{"result"}),
		clusterLeasesLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_cluster_leases_lost_total",
			Help: "Cluster mode: leases found held by another node; each session was detached from this node."}),
		clusterForwards: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_forwards_total",
			Help: "Cluster mode: calls forwarded to the session's owner, by outcome: ok, refused (owner gone, session taken over), not_owner (asked again), error; unchecked: forwarded while the session store did not answer here, the owner checking the session itself; rerouted: a browser stream this node was opening whose session went to another node meanwhile, routed again."}, []string{"result"}),
		clusterPeerRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "imsidecar_cluster_peer_refused_total",
			Help: "Cluster mode: calls on the peer listener refused for a missing or wrong cluster secret."}),
		clusterPeerAsks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_peer_asks_total",
			Help: "Cluster mode: owners asked over the peer listener whether they are alive before their session (or their dead incarnation's sessions) is taken over, by answer: alive (kept by the owner: Redis had lost sight of it), gone (another incarnation, or no longer the owner), silent (refused or no answer in time: taken over)."}, []string{"result"}),
		clusterHandoffs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_handoffs_total",
			Help: "Cluster mode: sessions handed over at shutdown, by outcome: taken (detached, and resumed at once by the node it was handed to, on the connection that node prepared), moved (detached, and the lease another node's by the time it was given back: the successor's take finished after the stopping node stopped waiting for it, or a call claimed the session elsewhere), detached (the server keeps the session for the next owner to resume), closed (a stream that could not be detached), failed (the lease could not be given back: it expires)."}, []string{"result"}),
		clusterAdoptions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_adoptions_total",
			Help: "Cluster mode: a dead node's online sessions this node took up, by outcome: resumed, offline (logged out meanwhile), moved (another node had it), gone (taken up elsewhere first), malformed, failed (left to the user's next call)."}, []string{"result"}),
		clusterWarm: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_warm_total",
			Help: "Cluster mode: connections this node prepared (logged in ahead, no resource bound) for a session a stopping node hands it, by outcome: prepared, used (the session resumed on it: one round trip), stale (it had died: a fresh login instead), expired (not used in time), dropped (another node took the session first, or the take failed), failed (the login ahead failed), refused (too many, or shutting down)."}, []string{"result"}),
		clusterTake: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "imsidecar_cluster_take_seconds",
			Help:    "Cluster mode: how long this node took to take over a session a stopping node handed it (its user waits that long, after the stream's detach), from the stopping node's ask to the session online here.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2}}),
		clusterNodes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "imsidecar_cluster_nodes",
			Help: "Cluster mode: live nodes (their liveness key present) at the last look, this one included."}),
		clusterResumes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "imsidecar_cluster_resumes_total",
			Help: "Cluster mode: takeovers of an online user by outcome: resumed (the XMPP session and the event log continued: nothing lost, no presence change), fresh (a new login: the page's next poll says recovered:false)."}, []string{"result"}),
	}
	reg.MustRegister(m.connects, m.reconnects, m.resumptions, m.authFailures, m.eventsQueued, m.eventsDropped, m.connRejected, m.stanzasDropped, m.sendsRefused, m.browserStreams, m.browserRejected, m.apiLatency, m.storeLatency,
		m.clusterLeases, m.clusterClaims, m.clusterLeasesLost, m.clusterForwards, m.clusterPeerRefused, m.clusterPeerAsks, m.clusterResumes,
		m.clusterHandoffs, m.clusterAdoptions, m.clusterWarm, m.clusterTake, m.clusterNodes,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imsidecar_event_log_bytes", Help: "Bytes the session event logs hold, counted against --event-memory-mb."},
			func() float64 { return float64(eventBytes()) }))
	states := []xmppconn.State{xmppconn.StateConnecting, xmppconn.StateOnline, xmppconn.StateReconnecting, xmppconn.StateOffline, xmppconn.StateAuthFailed}
	desc := prometheus.NewDesc("imsidecar_sessions", "Sessions by state.", []string{"state"}, nil)
	reg.MustRegister(collectorFunc{desc: desc, collect: func(ch chan<- prometheus.Metric) {
		counts := sessions()
		for _, st := range states {
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(counts[st]), string(st))
		}
	}})
	return m
}

type collectorFunc struct {
	desc    *prometheus.Desc
	collect func(chan<- prometheus.Metric)
}

func (c collectorFunc) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c collectorFunc) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
