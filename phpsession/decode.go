package phpsession

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unsafe"
)

// Serializer names PHP's session.serialize_handler. It is configured, never
// guessed: a value read with the wrong grammar could be read as structure.
type Serializer string

// The serialize handlers PHP 8.2 ships.
const (
	SerializerPHP          Serializer = "php"           // name|value name|value …
	SerializerPHPSerialize Serializer = "php_serialize" // serialize($_SESSION)
	SerializerPHPBinary    Serializer = "php_binary"    // <len byte>name value …
)

// ParseSerializer validates a serialize_handler name.
func ParseSerializer(name string) (Serializer, error) {
	switch s := Serializer(name); s {
	case SerializerPHP, SerializerPHPSerialize, SerializerPHPBinary:
		return s, nil
	}
	return "", fmt.Errorf("%w: unknown serializer %q (want php, php_serialize or php_binary)", ErrConfig, name)
}

// Limits bound the work Decode does on untrusted input.
type Limits struct {
	MaxBytes int // longest input accepted
	MaxDepth int // deepest nesting of arrays and objects
}

// DefaultLimits fit any real Expresso session with a wide margin.
var DefaultLimits = Limits{MaxBytes: 8 << 20, MaxDepth: 64}

// Decode parses session data written by the given serialize handler and
// returns the top-level session variables in PHP's order. It accepts
// exactly what PHP 8.2's session_start() accepts and fails where PHP
// destroys the session instead (TestDifferentialPHP holds it to that):
// number fields read by PHP's own three rules (i: clamps out-of-range
// values, lengths and r:/R: slots are digits only and wrap at 2^64, object
// counts and C: lengths take a sign or no digits), "php" and "php_binary"
// data must end with its last value, and "php_serialize" data is one value
// with anything after it ignored; a value there that is not an array (N;,
// a scalar, an object) gives a session without variables, as no PHP code
// can read one from such a $_SESSION. It resolves r:/R: references with
// PHP's slot numbering; a reference cycle yields an Array that contains
// itself. What PHP decides by the application's classes is taken as
// valid: any syntactically valid enum case (PHP refuses an enum or a case
// it does not know), and objects whatever their class's __unserialize,
// __wakeup or typed properties would say. The result aliases data. Errors
// wrap ErrMalformed (as a *SyntaxError with the offset) or ErrTooLarge.
//
// Every byte is validated before Decode returns, but in a session without
// references a nested array's elements are built on its first access
// (safe for concurrent use): a lookup that reads a few keys of a large
// session builds only the arrays on its path.
func Decode(data []byte, ser Serializer, lim Limits) (*Array, error) {
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = DefaultLimits.MaxBytes
	}
	if lim.MaxDepth <= 0 {
		lim.MaxDepth = DefaultLimits.MaxDepth
	}
	if len(data) > lim.MaxBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), lim.MaxBytes)
	}
	d := decoder{data: data, maxDepth: lim.MaxDepth, budget: len(data)}
	if len(data) <= math.MaxInt32 {
		d.doc = &doc{data: data}
	}
	switch ser {
	case SerializerPHP:
		return d.run(d.sessionPHP)
	case SerializerPHPBinary:
		return d.run(d.sessionBinary)
	case SerializerPHPSerialize:
		return d.run(d.sessionSerialize)
	}
	return nil, fmt.Errorf("%w: unknown serializer %q", ErrConfig, ser)
}

type decoder struct {
	data     []byte
	pos      int
	maxDepth int
	depth    int
	// track records slots for r:/R:. Sessions rarely hold references, so
	// the first pass does not, and restarts with tracking when it meets one.
	track bool
	// Without references (!track) an array is self-contained, so only the
	// level being built is stored: nested arrays are validated (skip) and
	// get a header that builds their elements on first access from doc.
	skip  bool
	doc   *doc
	level int // elements in the level being built (sizes header slabs)
	// replay: building a lazy array from validated input, jumping over
	// its nested arrays by their recorded spans; ord is the next one's.
	replay bool
	ord    int
	budget int // bytes being built, which sizes the slabs
	// slots holds every value PHP's var_hash would: each value parsed
	// except R: ones and array keys, numbered from 1.
	slots []Value
	// pending counts the elements that open arrays have declared but not
	// yet started: honest input holds each in at least 4 more bytes.
	pending int
	stack   []entry // the top-level session variables
	ents    []entry // slab the arrays' elements are carved from
	arrs    []Array // slab of Array headers
	table   []int32 // scratch hash table for duplicate keys in large arrays
}

// errNeedSlots restarts decoding with reference tracking.
var errNeedSlots = errors.New("phpsession: references need slots")

