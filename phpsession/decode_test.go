package phpsession

import (
	"errors"
	"math"
	"strconv"
	"sync"
	"testing"
)

func TestDecodeValues(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // MarshalJSON of the decoded session
	}{
		{"null", `v|N;`, `{"v":null}`},
		{"bools", `t|b:1;f|b:0;`, `{"t":true,"f":false}`},
		{"ints", `a|i:0;b|i:-17;c|i:+5;d|i:007;`, `{"a":0,"b":-17,"c":5,"d":7}`},
		{"int max", `v|i:9223372036854775807;`, `{"v":9223372036854775807}`},
		{"int min", `v|i:-9223372036854775808;`, `{"v":-9223372036854775808}`},
		{"int clamp high", `v|i:9223372036854775808;`, `{"v":9223372036854775807}`},
		{"int clamp low", `v|i:-99999999999999999999999;`, `{"v":-9223372036854775808}`},
		{"floats", `a|d:0.5;b|d:-1.5E+25;c|d:1e-7;d|d:.5;e|d:5.;f|d:3;`, `{"a":0.5,"b":-1.5e+25,"c":1.0e-7,"d":0.5,"e":5.0,"f":3.0}`},
		{"float specials", `a|d:INF;b|d:-INF;c|d:NAN;d|d:-0;`, `{"a":"INF","b":"-INF","c":"NAN","d":-0.0}`},
		{"string bytes", `v|s:5:"a|;"}";`, `{"v":"a|;\"}"}`},
		{"escaped string", `v|S:3:"\41\62c";`, `{"v":"Abc"}`},
		{"list", `v|a:2:{i:0;s:1:"x";i:1;s:1:"y";}`, `{"v":["x","y"]}`},
		{"map order", `v|a:2:{i:1;s:1:"x";i:0;s:1:"y";}`, `{"v":{"1":"x","0":"y"}}`},
		{"numeric string keys", `v|a:2:{s:1:"0";s:1:"a";s:2:"05";s:1:"b";}`, `{"v":{"0":"a","05":"b"}}`},
		{"numeric key is a list", `v|a:1:{s:1:"0";s:1:"a";}`, `{"v":["a"]}`},
		{"last duplicate wins", `v|a:2:{s:1:"k";i:1;s:1:"k";i:2;}`, `{"v":{"k":2}}`},
		{"object", `v|O:1:"P":3:{s:1:"a";i:1;s:4:"` + "\x00*\x00" + `b";i:2;s:4:"` + "\x00P\x00" + `c";i:3;}`, `{"v":{"__class":"P","a":1,"b":2,"c":3}}`},
		{"enum", `v|E:11:"Suit:Hearts";`, `{"v":{"__enum":"Suit:Hearts"}}`},
		{"custom", `v|C:3:"Foo":5:{ab}cd}`, `{"v":{"__class":"Foo","__serialized":"ab}cd"}}`},
		{"r copies an object", `a|O:8:"stdClass":0:{}b|r:1;`, `{"a":{"__class":"stdClass"},"b":{"__class":"stdClass"}}`},
		{"r copies an enum", `a|E:11:"Suit:Hearts";b|r:1;`, `{"a":{"__enum":"Suit:Hearts"},"b":{"__enum":"Suit:Hearts"}}`},
		{"R shares", `a|a:1:{i:0;i:1;}b|R:1;`, `{"a":[1],"b":[1]}`},
		{"R shares a scalar", `a|i:5;b|R:1;`, `{"a":5,"b":5}`},
		{"R skips a slot", `a|i:1;b|R:1;c|O:8:"stdClass":0:{}d|r:2;`, `{"a":1,"b":1,"c":{"__class":"stdClass"},"d":{"__class":"stdClass"}}`},
		{"object self", `o|O:8:"stdClass":1:{s:4:"self";r:1;}`, `{"o":{"__class":"stdClass","self":null}}`},
		{"empty", ``, `[]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars, err := Decode([]byte(tt.in), SerializerPHP, DefaultLimits)
			if err != nil {
				t.Fatalf("Decode(%q): %v", tt.in, err)
			}
			got, _ := MarshalJSON(vars, Charset{})
			if string(got) != tt.want {
				t.Errorf("Decode(%q)\n got %s\nwant %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	tests := []struct {
		name string
		ser  Serializer
		in   string
	}{
		{"bad bool", SerializerPHP, `v|b:2;`},
		{"int without digits", SerializerPHP, `v|i:;`},
		{"int with space", SerializerPHP, `v|i: 1;`},
		{"float garbage", SerializerPHP, `v|d:1x;`},
		{"float bare e", SerializerPHP, `v|d:1e;`},
		{"short string", SerializerPHP, `v|s:10:"abc";`},
		{"string bad quote", SerializerPHP, `v|s:3:"abc';`},
		{"negative length", SerializerPHP, `v|s:-1:"";`},
		{"huge count", SerializerPHP, `v|a:99999999:{}`},
		{"array key float", SerializerPHP, `v|a:1:{d:1.5;i:1;}`},
		{"array key array", SerializerPHP, `v|a:1:{a:0:{}i:1;}`},
		{"unterminated array", SerializerPHP, `v|a:1:{i:0;i:1;`},
		{"ref to nothing", SerializerPHP, `v|r:1;`},
		{"r to an int", SerializerPHP, `a|i:5;b|r:1;`},
		{"r to an array", SerializerPHP, `a|a:1:{i:0;i:5;}b|r:1;`},
		{"r to a string", SerializerPHP, `a|s:1:"x";b|r:1;`},
		{"r to itself", SerializerPHP, `a|O:8:"stdClass":0:{}b|R:1;c|r:2;`},
		{"ref out of range", SerializerPHP, `a|i:1;v|R:5;`},
		{"ref zero", SerializerPHP, `a|i:1;v|R:0;`},
		{"bad class name", SerializerPHP, `v|O:3:"a-b":0:{}`},
		{"enum without case", SerializerPHP, `v|E:4:"Suit";`},
		{"unknown tag", SerializerPHP, `v|x:1;`},
		{"truncated", SerializerPHP, `v|i:1`},
		{"bytes after the last value", SerializerPHP, `k|i:1;x`},
		{"newline after the last value", SerializerPHP, "k|i:1;\n"},
		{"php_serialize data read as php", SerializerPHP, `a:1:{s:3:"foo";s:3:"bar";}`},
		{"R with a plus", SerializerPHP, `k|a:1:{i:0;R:+1;}`},
		{"r with a plus", SerializerPHP, `k|O:8:"stdClass":0:{}j|r:+1;`},
		{"R with a minus", SerializerPHP, `k|i:1;j|R:-1;`},
		{"R wrapping to 0", SerializerPHP, `k|i:1;j|R:18446744073709551616;`},
		{"string length with a plus", SerializerPHP, `k|s:+1:"a";`},
		{"array count with a plus", SerializerPHP, `k|a:+1:{i:0;i:1;}`},
		{"array count minus zero", SerializerPHP, `k|a:-0:{}`},
		{"negative property count", SerializerPHP, `k|O:8:"stdClass":-1:{}`},
		{"property count overflow", SerializerPHP, `k|O:8:"stdClass":99999999999999999999:{}`},
		{"negative payload length", SerializerPHP, `k|C:3:"Foo":-1:{}`},
		{"class name with a leading backslash", SerializerPHP, `k|O:4:"\Foo":0:{}`},
		{"serialize truncated", SerializerPHPSerialize, `a:1:{s:1:"k";i:1;`},
		{"serialize leading space", SerializerPHPSerialize, ` a:0:{}`},
		{"binary bytes after the last value", SerializerPHPBinary, "\x01ki:1;x"},
		{"binary name past end", SerializerPHPBinary, "\x05ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode([]byte(tt.in), tt.ser, DefaultLimits)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode(%q) = %v, want ErrMalformed", tt.in, err)
			}
			var se *SyntaxError
			if !errors.As(err, &se) || se.Offset < 0 || se.Offset > len(tt.in) {
				t.Fatalf("Decode(%q) = %v, want a SyntaxError with an offset inside the input", tt.in, err)
			}
		})
	}
}

