<?php
// Writes a corpus of sessions with PHP's own session handlers and prints,
// for each, PHP's view of the decoded session in the JSON shape that
// phpsession.MarshalJSON promises (issue 2 §8). Used by differential_test.go.
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
    public function serialize(): string { return "raw{payload}"; }
    public function unserialize(string $d): void {}
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
        $out = ['__class' => get_class($v)];
        foreach ((array)$v as $k => $x) {
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
ob_end_clean();
echo implode("\n", $lines), "\n";