func (d *decoder) run(parse func() (*Array, error)) (*Array, error) {
	vars, err := parse()
	if err != errNeedSlots {
		return vars, err
	}
	// References number every value in the session, so this pass builds
	// everything eagerly, with slots.
	*d = decoder{data: d.data, maxDepth: d.maxDepth, budget: len(d.data), track: true, slots: make([]Value, 0, min(len(d.data)/8, 1<<16))}
	return parse()
}

func (d *decoder) newArray() *Array {
	if len(d.arrs) == cap(d.arrs) {
		size := min(128, max(4, d.budget>>8))
		if d.replay {
			size = min(128, max(4, 2*cap(d.arrs))) // grow with actual use
		}
		if !d.track && !d.replay {
			// Only one level is built: at most one header per element.
			size = min(128, max(1, d.level))
		}
		d.arrs = make([]Array, 0, size)
	}
	d.arrs = d.arrs[:len(d.arrs)+1]
	return &d.arrs[len(d.arrs)-1]
}

// allocEntries returns room for n entries (length 0, capacity n) from the
// slab, or nil when n is too large to reserve before the elements are read.
func (d *decoder) allocEntries(n int) []entry {
	if n > maxPrealloc {
		return nil // grown by append, as the elements really arrive
	}
	if !d.track && !d.replay {
		d.level = n // one array is built per decoder: no slab to share
		return make([]entry, 0, n)
	}
	chunk := min(512, max(16, d.budget>>4))
	if d.replay {
		chunk = min(512, max(16, 2*cap(d.ents))) // grow with actual use
	}
	if n >= chunk {
		return make([]entry, 0, n)
	}
	if n > cap(d.ents)-len(d.ents) {
		d.ents = make([]entry, 0, chunk)
	}
	l := len(d.ents)
	d.ents = d.ents[:l+n]
	return d.ents[l : l : l+n]
}

// dedupe applies PHP's rule that a duplicate key replaces the earlier
// value in its place, compacting ents in place. unique says the keys are
// known distinct (ascending ints). Real sessions have no duplicates, so
// ents is first only read: moving entries costs GC write barriers.
func (d *decoder) dedupe(ents []entry, unique bool) []entry {
	if unique || len(ents) < 2 {
		return ents
	}
	if len(ents) < indexThreshold {
		// A 64-bit filter of cheap key fingerprints: only a key whose bit
		// is already set is compared with the earlier ones.
		var seen uint64
		for i := 1; i < len(ents); i++ {
			seen |= 1 << (ents[i-1].k.fingerprint() & 63)
			if seen&(1<<(ents[i].k.fingerprint()&63)) != 0 && scan(ents[:i], ents[i].k) >= 0 {
				return compact(ents, func(m int, k key) int { return scan(ents[:m], k) }, func(int) {})
			}
		}
		return ents
	}
	size := tableSize(len(ents))
	if cap(d.table) < size {
		d.table = make([]int32, size)
	}
	t := d.table[:size]
	clear(t)
	mask := uint64(size - 1)
	for i := range ents {
		h := hashKey(ents[i].k) & mask
		for ; t[h] != 0; h = (h + 1) & mask {
			if ents[t[h]-1].k.eq(ents[i].k) {
				clear(t)
				return compact(ents,
					func(m int, k key) int { return tableFind(t, ents[:m], k) },
					func(m int) { tableInsert(t, ents, int32(m)) })
			}
		}
		t[h] = int32(i + 1)
	}
	return ents
}

// compact keeps the first position of each key with its last value. find
// looks a key up among the first m kept entries; added records entry m.
func compact(ents []entry, find func(m int, k key) int, added func(m int)) []entry {
	m := 0
	for i := range ents {
		if j := find(m, ents[i].k); j >= 0 {
			ents[j].v = ents[i].v
			continue
		}
		if m != i {
			ents[m] = ents[i]
		}
		added(m)
		m++
	}
	return ents[:m:m]
}

func (d *decoder) fail(at int, format string, args ...any) error {
	return &SyntaxError{Offset: at, Msg: fmt.Sprintf(format, args...)}
}

// sessionPHP: repeated "name|value" to the last byte. Like PHP 8.2, which
// destroys such a session, bytes after the last value that hold no '|'
// (a stray newline, a NUL, a php_serialize array read with this handler)
// are an error, not an end.
func (d *decoder) sessionPHP() (*Array, error) {
	for d.pos < len(d.data) {
		start := d.pos
		bar := bytes.IndexByte(d.data[start:], '|')
		if bar < 0 {
			return nil, d.fail(start, "%d bytes after the last value hold no '|'", len(d.data)-start)
		}
		name := alias(d.data[start : start+bar])
		d.pos = start + bar + 1
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		d.stack = append(d.stack, entry{k: strKey(name), v: v})
	}
	return &Array{ents: d.dedupe(d.stack, false)}, nil
}

