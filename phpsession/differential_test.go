package phpsession_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"expressolivre.org/imsidecar/phpsession"
	"expressolivre.org/imsidecar/phpsession/phpsessiontest"
)

// requirePHP fails when the PHP CLI is missing, and skips only under -short.
func requirePHP(t testing.TB) string {
	t.Helper()
	return phpsessiontest.PHP(t)
}

// TestDifferentialPHP has real PHP write a corpus of sessions with each
// serialize handler through its own files handler, and print its own view
// of every session; the Go decoder must see exactly the same.
func TestDifferentialPHP(t *testing.T) {
	php := requirePHP(t)
	for _, handler := range []string{"php", "php_serialize", "php_binary"} {
		t.Run(handler, func(t *testing.T) {
			dir := t.TempDir()
			cmd := exec.CommandContext(t.Context(), php, "-d", "session.save_path="+dir,
				"-d", "session.serialize_handler="+handler, "-d", "session.use_strict_mode=0",
				"testdata/corpus.php", dir, handler)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("php: %v\n%s", err, stderr.String())
			}
			ser, err := phpsession.ParseSerializer(handler)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := phpsession.ParseCharset("ISO-8859-1")
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			sc := bufio.NewScanner(bytes.NewReader(out))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var line struct {
					ID   string          `json:"id"`
					JSON json.RawMessage `json:"json"`
				}
				if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
					t.Fatalf("corpus line: %v", err)
				}
				data, err := os.ReadFile(filepath.Join(dir, "sess_"+line.ID))
				if err != nil {
					t.Fatal(err)
				}
				vars, err := phpsession.Decode(data, ser, phpsession.DefaultLimits)
				if err != nil {
					t.Errorf("%s: decode: %v\n%q", line.ID, err, data)
					continue
				}
				got, err := phpsession.MarshalJSON(vars, cs)
				if err != nil {
					t.Fatal(err)
				}
				if msg := sameJSON(got, line.JSON); msg != "" {
					t.Errorf("%s: %s\n go: %s\nphp: %s\nraw: %q", line.ID, msg, got, line.JSON, data)
				}
				n++
			}
			if n < 90 {
				t.Fatalf("only %d corpus sessions", n)
			}
		})
	}
}

// sameJSON compares two documents token by token (so key order counts),
// numbers by value.
func sameJSON(a, b []byte) string {
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	for i := 0; ; i++ {
		ta, ea := da.Token()
		tb, eb := db.Token()
		if ea == io.EOF && eb == io.EOF {
			return ""
		}
		if ea != nil || eb != nil {
			return "token error: " + errString(ea) + " / " + errString(eb)
		}
		na, oka := ta.(json.Number)
		nb, okb := tb.(json.Number)
		if oka && okb {
			fa, _ := strconv.ParseFloat(string(na), 64)
			fb, _ := strconv.ParseFloat(string(nb), 64)
			if fa == fb || (math.IsNaN(fa) && math.IsNaN(fb)) {
				continue
			}
		}
		if ta != tb {
			return "token " + strconv.Itoa(i) + " differs"
		}
	}
}

func errString(err error) string {
	if err == nil {
		return "nil"
	}
	return err.Error()
}
