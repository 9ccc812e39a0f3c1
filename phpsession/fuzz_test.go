package phpsession

import (
	"errors"
	"testing"
)

var fuzzSeeds = []string{
	`a|i:1;b|s:3:"x|y";c|a:2:{i:0;d:0.5;s:1:"k";O:8:"stdClass":1:{s:1:"p";r:1;}}d|R:2;`,
	`a:2:{s:1:"a";i:1;s:1:"b";a:1:{i:0;R:2;}}`,
	"\x01aN;\x02bcs:1:\"z\";",
	`v|E:11:"Suit:Hearts";w|C:3:"Foo":2:{xy}`,
	`v|S:3:"\41\62c";`,
	`v|d:-1.5E+25;w|d:NAN;`,
	// The forms where PHP 8.2's session_start() and an earlier decoder
	// disagreed (see TestDifferentialPHP), and their siblings.
	`k|i:1;x`, `a:1:{s:3:"foo";s:3:"bar";}`, "k|i:1;\n",
	`k|a:1:{i:0;R:+1;}`, `k|O:8:"stdClass":0:{}j|r:18446744073709551617;`, `k|i:1;j|R:01;`,
	`N;`, `i:1;garbage`, `O:8:"stdClass":1:{s:1:"k";i:1;}`, `a:1:{s:1:"k";i:1;}}`, `a:1:{s:1:"k";i:1;}a:0:{}`,
	`k|O:8:"stdClass"::{}`, `k|O:8:"stdClass":-0:{}`, `k|C:3:"Foo":+2:{ab}`, `k|O:1:"5":0:{}`,
	`k|s:18446744073709551617:"a";`, `k|S:18446744073709551617:"a";`, "\x01ki:1;\x00",
}

func fuzzDecode(f *testing.F, ser Serializer) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	lim := Limits{MaxBytes: 1 << 16, MaxDepth: 32}
	f.Fuzz(func(t *testing.T, data []byte) {
		vars, err := Decode(data, ser, lim)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		got, err := MarshalJSON(vars, Charset{})
		if err != nil {
			t.Fatal(err)
		}
		if len(data) == 0 || len(data) >= lim.MaxBytes {
			return
		}
		// PHP's rule for bytes after a whole session: php_serialize
		// ignores them, php and php_binary destroy the session.
		more := append(data[:len(data):len(data)], 'x')
		vars2, err := Decode(more, ser, lim)
		if ser != SerializerPHPSerialize {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%q decodes, %q = %v, want ErrMalformed", data, more, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q decodes, %q = %v", data, more, err)
		}
		if got2, _ := MarshalJSON(vars2, Charset{}); string(got2) != string(got) {
			t.Fatalf("a trailing byte changed %q from %s to %s", data, got, got2)
		}
	})
}

func FuzzDecodePHP(f *testing.F)          { fuzzDecode(f, SerializerPHP) }
func FuzzDecodePHPSerialize(f *testing.F) { fuzzDecode(f, SerializerPHPSerialize) }
func FuzzDecodePHPBinary(f *testing.F)    { fuzzDecode(f, SerializerPHPBinary) }

func FuzzValidateID(f *testing.F) {
	for _, s := range []string{"abcdefghijklmnopqrstuvwxyz012345", "../../etc/passwd", "a\x00b", "%2e%2e%2f", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateID(id, 1) != nil {
			return
		}
		for i := 0; i < len(id); i++ {
			if c := id[i]; c == '/' || c == '.' || c == 0 || c == '%' || c == '\\' {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}

func FuzzIDFromCookie(f *testing.F) {
	f.Add("sessionid=abc; other=1", "sessionid")
	f.Add("a=%ZZ; sessionid=%2e%2e", "sessionid")
	f.Fuzz(func(t *testing.T, header, name string) {
		id, ok := IDFromCookie(header, name)
		if ok && ValidateID(id, 1) == nil {
			for i := 0; i < len(id); i++ {
				if id[i] == '/' || id[i] == '.' {
					t.Fatalf("%q", id)
				}
			}
		}
	})
}