// sessionBinary: repeated <length byte><name><value>; the top bit of the
// length byte is PHP's old "undefined" marker and is ignored.
func (d *decoder) sessionBinary() (*Array, error) {
	for d.pos < len(d.data) {
		n := int(d.data[d.pos] & 0x7f)
		if d.pos+1+n >= len(d.data) {
			return nil, d.fail(d.pos, "variable name of %d bytes runs past the end", n)
		}
		name := alias(d.data[d.pos+1 : d.pos+1+n])
		d.pos += 1 + n
		v, err := d.value()
		if err != nil {
			return nil, err
		}
		d.stack = append(d.stack, entry{k: strKey(name), v: v})
	}
	return &Array{ents: d.dedupe(d.stack, false)}, nil
}

// sessionSerialize: one serialize()d value, read as PHP 8.2 reads it. The
// bytes after that value are ignored, as PHP ignores them. A value that is
// not an array (N;, a scalar, an object) is what PHP then holds as
// $_SESSION: no session variable can be read from it, so the session has
// none. The value is validated all the same: PHP destroys a session whose
// value does not parse.
func (d *decoder) sessionSerialize() (*Array, error) {
	if len(d.data) == 0 {
		return &Array{}, nil
	}
	v, err := d.value()
	if err != nil {
		return nil, err
	}
	if v.Kind() != KindArray {
		return &Array{}, nil
	}
	return v.arr(), nil
}

func (d *decoder) expect(c byte) error {
	if d.eat(c) {
		return nil
	}
	return unexpected(d, c)
}

// eat consumes c if it is next; small enough to inline on the hot paths.
func (d *decoder) eat(c byte) bool {
	if d.pos < len(d.data) && d.data[d.pos] == c {
		d.pos++
		return true
	}
	return false
}

//go:noinline
func unexpected(d *decoder, c byte) error {
	if d.pos >= len(d.data) {
		return d.fail(d.pos, "unexpected end, want %q", c)
	}
	return d.fail(d.pos, "want %q, found %q", c, d.data[d.pos])
}

// count parses an array's element count: PHP's uiv, [0-9]+, which PHP
// then reads with parse_iv, so leading zeros pass and a count too large
// for any input fails. Bounded so it cannot overflow.
func (d *decoder) count() (int, error) {
	start := d.pos
	n := 0
	for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
		if n > (math.MaxInt32-9)/10 {
			return 0, d.fail(start, "count out of range")
		}
		n = n*10 + int(d.data[d.pos]-'0')
		d.pos++
	}
	if d.pos == start {
		return 0, d.fail(start, "want a digit")
	}
	return n, nil
}

// uiv parses PHP's uiv, [0-9]+ (a string or class name length, an r:/R:
// slot), as PHP's parse_uiv does: in 64-bit arithmetic that wraps, so
// "18446744073709551617" is 1. Callers bound it by the bytes that remain,
// as PHP does. No sign is allowed.
func (d *decoder) uiv() (uint64, error) {
	start := d.pos
	var n uint64
	for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
		n = n*10 + uint64(d.data[d.pos]-'0')
		d.pos++
	}
	if d.pos == start {
		return 0, d.fail(start, "want a digit")
	}
	return n, nil
}

// int parses PHP's iv: [+-]?[0-9]+, clamping out-of-range values to
// PHP_INT_MAX/PHP_INT_MIN exactly as PHP 8.2's parse_iv2 does.
func (d *decoder) int() (int64, error) {
	p := d.pos
	if p < len(d.data) && (d.data[p] == '-' || d.data[p] == '+') {
		p++
	}
	if p >= len(d.data) || d.data[p] < '0' || d.data[p] > '9' {
		return 0, d.fail(p, "want a digit")
	}
	return d.iv2(), nil
}

// iv2 is PHP's parse_iv2 itself, which reads the counts no grammar rule
// checked first (an object's property count, a C: payload length): an
// optional sign, then digits that may be absent ("O:8:\"stdClass\"::{}" has
// no properties). More than 19 significant digits, or a value past the
// int64 range, clamp to PHP_INT_MAX/PHP_INT_MIN.
func (d *decoder) iv2() int64 {
	neg := false
	if d.pos < len(d.data) && (d.data[d.pos] == '-' || d.data[d.pos] == '+') {
		neg = d.data[d.pos] == '-'
		d.pos++
	}
	for d.pos < len(d.data) && d.data[d.pos] == '0' {
		d.pos++
	}
	start := d.pos
	var u uint64
	for d.pos < len(d.data) && d.data[d.pos] >= '0' && d.data[d.pos] <= '9' {
		u = u*10 + uint64(d.data[d.pos]-'0') // wraps only past 19 digits, which clamp below
		d.pos++
	}
	limit := uint64(math.MaxInt64)
	if neg {
		limit++
	}
	if d.pos-start > 19 || u > limit {
		if neg {
			return math.MinInt64
		}
		return math.MaxInt64
	}
	if neg {
		return int64(-u)
	}
	return int64(u)
}

