package phpsession_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

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
// same run, so the figure is a ratio and not an absolute time. The time is
// per decode inside one PHP process (start-up excluded), after a warm-up,
// over many iterations; PHP's freeing of the previous $_SESSION contents
// is part of each decode, as the GC is part of Go's. It also checks that
// PHP accepted the bytes and found the same number of variables.
func phpDecodeNs(b *testing.B, data []byte, vars int) float64 {
	f := filepath.Join(b.TempDir(), "data")
	if err := os.WriteFile(f, data, 0o600); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command(phpsessiontest.PHP(b), "-d", "session.save_handler=files", "-d", "session.save_path="+b.TempDir(),
		"-d", "session.serialize_handler=php", "-r", `
		$d = file_get_contents($argv[1]); session_start();
		for ($i = 0; $i < 200; $i++) { session_decode($d); }
		$n = 2000; $ok = true;
		$t = hrtime(true); for ($i = 0; $i < $n; $i++) { $ok = session_decode($d) && $ok; } $ns = (hrtime(true) - $t) / $n;
		echo $ok ? count($_SESSION) : -1, " ", $ns;`, f).Output()
	if err != nil {
		b.Fatal(err)
	}
	count, ns, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	if count != strconv.Itoa(vars) {
		b.Fatalf("php decoded %s variables, Go %d", count, vars)
	}
	v, err := strconv.ParseFloat(ns, 64)
	if err != nil {
		b.Fatalf("php said %q", out)
	}
	return v
}

// BenchmarkDecodeExpresso decodes a 64 KB Expresso session (cold: no
// cache) and reports PHP's session_decode of the same bytes as php-ns/op
// and the ratio go/php (goal: <= 1). PHP is timed just before and just
// after the Go loop and the two are averaged, so a load change on a shared
// machine does not favour either side.
func BenchmarkDecodeExpresso(b *testing.B) {
	_, _, data := expressoSession(b)
	vars, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits)
	if err != nil {
		b.Fatal(err)
	}
	before := phpDecodeNs(b, data, vars.Len())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := phpsession.Decode(data, phpsession.SerializerPHP, phpsession.DefaultLimits); err != nil {
			b.Fatal(err)
		}
	}
	goNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.StopTimer()
	php := (before + phpDecodeNs(b, data, vars.Len())) / 2
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
