package xmppconn

import (
	"bytes"
	"encoding/xml"
	"strings"
	"testing"
	"time"
)

// benchStanza is a typical inbound chat message: body, chat state, receipt
// request, as a web or desktop client sends it.
const benchStanza = `<message from="bob@example.test/desktop" to="alice@example.test/expresso-1a2b3c" id="m-1234567" type="chat" xml:lang="pt-br">` +
	`<body>Olá Alice, a reunião foi para as 15h &amp; na sala 2</body><active xmlns="http://jabber.org/protocol/chatstates"/>` +
	`<request xmlns="urn:xmpp:receipts"/></message>`

// xmlMessage is what an encoding/xml client would unmarshal the same
// stanza into: the baseline of BenchmarkStanzaDecode.
type xmlMessage struct {
	XMLName xml.Name  `xml:"jabber:client message"`
	From    string    `xml:"from,attr"`
	To      string    `xml:"to,attr"`
	ID      string    `xml:"id,attr"`
	Type    string    `xml:"type,attr"`
	Body    string    `xml:"body"`
	Active  *struct{} `xml:"http://jabber.org/protocol/chatstates active"`
	Request *struct{} `xml:"urn:xmpp:receipts request"`
}

// BenchmarkStanzaDecode is the inbound hot path: framing one message off
// the stream and parsing it into a node tree. It reports, as xml-ns/op and
// the ratio ours/xml, a plain xml.Unmarshal of the same stanza measured in
// the same run (goal: ≤ 1.5; the framer also enforces size and
// restricted-XML limits that Unmarshal does not).
func BenchmarkStanzaDecode(b *testing.B) {
	const header = `<stream:stream xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams" from="example.test" id="s1" version="1.0">`
	hdrAttrs, err := parseHeader([]byte(header))
	if err != nil {
		b.Fatal(err)
	}
	hdr := headerContext([]byte(header), hdrAttrs)
	data := []byte(strings.Replace(benchStanza, "<message ", `<message xmlns="jabber:client" `, 1))
	xmlNs := baselineNs(func() {
		var m xmlMessage
		if err := xml.Unmarshal(data, &m); err != nil || m.Body == "" {
			b.Fatal(err)
		}
	})
	stream := header + strings.Repeat(benchStanza, 64)
	b.SetBytes(int64(len(benchStanza)))
	b.ReportAllocs()
	var f framer
	var r strings.Reader
	n := 0
	for b.Loop() {
		if n%64 == 0 {
			r.Reset(stream)
			f = framer{max: DefaultMaxStanzaSize}
			f.reset(&byteReader{r: &r})
			if kind, _, err := f.next(); err != nil || kind != frameStreamOpen {
				b.Fatalf("stream header: %v %v", kind, err)
			}
		}
		n++
		kind, raw, err := f.next()
		if err != nil || kind != frameElement {
			b.Fatalf("frame %v: %v", kind, err)
		}
		node, err := parseElement(hdr, raw)
		if err != nil || node.child(nsClient, "body") == nil {
			b.Fatalf("parse: %v", err)
		}
	}
	ours := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(xmlNs, "xml-ns/op")
	b.ReportMetric(ours/xmlNs, "ours/xml")
}

// BenchmarkStanzaEncode is the outbound hot path: rendering a chat
// message, against xml.Marshal of the equivalent struct in the same run.
func BenchmarkStanzaEncode(b *testing.B) {
	m := Message{To: "bob@example.test", ID: "m-1234567", Type: "chat", Body: "Olá Bob, a reunião foi para as 15h & na sala 2 <ok>", ChatState: "active", Receipt: true}
	x := xmlMessage{To: m.To, ID: m.ID, Type: string(m.Type), Body: m.Body, Active: &struct{}{}, Request: &struct{}{}}
	xmlNs := baselineNs(func() {
		if _, err := xml.Marshal(&x); err != nil {
			b.Fatal(err)
		}
	})
	b.ReportAllocs()
	for b.Loop() {
		if out := encodeMessage(m); !bytes.HasSuffix(out, []byte("</message>")) {
			b.Fatalf("encoded %q", out)
		}
	}
	ours := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(xmlNs, "xml-ns/op")
	b.ReportMetric(ours/xmlNs, "ours/xml")
}

// baselineNs times f over a fixed number of runs, before the benchmark's
// own loop (testing.Benchmark cannot nest inside a running benchmark).
func baselineNs(f func()) float64 {
	const runs = 20000
	f()
	start := time.Now()
	for range runs {
		f()
	}
	return float64(time.Since(start).Nanoseconds()) / runs
}