// scanStr is the fast path for a string's `N:"bytes";` after its "s:":
// a length of at most 9 digits and the closing `";` where the length says.
// It returns the bytes' bounds; ok is false for anything else, which the
// general path then parses (or rejects with the right message).
func scanStr(data []byte, p int) (start, end int, ok bool) {
	n, q := 0, p
	for q < len(data) && q-p < 9 && data[q] >= '0' && data[q] <= '9' {
		n = n*10 + int(data[q]-'0')
		q++
	}
	if q == p || q+1 >= len(data) || data[q] != ':' || data[q+1] != '"' {
		return 0, 0, false
	}
	start = q + 2
	end = start + n
	if end+1 >= len(data) || data[end] != '"' || data[end+1] != ';' {
		return 0, 0, false
	}
	return start, end, true
}

// scanInt is the fast path for an int's `[-]digits;` after its "i:", with
// at most 18 digits (so no clamping); ok is false for anything else.
func scanInt(data []byte, p int) (n int64, next int, ok bool) {
	q := p
	neg := q < len(data) && data[q] == '-'
	if neg {
		q++
	}
	start := q
	var u uint64
	for q < len(data) && q-start < 18 && data[q] >= '0' && data[q] <= '9' {
		u = u*10 + uint64(data[q]-'0')
		q++
	}
	if q == start || q >= len(data) || data[q] != ';' {
		return 0, 0, false
	}
	if neg {
		return -int64(u), q + 1, true
	}
	return int64(u), q + 1, true
}

// fastKey parses the common array keys (`i:N;`, `s:N:"…";`) with local
// state; ok is false for the rest, which key() handles.
func (d *decoder) fastKey(object bool) (key, bool) {
	data, p := d.data, d.pos
	if p+2 >= len(data) || data[p+1] != ':' {
		return key{}, false
	}
	switch data[p] {
	case 's':
		if start, end, ok := scanStr(data, p+2); ok {
			d.pos = end + 2
			if d.skip {
				return key{}, true // only validated
			}
			if object {
				return strKey(alias(data[start:end])), true
			}
			return canonicalKey(alias(data[start:end])), true
		}
	case 'i':
		if object {
			return key{}, false
		}
		if n, next, ok := scanInt(data, p+2); ok {
			d.pos = next
			return intKey(n), true
		}
	}
	return key{}, false
}

// scalar parses the common scalars (N, b, i, s, plain d) with local
// state; ok is false for the rest, which parse() handles.
func (d *decoder) scalar() (Value, bool) {
	data, p := d.data, d.pos
	if p+2 >= len(data) || data[p+1] != ':' {
		if p+1 < len(data) && data[p] == 'N' && data[p+1] == ';' {
			d.pos = p + 2
			return Value{}, true
		}
		return Value{}, false
	}
	switch data[p] {
	case 's':
		if start, end, ok := scanStr(data, p+2); ok {
			d.pos = end + 2
			return stringValue(data[start:end:end]), true
		}
	case 'i':
		if n, next, ok := scanInt(data, p+2); ok {
			d.pos = next
			return scalarValue(KindInt, uint64(n)), true
		}
	case 'b':
		if p+3 < len(data) && (data[p+2] == '0' || data[p+2] == '1') && data[p+3] == ';' {
			d.pos = p + 4
			return scalarValue(KindBool, uint64(data[p+2]-'0')), true
		}
	case 'd':
		d.pos = p + 2
		if d.skip {
			// Only validated: the plain form needs no conversion.
			if next, ok := scanPlainFloat(data, p+2); ok {
				d.pos = next
				return Value{}, true
			}
			d.pos = p
			return Value{}, false
		}
		if f, ok := d.plainFloat(); ok {
			d.pos++ // the ';' plainFloat stopped at
			return scalarValue(KindFloat, math.Float64bits(f)), true
		}
		d.pos = p
	}
	return Value{}, false
}

// value parses one serialized value.
func (d *decoder) value() (Value, error) {
	if v, ok := d.scalar(); ok {
		if d.track {
			d.slots = append(d.slots, v)
		}
		return v, nil
	}
	if d.pos+1 >= len(d.data) {
		return Value{}, d.fail(d.pos, "unexpected end of data")
	}
	tag := d.data[d.pos]
	slot := -1
	if d.track && tag != 'R' {
		slot = len(d.slots)
		d.slots = append(d.slots, Value{})
	}
	v, err := d.parse(tag, slot)
	if slot >= 0 && err == nil {
		d.slots[slot] = v
	}
	return v, err
}

