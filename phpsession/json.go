package phpsession

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// MarshalJSON renders session variables the way PHP's json_encode renders
// arrays and scalars, for `imsidecar session show`:
//
//   - an array whose keys are exactly 0..n-1 in order is a JSON array, any
//     other array a JSON object with string keys in PHP's order;
//   - strings are converted from cs to UTF-8;
//   - INF, -INF and NAN are the strings "INF", "-INF", "NAN";
//   - objects are {"__class": name, props…} with names stripped of PHP's
//     visibility markers; enums {"__enum": "Class:Case"}; Serializable
//     objects {"__class": name, "__serialized": payload};
//   - an array or object met again while it is being rendered (a reference
//     cycle) is rendered as null.
func MarshalJSON(a *Array, cs Charset) ([]byte, error) {
	return MarshalJSONRedacted(a, cs)
}

// MarshalJSONRedacted is MarshalJSON with every string whose bytes equal
// one of secrets hidden (see Redaction).
func MarshalJSONRedacted(a *Array, cs Charset, secrets ...[]byte) ([]byte, error) {
	return MarshalJSONRedact(a, cs, Redaction{Secrets: secrets})
}

// Redaction says what MarshalJSONRedact hides, so that `imsidecar session
// show` never puts a password, token or key on a terminal or in a ticket:
// every string whose bytes equal one of Secrets, wherever it is, and every
// string and number at or below a key (an array key or a property name)
// for which Key reports true. A hidden string is rendered as
// "[redacted: N bytes]" (its length only), a hidden number as
// "[redacted]"; booleans and nulls are shown.
type Redaction struct {
	Secrets [][]byte
	Key     func(key string) bool
}

// MarshalJSONRedact is MarshalJSON with the values r names hidden.
func MarshalJSONRedact(a *Array, cs Charset, r Redaction) ([]byte, error) {
	var buf bytes.Buffer
	m := marshaler{cs: cs, buf: &buf, active: map[*Array]bool{}, secrets: r.Secrets, hideKey: r.Key}
	m.array(a)
	return buf.Bytes(), nil
}

type marshaler struct {
	cs      Charset
	buf     *bytes.Buffer
	active  map[*Array]bool
	secrets [][]byte
	hideKey func(string) bool
	hiding  int // > 0: below a key hideKey chose
}

// entry renders the value of key, hidden when the key is secret-shaped.
func (m *marshaler) entry(key string, v Value) {
	if m.hideKey != nil && m.hiding == 0 && m.hideKey(key) {
		m.hiding++
		defer func() { m.hiding-- }()
	}
	m.value(v)
}

func (m *marshaler) redacted(n int) {
	m.buf.WriteString(`"[redacted: `)
	m.buf.WriteString(strconv.Itoa(n))
	m.buf.WriteString(` bytes]"`)
}

func (m *marshaler) str(s string) {
	b, _ := json.Marshal(s)
	m.buf.Write(b)
}

func (m *marshaler) value(v Value) {
	switch v.Kind() {
	case KindNull:
		m.buf.WriteString("null")
	case KindBool:
		m.buf.WriteString(strconv.FormatBool(v.Bool()))
	case KindInt, KindFloat:
		if m.hiding > 0 {
			m.buf.WriteString(`"[redacted]"`)
			return
		}
		if v.Kind() == KindInt {
			m.buf.WriteString(strconv.FormatInt(v.Int(), 10))
			return
		}
		f := v.Float()
		switch {
		case math.IsNaN(f):
			m.buf.WriteString(`"NAN"`)
		case math.IsInf(f, 1):
			m.buf.WriteString(`"INF"`)
		case math.IsInf(f, -1):
			m.buf.WriteString(`"-INF"`)
		default:
			m.buf.WriteString(formatFloat(f))
		}
	case KindString:
		if m.hiding > 0 {
			m.redacted(len(v.bytes()))
			return
		}
		for _, sec := range m.secrets {
			if len(sec) > 0 && bytes.Equal(v.bytes(), sec) {
				m.redacted(len(sec))
				return
			}
		}
		m.str(m.cs.String(v.bytes()))
	case KindArray:
		m.array(v.arr())
	case KindObject:
		m.object(v)
	case KindEnum:
		m.buf.WriteString(`{"__enum":`)
		m.str(m.cs.String(v.bytes()))
		m.buf.WriteByte('}')
	case KindCustom:
		m.buf.WriteString(`{"__class":`)
		c := (*custom)(v.p)
		m.str(m.cs.String([]byte(c.class)))
		m.buf.WriteString(`,"__serialized":`)
		if m.hiding > 0 || containsAny(c.payload, m.secrets) {
			m.redacted(len(c.payload)) // an opaque payload that may hold anything
		} else {
			m.str(m.cs.String(c.payload))
		}
		m.buf.WriteByte('}')
	}
}

// formatFloat follows PHP's json_encode with serialize_precision -1:
// shortest round-trip digits, and a ".0" for integral values.
func formatFloat(f float64) string {
	if f == 0 && math.Signbit(f) {
		return "-0.0"
	}
	s := strconv.FormatFloat(f, 'g', -1, 64)
	abs := math.Abs(f)
	if abs >= 1e-4 && abs < 1e15 {
		s = strconv.FormatFloat(f, 'f', -1, 64)
	}
	mant, exp, hasExp := strings.Cut(s, "e")
	if !strings.Contains(mant, ".") {
		mant += ".0"
	}
	if !hasExp {
		return mant
	}
	sign := exp[:1]
	return mant + "e" + sign + strings.TrimLeft(exp[1:], "0")
}

func isList(a *Array) bool {
	a.load()
	for i, e := range a.ents {
		if !e.k.isInt() || e.k.int() != int64(i) {
			return false
		}
	}
	return true
}

func (m *marshaler) array(a *Array) {
	if a == nil {
		m.buf.WriteString("[]")
		return
	}
	if m.active[a] {
		m.buf.WriteString("null")
		return
	}
	m.active[a] = true
	defer delete(m.active, a)
	a.load()
	if isList(a) {
		m.buf.WriteByte('[')
		for i, e := range a.ents {
			if i > 0 {
				m.buf.WriteByte(',')
			}
			m.value(e.v)
		}
		m.buf.WriteByte(']')
		return
	}
	m.buf.WriteByte('{')
	for i, e := range a.ents {
		if i > 0 {
			m.buf.WriteByte(',')
		}
		k := e.k.export().String()
		m.str(m.cs.String([]byte(k)))
		m.buf.WriteByte(':')
		m.entry(k, e.v)
	}
	m.buf.WriteByte('}')
}

func (m *marshaler) object(v Value) {
	a := v.arr()
	a.load()
	if m.active[a] {
		m.buf.WriteString("null")
		return
	}
	m.active[a] = true
	defer delete(m.active, a)
	m.buf.WriteString(`{"__class":`)
	m.str(m.cs.String([]byte(a.class)))
	for _, e := range a.ents {
		m.buf.WriteByte(',')
		k := e.k.export().PropName()
		m.str(m.cs.String([]byte(k)))
		m.buf.WriteByte(':')
		m.entry(k, e.v)
	}
	m.buf.WriteByte('}')
}

func containsAny(b []byte, subs [][]byte) bool {
	for _, s := range subs {
		if len(s) > 0 && bytes.Contains(b, s) {
			return true
		}
	}
	return false
}
