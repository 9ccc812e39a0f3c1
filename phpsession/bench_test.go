package phpsession_test

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
	"golang.org/x/sys/unix"
)

// expressoSession writes a realistic ~64 KB Expresso session with PHP and
// returns its directory, id and bytes.
func expressoSession(b *testing.B) (string, string, []byte) {
	dir := b.TempDir()
	id := phpsessiontest.NewID(b)
	phpsessiontest.WriteExpressoSession(b, phpsessiontest.Store{Handler: "files", SavePath: dir}, id,
		phpsessiontest.ExpressoUser{User: "alice", Password: "pw", FullName: "Alice Araújo", Pad: 64 << 10})
	data, err := os.ReadFile(filepath.Join(dir, "sess_"+id))
	if err != nil {
		b.Fatal(err)
	}
	return dir, id, data
}

// phpDecoder is a PHP process that times its own session_decode of the
// same bytes on request, so PHP's figure excludes process start-up.
type phpDecoder struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

// startPHPDecoder starts PHP, warms it up, and checks that it decodes the
// bytes to the same number of variables Go does.
func startPHPDecoder(b *testing.B, data []byte, vars int) *phpDecoder {
	f := filepath.Join(b.TempDir(), "data")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		b.Fatal(err)
	}
	// Each request "n" runs n decodes and answers the nanoseconds per
	// decode. PHP frees the previous $_SESSION contents inside each
	// decode, as Go's GC runs inside Go's loop.
	cmd := exec.Command(phpsessiontest.PHP(b), "-d", "session.save_handler=files", "-d", "session.save_path="+b.TempDir(),
		"-d", "session.serialize_handler=php", "-r", `
		$d = file_get_contents($argv[1]); session_start();
		for ($i = 0; $i < 200; $i++) { session_decode($d); }
		echo count($_SESSION), "\n";
		$cpu = function () { $r = getrusage(); return ($r["ru_utime.tv_sec"] + $r["ru_stime.tv_sec"]) * 1e9 + ($r["ru_utime.tv_usec"] + $r["ru_stime.tv_usec"]) * 1e3; };
		while (($l = fgets(STDIN)) !== false) {
			$n = (int)$l; $ok = true;
			$c = $cpu(); $t = hrtime(true); for ($i = 0; $i < $n; $i++) { $ok = session_decode($d) && $ok; }
			$t = hrtime(true) - $t; $c = $cpu() - $c;
			echo $ok ? ($t / $n) . " " . ($c / $n) : -1, "\n";
		}`, f)
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); cmd.Wait() })
	p := &phpDecoder{in: in, out: bufio.NewScanner(stdout)}
	if got := p.line(b); got != strconv.Itoa(vars) {
		b.Fatalf("php decoded %s variables, Go %d", got, vars)
	}
	return p
}

func (p *phpDecoder) line(b *testing.B) string {
	if !p.out.Scan() {
		b.Fatalf("php stopped: %v", p.out.Err())
	}
	return p.out.Text()
}

// decodeNs runs n decodes in PHP and returns PHP's wall-clock and CPU
// (user+system) time per decode.
func (p *phpDecoder) decodeNs(b *testing.B, n int) (wall, cpu float64) {
	if _, err := fmt.Fprintln(p.in, n); err != nil {
		b.Fatal(err)
	}
	s := p.line(b)
	w, c, _ := strings.Cut(s, " ")
	wall, err1 := strconv.ParseFloat(w, 64)
	cpu, err2 := strconv.ParseFloat(c, 64)
	if err1 != nil || err2 != nil || wall < 0 {
		b.Fatalf("php said %q", s)
	}
	return wall, cpu
}

// cpuNs is the CPU time (user+system, all threads, so the GC's too) this
// process has used.
func cpuNs(b *testing.B) float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return float64(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkDecodeExpresso is the cold path of a lookup without its I/O:
// Decode of a 64 KB Expresso session (no cache) and the Expresso
// profile's Identity. Decode validates every byte; the arrays the
// profile does not touch (the big preference table) are never built.
// It reports PHP's session_decode of the same bytes as php-ns/op and the
// ratio go/php (goal: <= 1); see benchVsPHP.
func BenchmarkDecodeExpresso(b *testing.B) {
	prof := phpsession.ExpressoProfile(0)
	cs, err := phpsession.ParseCharset("ISO-8859-1")
	if err != nil {
		b.Fatal(err)
	}
	benchVsPHP(b, "", func(data []byte) {
		vars, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits)
		if err != nil {
			b.Fatal(err)
		}
		if id, err := prof.Identity(vars, cs, time.Now()); err != nil || id.User != "alice" {
			b.Fatalf("Identity = %+v, %v", id, err)
		}
	})
}

