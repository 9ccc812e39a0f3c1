// Package loadtest is the load generator behind `make bench`: it measures
// the sidecar path (PHP → imsidecar → Prosody) side by side with what sites
// use today, Prosody's own BOSH (XEP-0124/0206) and WebSocket (RFC 7395)
// endpoints, and with a bare XMPP client logging in (the login-storm
// baseline), all against one private Prosody on loopback.
//
// For each path it logs N simulated users in from cold, keeps every user
// online with a long poll (sidecar: GET /v1/events; BOSH: hold=1), sends
// chat messages between random pairs at a target rate and records logins
// per second, resident memory per online user of the process(es) the path
// adds, CPU seconds per 1,000 messages, delivered messages per second,
// latency from the send call's start to the receiving side's return with
// the message (p50/p99/max), and lost messages. Then, whatever the target
// rate gave, it climbs a ladder of rates (Config.SweepRates), each step
// drained and the server idle again before the next, up to the first rate
// the path cannot keep up with: the path's knee is the highest rate whose
// p99 stayed within 50 ms, its capacity the highest it kept up with
// (see Check and Knee).
//
// The cluster paths (PathSidecarCluster, PathSidecarClusterRR) run the
// sidecar path through several imsidecar nodes in cluster mode sharing a
// private Redis with an append-only file, sticky or round robin, and add
// what cluster mode costs besides: the nodes' memory summed, Redis's memory
// and keys per user, the commands and script calls Redis runs per message
// and idle, and Redis's CPU (ClusterResult), read against the sidecar path
// of the same run by the goals of issue 20 item 9.
//
// For finding where latency comes from, a run can write every message's
// send and delivery times as CSV (Config.LatencyDir), a runtime/trace of
// the generator (Config.TraceDir), and add settings to Prosody's
// configuration (Config.ProsodyConfig).
//
// Everything is loopback only and bounded in time: every phase has a
// deadline and the generator stops by itself. Client sockets are bound to
// several 127.0.0.x source addresses so 10,000 users do not exhaust one
// address's ephemeral ports. The command is cmd/imbench; docs/PERFORMANCE.md
// describes the method and the latest figures.
package loadtest
