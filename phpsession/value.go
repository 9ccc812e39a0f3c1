package phpsession

import (
	"strconv"
	"strings"
)

// Kind is the PHP type of a Value.
type Kind uint8

// The kinds of PHP values a session can hold.
const (
	KindNull Kind = iota
	KindBool
	KindInt
	KindFloat
	KindString
	KindArray
	KindObject // O: — class name and properties
	KindEnum   // E: — "Class:Case"
	KindCustom // C: — class name and an opaque payload (Serializable)
)

var kindNames = [...]string{"null", "bool", "int", "float", "string", "array", "object", "enum", "custom"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Value is one decoded PHP value. The zero Value is PHP's null.
//
// String bytes alias the buffer given to Decode: do not modify that buffer
// while the values are in use.
type Value struct {
	kind  Kind
	num   uint64 // bool (0/1), int (two's complement) or float bits
	str   []byte // string bytes, class name, enum "Class:Case", custom payload
	class string // class name for KindCustom
	arr   *Array // array elements or object properties
}

// Kind reports the PHP type.
func (v Value) Kind() Kind { return v.kind }

// Bool returns the value of a bool (false for other kinds).
func (v Value) Bool() bool { return v.kind == KindBool && v.num != 0 }

// Int returns the value of an int (0 for other kinds).
func (v Value) Int() int64 {
	if v.kind != KindInt {
		return 0
	}
	return int64(v.num)
}

// Float returns the value of a float (0 for other kinds).
func (v Value) Float() float64 {
	if v.kind != KindFloat {
		return 0
	}
	return float64frombits(v.num)
}

// Bytes returns the raw bytes of a string (in the session's charset), the
// payload of a custom-serialized object, or nil.
func (v Value) Bytes() []byte {
	if v.kind == KindString || v.kind == KindCustom {
		return v.str
	}
	return nil
}

// Array returns the elements of an array or the properties of an object,
// or nil for other kinds.
func (v Value) Array() *Array {
	if v.kind == KindArray || v.kind == KindObject {
		return v.arr
	}
	return nil
}

// Class returns the class name of an object or custom-serialized object,
// or "Class:Case" for an enum; "" for other kinds.
func (v Value) Class() string {
	switch v.kind {
	case KindObject:
		return string(v.str)
	case KindCustom:
		return v.class
	case KindEnum:
		return string(v.str)
	}
	return ""
}

// Key is an array key: PHP keys are ints or strings, never both.
type Key struct {
	Int   int64
	Str   string
	IsInt bool
}

// String renders the key as PHP would when converting it to a string.
func (k Key) String() string {
	if k.IsInt {
		return strconv.FormatInt(k.Int, 10)
	}
	return k.Str
}

// PropName returns an object property's name without PHP's visibility
// markers ("\x00*\x00name" for protected, "\x00Class\x00name" for private).
func (k Key) PropName() string {
	if k.IsInt || !strings.HasPrefix(k.Str, "\x00") {
		return k.String()
	}
	if i := strings.IndexByte(k.Str[1:], 0); i >= 0 {
		return k.Str[i+2:]
	}
	return k.Str
}

// Array is an ordered PHP array (or an object's property table). Arrays may
// be shared and may contain themselves through references.
type Array struct {
	keys []Key
	vals []Value
	idx  map[Key]int // built lazily for large arrays
}

// Len returns the number of elements.
func (a *Array) Len() int {
	if a == nil {
		return 0
	}
	return len(a.keys)
}

// At returns the i-th element in PHP's order.
func (a *Array) At(i int) (Key, Value) { return a.keys[i], a.vals[i] }

// Get finds an element by key. A canonical decimal string ("5", "-3", not
// "05") finds the int key, as PHP's array access does. For objects the key
// also matches a property name without its visibility marker.
func (a *Array) Get(key string) (Value, bool) {
	if a == nil {
		return Value{}, false
	}
	k := canonicalKey(key)
	if i, ok := a.find(k); ok {
		return a.vals[i], true
	}
	if !k.IsInt {
		for i, ak := range a.keys {
			if !ak.IsInt && strings.HasPrefix(ak.Str, "\x00") && ak.PropName() == key {
				return a.vals[i], true
			}
		}
	}
	return Value{}, false
}

// Path walks nested arrays and objects: Path("a", "b") is $v['a']['b'].
func (a *Array) Path(keys ...string) (Value, bool) {
	cur := Value{kind: KindArray, arr: a}
	for _, k := range keys {
		arr := cur.Array()
		if arr == nil {
			return Value{}, false
		}
		v, ok := arr.Get(k)
		if !ok {
			return Value{}, false
		}
		cur = v
	}
	return cur, true
}

const indexThreshold = 16

func (a *Array) find(k Key) (int, bool) {
	if len(a.keys) < indexThreshold {
		for i, ak := range a.keys {
			if ak == k {
				return i, true
			}
		}
		return 0, false
	}
	if a.idx == nil {
		a.idx = make(map[Key]int, len(a.keys))
		for i, ak := range a.keys {
			a.idx[ak] = i
		}
	}
	i, ok := a.idx[k]
	return i, ok
}

// set stores v under k, replacing an earlier duplicate in place as PHP does.
func (a *Array) set(k Key, v Value) {
	if i, ok := a.find(k); ok {
		a.vals[i] = v
		return
	}
	a.keys = append(a.keys, k)
	a.vals = append(a.vals, v)
	if a.idx != nil {
		a.idx[k] = len(a.keys) - 1
	}
}

// canonicalKey converts a string key to an int key when PHP would
// (ZEND_HANDLE_NUMERIC_STR): an optional '-', no leading zeros, no '+',
// within the int64 range, and not "-0".
func canonicalKey(s string) Key {
	if n, ok := numericKey(s); ok {
		return Key{Int: n, IsInt: true}
	}
	return Key{Str: s}
}

func numericKey(s string) (int64, bool) {
	if s == "" || len(s) > 20 {
		return 0, false
	}
	d := s
	if d[0] == '-' {
		d = d[1:]
		if d == "" || d == "0" {
			return 0, false
		}
	}
	if d[0] == '0' && len(d) > 1 {
		return 0, false
	}
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}
