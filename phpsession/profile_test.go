package phpsession

import (
	"encoding/base64"
	"errors"
	"testing"
	"time"
)

func TestSplitLogin(t *testing.T) {
	for in, want := range map[string]string{
		"alice@example.org":       "alice",
		"maria@setor@example.org": "maria@setor", // Expresso's split_login_domain: the last "@"
		"bob":                     "bob",
		"@example.org":            "",
		"carol@":                  "carol",
	} {
		if got := SplitLogin(in); got != want {
			t.Errorf("SplitLogin(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMcryptRecognised: Expresso's mcrypt output (hex of 3DES blocks) is
// refused; base64 of real passwords, and hex of a wrong length, are not
// mistaken for it.
func TestMcryptRecognised(t *testing.T) {
	for s, want := range map[string]bool{
		"7359cfd33b3bfa6f06010cbcba77621f": true,
		"7359cfd33b3bfa6f":                 true,
		"7359cfd33b3bfa6":                  false, // not whole 8-byte blocks
		"7359CFD33B3BFA6F":                 false, // bin2hex is lower case
		"":                                 false,
		base64.StdEncoding.EncodeToString([]byte("s3nha")):        false,
		base64.StdEncoding.EncodeToString([]byte("abcdefghijkl")): false,
		base64.StdEncoding.EncodeToString([]byte("1234567890ab")): false,
	} {
		if got := isMcryptHex(s); got != want {
			t.Errorf("isMcryptHex(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestExpressoPasswordUnavailable: a session whose only password is the
// mcrypt app session is refused with the key to enable, and one with a
// plaintext copy uses that copy.
func TestExpressoPasswordUnavailable(t *testing.T) {
	const hex = "7359cfd33b3bfa6f06010cbcba77621f"
	enc := `phpgw_session|a:3:{s:10:"session_id";s:3:"abc";s:11:"session_lid";s:18:"maria@setor@ex.org";` +
		`s:18:"phpgw_app_sessions";a:1:{s:8:"phpgwapi";a:1:{s:8:"password";a:1:{s:7:"content";s:32:"` + hex + `";}}}}`
	vars, err := Decode([]byte(enc), SerializerPHP, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	cs, _ := ParseCharset("l1")
	_, err = ExpressoProfile(0).Identity(vars, cs, time.Now())
	var pe *PasswordUnavailableError
	if !errors.As(err, &pe) || !errors.Is(err, ErrPasswordUnavailable) || pe.User != "maria@setor" || pe.Key != appSessionPassword {
		t.Fatalf("Identity = %v (%+v)", err, pe)
	}
	withPlain := enc + `phpgw_info|a:1:{s:12:"expressomail";a:1:{s:4:"user";a:1:{s:6:"passwd";s:2:"pw";}}}`
	vars, err = Decode([]byte(withPlain), SerializerPHP, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ExpressoProfile(0).Identity(vars, cs, time.Now())
	if err != nil || id.User != "maria@setor" || id.Password != "pw" {
		t.Fatalf("with a plaintext copy: %+v %v", id, err)
	}
	// JabberIt's plaintext copy comes after the app session in the order,
	// and is still used.
	jabberit := enc + `phpgw_info|a:1:{s:18:"jabberit_messenger";a:1:{s:6:"passwd";s:3:"pw2";}}`
	vars, err = Decode([]byte(jabberit), SerializerPHP, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := ExpressoProfile(0).Identity(vars, cs, time.Now()); err != nil || id.Password != "pw2" {
		t.Fatalf("with JabberIt's copy: %+v %v", id, err)
	}
}

func TestCheckActivity(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	p := ExpressoProfile(time.Hour)
	for _, tc := range []struct {
		last time.Time
		want error
	}{
		{time.Time{}, nil},
		{now.Add(-59 * time.Minute), nil},
		{now.Add(-61 * time.Minute), ErrExpired},
	} {
		if err := p.CheckActivity(tc.last, now); !errors.Is(err, tc.want) {
			t.Errorf("CheckActivity(%v) = %v, want %v", tc.last, err, tc.want)
		}
	}
	if err := GenericProfile("u", "p", "", "").CheckActivity(now.Add(-100*time.Hour), now); err != nil {
		t.Errorf("generic: %v", err)
	}
}

// TestCharsetAliases: every ISO-8859-1 alias decodes and encodes strictly
// (0x80-0x9f are C1 controls, not windows-1252), and Encode inverts String.
func TestCharsetAliases(t *testing.T) {
	raw := []byte("Jo\xe3o \x80 Ara\xfajo")
	for _, name := range []string{"ISO-8859-1", "iso-8859-1", "iso8859-1", "latin1", "L1", " l1 "} {
		cs, err := ParseCharset(name)
		if err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		s := cs.String(raw)
		if s != "João \u0080 Araújo" {
			t.Errorf("%q: String = %q", name, s)
		}
		back, err := cs.Encode(s)
		if err != nil || string(back) != string(raw) {
			t.Errorf("%q: Encode = %q %v", name, back, err)
		}
	}
	utf, _ := ParseCharset("")
	if b, err := utf.Encode("é"); err != nil || string(b) != "é" {
		t.Errorf("utf-8 Encode = %q %v", b, err)
	}
	w, _ := ParseCharset("windows-1252")
	if b, err := w.Encode("€"); err != nil || string(b) != "\x80" {
		t.Errorf("windows-1252 Encode = %q %v", b, err)
	}
	l1, _ := ParseCharset("latin1")
	if _, err := l1.Encode("€"); err == nil {
		t.Error("ISO-8859-1 encoded €")
	}
}