func (d *decoder) parse(tag byte, slot int) (Value, error) {
	start := d.pos
	if tag == 'N' {
		d.pos++
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return Value{}, nil
	}
	d.pos++
	if !d.eat(':') {
		return Value{}, unexpected(d, ':')
	}
	switch tag {
	case 'b':
		if d.pos >= len(d.data) || (d.data[d.pos] != '0' && d.data[d.pos] != '1') {
			return Value{}, d.fail(d.pos, "bool must be 0 or 1")
		}
		v := scalarValue(KindBool, uint64(d.data[d.pos]-'0'))
		d.pos++
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return v, nil
	case 'i':
		n, err := d.int()
		if err != nil {
			return Value{}, err
		}
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return scalarValue(KindInt, uint64(n)), nil
	case 'd':
		f, err := d.float()
		if err != nil {
			return Value{}, err
		}
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return scalarValue(KindFloat, math.Float64bits(f)), nil
	case 's', 'S':
		b, err := d.str(tag == 'S')
		if err != nil {
			return Value{}, err
		}
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return stringValue(b), nil
	case 'a':
		if d.replay {
			return d.jump(KindArray, start, "")
		}
		o := d.openSpan()
		if d.skip {
			err := d.elements(nil, false)
			d.closeSpan(o)
			return Value{}, err
		}
		arr := d.newArray()
		v := refValue(KindArray, unsafe.Pointer(arr))
		if slot >= 0 {
			d.slots[slot] = v // visible to references inside the array
		}
		err := d.nested(arr, start, o, false)
		d.closeSpan(o)
		return v, err
	case 'O':
		name, err := d.className()
		if err != nil {
			return Value{}, err
		}
		if !d.eat(':') {
			return Value{}, unexpected(d, ':')
		}
		if d.replay {
			return d.jump(KindObject, start, alias(name))
		}
		o := d.openSpan()
		if d.skip {
			err := d.elements(nil, true)
			d.closeSpan(o)
			return Value{}, err
		}
		arr := d.newArray()
		arr.class = alias(name)
		v := refValue(KindObject, unsafe.Pointer(arr))
		if slot >= 0 {
			d.slots[slot] = v
		}
		err = d.nested(arr, start, o, true)
		d.closeSpan(o)
		return v, err
	case 'C':
		return d.custom()
	case 'E':
		b, err := d.str(false)
		if err != nil {
			return Value{}, err
		}
		if !validEnum(b) {
			return Value{}, d.fail(start, "invalid enum name")
		}
		v := bytesValue(KindEnum, b)
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return v, nil
	case 'r', 'R':
		if !d.track {
			return Value{}, errNeedSlots
		}
		// A slot is PHP's uiv: digits only ("R:+1;" is refused), wrapping.
		n, err := d.uiv()
		if err != nil {
			return Value{}, err
		}
		// For r: this value already took a slot, which cannot be its own target.
		limit := len(d.slots)
		if tag == 'r' {
			limit--
		}
		if n < 1 || n > uint64(limit) {
			return Value{}, d.fail(start, "reference to slot %d of %d", n, limit)
		}
		// r: copies an object handle: PHP 8.2 (var_unserializer.re) refuses
		// one whose target is not an object (O:, C: or enum). R: shares
		// any value; an array still under construction is the same *Array,
		// which is how a cycle comes to contain itself.
		if k := d.slots[n-1].Kind(); tag == 'r' && k != KindObject && k != KindCustom && k != KindEnum {
			return Value{}, d.fail(start, "r: reference to %s, not an object", k)
		}
		if !d.eat(';') {
			return Value{}, unexpected(d, ';')
		}
		return d.slots[n-1], nil
	}
	return Value{}, d.fail(start, "unknown type %q", tag)
}

