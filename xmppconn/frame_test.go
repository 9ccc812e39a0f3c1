package xmppconn

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

const testHeader = `<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' id='abc' version='1.0'>`

type frameResult struct {
	kind frameKind
	name string // local name of the parsed element
	raw  string
}

// frames runs the framer over input (read one byte at a time when split)
// and returns what it produced up to the first error.
func frames(input string, max int, split bool) ([]frameResult, error) {
	var r io.Reader = strings.NewReader(input)
	if split {
		r = iotest.OneByteReader(r)
	}
	f := framer{max: max}
	f.reset(&byteReader{r: r})
	var hdr []byte
	var out []frameResult
	for {
		kind, raw, err := f.next()
		if err != nil {
			return out, err
		}
		fr := frameResult{kind: kind, raw: string(raw)}
		switch kind {
		case frameStreamOpen:
			attrs, err := parseHeader(raw)
			if err != nil {
				return out, err
			}
			hdr = headerContext(raw, attrs)
		case frameElement:
			n, err := parseElement(hdr, raw)
			if err != nil {
				return out, err
			}
			fr.name = n.name.Space + " " + n.name.Local
		}
		out = append(out, fr)
		f.release()
	}
}

func TestFramer(t *testing.T) {
	msg := `<message to='a@b' id="x>y"><body>1 &lt; 2 &amp;&amp; a&gt;b</body><![CDATA[<not a tag>]]></message>`
	tests := []struct {
		name    string
		in      string
		max     int
		want    []string // element names in order ("" for stream close, "ws" for whitespace)
		wantErr error
	}{
		{name: "stanzas", in: testHeader + `<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>` + msg + `<r xmlns='urn:xmpp:sm:3'/></stream:stream>`,
			want: []string{"http://etherx.jabber.org/streams features", "jabber:client message", "urn:xmpp:sm:3 r", "close"}, wantErr: io.EOF},
		{name: "whitespace keepalive", in: testHeader + " \n" + msg, want: []string{"jabber:client message"}, wantErr: io.EOF},
		{name: "bom", in: "\xEF\xBB\xBF" + testHeader + msg, want: []string{"jabber:client message"}, wantErr: io.EOF},
		{name: "too large", in: testHeader + `<message><body>` + strings.Repeat("x", 5000) + `</body></message>`, max: 4096, wantErr: ErrStanzaTooLarge},
		{name: "too deep", in: testHeader + strings.Repeat("<a>", 100), wantErr: ErrStanzaTooLarge},
		{name: "comment", in: testHeader + `<!-- hi -->`, wantErr: errRestrictedXML},
		{name: "comment inside", in: testHeader + `<message><!-- hi --></message>`, wantErr: errRestrictedXML},
		{name: "pi inside", in: testHeader + `<message><?pi x?></message>`, wantErr: errRestrictedXML},
		{name: "doctype", in: `<!DOCTYPE x>`, wantErr: errRestrictedXML},
		{name: "text at top", in: testHeader + `hello`, wantErr: ErrProtocol},
		{name: "no header", in: `<message/>`, wantErr: ErrProtocol},
		{name: "lt in attribute", in: testHeader + `<message id='<'/>`, wantErr: ErrProtocol},
		{name: "undefined entity", in: testHeader + `<message>&foo;</message>`, wantErr: ErrProtocol},
		{name: "mismatched", in: testHeader + `<message></iq>`, wantErr: ErrProtocol},
		{name: "truncated", in: testHeader + `<message><body>`, wantErr: io.EOF},
	}
	for _, tt := range tests {
		for _, split := range []bool{false, true} {
			name := tt.name
			if split {
				name += "/split"
			}
			t.Run(name, func(t *testing.T) {
				max := tt.max
				if max == 0 {
					max = 1 << 16
				}
				out, err := frames(tt.in, max, split)
				var got []string
				for _, f := range out {
					switch f.kind {
					case frameElement:
						got = append(got, f.name)
					case frameStreamClose:
						got = append(got, "close")
					}
				}
				want := tt.want
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("elements = %q, want %q", got, want)
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
			})
		}
	}
}

