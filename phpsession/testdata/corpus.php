<?php
// Writes a corpus of sessions with PHP's own session handlers and prints,
// for each, PHP's view of the decoded session in the JSON shape that
// phpsession.MarshalJSON promises (issue 2 §8). Used by differential_test.go.
//
// Then it plants crafted bytes no PHP writer produces (every number field
// with a sign, leading zeros, spaces or overflow; bytes after the last
// value; top-level scalars) as session files and reads each with a real
// session_start(), printing whether PHP accepted it (and its view) or
// destroyed it. Those lines carry the bytes in "raw", since PHP deletes
// the file of a session it cannot decode.
//
// usage: php corpus.php <dir> <serialize_handler>
declare(strict_types=1);

[$_, $dir, $handler] = $argv;
ob_start(); // headers must not be "sent" before the sessions start
$lines = [];

enum Suit: string { case Hearts = 'H'; case Spades = 'S'; }
enum Plain { case One; }
class Point { public $x = 1; protected $y = 2; private $z = 3; public $next = null; }
class Legacy implements Serializable {
    private string $data = "raw{payload}";
    public function serialize(): string { return $this->data; }
    public function unserialize(string $d): void { $this->data = $d; }
}

function view(mixed $v, array &$active = []): mixed {
    if (is_float($v)) {
        if (is_nan($v)) return "NAN";
        if (is_infinite($v)) return $v > 0 ? "INF" : "-INF";
        return $v;
    }
    if (is_string($v)) return mb_convert_encoding($v, 'UTF-8', 'ISO-8859-1');
    if (is_array($v)) {
        $out = [];
        foreach ($v as $k => $x) $out[is_int($k) ? $k : mb_convert_encoding($k, 'UTF-8', 'ISO-8859-1')] = view($x, $active);
        if (array_is_list($v)) return array_values($out);
        return (object)$out;
    }
    if ($v instanceof UnitEnum) return ['__enum' => get_class($v) . ':' . $v->name];
    if ($v instanceof Legacy) return ['__class' => 'Legacy', '__serialized' => $v->serialize()];
    if (is_object($v)) {
        $id = spl_object_id($v);
        if (isset($active[$id])) return null;
        $active[$id] = true;
        $props = (array)$v;
        $class = get_class($v);
        if ($v instanceof __PHP_Incomplete_Class) { // an unknown class: keep its name
            $class = $props['__PHP_Incomplete_Class_Name'];
            unset($props['__PHP_Incomplete_Class_Name']);
        }
        $out = ['__class' => mb_convert_encoding($class, 'UTF-8', 'ISO-8859-1')];
        foreach ($props as $k => $x) {
            $name = $k;
            if (is_string($k) && $k !== '' && $k[0] === "\0") $name = substr($k, strrpos($k, "\0") + 1);
            $out[$name] = view($x, $active);
        }
        unset($active[$id]);
        return $out;
    }
    return $v;
}

function values(): array {
    $p = new Point(); $q = new Point(); $p->next = $q;
    $self = new stdClass(); $self->me = $self;
    $latin = mb_convert_encoding('José Conceição ÀÉÎÕÜ ç', 'ISO-8859-1', 'UTF-8');
    $vals = [
        null, true, false, 0, 1, -1, PHP_INT_MAX, PHP_INT_MIN, 42, -987654321,
        0.0, -0.0, 0.1, 1.5, -2.25, 1e100, 1.0E-10, 123456789.125, 3.0, INF, -INF, NAN, PHP_FLOAT_EPSILON, 1e15, 1e16, 0.0001, 0.00001,
        '', 'a', "with|pipe;semi\"quote}brace", "nul\0byte", $latin, str_repeat('x', 3000), "\x80\x9f\xff",
        [], [1, 2, 3], ['a' => 1, 'b' => [2, 3]], [5 => 'x', 7 => 'y'], ['10' => 'numeric', '-3' => 'neg', '05' => 'zero-led'],
        [1 => 'one', 0 => 'zero'], [[[[['deep']]]]], ['k' => ['k' => ['k' => null]]],
        $p, $self, Suit::Hearts, Plain::One, new Legacy(),
        [$p, $p], ['latin' => $latin, $latin => 'key'],
    ];
    return $vals;
}

