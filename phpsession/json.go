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
// one of secrets rendered as "[redacted]": `imsidecar session show` uses
// it so the user's password never reaches a terminal or a ticket.
func MarshalJSONRedacted(a *Array, cs Charset, secrets ...[]byte) ([]byte, error) {
	var buf bytes.Buffer
	m := marshaler{cs: cs, buf: &buf, active: map[*Array]bool{}, secrets: secrets}
	m.array(a)
	return buf.Bytes(), nil
}

type marshaler struct {
	cs      Charset
	buf     *bytes.Buffer
	active  map[*Array]bool
	secrets [][]byte
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
	case KindInt:
		m.buf.WriteString(strconv.FormatInt(v.Int(), 10))
	case KindFloat:
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
		for _, sec := range m.secrets {
			if len(sec) > 0 && bytes.Equal(v.bytes(), sec) {
				m.buf.WriteString(`"[redacted]"`)
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
		m.str(m.cs.String(c.payload))
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
		m.str(m.cs.String([]byte(e.k.export().String())))
		m.buf.WriteByte(':')
		m.value(e.v)
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
		m.str(m.cs.String([]byte(e.k.export().PropName())))
		m.buf.WriteByte(':')
		m.value(e.v)
	}
	m.buf.WriteByte('}')
}
