package xmppconn

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseJID(t *testing.T) {
	tests := []struct {
		in   string
		want JID
		err  bool
	}{
		{in: "alice@example.org/web", want: JID{"alice", "example.org", "web"}},
		{in: "Alice@Example.ORG", want: JID{"alice", "example.org", ""}},
		{in: "example.org", want: JID{"", "example.org", ""}},
		{in: "example.org.", want: JID{"", "example.org", ""}},
		{in: "example.org/res/with/slashes", want: JID{"", "example.org", "res/with/slashes"}},
		{in: "joão@exemplo.com.br/Gajim Desktop", want: JID{"joão", "exemplo.com.br", "Gajim Desktop"}},
		{in: "ÉLODIE@ÉCOLE.fr", want: JID{"élodie", "école.fr", ""}},
		{in: "a@[::1]", want: JID{"a", "[::1]", ""}},
		{in: "a@127.0.0.1/r", want: JID{"a", "127.0.0.1", "r"}},
		{in: "user@host/r@x", want: JID{"user", "host", "r@x"}},
		{in: "", err: true},
		{in: "@example.org", err: true},
		{in: "a@", err: true},
		{in: "a@example.org/", err: true},
		{in: "a b@example.org", err: true},
		{in: "a@exa mple.org", err: true},
		{in: "a@-example.org", err: true},
		{in: "a@example..org", err: true},
		{in: "a@[1.2.3.4]", err: true},
		{in: "a@[::1", err: true},
		{in: "a:b@example.org", err: true},
		{in: "a<b@example.org", err: true},
		{in: "a@example.org/\x00", err: true},
		{in: "\xff@example.org", err: true},
		{in: strings.Repeat("a", 1024) + "@example.org", err: true},
		{in: "a@example.org/" + strings.Repeat("r", 1024), err: true},
		{in: "a@" + strings.Repeat("abcdefghi.", 103) + "org", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseJID(tt.in)
			if tt.err {
				if !errors.Is(err, ErrInvalidJID) {
					t.Fatalf("ParseJID(%q) = %+v, %v; want ErrInvalidJID", tt.in, got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseJID(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			again, err := ParseJID(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip of %q: %+v, %v", got.String(), again, err)
			}
			if b := got.Bare(); b.Resource != "" || b.Local != got.Local || b.Domain != got.Domain {
				t.Fatalf("Bare() = %+v", b)
			}
		})
	}
}

func FuzzParseJID(f *testing.F) {
	for _, s := range []string{"alice@example.org/web", "Ω@Δ.gr/☺", "a@[::1]/x", "@/", "a@b@c/d/e", "\u0130@x", "x@xn--bcher-kva.example"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		j, err := ParseJID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidJID) {
				t.Fatalf("error %v does not wrap ErrInvalidJID", err)
			}
			return
		}
		if j.Domain == "" || len(j.Local) > maxPart || len(j.Domain) > maxPart || len(j.Resource) > maxPart {
			t.Fatalf("accepted %q as %+v", s, j)
		}
		if !utf8.ValidString(j.String()) {
			t.Fatalf("invalid UTF-8 out of %q", s)
		}
		// Normalization is idempotent.
		j2, err := ParseJID(j.String())
		if err != nil || j2 != j {
			t.Fatalf("ParseJID(%q) = %+v; reparse of %q = %+v, %v", s, j, j.String(), j2, err)
		}
	})
}