// pow10 holds the powers of ten a float64 represents exactly.
var pow10 = [...]float64{1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// scanPlainFloat checks [-]digits[.digits]; (with at least one digit)
// and returns the position after the ';'.
func scanPlainFloat(data []byte, p int) (next int, ok bool) {
	q := p
	if q < len(data) && data[q] == '-' {
		q++
	}
	digits, dot := 0, false
	for ; q < len(data); q++ {
		if c := data[q]; c >= '0' && c <= '9' {
			digits++
		} else if c == '.' && !dot {
			dot = true
		} else {
			break
		}
	}
	if digits == 0 || q >= len(data) || data[q] != ';' {
		return 0, false
	}
	return q + 1, true
}

// plainFloat is the fast path for the common [-]digits[.digits] form
// (what PHP writes for every finite float without an exponent), in one
// scan. With at most 15 significant digits and 22 decimals the mantissa
// and the power of ten are exact float64s, so one correctly rounded
// division gives strconv's result; longer ones go to strconv without the
// grammar check. ok is false for any other form.
func (d *decoder) plainFloat() (f float64, ok bool) {
	data, start := d.data, d.pos
	i := start
	neg := i < len(data) && data[i] == '-'
	if neg {
		i++
	}
	var m uint64
	sig, digits, decimals := 0, 0, 0
	dot := false
	for ; i < len(data); i++ {
		c := data[i]
		if c == '.' && !dot {
			dot = true
			continue
		}
		if c < '0' || c > '9' {
			break
		}
		digits++
		if dot {
			decimals++
		}
		if m != 0 || c != '0' {
			sig++
		}
		m = m*10 + uint64(c-'0')
	}
	if digits == 0 || i >= len(data) || data[i] != ';' {
		return 0, false
	}
	if sig > 15 || decimals >= len(pow10) {
		f, err := strconv.ParseFloat(alias(data[start:i]), 64)
		if err != nil {
			// Out of range: PHP's zend_strtod yields ±INF or 0, as does
			// ParseFloat alongside its range error.
			if ne, isNum := err.(*strconv.NumError); !isNum || ne.Err != strconv.ErrRange {
				return 0, false
			}
		}
		d.pos = i
		return f, true
	}
	f = float64(m) / pow10[decimals]
	if neg {
		f = -f
	}
	d.pos = i
	return f, true
}

// float accepts PHP's d: grammar: iv, nv, nvexp, INF, -INF, NAN.
func (d *decoder) float() (float64, error) {
	if f, ok := d.plainFloat(); ok {
		return f, nil
	}
	start := d.pos
	end := start
	for end < len(d.data) && d.data[end] != ';' {
		end++
	}
	if end >= len(d.data) {
		return 0, d.fail(start, "unterminated float")
	}
	s := alias(d.data[start:end])
	switch s {
	case "NAN":
		d.pos = end
		return math.NaN(), nil
	case "INF":
		d.pos = end
		return math.Inf(1), nil
	case "-INF":
		d.pos = end
		return math.Inf(-1), nil
	}
	if !validFloat(s) {
		return 0, d.fail(start, "invalid float %q", s)
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		// Out of range: PHP's zend_strtod yields ±INF or 0, as does
		// ParseFloat alongside its range error.
		if ne, ok := err.(*strconv.NumError); !ok || ne.Err != strconv.ErrRange {
			return 0, d.fail(start, "invalid float %q", s)
		}
	}
	d.pos = end
	return f, nil
}

// validFloat: [+-]? ( [0-9]+ | [0-9]* "." [0-9]+ | [0-9]+ "." [0-9]* ) ( [eE] [+-]? [0-9]+ )?
func validFloat(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	intDigits := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
		intDigits++
	}
	fracDigits := 0
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			fracDigits++
		}
	}
	if intDigits == 0 && fracDigits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		expDigits := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
			expDigits++
		}
		if expDigits == 0 {
			return false
		}
	}
	return i == len(s)
}

