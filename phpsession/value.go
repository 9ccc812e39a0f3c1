package phpsession

import (
	"hash/maphash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
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
//
// A Value is two words holding one pointer, so the slabs a 64 KB session
// decodes into stay small and cheap for the GC to scan:
//
//   - null: p nil, num 0 (the zero Value);
//   - bool, int, float: p points at scalarTags[kind], num holds the bits;
//   - string, enum name: p is the first byte (nil when empty), num the
//     length with the kind in its top byte;
//   - array, object: p is the *Array, num the kind in its top byte;
//   - custom: p is the *custom, num the kind in its top byte.
type Value struct {
	p   unsafe.Pointer
	num uint64
}

// scalarTags mark the kinds whose num needs all 64 bits.
var scalarTags [KindFloat + 1]byte

const kindShift = 56

func scalarValue(k Kind, bits uint64) Value {
	return Value{p: unsafe.Pointer(&scalarTags[k]), num: bits}
}

func refValue(k Kind, p unsafe.Pointer) Value { return Value{p: p, num: uint64(k) << kindShift} }

// custom is the out-of-line part of a C: value (rare).
type custom struct {
	class   string
	payload []byte
}

func bytesValue(k Kind, b []byte) Value {
	if len(b) == 0 {
		return Value{num: uint64(k) << kindShift}
	}
	return Value{p: unsafe.Pointer(&b[0]), num: uint64(k)<<kindShift | uint64(len(b))}
}

func stringValue(b []byte) Value { return bytesValue(KindString, b) }

// bytes views a string or enum name as a slice whose capacity ends at its
// length, so an append by the caller can never write into the decoded
// buffer.
func (v Value) bytes() []byte {
	if v.p == nil {
		return nil
	}
	return unsafe.Slice((*byte)(v.p), int(v.num&(1<<kindShift-1)))
}

func (v Value) arr() *Array { return (*Array)(v.p) }

// Kind reports the PHP type.
func (v Value) Kind() Kind {
	if i := uintptr(v.p) - uintptr(unsafe.Pointer(&scalarTags)); i < uintptr(len(scalarTags)) {
		return Kind(i)
	}
	return Kind(v.num >> kindShift)
}

// Bool returns the value of a bool (false for other kinds).
func (v Value) Bool() bool { return v.p == unsafe.Pointer(&scalarTags[KindBool]) && v.num != 0 }

// Int returns the value of an int (0 for other kinds).
func (v Value) Int() int64 {
	if v.p != unsafe.Pointer(&scalarTags[KindInt]) {
		return 0
	}
	return int64(v.num)
}

// Float returns the value of a float (0 for other kinds).
func (v Value) Float() float64 {
	if v.p != unsafe.Pointer(&scalarTags[KindFloat]) {
		return 0
	}
	return float64frombits(v.num)
}

// Bytes returns the raw bytes of a string (in the session's charset), the
// payload of a custom-serialized object, or nil.
func (v Value) Bytes() []byte {
	switch v.Kind() {
	case KindString:
		return v.bytes()
	case KindCustom:
		return (*custom)(v.p).payload
	}
	return nil
}

// Array returns the elements of an array or the properties of an object,
// or nil for other kinds.
func (v Value) Array() *Array {
	if k := v.Kind(); k == KindArray || k == KindObject {
		return v.arr()
	}
	return nil
}

// Class returns the class name of an object or custom-serialized object,
// or "Class:Case" for an enum; "" for other kinds.
func (v Value) Class() string {
	switch v.Kind() {
	case KindObject:
		return v.arr().class
	case KindCustom:
		return (*custom)(v.p).class
	case KindEnum:
		return string(v.bytes())
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

// key is Key as stored in two words: an int key has p = &intKeyTag and n
// the int; a string key has p its first byte (nil when empty) and n its
// length. Strings alias the decoded buffer.
type key struct {
	p unsafe.Pointer
	n uint64
}

var intKeyTag byte

func intKey(n int64) key { return key{p: unsafe.Pointer(&intKeyTag), n: uint64(n)} }

func strKey(s string) key { return key{p: unsafe.Pointer(unsafe.StringData(s)), n: uint64(len(s))} }

func (k key) isInt() bool { return k.p == unsafe.Pointer(&intKeyTag) }

func (k key) int() int64 { return int64(k.n) }

func (k key) str() string {
	if k.isInt() || k.p == nil {
		return ""
	}
	return unsafe.String((*byte)(k.p), int(k.n))
}

func (k key) eq(o key) bool {
	return k.n == o.n && (k.p == o.p || k.strEq(o))
}

//go:noinline
func (k key) strEq(o key) bool { return !k.isInt() && !o.isInt() && k.str() == o.str() }

// fingerprint is a cheap hash: equal keys have equal fingerprints.
func (k key) fingerprint() uint64 {
	if k.isInt() || k.n == 0 {
		return k.n
	}
	return k.n + 7*uint64(*(*byte)(k.p)) + 13*uint64(*(*byte)(unsafe.Add(k.p, k.n-1)))
}

func (k key) export() Key {
	if k.isInt() {
		return Key{Int: k.int(), IsInt: true}
	}
	return Key{Str: k.str()}
}

type entry struct {
	k key
	v Value
}

// Array is an ordered PHP array (or an object's property table). Arrays may
// be shared and may contain themselves through references.
//
// Decoding builds no lookup structure: a large array gets its hash index on
// the first Get, so the many arrays nobody looks up cost nothing extra.
type Array struct {
	ents  []entry
	class string                  // object class name
	idx   atomic.Pointer[[]int32] // open-addressed index, built lazily for large arrays
	// A nested array of a session without references keeps only where it
	// is: its elements are built on first access, from validated input.
	doc  *doc
	at   int32 // offset of its a:/O: tag
	ord  int32 // its number in doc.spans
	once sync.Once
}

// load builds a lazy array's elements, once.
func (a *Array) load() {
	if a.doc != nil {
		a.once.Do(a.build)
	}
}

// Len returns the number of elements.
func (a *Array) Len() int {
	if a == nil {
		return 0
	}
	a.load()
	return len(a.ents)
}

// At returns the i-th element in PHP's order.
func (a *Array) At(i int) (Key, Value) {
	a.load()
	return a.ents[i].k.export(), a.ents[i].v
}

// Get finds an element by key. A canonical decimal string ("5", "-3", not
// "05") finds the int key, as PHP's array access does. For objects the key
// also matches a property name without its visibility marker.
func (a *Array) Get(key string) (Value, bool) {
	if a == nil {
		return Value{}, false
	}
	a.load()
	k := canonicalKey(key)
	if i := a.find(k); i >= 0 {
		return a.ents[i].v, true
	}
	if !k.isInt() {
		for _, e := range a.ents {
			if s := e.k.str(); strings.HasPrefix(s, "\x00") && e.k.export().PropName() == key {
				return e.v, true
			}
		}
	}
	return Value{}, false
}

// Path walks nested arrays and objects: Path("a", "b") is $v['a']['b'].
func (a *Array) Path(keys ...string) (Value, bool) {
	cur := refValue(KindArray, unsafe.Pointer(a))
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

// indexThreshold: below it a linear scan beats hashing.
const indexThreshold = 16

func (a *Array) find(k key) int {
	if len(a.ents) < indexThreshold {
		return scan(a.ents, k)
	}
	t := a.idx.Load()
	if t == nil {
		// Concurrent first lookups may both build it; either result is
		// the same index, so the race is harmless.
		nt := make([]int32, tableSize(len(a.ents)))
		for i := range a.ents {
			tableInsert(nt, a.ents, int32(i))
		}
		a.idx.Store(&nt)
		t = &nt
	}
	return tableFind(*t, a.ents, k)
}

func scan(ents []entry, k key) int {
	for i := range ents {
		if ents[i].k.eq(k) {
			return i
		}
	}
	return -1
}

// The index is an open-addressed table of entry positions + 1 (0 = empty)
// with linear probing, at most half full.

var hashSeed = maphash.MakeSeed()

func hashKey(k key) uint64 {
	if k.isInt() {
		h := k.n * 0x9e3779b97f4a7c15
		return h ^ h>>29
	}
	return maphash.String(hashSeed, k.str())
}

func tableSize(n int) int {
	size := 32
	for size < 2*n {
		size <<= 1
	}
	return size
}

// tableInsert adds entry i, which must not have a duplicate in the table.
func tableInsert(t []int32, ents []entry, i int32) {
	mask := uint64(len(t) - 1)
	for h := hashKey(ents[i].k) & mask; ; h = (h + 1) & mask {
		if t[h] == 0 {
			t[h] = i + 1
			return
		}
	}
}

func tableFind(t []int32, ents []entry, k key) int {
	mask := uint64(len(t) - 1)
	for h := hashKey(k) & mask; ; h = (h + 1) & mask {
		j := t[h]
		if j == 0 {
			return -1
		}
		if ents[j-1].k.eq(k) {
			return int(j - 1)
		}
	}
}

// canonicalKey converts a string key to an int key when PHP would
// (ZEND_HANDLE_NUMERIC_STR): an optional '-', no leading zeros, no '+',
// within the int64 range, and not "-0".
func canonicalKey(s string) key {
	if n, ok := numericKey(s); ok {
		return intKey(n)
	}
	return strKey(s)
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
	var u uint64
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return 0, false
		}
		if i < 18 {
			u = u*10 + uint64(d[i]-'0')
		}
	}
	if len(d) <= 18 {
		if s[0] == '-' {
			return -int64(u), true
		}
		return int64(u), true
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return n, true
}