// BenchmarkDecodeExpressoRefs is BenchmarkDecodeExpresso for a session
// that also holds a reference (R:1, to the first variable) at its
// end, the worst case: PHP's slot numbering needs every value, so Decode
// meets the reference, starts again and builds everything.
func BenchmarkDecodeExpressoRefs(b *testing.B) {
	prof := phpsession.ExpressoProfile(0)
	cs, err := phpsession.ParseCharset("ISO-8859-1")
	if err != nil {
		b.Fatal(err)
	}
	benchVsPHP(b, "copy|R:1;", func(data []byte) {
		vars, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits)
		if err != nil {
			b.Fatal(err)
		}
		if id, err := prof.Identity(vars, cs, time.Now()); err != nil || id.User != "alice" {
			b.Fatalf("Identity = %+v, %v", id, err)
		}
	})
}

// BenchmarkDecodeExpressoFull decodes the same session and then touches
// every element of every array, so everything is built, as PHP's
// session_decode builds it: the like-for-like comparison.
func BenchmarkDecodeExpressoFull(b *testing.B) {
	var walk func(a *phpsession.Array) int
	walk = func(a *phpsession.Array) int {
		n := a.Len()
		for i := range a.Len() {
			if _, v := a.At(i); v.Array() != nil {
				n += walk(v.Array())
			}
		}
		return n
	}
	benchVsPHP(b, "", func(data []byte) {
		vars, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits)
		if err != nil {
			b.Fatal(err)
		}
		if walk(vars) < 1000 {
			b.Fatal("session smaller than expected")
		}
	})
}

// benchVsPHP runs decode on a 64 KB Expresso session (followed by extra)
// against PHP's
// session_decode of the same bytes. The iterations are split into 10
// rounds; each round times PHP and then Go on the same number of decodes,
// and go/php is the median of the rounds' ratios, so a load change on a
// shared machine lands on both sides of a ratio instead of skewing it.
// go/php-cpu is the same for CPU time (user+system; Go's includes its GC
// threads), which waiting for a busy machine's CPU does not inflate.
func benchVsPHP(b *testing.B, extra string, decode func(data []byte)) {
	_, _, data := expressoSession(b)
	data = append(data, extra...)
	vars, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits)
	if err != nil {
		b.Fatal(err)
	}
	php := startPHPDecoder(b, data, vars.Len())
	const rounds = 10
	chunk := max(b.N/rounds, 1)
	var ratios, cpuRatios, phpNs []float64
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		k := min(chunk, b.N-done)
		b.StopTimer()
		p, pc := php.decodeNs(b, k)
		b.StartTimer()
		start, c0 := time.Now(), cpuNs(b)
		for range k {
			decode(data)
		}
		g := float64(time.Since(start).Nanoseconds()) / float64(k)
		gc := (cpuNs(b) - c0) / float64(k)
		ratios, phpNs = append(ratios, g/p), append(phpNs, p)
		cpuRatios = append(cpuRatios, gc/pc)
		done += k
	}
	b.StopTimer()
	b.ReportMetric(median(phpNs), "php-ns/op")
	b.ReportMetric(median(ratios), "go/php")
	b.ReportMetric(median(cpuRatios), "go/php-cpu")
	if b.N >= rounds {
		b.Logf("session %d bytes; go/php per round %.2f; go/php-cpu %.2f", len(data), ratios, cpuRatios)
	}
}

// BenchmarkLookupCached is the per-API-call cost of an unchanged session
// (goal: under 5 µs), as the sidecar checks each request: the id hashed
// once (Hash), for the reader's cache and the caller's own key both, then
// LookupHashed. It also reports, in the same run, the check as callers did
// it before: Lookup, which hashes the id, and a second SHA-256 of the id
// for the caller's key (twice-cpu-ns/op), and once/twice-cpu, the median
// of alternating rounds' ratios in CPU time.
func BenchmarkLookupCached(b *testing.B) {
	dir, id, _ := expressoSession(b)
	r, err := phpsession.Open(b.Context(), phpsession.Config{Store: "files", SavePath: dir, Serializer: phpsession.SerializerPHP,
		Charset: "ISO-8859-1", Profile: phpsession.ExpressoProfile(0), Owner: -1})
	if err != nil {
		b.Fatal(err)
	}
	var key [sha256.Size]byte
	once := func() {
		h := phpsession.Hash(id)
		if _, err := r.LookupHashed(b.Context(), h); err != nil {
			b.Fatal(err)
		}
		key = h.Sum()
	}
	twice := func() {
		if _, err := r.Lookup(b.Context(), id); err != nil {
			b.Fatal(err)
		}
		key = sha256.Sum256([]byte(id))
	}
	once()
	b.ReportAllocs()
	for b.Loop() {
		once()
	}
	// The ratio in CPU time of this thread alone, which waiting for a
	// busy machine's CPU does not inflate; rounds alternate which comes
	// first.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const rounds, runs = 40, 1000
	var ratios, twiceNs []float64
	for i := range rounds {
		var on, tw float64
		if i%2 == 0 {
			tw, on = threadCPUNs(b, twice, runs), threadCPUNs(b, once, runs)
		} else {
			on, tw = threadCPUNs(b, once, runs), threadCPUNs(b, twice, runs)
		}
		ratios, twiceNs = append(ratios, on/tw), append(twiceNs, tw)
	}
	_ = key
	b.ReportMetric(median(twiceNs), "twice-cpu-ns/op")
	b.ReportMetric(median(ratios), "once/twice-cpu")
	if b.N > 1 {
		slices.Sort(ratios)
		b.Logf("once/twice-cpu over %d rounds: min %.3f, quartiles %.3f %.3f %.3f, max %.3f", rounds,
			ratios[0], ratios[rounds/4], ratios[rounds/2], ratios[3*rounds/4], ratios[rounds-1])
	}
}

