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
	raw  string // the element, or the start tag of a skipped one
	size int    // bytes of a skipped element
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
		case frameSkipped:
			fr.size = f.skipped()
			if n, err := parseStartTag(hdr, raw); err == nil {
				fr.name = n.name.Space + " " + n.name.Local
			}
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
		{name: "too large is skipped", in: testHeader + `<message id='big'><body>` + strings.Repeat("x", 5000) + `</body></message>` + msg,
			max: 4096, want: []string{"skipped jabber:client message", "jabber:client message"}, wantErr: io.EOF},
		{name: "skipped with markup", in: testHeader + `<message><a><b x='>'/><![CDATA[</a>]]></a>` + strings.Repeat("<c>y</c>", 1000) + `<![CDATA[` + strings.Repeat("]", 5000) + `]]></message><r xmlns='urn:xmpp:sm:3'/>`,
			max: 4096, want: []string{"skipped jabber:client message", "urn:xmpp:sm:3 r"}, wantErr: io.EOF},
		{name: "start tag over the limit", in: testHeader + `<message from='bob@b/r' id='7' x='` + strings.Repeat("x", 5000) + `'/>` + msg,
			max: 4096, want: []string{"skipped jabber:client message", "jabber:client message"}, wantErr: io.EOF},
		{name: "header over the limit", in: `<stream:stream xmlns:stream='http://etherx.jabber.org/streams' x='` + strings.Repeat("x", 5000) + `'>`, max: 4096, wantErr: ErrStanzaTooLarge},
		{name: "too large and ends early", in: testHeader + `<message><body>` + strings.Repeat("x", 5000), max: 4096, wantErr: io.EOF},
		{name: "too large and mismatched", in: testHeader + `<message><body>` + strings.Repeat("x", 5000) + `</bodx></message>` + msg, max: 4096, wantErr: ErrProtocol},
		{name: "too large with a comment", in: testHeader + `<message><body>` + strings.Repeat("x", 5000) + `<!-- c --></body></message>`, max: 4096, wantErr: errRestrictedXML},
		{name: "too large without end", in: testHeader + `<message><body>` + strings.Repeat("x", 17*4096), max: 4096, wantErr: ErrStanzaTooLarge},
		{name: "too deep", in: testHeader + strings.Repeat("<a>", 100), wantErr: ErrStanzaTooLarge},
		{name: "too deep while skipping", in: testHeader + `<message>` + strings.Repeat("x", 5000) + strings.Repeat("<a>", 100) + strings.Repeat("</a>", 100) + `</message>`, max: 4096, wantErr: ErrStanzaTooLarge},
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
					case frameSkipped:
						got = append(got, "skipped "+f.name)
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
		`<message from='bob@example.org/x' id='1' type='chat'><body>''''''''''''''''''''''''''''''''''''''''''''''''''''''''</body></message><r/>`,
		`<message from='b' x='aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'/><a/>`,
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
		// With a small limit, what is over it is skipped whole and the
		// stream is framed as before: the same elements, in the same
		// places, those over the limit skipped with their exact size.
		const small = 128 // testHeader fits
		low, _ := frames(testHeader+s, small, false)
		if len(low) == 0 {
			t.Fatal("the header did not fit the small limit")
		}
		// Past the common prefix one run stopped: at an element the
		// parser refused (not parsed when skipped), or nested too deep.
		for i := range min(len(low), len(out)) {
			fr, want := low[i], out[i]
			switch {
			case want.kind == frameElement && len(want.raw) > small:
				if fr.kind != frameSkipped || fr.size != len(want.raw) || len(fr.raw) > small+1 {
					t.Fatalf("frame %d of %d bytes: got %v of %d bytes, tag %q", i, len(want.raw), fr.kind, fr.size, fr.raw)
				}
				if fr.raw != "" && !strings.HasPrefix(want.raw, strings.TrimSuffix(fr.raw, ">")) {
					t.Fatalf("frame %d: start tag %q is not a prefix of %q", i, fr.raw, want.raw)
				}
			case want.kind == frameStreamClose && len(want.raw) > small:
				// The stream's end tag, over the limit (attributes on an
				// end tag): the stream ends either way, and its bytes are
				// not read (stream.go), so only the kind must match.
				if fr.kind != frameStreamClose {
					t.Fatalf("frame %d: the stream's end tag of %d bytes read as %v with a small limit", i, len(want.raw), fr.kind)
				}
			case fr.kind != want.kind || fr.raw != want.raw:
				t.Fatalf("frame %d: %v %q with a small limit, %v %q with a large one", i, fr.kind, fr.raw, want.kind, want.raw)
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

// TestFramerSkip: an element over the limit is read through without being
// kept; the framer says how large it was and gives its start tag, closed
// after the last attribute that fitted, and the stream goes on.
func TestFramerSkip(t *testing.T) {
	const max = 4096
	body := strings.Repeat("&apos;", 2000)
	tests := []struct {
		name, in, tag string
	}{
		{"body", `<message from='bob@b/r' type='chat' id='m1'><body>` + body + `</body></message>`, `<message from='bob@b/r' type='chat' id='m1'>`},
		{"long attribute", `<message from='bob@b/r' id='m2' x='` + body + `'><body/></message>`, `<message from='bob@b/r' id='m2'>`},
		{"long name", `<message` + strings.Repeat("x", 5000) + `/>`, ``},
	}
	for _, tt := range tests {
		for _, split := range []bool{false, true} {
			out, err := frames(testHeader+tt.in+`<message id='next'/>`, max, split)
			if !errors.Is(err, io.EOF) || len(out) != 3 {
				t.Fatalf("%s: %d frames, %v", tt.name, len(out), err)
			}
			sk := out[1]
			if sk.kind != frameSkipped || sk.size != len(tt.in) {
				t.Errorf("%s: frame %v of %d bytes, want skipped of %d", tt.name, sk.kind, sk.size, len(tt.in))
			}
			if sk.raw != tt.tag {
				t.Errorf("%s: start tag %.80q, want %.80q", tt.name, sk.raw, tt.tag)
			}
			if out[2].kind != frameElement || out[2].raw != `<message id='next'/>` {
				t.Errorf("%s: after the skipped element got %v %q", tt.name, out[2].kind, out[2].raw)
			}
		}
	}
}

// TestFramerEndlessElement: an element that never ends is read no further
// than skipFactor times the limit, without growing any buffer.
func TestFramerEndlessElement(t *testing.T) {
	const max = 4096
	cr := &countingReader{r: io.MultiReader(strings.NewReader(testHeader+`<message><body>`), sameByte('x'))}
	f := framer{max: max}
	f.reset(&byteReader{r: cr})
	if kind, _, err := f.next(); err != nil || kind != frameStreamOpen {
		t.Fatalf("header: %v, %v", kind, err)
	}
	_, _, err := f.next()
	if !errors.Is(err, ErrStanzaTooLarge) {
		t.Fatalf("err = %v, want ErrStanzaTooLarge", err)
	}
	if cr.n > skipFactor*max+readBufSize+len(testHeader) {
		t.Errorf("read %d bytes, want at most about %d", cr.n, skipFactor*max)
	}
	if cap(f.buf) > max {
		t.Errorf("buffer grew to %d bytes", cap(f.buf))
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// sameByte reads as an endless run of one byte.
type sameByte byte

func (r sameByte) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}
