package phpsession_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
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

// phpDecodeNs measures PHP's own session_decode of the same bytes, in the
// same run, so the figure is a ratio and not an absolute time.
func phpDecodeNs(b *testing.B, data []byte) float64 {
	f := filepath.Join(b.TempDir(), "data")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command(phpsessiontest.PHP(b), "-r", `
		$d = file_get_contents($argv[1]); session_start(); $n = 2000;
		$t = hrtime(true); for ($i = 0; $i < $n; $i++) { session_decode($d); } echo (hrtime(true) - $t) / $n;`, f).Output()
	if err != nil {
		b.Fatal(err)
	}
	ns, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		b.Fatalf("php said %q", out)
	}
	return ns
}

// BenchmarkDecodeExpresso decodes a 64 KB Expresso session (cold: no
// cache) and reports PHP's session_decode of the same bytes as php-ns/op
// and the ratio go/php (goal: <= 1).
func BenchmarkDecodeExpresso(b *testing.B) {
	_, _, data := expressoSession(b)
	php := phpDecodeNs(b, data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits); err != nil {
			b.Fatal(err)
		}
	}
	goNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(php, "php-ns/op")
	b.ReportMetric(goNs/php, "go/php")
	b.Log(fmt.Sprintf("session %d bytes", len(data)))
}

// BenchmarkLookupCached is the per-API-call cost of an unchanged session
// (goal: under 5 µs).
func BenchmarkLookupCached(b *testing.B) {
	dir, id, _ := expressoSession(b)
	r, err := phpsession.Open(b.Context(), phpsession.Config{Store: "files", SavePath: dir, Serializer: phpsession.SerializerPHP,
		Charset: "ISO-8859-1", Profile: phpsession.ExpressoProfile(0), Owner: -1})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := r.Lookup(b.Context(), id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Lookup(b.Context(), id); err != nil {
			b.Fatal(err)
		}
	}
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
