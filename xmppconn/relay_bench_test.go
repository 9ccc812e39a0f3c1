package xmppconn

import (
	"runtime/metrics"
	"testing"
)

// BenchmarkInboundDelivery is one chat message delivered on a live
// stream the way Prosody delivers it, over loopback TCP from the scripted
// server: the message, then, in a write of its own once the client has
// it, XEP-0198's <r/>, which the client answers with <a/>. It reports the
// goroutines the process started per message (goroutines/op, from
// runtime/metrics): the relay (relay.go) hands the stream to one fresh
// goroutine after the message; answering the ack request starts none.
func BenchmarkInboundDelivery(b *testing.B) {
	s := startScriptServer(b)
	h := make(chanHandler, 16)
	_, sc := dialScript(b, s, h, func(sc *scriptConn) { sc.login(); sc.fresh("sm1") })
	sample := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	created := func() uint64 {
		metrics.Read(sample)
		return sample[0].Value.Uint64()
	}
	isMsg := func(ev Event) bool { _, ok := ev.(*Message); return ok }
	const msg = `<message from="bob@example.test/desktop" to="alice@example.test/web" type="chat" id="m1"><body>Olá Alice, a reunião foi para as 15h</body></message>`
	g0 := created()
	for b.Loop() {
		sc.write(msg)
		h.wait(b, isMsg)
		sc.write(`<r xmlns="urn:xmpp:sm:3"/>`)
		sc.expect("a")
	}
	b.ReportMetric(float64(created()-g0)/float64(b.N), "goroutines/op")
}