// str parses len:"bytes" (s:, E: and class names) or, escaped, S:'s form.
func (d *decoder) str(escaped bool) ([]byte, error) {
	u, err := d.uiv()
	if err != nil {
		return nil, err
	}
	if !d.eat(':') {
		return nil, unexpected(d, ':')
	}
	if !d.eat('"') {
		return nil, unexpected(d, '"')
	}
	if u > uint64(len(d.data)-d.pos) {
		return nil, d.fail(d.pos, "string of %d bytes runs past the end", u)
	}
	n := int(u)
	if !escaped {
		b := d.data[d.pos : d.pos+n : d.pos+n]
		d.pos += n
		if !d.eat('"') {
			return nil, unexpected(d, '"')
		}
		return b, nil
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		if d.pos >= len(d.data) {
			return nil, d.fail(d.pos, "unterminated escaped string")
		}
		c := d.data[d.pos]
		if c != '\\' {
			out = append(out, c)
			d.pos++
			continue
		}
		if d.pos+2 >= len(d.data) {
			return nil, d.fail(d.pos, "truncated escape")
		}
		hi, ok1 := unhex(d.data[d.pos+1])
		lo, ok2 := unhex(d.data[d.pos+2])
		if !ok1 || !ok2 {
			return nil, d.fail(d.pos, "invalid escape")
		}
		out = append(out, hi<<4|lo)
		d.pos += 3
	}
	if !d.eat('"') {
		return nil, unexpected(d, '"')
	}
	return out, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// maxPrealloc bounds the elements reserved before they are actually read.
const maxPrealloc = 1024

func (d *decoder) enter() error {
	d.depth++
	if d.depth > d.maxDepth {
		return fmt.Errorf("%w: nesting deeper than %d at byte %d", ErrTooLarge, d.maxDepth, d.pos)
	}
	return nil
}

// elements parses "n:{ key value … }" into arr. Keys are ints or strings;
// numeric string keys become ints for arrays; the last duplicate wins.
func (d *decoder) elements(arr *Array, object bool) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer func() { d.depth-- }()
	at := d.pos
	var n int
	if object {
		// PHP reads an object's count with parse_iv2 and no grammar rule:
		// "+1", "-0" and no digits at all (0) pass; only a negative fails.
		c := d.iv2()
		if c < 0 || c > int64(len(d.data)) {
			return d.fail(at, "property count %d out of range", c)
		}
		n = int(c)
	} else {
		var err error
		if n, err = d.count(); err != nil {
			return err
		}
	}
	if !d.eat(':') {
		return unexpected(d, ':')
	}
	if !d.eat('{') {
		return unexpected(d, '{')
	}
	// Each element takes at least 4 bytes ("i:0;" + "N;"), and so does
	// each element the enclosing arrays still owe: never trust a count the
	// remaining input cannot hold. So the room reserved below never
	// exceeds what the remaining input justifies.
	if n > (len(d.data)-d.pos)/4-d.pending {
		return d.fail(at, "%d elements cannot fit in the remaining %d bytes", n, len(d.data)-d.pos)
	}
	d.pending += n
	var ents []entry
	if !d.skip {
		ents = d.allocEntries(n)
	}
	unique := true // ascending int keys cannot repeat
	prev := int64(math.MinInt64)
	for i := range n {
		d.pending--
		k, ok := d.fastKey(object)
		if !ok {
			var err error
			if k, err = d.key(object); err != nil {
				return err
			}
		}
		if unique && (!k.isInt() || (i > 0 && k.int() <= prev)) {
			unique = false
		}
		prev = k.int()
		v, err := d.value()
		if err != nil {
			return err
		}
		if !d.skip {
			ents = append(ents, entry{k: k, v: v})
		}
	}
	if !d.skip {
		arr.ents = d.dedupe(ents, unique)
	}
	return d.expect('}')
}

// doc is what lazy arrays share: the validated input and, for every
// array in the order they start, where it ends and the ordinal after its
// last descendant, so building one level can jump over the next.
type doc struct {
	data  []byte
	spans []span
}

type span struct{ end, next int32 }

// openSpan numbers the array starting here (-1 when nothing is lazy).
func (d *decoder) openSpan() int {
	if d.track || d.doc == nil {
		return -1
	}
	d.doc.spans = append(d.doc.spans, span{})
	return len(d.doc.spans) - 1
}

func (d *decoder) closeSpan(o int) {
	if o >= 0 {
		d.doc.spans[o] = span{end: int32(d.pos), next: int32(len(d.doc.spans))}
	}
}

// nested parses the elements of the array (or object) number o, whose
// tag is at start, into arr: now when references need every value built,
// else only validated, leaving arr to build them on first access.
func (d *decoder) nested(arr *Array, start, o int, object bool) error {
	if o < 0 {
		return d.elements(arr, object)
	}
	arr.doc, arr.at, arr.ord = d.doc, int32(start), int32(o)
	d.skip = true
	err := d.elements(nil, object)
	d.skip = false
	return err
}

// eagerBytes: while building a lazy array, a nested array this small is
// built along with it; a header and a later build would cost more.
const eagerBytes = 1024

// jump, while building a lazy array, handles the nested array whose tag
// is at start (d.pos is at its count): a small one is built now, a large
// one gets a lazy header and is jumped over without parsing it again.
func (d *decoder) jump(kind Kind, start int, class string) (Value, error) {
	if d.ord >= len(d.doc.spans) || int(d.doc.spans[d.ord].end) < d.pos {
		// Only if the caller changed the buffer after Decode (which its
		// contract forbids): fail rather than index out of range.
		return Value{}, d.fail(start, "session buffer changed after Decode")
	}
	arr := d.newArray()
	arr.class = class
	v := refValue(kind, unsafe.Pointer(arr))
	sp := d.doc.spans[d.ord]
	if int(sp.end)-start <= eagerBytes {
		d.ord++ // its descendants come next
		err := d.elements(arr, kind == KindObject)
		d.ord = int(sp.next)
		return v, err
	}
	arr.doc, arr.at, arr.ord = d.doc, int32(start), int32(d.ord)
	d.pos, d.ord = int(sp.end), int(sp.next)
	return v, nil
}

