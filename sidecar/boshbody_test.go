package sidecar

import (
	"errors"
	"maps"
	"net/http/httptest"
	"strings"
	"testing"
)

// emptyBodies are bodies without children, as clients send them and as
// a hostile one might; fast: parseEmptyBOSHBody takes it (false: the
// bytes go to encoding/xml, which may take or refuse them).
var emptyBodies = []struct {
	name, body string
	fast       bool
}{
	{"strophe poll", `<body rid='4117' xmlns='http://jabber.org/protocol/httpbind' sid='9a1f'/>`, true},
	{"double quotes, closed", `<body xmlns="http://jabber.org/protocol/httpbind" rid="5" sid="s"></body>`, true},
	{"space everywhere", " \r\n<body\txmlns = \"http://jabber.org/protocol/httpbind\"\nrid='6'  >\r\n \t</body >\n", true},
	{"restart", `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:xmpp="urn:xmpp:xbosh" rid="9" sid="s" xmpp:restart="true" xml:lang="en"/>`, true},
	{"terminate", `<body xmlns="http://jabber.org/protocol/httpbind" rid="10" sid="s" type="terminate"/>`, true},
	{"other prefix for xbosh", `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:x="urn:xmpp:xbosh" x:version="1.0" rid="1"/>`, true},
	{"prefix in another namespace", `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:o="urn:other" o:rid="99" rid="1"/>`, true},
	{"unbound prefix", `<body xmlns="http://jabber.org/protocol/httpbind" xmpp:restart="true" rid="1"/>`, true},
	{"gt in value", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1" route="a>b"/>`, true},
	{"session creation", `<body content='text/xml; charset=utf-8' hold='1' rid='1' to='example.test' ver='1.6' wait='60' xml:lang='en' xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' xmpp:version='1.0'/>`, true},

	{"a stanza", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"><presence/></body>`, false},
	{"xml declaration", `<?xml version="1.0"?><body xmlns="http://jabber.org/protocol/httpbind" rid="1"/>`, false},
	{"entity in value", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1" sid="a&amp;b"/>`, false},
	{"unknown entity", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1" sid="&bogus;"/>`, false},
	{"lt in value", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1" sid="a<b"/>`, false},
	{"carriage return in value", "<body xmlns=\"http://jabber.org/protocol/httpbind\" rid=\"1\" sid=\"a\r\nb\"/>", false},
	{"nul in value", "<body xmlns=\"http://jabber.org/protocol/httpbind\" rid=\"1\" sid=\"a\x00b\"/>", false},
	{"utf-8 in value", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1" sid="ção"/>`, false},
	{"invalid utf-8 in value", "<body xmlns=\"http://jabber.org/protocol/httpbind\" rid=\"1\" sid=\"\xff\"/>", false},
	{"duplicate rid", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1" rid="2"/>`, false},
	{"duplicate xmlns", `<body xmlns="urn:evil" xmlns="http://jabber.org/protocol/httpbind" rid="1"/>`, false},
	{"empty prefix declaration", `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:p="" p:rid="2" rid="1"/>`, false},
	{"wrong namespace", `<body xmlns="jabber:client" rid="1"/>`, false},
	{"no namespace", `<body rid="1"/>`, false},
	{"prefixed root", `<h:body xmlns:h="http://jabber.org/protocol/httpbind" rid="1"/>`, false},
	{"longer root name", `<bodyx xmlns="http://jabber.org/protocol/httpbind" rid="1"/>`, false},
	{"unquoted", `<body xmlns="http://jabber.org/protocol/httpbind" rid=1/>`, false},
	{"no value", `<body xmlns="http://jabber.org/protocol/httpbind" rid/>`, false},
	{"attributes run together", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"sid="s"/>`, false},
	{"two colons", `<body xmlns="http://jabber.org/protocol/httpbind" a:b:c="1" rid="1"/>`, false},
	{"trailing colon", `<body xmlns="http://jabber.org/protocol/httpbind" a:="1" rid="1"/>`, false},
	{"digit first", `<body xmlns="http://jabber.org/protocol/httpbind" 1rid="1" rid="1"/>`, false},
	{"text inside", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1">hi</body>`, false},
	{"comment inside", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"><!-- x --></body>`, false},
	{"second root", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"/><body xmlns="http://jabber.org/protocol/httpbind" rid="2"/>`, false},
	{"text after", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"/>x`, false},
	{"mismatched end", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"></bodyx>`, false},
	{"slash alone", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"/ >`, false},
	{"unterminated value", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1`, false},
	{"truncated", `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"`, false},
	{"empty", ``, false},
	{"too many attributes", `<body xmlns="http://jabber.org/protocol/httpbind"` + manyAttrs(maxFastAttrs) + `/>`, false},
}

func manyAttrs(n int) string {
	var sb strings.Builder
	for i := range n {
		sb.WriteString(` a` + strings.Repeat("x", i) + `="1"`)
	}
	return sb.String()
}

// TestBOSHBodyFastPath: parseEmptyBOSHBody takes the bodies clients send
// without children and gives what encoding/xml gives; anything else it
// leaves to encoding/xml, and parseBOSHBody answers as decodeBOSHBody does.
func TestBOSHBodyFastPath(t *testing.T) {
	for _, tc := range emptyBodies {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.body)
			fast, ok := parseEmptyBOSHBody(data)
			if ok != tc.fast {
				t.Fatalf("fast path took it: %v, want %v", ok, tc.fast)
			}
			slow, slowErr := decodeBOSHBody(data)
			if ok {
				if slowErr != nil {
					t.Fatalf("fast path took what encoding/xml refuses: %v", slowErr)
				}
				if !maps.Equal(fast.attrs, slow.attrs) || len(slow.kids) != 0 {
					t.Fatalf("fast %v, encoding/xml %v (%d children)", fast.attrs, slow.attrs, len(slow.kids))
				}
			}
			got, err := parseBOSHBody(data)
			if (err != nil) != (slowErr != nil) {
				t.Fatalf("parseBOSHBody error %v, encoding/xml's %v", err, slowErr)
			}
			if err == nil && (!maps.Equal(got.attrs, slow.attrs) || len(got.kids) != len(slow.kids)) {
				t.Fatalf("parseBOSHBody %v, encoding/xml %v", got.attrs, slow.attrs)
			}
		})
	}
}

// FuzzEmptyBOSHBody checks parseEmptyBOSHBody against encoding/xml: what
// the scan takes, encoding/xml takes too, with the same attributes and
// no children.
func FuzzEmptyBOSHBody(f *testing.F) {
	for _, tc := range emptyBodies {
		f.Add([]byte(tc.body))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := parseEmptyBOSHBody(data)
		if !ok {
			return
		}
		slow, err := decodeBOSHBody(data)
		if err != nil {
			t.Fatalf("fast path took %q, encoding/xml refuses it: %v", data, err)
		}
		if !maps.Equal(fast.attrs, slow.attrs) || len(slow.kids) != 0 {
			t.Fatalf("%q: fast %v, encoding/xml %v (%d children)", data, fast.attrs, slow.attrs, len(slow.kids))
		}
	})
}

// BenchmarkParseBOSHBody: the poll's body, scanned and on encoding/xml.
func BenchmarkParseBOSHBody(b *testing.B) {
	data := []byte(`<body rid='4117' xmlns='http://jabber.org/protocol/httpbind' sid='9a1f4c0e2b7d4e5f8a6b1c3d9e0f2a4b6c8d0e1f'/>`)
	for _, bc := range []struct {
		name  string
		parse func([]byte) (*boshBody, error)
	}{{"scan", parseBOSHBody}, {"encoding-xml", decodeBOSHBody}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.parse(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestReadBOSHBody: the body is read whole, into one buffer of its
// Content-Length when it declares one, and bounded either way.
func TestReadBOSHBody(t *testing.T) {
	small := `<body xmlns="http://jabber.org/protocol/httpbind" rid="1"/>`
	big := strings.Repeat("x", boshMaxBody+1)
	for _, tc := range []struct {
		name    string
		body    string
		length  int64 // -1: unknown (chunked)
		want    error
		wantLen int
	}{
		{"declared", small, int64(len(small)), nil, len(small)},
		{"chunked", small, -1, nil, len(small)},
		{"empty", "", 0, nil, 0},
		{"at the bound", big[:boshMaxBody], boshMaxBody, nil, boshMaxBody},
		{"declared over the bound", big, int64(len(big)), ErrTooLarge, 0},
		{"declared far over the bound, nothing sent", "", 1 << 40, ErrTooLarge, 0},
		{"chunked over the bound", big, -1, ErrTooLarge, 0},
		{"shorter than declared", small, int64(len(small)) + 10, ErrBadRequest, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/http-bind", strings.NewReader(tc.body))
			r.ContentLength = tc.length
			data, err := readBOSHBody(r)
			if !errors.Is(err, tc.want) || (tc.want == nil && len(data) != tc.wantLen) {
				t.Fatalf("read %d bytes, %v; want %d, %v", len(data), err, tc.wantLen, tc.want)
			}
		})
	}
}

// TestBOSHEmptyPayloadShared: the answer without stanzas is one shared
// slice that an append cannot write into, and the same bytes as any other
// payload's frame.
func TestBOSHEmptyPayloadShared(t *testing.T) {
	want := `<body xmlns="http://jabber.org/protocol/httpbind" xmlns:stream="http://etherx.jabber.org/streams"></body>`
	for _, got := range [][]byte{boshPayload(""), boshPayloadOf(nil), boshPayloadOf([][]byte{})} {
		if string(got) != want || cap(got) != len(got) || &got[0] != &boshEmptyPayload[0] {
			t.Fatalf("empty payload %q (cap %d), want the shared %q", got, cap(got), want)
		}
	}
	_ = append(boshPayload(""), "<x/>"...)
	if string(boshEmptyPayload) != want {
		t.Fatalf("an append wrote into the shared payload: %q", boshEmptyPayload)
	}
	if got := boshPayloadOf([][]byte{[]byte("<a/>"), []byte("<b/>")}); string(got) != string(boshPayload("<a/><b/>")) {
		t.Fatalf("payload of two stanzas %q", got)
	}
}
