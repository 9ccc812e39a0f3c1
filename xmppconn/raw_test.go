package xmppconn

import (
	"errors"
	"strings"
	"testing"
)

func TestParseStanza(t *testing.T) {
	tests := []struct {
		name, in string
		ok       bool
		out      string // Bytes() with From dropped, when ok
	}{
		{"message", `<message xmlns="jabber:client" to="bob@example.org" id="1" type="chat"><body>oi &amp; tchau</body></message>`, true,
			`<message xmlns="jabber:client" to="bob@example.org" id="1" type="chat"><body>oi &amp; tchau</body></message>`},
		{"no namespace is jabber:client", `<presence><show>away</show></presence>`, true, `<presence xmlns="jabber:client"><show>away</show></presence>`},
		{"forged from dropped", `<message from="boss@example.org/x" to="bob@example.org"><body>b</body></message>`, true,
			`<message xmlns="jabber:client" to="bob@example.org"><body>b</body></message>`},
		{"self-closing iq", `<iq type="get" id="p" to="example.org"/>`, true, `<iq xmlns="jabber:client" to="example.org" id="p" type="get"></iq>`},
		{"xml:lang and prefixes kept", `<message xml:lang="pt" xmlns:x="urn:x" to="a@b"><x:y/></message>`, true,
			`<message xmlns="jabber:client" to="a@b" xml:lang="pt" xmlns:x="urn:x"><x:y/></message>`},
		{"stream-level element", `<enable xmlns="urn:xmpp:sm:3"/>`, false, ""},
		{"stream features", `<stream:features xmlns:stream="http://etherx.jabber.org/streams"/>`, false, ""},
		{"other namespace", `<message xmlns="jabber:server" to="a@b"/>`, false, ""},
		{"not a stanza", `<body>hi</body>`, false, ""},
		{"two elements", `<presence/><presence/>`, false, ""},
		{"unbalanced", `<message><body></message>`, false, ""},
		{"comment", `<message><!-- x --></message>`, false, ""},
		{"processing instruction", `<message><?pi x?></message>`, false, ""},
		{"doctype", `<!DOCTYPE x><message/>`, false, ""},
		{"text", `hello`, false, ""},
		{"stream close", `</stream:stream>`, false, ""},
		{"too large", `<message><body>` + strings.Repeat("x", 5000) + `</body></message>`, false, ""},
		{"foreign attribute", `<message xmlns:q="urn:q" q:evil="1"/>`, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := ParseStanza([]byte(tt.in), 4096)
			if !tt.ok {
				if err == nil || !errors.Is(err, ErrBadStanza) {
					t.Fatalf("ParseStanza(%q) = %v, want ErrBadStanza", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st.From = ""
			if got := string(st.Bytes()); got != tt.out {
				t.Fatalf("Bytes() = %s\nwant      %s", got, tt.out)
			}
			if _, err := ParseStanza(st.Bytes(), 4096); err != nil {
				t.Fatalf("rendering does not parse again: %v", err)
			}
		})
	}
}

func TestStanzaPresence(t *testing.T) {
	st, err := ParseStanza([]byte(`<presence><show> dnd </show><status>busy</status><priority>5</priority><x xmlns="vcard-temp:x:update"><photo>`+strings.Repeat("a", 40)+`</photo></x></presence>`), 4096)
	if err != nil {
		t.Fatal(err)
	}
	p := st.Presence()
	if p.Type != "available" || p.Show != "dnd" || p.Status != "busy" || p.Priority != 5 || p.Avatar == nil {
		t.Fatalf("Presence() = %+v", p)
	}
}

func FuzzParseStanza(f *testing.F) {
	for _, s := range []string{`<message to="a@b"><body>x</body></message>`, `<iq type="get" id="1"/>`, `<presence xml:lang="en"><show>away</show></presence>`, `<a:b xmlns:a="jabber:client"/>`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := ParseStanza(data, 4096)
		if err != nil {
			return
		}
		st.From = ""
		again, err := ParseStanza(st.Bytes(), 1<<20)
		if err != nil {
			t.Fatalf("%q renders as %q, which does not parse: %v", data, st.Bytes(), err)
		}
		if again.Kind != st.Kind || again.ID != st.ID || again.To != st.To || again.Type != st.Type || again.From != "" {
			t.Fatalf("round trip changed %+v into %+v", st, again)
		}
		st.Presence()
	})
}