$i = 0;
foreach (values() as $n => $val) {
    foreach (['plain', 'ref'] as $mode) {
        $id = sprintf('corpus%s%03d%s', str_replace('_', '', $handler), $i++, $mode);
        session_id($id);
        session_start();
        $_SESSION = [];
        $_SESSION['value'] = $val;
        $_SESSION['meta'] = ['n' => $n];
        if ($mode === 'ref') {
            $_SESSION['alias'] = &$_SESSION['value'];
            $shared = ['x' => 1];
            $_SESSION['both'] = [&$shared, &$shared];
        }
        $expect = view($_SESSION);
        session_write_close();
        $lines[] = json_encode(['id' => $id, 'json' => $expect], JSON_PRESERVE_ZERO_FRACTION | JSON_PARTIAL_OUTPUT_ON_ERROR);
    }
}

// The value forms planted under key "k", one session each. Every number
// field of the grammar is tried with a sign, leading zeros, a space, no
// digits and an overflow, since PHP reads them with three different rules
// (uiv with wrapping size_t arithmetic, iv with clamping, and parse_iv2
// with no grammar check at all for object counts and C: lengths).
function craftedValues(): array {
    return [
        // i: is iv, [+-]?[0-9]+, clamped on overflow.
        'i:+5;', 'i:-0;', 'i:007;', 'i:+007;', 'i: 5;', 'i:5 ;', 'i:+-5;', 'i:;', 'i:-;', 'i:1.0;', 'i:0x1;',
        'i:99999999999999999999;', 'i:-99999999999999999999;', 'i:9223372036854775808;', 'i:-9223372036854775809;',
        'i:00000000000000000000000001;', 'i:-00000000000000000009223372036854775808;',
        // b: is exactly b:0; or b:1;.
        'b:0;', 'b:1;', 'b:+1;', 'b:01;', 'b:2;', 'b:-0;', 'b:;', 'b:true;',
        // d: is iv | nv | nvexp, or NAN, INF, -INF.
        'd:+1;', 'd:+.5;', 'd:1.e5;', 'd:-0;', 'd:+INF;', 'd:-NAN;', 'd:inf;', 'd:NAN;', 'd:-INF;', 'd:INF ;', 'd: 1;',
        'd:1e+5;', 'd:1E-5;', 'd:01.5;', 'd:.;', 'd:1e400;', 'd:-1e400;', 'd:1e-400;', 'd:0x1A;', 'd:1_0;', 'd:1e;',
        'd:e5;', 'd:.5e-3;', 'd:5.;', 'd:-.5;', 'd:1e+;', 'd:+0.0e-0;',
        // s: and S: lengths are uiv: digits only, wrapping at 2^64.
        's:+1:"a";', 's:01:"a";', 's:-1:"a";', 's: 1:"a";', 's:1 :"a";', 's::"";', 's:0000000000000000000000001:"a";',
        's:18446744073709551617:"a";', 's:18446744073709551616:"";', 's:36893488147419103233:"a";', 's:18446744073709551618:"a";',
        's:2:"a";', 's:1:"ab";', "s:1:'a';", 's:1:"a"', 's:1:"a":',
        'S:+1:"a";', 'S:01:"\41";', 'S:18446744073709551617:"a";', 'S:1:"\4g";', 'S:3:"\41\42\43";', 'S:1:"\\";',
        // a: counts are uiv read by parse_iv: zeros pass, overflow fails.
        'a:+1:{i:0;i:1;}', 'a:01:{i:0;i:1;}', 'a:-0:{}', 'a:-1:{}', 'a::{}', 'a: 1:{i:0;i:1;}', 'a:0:{}', 'a:00:{}',
        'a:18446744073709551617:{i:0;i:1;}', 'a:2:{i:0;i:1;}', 'a:1:{i:0;i:1;i:1;i:2;}', 'a:1:{i:0;i:1;',
        // Keys: i: and s: (and S:) only; numeric strings become ints.
        'a:1:{i:+0;i:1;}', 'a:1:{i:00;i:1;}', 'a:1:{i:-0;i:1;}', 'a:1:{i:99999999999999999999;i:1;}',
        'a:1:{s:+1:"a";i:1;}', 'a:1:{s:2:"05";i:1;}', 'a:1:{s:2:"-0";i:1;}', 'a:1:{s:2:"+5";i:1;}',
        'a:1:{s:20:"99999999999999999999";i:1;}', 'a:1:{s:19:"9223372036854775807";i:1;}',
        'a:1:{s:19:"9223372036854775808";i:1;}', 'a:1:{s:20:"-9223372036854775808";i:1;}',
        'a:1:{b:1;i:1;}', 'a:1:{N;i:1;}', 'a:1:{d:1;i:1;}', 'a:1:{S:1:"a";i:1;}', 'a:2:{s:1:"a";i:1;s:1:"a";i:2;}',
        'a:2:{i:1;i:1;s:1:"1";i:2;}', 'a:1:{s:1:"5";i:1;}', 'a:1:{S:2:"\61b";i:1;}',
        'O:8:"stdClass":2:{s:1:"a";i:1;s:1:"a";i:2;}', 'O:8:"stdClass":1:{s:1:"5";i:1;}',
        // O: class name length is uiv; the property count is parse_iv2.
        'O:8:"stdClass":+1:{s:1:"a";i:1;}', 'O:8:"stdClass":01:{s:1:"a";i:1;}', 'O:8:"stdClass"::{}',
        'O:8:"stdClass":-0:{}', 'O:8:"stdClass":-:{}', 'O:8:"stdClass":+:{}', 'O:8:"stdClass":-1:{}',
        'O:8:"stdClass": 1:{s:1:"a";i:1;}', 'O:8:"stdClass":1 :{s:1:"a";i:1;}', 'O:+8:"stdClass":0:{}', 'O:08:"stdClass":0:{}',
        'O:8:"stdClass":99999999999999999999:{}', 'O:8:"stdClass":00000000000000000000001:{s:1:"a";i:1;}',
        'O:18446744073709551624:"stdClass":0:{}', 'O:8:"stdClass":1:{i:+5;i:1;}', 'O:8:"stdClass":1:{i:05;i:1;}',
        'O:8:"stdClass":2:{s:1:"a";i:1;}', 'O:8:"stdClass":0:{s:1:"a";i:1;}',
        // Class names: PHP's valid-name bytes, not starting with '\'.
        'O:1:"5":0:{}', 'O:2:"5x":1:{s:1:"a";i:1;}', 'O:4:"\Foo":0:{}', 'O:4:"Foo\":0:{}', 'O:4:"A\\\\B":0:{}',
        'O:5:"A\B_9":0:{}', 'O:3:"a-b":0:{}', 'O:0:"":0:{}', "O:2:\"\xc3\xa9\":0:{}", "O:1:\"\x7f\":0:{}", 'O:3:"a b":0:{}',
        "O:2:\"\0a\":0:{}", 'O:4:"Nope":1:{s:1:"a";i:1;}',
        // C: class name length is uiv; the payload length is parse_iv2.
        'C:6:"Legacy":12:{raw{payload}}', 'C:6:"Legacy":+3:{abc}', 'C:6:"Legacy":03:{abc}', 'C:6:"Legacy"::{}',
        'C:6:"Legacy":-0:{}', 'C:6:"Legacy":-:{}', 'C:6:"Legacy":-1:{}', 'C:6:"Legacy":18446744073709551616:{}',
        'C:6:"Legacy":3:{abc', 'C:6:"Legacy":3:{ab}', 'C:+6:"Legacy":0:{}', 'C:18446744073709551622:"Legacy":0:{}',
        'C:6:"Legacy": 3:{abc}',
        // E: length is uiv.
        'E:11:"Suit:Hearts";', 'E:+11:"Suit:Hearts";', 'E:011:"Suit:Hearts";', 'E:18446744073709551627:"Suit:Hearts";',
        'E:11:"Suit:Hearts"',
        // Oddments.
        'N;', 'N', 'x:1;', '}', '',
    ];
}