// TestDecodeLikePHP82 pins, without PHP, what TestDifferentialPHP checks
// against it: the forms PHP 8.2's session_start() accepts though no PHP
// writer produces them.
func TestDecodeLikePHP82(t *testing.T) {
	tests := []struct {
		name string
		ser  Serializer
		in   string
		want string
	}{
		{"php_serialize null", SerializerPHPSerialize, `N;`, `[]`},
		{"php_serialize scalar", SerializerPHPSerialize, `i:1;`, `[]`},
		{"php_serialize empty string", SerializerPHPSerialize, `s:0:"";`, `[]`},
		{"php_serialize object", SerializerPHPSerialize, `O:8:"stdClass":1:{s:1:"k";i:1;}`, `[]`},
		{"php_serialize trailing brace", SerializerPHPSerialize, `a:1:{s:1:"k";i:1;}}`, `{"k":1}`},
		{"php_serialize trailing array", SerializerPHPSerialize, `a:1:{s:1:"k";i:1;}a:0:{}`, `{"k":1}`},
		{"php_serialize trailing NUL", SerializerPHPSerialize, "a:1:{s:1:\"k\";i:1;}\x00", `{"k":1}`},
		{"R with leading zeros", SerializerPHP, `k|i:1;j|R:01;`, `{"k":1,"j":1}`},
		{"R wrapping past 2^64", SerializerPHP, `k|i:1;j|R:18446744073709551617;`, `{"k":1,"j":1}`},
		{"string length wrapping past 2^64", SerializerPHP, `k|s:18446744073709551617:"a";`, `{"k":"a"}`},
		{"property count with a plus", SerializerPHP, `k|O:8:"stdClass":+1:{s:1:"a";i:1;}`, `{"k":{"__class":"stdClass","a":1}}`},
		{"property count without digits", SerializerPHP, `k|O:8:"stdClass"::{}`, `{"k":{"__class":"stdClass"}}`},
		{"property count minus zero", SerializerPHP, `k|O:8:"stdClass":-0:{}`, `{"k":{"__class":"stdClass"}}`},
		{"payload length with a plus", SerializerPHP, `k|C:3:"Foo":+2:{ab}`, `{"k":{"__class":"Foo","__serialized":"ab"}}`},
		{"payload length without digits", SerializerPHP, `k|C:3:"Foo"::{}`, `{"k":{"__class":"Foo","__serialized":""}}`},
		{"class name starting with a digit", SerializerPHP, `k|O:1:"5":0:{}`, `{"k":{"__class":"5"}}`},
		{"class name ending with a backslash", SerializerPHP, `k|O:4:"Foo\":0:{}`, `{"k":{"__class":"Foo\\"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars, err := Decode([]byte(tt.in), tt.ser, DefaultLimits)
			if err != nil {
				t.Fatalf("Decode(%q): %v", tt.in, err)
			}
			if got, _ := MarshalJSON(vars, Charset{}); string(got) != tt.want {
				t.Errorf("Decode(%q)\n got %s\nwant %s", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecodeLimits(t *testing.T) {
	deep := "v|"
	for range 100 {
		deep += "a:1:{i:0;"
	}
	if _, err := Decode([]byte(deep), SerializerPHP, Limits{MaxDepth: 64}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("deep nesting: %v, want ErrTooLarge", err)
	}
	if _, err := Decode(make([]byte, 100), SerializerPHP, Limits{MaxBytes: 10}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("size: %v, want ErrTooLarge", err)
	}
}

func TestDecodeCycle(t *testing.T) {
	// php_serialize numbers the session array itself as slot 1.
	vars, err := Decode([]byte(`a:1:{s:4:"self";a:1:{s:1:"x";R:2;}}`), SerializerPHPSerialize, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	inner, ok := vars.Path("self", "x", "x", "x")
	if !ok || inner.Kind() != KindArray {
		t.Fatalf("cycle not followed: %v %v", inner.Kind(), ok)
	}
	if _, err := MarshalJSON(vars, Charset{}); err != nil {
		t.Fatal(err)
	}
	v, _ := vars.Get("self")
	if v.Array().Len() != 1 {
		t.Fatalf("len = %d", v.Array().Len())
	}
}

func TestArrayGet(t *testing.T) {
	vars, err := Decode([]byte(`v|a:3:{i:5;s:1:"a";i:-3;s:1:"b";s:2:"05";s:1:"c";}`), SerializerPHP, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{"5": "a", "-3": "b", "05": "c"} {
		got, ok := vars.Path("v", key)
		if !ok || string(got.Bytes()) != want {
			t.Errorf("Path(v, %q) = %q, %v; want %q", key, got.Bytes(), ok, want)
		}
	}
	if _, ok := vars.Path("v", "+5"); ok {
		t.Error(`"+5" must not find int key 5`)
	}
	if f := scalarValue(KindFloat, math.Float64bits(2.5)).Float(); f != 2.5 {
		t.Error(f)
	}
}

// TestShortFloat checks the float fast path against strconv on the forms
// it takes and the ones it must leave to strconv.
func TestShortFloat(t *testing.T) {
	ins := []string{"0", "-0", "1", "0.1", "-12.25", ".5", "5.", "0.000001", "123456789012345", "999999999999999.9",
		"1234567890123456", "0.14285714285714285", "0.3333333333333333", "0.0000000000000000000001", "00012.5000"}
	for i := range 2000 {
		f := float64(i) / 7
		ins = append(ins, strconv.FormatFloat(f, 'f', -1, 64), strconv.FormatFloat(-f/1000, 'f', -1, 64), strconv.FormatFloat(f, 'f', 3, 64))
	}
	for _, in := range ins {
		vars, err := Decode([]byte("v|d:"+in+";"), SerializerPHP, DefaultLimits)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		v, _ := vars.Get("v")
		want, _ := strconv.ParseFloat(in, 64)
		if got := v.Float(); math.Float64bits(got) != math.Float64bits(want) {
			t.Errorf("d:%s; = %v, want %v", in, got, want)
		}
	}
}

// TestLazyArraysConcurrent: nested arrays of a session without references
// are built on first access; concurrent first accesses (the Reader's cache
// shares sessions between API calls) must agree and not race.
func TestLazyArraysConcurrent(t *testing.T) {
	in := []byte(`a|a:2:{s:1:"x";a:1:{i:0;O:8:"stdClass":1:{s:1:"p";a:1:{s:1:"q";i:7;}}}s:1:"y";i:2;}b|i:1;`)
	want := `{"a":{"x":[{"__class":"stdClass","p":{"q":7}}],"y":2},"b":1}`
	vars, err := Decode(in, SerializerPHP, DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if i%2 == 0 {
				if v, ok := vars.Path("a", "x", "0", "p", "q"); !ok || v.Int() != 7 {
					t.Errorf("Path = %v, %v", v, ok)
				}
				return
			}
			if got, _ := MarshalJSON(vars, Charset{}); string(got) != want {
				t.Errorf("MarshalJSON = %s", got)
			}
		})
	}
	wg.Wait()
}