func TestParseElementInner(t *testing.T) {
	hdr := stdHeader
	tests := []struct{ in, inner string }{
		{`<iq type='result' id='1'><query xmlns='jabber:iq:roster'><item jid='a@b'/></query></iq>`, `<query xmlns='jabber:iq:roster'><item jid='a@b'/></query>`},
		{`<iq type='result' id='1'/>`, ``},
		{`<iq type='result' id='1'></iq>`, ``},
		{`<iq type='result' id='1' > <x/> </iq >`, ` <x/> `},
	}
	for _, tt := range tests {
		n, err := parseElement(hdr, []byte(tt.in))
		if err != nil {
			t.Fatalf("%s: %v", tt.in, err)
		}
		if string(n.inner) != tt.inner {
			t.Errorf("%s: inner %q, want %q", tt.in, n.inner, tt.inner)
		}
		if n.name.Space != nsClient || n.get("id") != "1" {
			t.Errorf("%s: parsed %+v", tt.in, n.name)
		}
	}
}

// TestFramerReleasesBuffers: after a large stanza the framer and the
// reader hold no buffer.
func TestFramerReleasesBuffers(t *testing.T) {
	in := testHeader + `<message><body>` + strings.Repeat("x", 40000) + `</body></message>`
	br := &byteReader{r: strings.NewReader(in)}
	f := framer{max: 1 << 20}
	f.reset(br)
	for range 2 {
		if _, _, err := f.next(); err != nil {
			t.Fatal(err)
		}
	}
	f.release()
	if f.buf != nil || br.buf != nil || br.Buffered() != 0 {
		t.Fatalf("buffers kept: frame %d, reader %v", cap(f.buf), br.buf != nil)
	}
}

func elements(fs []frameResult) string {
	var b strings.Builder
	for _, f := range fs {
		if f.kind == frameElement {
			b.WriteString(f.raw)
			b.WriteByte(0)
		}
	}
	return b.String()
}

// TestWhitespaceKeepalive: a lone space is reported at once, not held
// until the next element arrives.
func TestWhitespaceKeepalive(t *testing.T) {
	pr, pw := io.Pipe()
	f := framer{max: 4096}
	f.reset(&byteReader{r: pr})
	go func() {
		io.WriteString(pw, testHeader)
		io.WriteString(pw, " ")
	}()
	if kind, _, err := f.next(); err != nil || kind != frameStreamOpen {
		t.Fatalf("first frame %v, %v", kind, err)
	}
	if kind, _, err := f.next(); err != nil || kind != frameSpace {
		t.Fatalf("second frame %v, %v", kind, err)
	}
	pw.Close()
}

func FuzzFrame(f *testing.F) {
	for _, s := range []string{
		`<message to='a@b' id="x>y"><body>hi</body></message>`,
		`<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>`,
		`<iq type='get' id='1'><ping xmlns='urn:xmpp:ping'/></iq> <r xmlns='urn:xmpp:sm:3'/>`,
		`<a><![CDATA[]]>]]></a>`, `</stream:stream>`, `<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>`,
		`<x xmlns:p='u'><p:y p:a='1'/></x>`, "<m>\xff</m>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		const max = 4096
		out, _ := frames(testHeader+s, max, false)
		for _, fr := range out {
			if len(fr.raw) > max {
				t.Fatalf("frame of %d bytes over the %d limit", len(fr.raw), max)
			}
		}
		if len(s) < 512 {
			split, _ := frames(testHeader+s, max, true)
			if a, b := elements(out), elements(split); a != b {
				t.Fatalf("split reads framed differently: %q vs %q", a, b)
			}
		}
	})
}

func TestWellFormed(t *testing.T) {
	for in, ok := range map[string]bool{
		`<query xmlns="jabber:iq:roster"/>`: true,
		`<a><b>text &amp; more</b></a><c/>`: true,
		``:                                  true,
		`<a>`:                               false,
		`</x><y>`:                           false,
		`<a></b>`:                           false,
		`<!-- c --><a/>`:                    false,
		`<?pi?>`:                            false,
		`<a>&bogus;</a>`:                    false,
	} {
		if err := wellFormed([]byte(in)); (err == nil) != ok {
			t.Errorf("wellFormed(%q) = %v, want ok=%v", in, err, ok)
		}
	}
}

func TestFramerMismatchedEnd(t *testing.T) {
	for _, in := range []string{
		`<message><body>hi</message><message><body>next</body></message>`,
		`<a><b></a></b>`,
		`<a><b/></c>`,
		`<p:a xmlns:p="u"></a>`,
	} {
		out, err := frames(testHeader+in, 4096, false)
		if !errors.Is(err, ErrProtocol) || len(out) != 1 {
			t.Errorf("%s: %d frames, err %v; want the header then ErrProtocol", in, len(out), err)
		}
	}
}
