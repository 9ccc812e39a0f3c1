package expresso_test

import (
	"encoding/json"
	"fmt"
	"testing"
)

// TestStandinParsing feeds BOSH answers, serialized in the ways a server
// may legally choose, through the stand-in's parsing: jQuery 1.11.1's HTML
// parser after the 2.5 client's regex rewrites, in Chromium. It pins which
// serialization choices the 2.5 client survives and which silently break
// it (docs/EXPRESSO.md, "Serialization rules"); no real server produces
// these variants on demand, hence canned answers.
func TestStandinParsing(t *testing.T) {
	d := startDriver(t)
	web := startSite(t)
	d.must(map[string]any{"op": "open", "url": web.URL + "/?boot=0"}, nil)

	const features = `<stream:features xmlns='jabber:client'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></stream:features>`
	creation := []struct {
		name, answer string
		sid          bool // the client finds the sid
		plain        bool // and PLAIN
	}{
		{"single quotes, features inline", `<body xmlns='http://jabber.org/protocol/httpbind' sid='s1' wait='60' hold='1' xmlns:stream='http://etherx.jabber.org/streams'>` + features + `</body>`, true, true},
		{"double quotes", `<body xmlns="http://jabber.org/protocol/httpbind" sid="s1" wait="60"><stream:features xmlns="jabber:client"><mechanisms xmlns="urn:ietf:params:xml:ns:xmpp-sasl"><mechanism>PLAIN</mechanism></mechanisms></stream:features></body>`, true, true},
		{"leading and trailing white space", "\n  <body xmlns='http://jabber.org/protocol/httpbind' sid='s1'>" + features + "</body>\n", true, true},
		{"default namespace on features", `<body xmlns='http://jabber.org/protocol/httpbind' sid='s1'><features xmlns='http://etherx.jabber.org/streams'><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms></features></body>`, true, true},
		{"XML declaration", `<?xml version='1.0' encoding='UTF-8'?><body xmlns='http://jabber.org/protocol/httpbind' sid='s1'>` + features + `</body>`, false, true},
		{"comment first", `<!-- hi --><body xmlns='http://jabber.org/protocol/httpbind' sid='s1'>` + features + `</body>`, false, true},
		// The rewrite misses <b:body>; jQuery takes it as an element anyway.
		{"prefixed body", `<b:body xmlns:b='http://jabber.org/protocol/httpbind' sid='s1'>` + features + `</b:body>`, true, true},
		{"features in a later answer", `<body xmlns='http://jabber.org/protocol/httpbind' sid='s1' wait='60'/>`, true, false},
		{"prefixed mechanism", `<body xmlns='http://jabber.org/protocol/httpbind' sid='s1'><stream:features><sasl:mechanisms xmlns:sasl='urn:ietf:params:xml:ns:xmpp-sasl'><sasl:mechanism>PLAIN</sasl:mechanism></sasl:mechanisms></stream:features></body>`, true, false},
	}
	for _, c := range creation {
		t.Run("creation/"+c.name, func(t *testing.T) {
			var got struct {
				Sid   *string
				Plain bool
			}
			d.eval(fmt.Sprintf("standin.creation(%s)", js(c.answer)), &got)
			if (got.Sid != nil && *got.Sid == "s1") != c.sid || got.Plain != c.plain {
				t.Errorf("client reads sid %v, PLAIN %v; want sid found %v, PLAIN %v", got.Sid, got.Plain, c.sid, c.plain)
			}
		})
	}

	const wrap = `<body xmlns='http://jabber.org/protocol/httpbind' sid='s1'>%s</body>`
	type state struct {
		Messages []struct{ From, HTML, Text string }
		Presence map[string]struct{ Show, Status string }
		Roster   map[string]struct{ Name, Subscription string }
	}
	stanzas := []struct {
		name, stanzas string
		check         func(t *testing.T, s state)
	}{
		{"escaped text", `<message from='bob@example.test/d' type='chat'><body>a &lt;b&gt; &amp; c &apos;d&apos; &quot;e&quot; ç</body></message>`, func(t *testing.T, s state) {
			if len(s.Messages) != 1 || s.Messages[0].Text != `a <b> & c 'd' "e" ç` {
				t.Errorf("messages %+v", s.Messages)
			}
		}},
		{"CDATA body is garbled", `<message from='bob@example.test/d' type='chat'><body><![CDATA[a <b> c]]></body></message>`, func(t *testing.T, s state) {
			// HTML has no CDATA: "<![CDATA[a <b>" becomes a comment.
			if len(s.Messages) != 1 || s.Messages[0].Text != " c]]>" {
				t.Errorf("messages %+v: the HTML parser was expected to garble the CDATA section", s.Messages)
			}
		}},
		{"the word style is rewritten", `<message from='bob@example.test/d' type='chat'><body>lifestyle</body></message>`, func(t *testing.T, s state) {
			if len(s.Messages) != 1 || s.Messages[0].Text != "lifeEVENT_DENY" {
				t.Errorf("messages %+v", s.Messages)
			}
		}},
		{"self-closing sibling presences", `<presence from='a@example.test/r'/><presence from='b@example.test/r'><show>away</show><status>fora</status></presence>`, func(t *testing.T, s state) {
			if s.Presence["a@example.test"].Show != "available" || s.Presence["b@example.test"].Show != "away" || s.Presence["b@example.test"].Status != "fora" {
				t.Errorf("presence %+v", s.Presence)
			}
		}},
		{"roster with self-closing items", `<iq type='result' xmlns='jabber:client'><query xmlns='jabber:iq:roster'><item jid='a@example.test' subscription='both' name='A'/><item jid='b@example.test' subscription='to'/></query></iq>`, func(t *testing.T, s state) {
			if s.Roster["a@example.test"].Subscription != "both" || s.Roster["a@example.test"].Name != "A" || s.Roster["b@example.test"].Subscription != "to" {
				t.Errorf("roster %+v", s.Roster)
			}
		}},
		{"unavailable presence", `<presence from='a@example.test/r' type='unavailable'/>`, func(t *testing.T, s state) {
			if s.Presence["a@example.test"].Show != "unavailable" {
				t.Errorf("presence %+v", s.Presence)
			}
		}},
	}
	for _, c := range stanzas {
		t.Run("stanzas/"+c.name, func(t *testing.T) {
			var s state
			d.eval(fmt.Sprintf("(function () { standin.messages = []; standin.presence = {}; standin.roster = {}; standin.handle(%s);"+
				" return { messages: standin.messages, presence: standin.presence, roster: standin.roster }; })()", js(fmt.Sprintf(wrap, c.stanzas))), &s)
			c.check(t, s)
		})
	}
}

// js quotes s as a JavaScript string literal.
func js(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}