// Sessions of two variables: "k" holds a value that can be referred to,
// "j" a reference to it, written with a sign, zeros, spaces or a number
// that wraps at 2^64. {s} is k's slot (one more for php_serialize, whose
// session array is slot 1), {s1} and {s2} the slots after it, {w} {s}
// plus 2^64.
function craftedRefs(): array {
    $obj = 'O:8:"stdClass":0:{}';
    return [
        ['i:1;', 'a:1:{i:0;R:+{s};}'], ['i:1;', 'a:1:{i:0;R:{s};}'], ['i:1;', 'a:1:{i:0;R:0{s};}'],
        ['i:1;', 'R:+{s};'], ['i:1;', 'R:-{s};'], ['i:1;', 'R:0{s};'], ['i:1;', 'R: {s};'], ['i:1;', 'R:{s} ;'],
        ['i:1;', 'R:;'], ['i:1;', 'R:{s}'], ['i:1;', 'R:{w};'], ['i:1;', 'R:18446744073709551616;'], ['i:1;', 'R:0;'],
        [$obj, 'r:+{s};'], [$obj, 'r:-{s};'], [$obj, 'r:0{s};'], [$obj, 'r:{w};'], [$obj, 'r:{s};'], [$obj, 'r: {s};'],
        ['i:1;', 'r:{s};'], ['a:2:{i:0;i:5;i:1;O:8:"stdClass":0:{}}', 'R:{s1};'],
        ['a:2:{i:0;i:5;i:1;O:8:"stdClass":0:{}}', 'r:{s2};'], ['a:2:{i:0;i:5;i:1;O:8:"stdClass":0:{}}', 'r:{s1};'],
        ['a:2:{i:0;i:5;i:1;O:8:"stdClass":0:{}}', 'r:+{s2};'], ['a:2:{i:0;i:5;i:1;O:8:"stdClass":0:{}}', 'R:00{s2};'],
    ];
}