// threadCPUNs is the CPU time of the calling (locked) thread per call of
// f, over n calls.
func threadCPUNs(b *testing.B, f func(), n int) float64 {
	var t0, t1 unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t0); err != nil {
		b.Fatal(err)
	}
	for range n {
		f()
	}
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &t1); err != nil {
		b.Fatal(err)
	}
	return float64(t1.Nano()-t0.Nano()) / float64(n)
}

// BenchmarkLookupCold is the cost of a session the reader has not decoded
// yet (or that PHP rewrote): stat, read and decode of a 64 KB Expresso
// session. A one-entry cache and two sessions read in turn make every
// lookup miss. It reports BenchmarkLookupCached's figure measured in the
// same run as cached-ns/op and the ratio cold/cached.
func BenchmarkLookupCold(b *testing.B) {
	dir, id, data := expressoSession(b)
	other := phpsessiontest.NewID(b)
	for other == id {
		other = phpsessiontest.NewID(b)
	}
	if err := os.WriteFile(filepath.Join(dir, "sess_"+other), data, 0o600); err != nil {
		b.Fatal(err)
	}
	open := func(b *testing.B, cacheSize int) *phpsession.Reader {
		r, err := phpsession.Open(b.Context(), phpsession.Config{Store: "files", SavePath: dir, Serializer: phpsession.SerializerPHP,
			Charset: "ISO-8859-1", Profile: phpsession.ExpressoProfile(0), Owner: -1, CacheSize: cacheSize})
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	// The cached figure, timed before the benchmark's loop (testing.Benchmark
	// cannot nest inside a running benchmark).
	warm := open(b, 0)
	const runs = 5000
	start := time.Now()
	for range runs + 1 {
		if _, err := warm.Lookup(b.Context(), id); err != nil {
			b.Fatal(err)
		}
	}
	cachedNs := float64(time.Since(start).Nanoseconds()) / (runs + 1)
	r := open(b, 1)
	ids := [2]string{id, other}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if _, err := r.Lookup(b.Context(), ids[n%2]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	cold := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(cachedNs, "cached-ns/op")
	b.ReportMetric(cold/cachedNs, "cold/cached")
}

// BenchmarkCachedSessionMemory is the heap a Reader keeps per cached 64 KB
// Expresso session, with IdentityOnly (what the sidecar runs) against the
// whole decoded session measured in the same run: identity-B/session,
// full-B/session and their ratio. Each op looks up 200 distinct sessions
// into a fresh Reader and measures the live heap once they are cached.
func BenchmarkCachedSessionMemory(b *testing.B) {
	const sessions = 200
	dir, id, data := expressoSession(b)
	ids := []string{id}
	for len(ids) < sessions {
		other := phpsessiontest.NewID(b)
		if err := os.WriteFile(filepath.Join(dir, "sess_"+other), data, 0o600); err != nil {
			b.Fatal(err)
		}
		ids = append(ids, other)
	}
	retained := func(identityOnly bool) float64 {
		before := liveHeap()
		r, err := phpsession.Open(b.Context(), phpsession.Config{Store: "files", SavePath: dir, Serializer: phpsession.SerializerPHP,
			Charset: "ISO-8859-1", Profile: phpsession.ExpressoProfile(0), Owner: -1, IdentityOnly: identityOnly})
		if err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			s, err := r.Lookup(b.Context(), id)
			if err != nil {
				b.Fatal(err)
			}
			if (s.Vars == nil) != identityOnly {
				b.Fatalf("IdentityOnly=%v but Vars nil = %v", identityOnly, s.Vars == nil)
			}
		}
		after := liveHeap()
		runtime.KeepAlive(r)
		return float64(after-before) / sessions
	}
	var idSum, fullSum float64
	for b.Loop() {
		idSum += retained(true)
		fullSum += retained(false)
	}
	n := float64(b.N)
	b.ReportMetric(idSum/n, "identity-B/session")
	b.ReportMetric(fullSum/n, "full-B/session")
	b.ReportMetric(idSum/fullSum, "identity/full")
}

// liveHeap is the heap in use after a full collection.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}