// build parses a's own elements from the input Decode validated.
func (a *Array) build() {
	data := a.doc.data
	d := decoder{data: data, pos: int(a.at) + 2, maxDepth: math.MaxInt, doc: a.doc, replay: true, ord: int(a.ord) + 1,
		budget: int(a.doc.spans[a.ord].end - a.at)}
	object := data[a.at] == 'O'
	if object {
		if _, err := d.className(); err != nil || !d.eat(':') {
			return // cannot happen: Decode validated these bytes
		}
	}
	if err := d.elements(a, object); err != nil {
		a.ents = nil // cannot happen, as above; never expose a partial array
	}
}

func (d *decoder) key(object bool) (key, error) {
	at := d.pos
	if d.pos+1 >= len(d.data) {
		return key{}, d.fail(at, "unexpected end in key")
	}
	tag := d.data[d.pos]
	d.pos++
	if !d.eat(':') {
		return key{}, unexpected(d, ':')
	}
	switch tag {
	case 'i':
		n, err := d.int()
		if err != nil {
			return key{}, err
		}
		if object {
			if !d.eat(';') {
				return key{}, unexpected(d, ';')
			}
			return strKey(strconv.FormatInt(n, 10)), nil
		}
		if !d.eat(';') {
			return key{}, unexpected(d, ';')
		}
		return intKey(n), nil
	case 's', 'S':
		b, err := d.str(tag == 'S')
		if err != nil {
			return key{}, err
		}
		if !d.eat(';') {
			return key{}, unexpected(d, ';')
		}
		if object {
			return strKey(alias(b)), nil
		}
		return canonicalKey(alias(b)), nil
	}
	return key{}, d.fail(at, "array key must be int or string, found %q", tag)
}

func (d *decoder) className() ([]byte, error) {
	at := d.pos
	b, err := d.str(false)
	if err != nil {
		return nil, err
	}
	if !validClass(b) {
		return nil, d.fail(at, "invalid class name")
	}
	return b, nil
}

func (d *decoder) custom() (Value, error) {
	name, err := d.className()
	if err != nil {
		return Value{}, err
	}
	if !d.eat(':') {
		return Value{}, unexpected(d, ':')
	}
	// The payload length is parse_iv2's, like an object's count.
	at := d.pos
	c := d.iv2()
	if !d.eat(':') {
		return Value{}, unexpected(d, ':')
	}
	if !d.eat('{') {
		return Value{}, unexpected(d, '{')
	}
	if c < 0 {
		return Value{}, d.fail(at, "negative payload length")
	}
	if c > int64(len(d.data)-d.pos) {
		return Value{}, d.fail(d.pos, "payload of %d bytes runs past the end", c)
	}
	n := int(c)
	if d.skip {
		d.pos += n
		if !d.eat('}') {
			return Value{}, unexpected(d, '}')
		}
		return Value{}, nil
	}
	cv := &custom{class: alias(name), payload: d.data[d.pos : d.pos+n : d.pos+n]}
	d.pos += n
	if !d.eat('}') {
		return Value{}, unexpected(d, '}')
	}
	return refValue(KindCustom, unsafe.Pointer(cv)), nil
}

// validClass mirrors PHP 8.2's check for O: and C: class names
// (zend_is_valid_class_name, plus unserialize's own rules): not empty, not
// starting with '\\', and only letters, digits, '_', '\\' and bytes >= 0x80.
// A leading digit passes: PHP makes an incomplete object of class "5".
func validClass(b []byte) bool {
	if len(b) == 0 || b[0] == '\\' {
		return false
	}
	for _, c := range b {
		if !labelByte(c) && c != '\\' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// validEnum checks E:'s "Class:Case". PHP refuses an enum whose class it
// cannot load, so a name no PHP code could declare (a segment starting with
// a digit, an empty namespace part) cannot be one.
func validEnum(b []byte) bool {
	colon := bytes.IndexByte(b, ':')
	if colon < 0 || !label(b[colon+1:]) {
		return false
	}
	name := b[:colon]
	for {
		seg := bytes.IndexByte(name, '\\')
		if seg < 0 {
			return label(name)
		}
		if !label(name[:seg]) {
			return false
		}
		name = name[seg+1:]
	}
}

// label is a PHP identifier: [A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*.
func label(b []byte) bool {
	if len(b) == 0 || !labelByte(b[0]) {
		return false
	}
	for _, c := range b {
		if !labelByte(c) && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func labelByte(c byte) bool {
	return c == '_' || c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func float64frombits(u uint64) float64 { return math.Float64frombits(u) }

// alias views b as a string without copying. Keys, like string values,
// alias the buffer given to Decode (see Decode's contract).
func alias(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}