// Bytes planted after a complete session holding k|i:1; (or its
// equivalent in the handler's format).
function craftedTrailers(): array {
    return ['x', "\n", "\0", ' ', "\r\n", 'a:0:{}', 'i:2;', 'N;', '}', ';', 'k', '|', 'j|', 'j|i:2', 'j|i:2;', "\x01", "\x01j", "\x01ji:2", "\x01ji:2;"];
}

// Whole session files, per handler.
function craftedRaw(): array {
    return ['', 'x', '|', 'N;', 'i:1;', 's:0:"";', 'b:0;', 'b:1;', 'd:1.5;', 'a:0:{}', 'a:1:{s:1:"k";i:1;}', 'a:1:{s:1:"k";i:1;}}',
        'a:1:{s:1:"k";i:1;', 'a:1:{s:3:"foo";s:3:"bar";}', 'O:8:"stdClass":1:{s:1:"k";i:1;}', 'C:6:"Legacy":3:{abc}',
        'E:11:"Suit:Hearts";', 'N;garbage', 'i:1;garbage', ' a:0:{}', 'N', 'R:1;', 'r:1;', 'k|i:1;', '|i:1;', 'k|', 'k|i:1',
        "\x01ki:1;", "\x00i:1;", "\x81ki:1;", "\x01k", "\x7f", "\xff", "\n", 'a|b|i:1;', 'k|i:1;k|i:2;',
        "new\nline|i:1;", "k\0|i:1;", 'k!|i:1;', '!k|i:1;', "\x7f" . str_repeat('k', 127) . 'i:1;', "\xff" . str_repeat('k', 127) . 'i:1;', "\x00", "\x02k|i:1;", 'a:1:{s:1:"k";i:1;}k|i:2;'];
}

function encodeSession(string $handler, array $vars): string {
    $out = '';
    if ($handler === 'php_serialize') {
        foreach ($vars as $name => $v) $out .= 's:' . strlen((string)$name) . ':"' . $name . '";' . $v;
        return 'a:' . count($vars) . ':{' . $out . '}';
    }
    foreach ($vars as $name => $v) $out .= ($handler === 'php' ? $name . '|' : chr(strlen((string)$name)) . $name) . $v;
    return $out;
}

function crafted(string $handler): array {
    $cases = [];
    foreach (craftedValues() as $v) $cases[] = encodeSession($handler, ['k' => $v]);
    $off = $handler === 'php_serialize' ? 1 : 0;
    foreach (craftedRefs() as [$k, $j]) {
        $j = strtr($j, ['{s}' => (string)(1 + $off), '{s1}' => (string)(2 + $off), '{s2}' => (string)(3 + $off),
            '{w}' => '184467440737095516' . (17 + $off)]);
        $cases[] = encodeSession($handler, ['k' => $k, 'j' => $j]);
    }
    foreach (craftedTrailers() as $t) $cases[] = encodeSession($handler, ['k' => 'i:1;']) . $t;
    return array_merge($cases, craftedRaw());
}

$i = 0;
foreach (crafted($handler) as $raw) {
    $id = sprintf('crafted%s%03d', str_replace('_', '', $handler), $i++);
    $file = "$dir/sess_$id";
    file_put_contents($file, $raw);
    session_id($id);
    $warnings = [];
    set_error_handler(function (int $no, string $msg) use (&$warnings): bool { $warnings[] = $msg; return true; });
    $ok = session_start();
    restore_error_handler();
    $line = ['id' => $id, 'raw' => base64_encode($raw), 'ok' => $ok, 'destroyed' => !file_exists($file), 'warnings' => $warnings];
    if ($ok) {
        if (is_array($_SESSION)) $line['json'] = view($_SESSION);
        else $line['scalar'] = get_debug_type($_SESSION);
        session_abort();
    }
    @unlink($file);
    $lines[] = json_encode($line, JSON_PRESERVE_ZERO_FRACTION | JSON_PARTIAL_OUTPUT_ON_ERROR | JSON_INVALID_UTF8_SUBSTITUTE);
}

ob_end_clean();
echo implode("\n", $lines), "\n";
